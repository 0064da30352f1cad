//go:build linux

package lowprio

import (
	"runtime"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

func threadNice(t *testing.T) int {
	t.Helper()
	raw, err := syscall.Getpriority(syscall.PRIO_PROCESS, syscall.Gettid())
	require.NoError(t, err)
	return 20 - raw
}

// TestLower: a background thread runs at Nice, and gets its priority back
// when done (the tests run as root, as CI does).
func TestLower(t *testing.T) {
	restore := Lower() // locks this goroutine to its thread until restore
	lowered := threadNice(t)
	restore()
	require.Equal(t, Nice, lowered)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	require.Less(t, threadNice(t), Nice, "the thread got its priority back")
}
