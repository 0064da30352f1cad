//go:build !linux

package snapshot

// lowerPriority does nothing where thread priorities are not per thread.
func lowerPriority() (restore func()) { return func() {} }
