//go:build linux

package lowprio

import (
	"runtime"
	"syscall"
)

// Nice is the nice value of background threads. At nice 10 a thread gets
// about a tenth of a core's time from a busy nice-0 thread on that core
// (scheduler weights 110 against 1024), and all of an idle core.
const Nice = 10

// Lower makes the calling goroutine run on its own OS thread at nice Nice
// until restore is called, so background work (compaction, prerendering)
// yields the CPU to the replication stream, exports and PostgreSQL, and
// uses what they leave. On Linux the nice value of a thread id applies to
// that thread only.
//
// restore puts the thread's priority back and unlocks it. Raising a
// priority needs CAP_SYS_NICE (or RLIMIT_NICE); without it the goroutine
// stays locked and the thread exits with it rather than run other
// goroutines at the lowered priority. (A thread's exit delivers the
// parent-death signal of children it started with Pdeathsig: exportd
// starts none; test harnesses that do run as root.)
func Lower() (restore func()) {
	runtime.LockOSThread()
	tid := syscall.Gettid()
	raw, err := syscall.Getpriority(syscall.PRIO_PROCESS, tid)
	if err != nil {
		runtime.UnlockOSThread()
		return func() {}
	}
	old := 20 - raw // the system call returns 20 - nice
	if old >= Nice || syscall.Setpriority(syscall.PRIO_PROCESS, tid, Nice) != nil {
		runtime.UnlockOSThread()
		return func() {}
	}
	return func() {
		if syscall.Setpriority(syscall.PRIO_PROCESS, tid, old) == nil {
			runtime.UnlockOSThread()
		}
	}
}
