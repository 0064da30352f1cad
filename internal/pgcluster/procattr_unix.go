//go:build unix && !linux

package pgcluster

import "syscall"

// sysProcAttr runs a child as cred (nil: as the current user). The server
// gets its own process group, so a terminal's Ctrl-C reaches only the Go
// process, which then stops it in order, and Stop can kill the server and
// its backends together.
func sysProcAttr(cred *syscall.Credential, server bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Setpgid: server}
}
