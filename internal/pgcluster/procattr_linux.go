package pgcluster

import "syscall"

// sysProcAttr runs a child as cred (nil: as the current user). The server
// gets its own process group, so a terminal's Ctrl-C reaches only the Go
// process, which then stops it in order, and Stop can kill the server and
// its backends together; and it gets an immediate shutdown (SIGQUIT) if
// the thread that started it dies, so a crashed test leaves no server
// running. Go ends threads only when a goroutine locked to one exits.
func sysProcAttr(cred *syscall.Credential, server bool) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Credential: cred}
	if server {
		a.Setpgid = true
		a.Pdeathsig = syscall.SIGQUIT
	}
	return a
}
