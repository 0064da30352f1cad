package snapshot

import (
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

// objectsAcceptance is the conformance suite every objects implementation must pass.
func objectsAcceptance(t *testing.T, newObjects func(t *testing.T) objects) {
	t.Run("commit makes visible", func(t *testing.T) {
		o := newObjects(t)
		w, err := o.Create("a.parquet")
		require.NoError(t, err)
		_, err = w.Write([]byte("hello"))
		require.NoError(t, err)
		_, err = o.Open("a.parquet")
		require.Error(t, err, "not visible before Commit")
		require.NoError(t, w.Commit())
		require.NoError(t, o.Sync([]string{"a.parquet"}))
		r, err := o.Open("a.parquet")
		require.NoError(t, err)
		require.Equal(t, int64(5), r.Size())
		buf := make([]byte, 3)
		_, err = r.ReadAt(buf, 2)
		require.NoError(t, err)
		require.Equal(t, "llo", string(buf))
		_, err = r.ReadAt(buf, 4)
		require.ErrorIs(t, err, io.EOF)
		require.NoError(t, r.Close())
		names, err := o.List("a")
		require.NoError(t, err)
		require.Equal(t, []string{"a.parquet"}, names)
	})
	t.Run("abort leaves nothing", func(t *testing.T) {
		o := newObjects(t)
		w, err := o.Create("b.parquet")
		require.NoError(t, err)
		_, err = w.Write([]byte("x"))
		require.NoError(t, err)
		require.NoError(t, w.Abort())
		names, err := o.List("")
		require.NoError(t, err)
		require.Empty(t, names)
	})
	t.Run("remove is idempotent", func(t *testing.T) {
		o := newObjects(t)
		w, err := o.Create("c")
		require.NoError(t, err)
		require.NoError(t, w.Commit())
		require.NoError(t, o.Remove("c"))
		require.NoError(t, o.Remove("c"))
		_, err = o.Open("c")
		require.Error(t, err)
	})
	t.Run("list filters by prefix in order", func(t *testing.T) {
		o := newObjects(t)
		for _, n := range []string{"seg-2", "base-1", "seg-1"} {
			w, err := o.Create(n)
			require.NoError(t, err)
			require.NoError(t, w.Commit())
		}
		names, err := o.List("seg-")
		require.NoError(t, err)
		require.Equal(t, []string{"seg-1", "seg-2"}, names)
	})
}

func TestDirObjects(t *testing.T) {
	objectsAcceptance(t, func(t *testing.T) objects {
		o, err := newDirObjects(t.TempDir())
		require.NoError(t, err)
		return o
	})
}
