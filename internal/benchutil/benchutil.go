// Package benchutil measures what exportd's benchmarks report beside their
// baselines: wall time, CPU time, peak Go heap and peak resident memory of
// this process and of other processes (read from /proc; Linux only, the
// figures are zero elsewhere).
package benchutil

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat
// (sysconf(_SC_CLK_TCK), 100 on every Linux platform Go supports).
const clockTick = 10 * time.Millisecond

// RSS returns the current and the peak resident set size of process pid
// (VmRSS and VmHWM of /proc/<pid>/status); pid 0 is this process.
func RSS(pid int) (cur, peak int64, err error) {
	b, err := os.ReadFile(procPath(pid, "status"))
	if err != nil {
		return 0, 0, fmt.Errorf("read memory of process %d: %w", pid, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("read memory of process %d: %s: %w", pid, name, err)
		}
		if name == "VmRSS" {
			cur = kb << 10
		} else {
			peak = kb << 10
		}
	}
	return cur, peak, nil
}

// ResetPeakRSS resets the peak resident set size of process pid (0: this
// process) to its current one, so that a later RSS reports the peak of what
// ran in between.
func ResetPeakRSS(pid int) error {
	if err := os.WriteFile(procPath(pid, "clear_refs"), []byte("5"), 0); err != nil {
		return fmt.Errorf("reset peak memory of process %d: %w", pid, err)
	}
	return nil
}

// CPUTime returns the user plus system CPU time process pid has used
// (/proc/<pid>/stat); pid 0 is this process.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(procPath(pid, "stat"))
	if err != nil {
		return 0, fmt.Errorf("read CPU time of process %d: %w", pid, err)
	}
	// The command name, in parentheses, may hold spaces: fields count from its end.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("read CPU time of process %d: malformed stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("read CPU time of process %d: stat has %d fields", pid, len(f)+2)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("read CPU time of process %d: %w", pid, err)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// SelfCPU returns the CPU time (user plus system) this process has used.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func procPath(pid int, name string) string {
	if pid == 0 {
		return "/proc/self/" + name
	}
	return "/proc/" + strconv.Itoa(pid) + "/" + name
}

// Phase measures one phase of this process: wall and CPU time, and the peak
// Go heap (sampled) and resident set size.
type Phase struct {
	start    time.Time
	startCPU time.Duration
	stop     chan struct{}
	done     chan struct{}

	// heapProfile, if set, receives a heap profile each time the sampled
	// heap passes its last profiled peak by profileStep.
	heapProfile string
	profiled    uint64
	profileErr  error

	mu       sync.Mutex
	peakHeap uint64
	samples  int
}

// profileStep is how much the heap must grow past the last profile before
// StartPhaseProfiled writes another.
const profileStep = 16 << 20

// Usage is what a Phase measured.
type Usage struct {
	Wall time.Duration
	CPU  time.Duration
	// PeakHeap is the largest Go heap (bytes of heap objects, live or not
	// yet swept) seen by sampling; PeakRSS the resident set's high-water mark.
	PeakHeap int64
	PeakRSS  int64
	// ProfileErr is why the heap profile could not be written, if it could not.
	ProfileErr error
}

// StartPhase returns the heap to the OS, resets the resident set's
// high-water mark and starts measuring, sampling the Go heap every interval.
func StartPhase(interval time.Duration) *Phase {
	return StartPhaseProfiled(interval, "")
}

// StartPhaseProfiled is StartPhase that also writes a heap profile (pprof
// format, in-use and allocated) to heapProfile whenever the sampled heap
// reaches a new peak (by at least 16 MiB), so the file ends up showing the
// heap near the phase's peak. "" writes none.
func StartPhaseProfiled(interval time.Duration, heapProfile string) *Phase {
	debug.FreeOSMemory()
	_ = ResetPeakRSS(0) // best effort: the peak then covers the process's life
	p := &Phase{start: time.Now(), startCPU: SelfCPU(), stop: make(chan struct{}), done: make(chan struct{}), heapProfile: heapProfile}
	go p.sample(interval)
	return p
}

// writeHeapProfile writes the heap profile as of the last GC.
func (p *Phase) writeHeapProfile() {
	f, err := os.Create(p.heapProfile)
	if err != nil {
		p.profileErr = fmt.Errorf("heap profile: %w", err)
		return
	}
	err = pprof.Lookup("heap").WriteTo(f, 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		p.profileErr = fmt.Errorf("heap profile: %w", err)
	}
}

func (p *Phase) sample(interval time.Duration) {
	defer close(p.done)
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		metrics.Read(s)
		p.mu.Lock()
		var heap uint64
		if s[0].Value.Kind() == metrics.KindUint64 {
			heap = s[0].Value.Uint64()
			p.peakHeap = max(p.peakHeap, heap)
		}
		p.samples++
		p.mu.Unlock()
		if p.heapProfile != "" && p.profileErr == nil && heap >= p.profiled+profileStep {
			p.profiled = heap
			p.writeHeapProfile()
		}
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

// Stop ends the phase and returns what it measured.
func (p *Phase) Stop() Usage {
	u := Usage{Wall: time.Since(p.start), CPU: SelfCPU() - p.startCPU}
	close(p.stop)
	<-p.done
	_, peak, _ := RSS(0)
	p.mu.Lock()
	defer p.mu.Unlock()
	u.PeakHeap, u.PeakRSS = int64(p.peakHeap), peak
	u.ProfileErr = p.profileErr
	return u
}

// Watch follows another process (e.g. a PostgreSQL backend) until it exits
// or Stop is called, keeping its last CPU time and its peak resident set.
type Watch struct {
	pid  int
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	cpu0    time.Duration
	cpu     time.Duration
	peakRSS int64
}

// WatchProcess starts following pid, reading /proc every interval.
func WatchProcess(pid int, interval time.Duration) *Watch {
	w := &Watch{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	w.cpu0, _ = CPUTime(pid)
	w.cpu = w.cpu0
	go w.run(interval)
	return w
}

func (w *Watch) run(interval time.Duration) {
	defer close(w.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if !w.read() {
			return
		}
		select {
		case <-w.stop:
			w.read()
			return
		case <-t.C:
		}
	}
}

func (w *Watch) read() bool {
	cpu, err := CPUTime(w.pid)
	if err != nil {
		return false // gone
	}
	_, peak, _ := RSS(w.pid)
	w.mu.Lock()
	w.cpu = max(w.cpu, cpu)
	w.peakRSS = max(w.peakRSS, peak)
	w.mu.Unlock()
	return true
}

// Stop stops following the process and returns the CPU time it used since
// WatchProcess (up to its last reading if it exited) and its peak resident set.
func (w *Watch) Stop() (cpu time.Duration, peakRSS int64) {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cpu - w.cpu0, w.peakRSS
}

// GOMAXPROCS is runtime.GOMAXPROCS(0), for benchmark logs.
func GOMAXPROCS() int { return runtime.GOMAXPROCS(0) }

// LoadAvg returns the first line of /proc/loadavg ("" if unreadable), to
// record how busy the machine was during a measurement.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
