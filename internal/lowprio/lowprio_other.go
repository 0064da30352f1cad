//go:build !linux

package lowprio

// Nice is the nice value of background threads on Linux.
const Nice = 10

// Lower does nothing where thread priorities are not per thread.
func Lower() (restore func()) { return func() {} }
