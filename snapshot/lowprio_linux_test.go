//go:build linux

package snapshot

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

// TestLowerPriority: compaction's thread runs at compactNice, and gets its
// priority back when done (the tests run as root, as CI does).
func TestLowerPriority(t *testing.T) {
	restore := lowerPriority() // locks this goroutine to its thread until restore
	lowered := threadNice(t)
	restore()
	require.Equal(t, compactNice, lowered)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	require.Less(t, threadNice(t), compactNice, "the thread got its priority back")
}
