package snapshot

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Key-to-tenant index: for tables whose primary key lacks the tenant column,
// "i/" + table id + index generation + key -> tenant encoding. Only the
// writer (Batch, Load) reads it.
//
// A Batch keeps its index updates in memory. When it spills, it writes them
// unsynced to the pending keyspace "p/" (same suffix as "i/"; a deletion is
// the value pendingDeleted), which the batch reads before "i/". Nothing is
// read before writing. If the batch spilled, Commit writes the rest to "p/"
// too, then commits the manifest edit together with the redo marker
// keyIndexRedo in one synced pebble batch, then copies "p/" into "i/" and
// deletes "p/" and the marker. Open finishes the copy if it finds the marker
// (copying again is harmless) and otherwise discards "p/" (the batch never
// committed); Abort discards "p/".

const (
	prefixPending = "p/"
	keyIndexRedo  = "x/index-redo"
	// pendingDeleted marks a deletion in "p/" (tenant encodings start with 0 or 1).
	pendingDeleted = 0xFF
	copyChunk      = 4 << 20
)

func pendingKey(indexKey []byte) []byte {
	return append([]byte(prefixPending), indexKey[len(prefixIndex):]...)
}

// recoverIndex finishes or discards the pending index updates of a Batch.
func recoverIndex(db *pebble.DB) error {
	_, closer, err := db.Get([]byte(keyIndexRedo))
	switch {
	case err == nil:
		_ = closer.Close() // releases memory only
		return applyPending(db)
	case errors.Is(err, pebble.ErrNotFound):
		return discardPending(db, pebble.Sync)
	default:
		return fmt.Errorf("read index redo marker: %w", err)
	}
}

// applyPending copies "p/" into "i/", then deletes "p/" and the redo marker.
func applyPending(db *pebble.DB) error {
	lo, hi := []byte(prefixPending), prefixEnd([]byte(prefixPending))
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return fmt.Errorf("apply pending index: %w", err)
	}
	b := db.NewBatch()
	ik := []byte(prefixIndex)
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return errors.Join(fmt.Errorf("apply pending index: %w", err), it.Close(), b.Close())
		}
		ik = append(ik[:len(prefixIndex)], it.Key()[len(prefixPending):]...)
		if len(v) == 1 && v[0] == pendingDeleted {
			err = b.Delete(ik, nil)
		} else {
			err = b.Set(ik, v, nil)
		}
		if err != nil {
			return errors.Join(fmt.Errorf("apply pending index: %w", err), it.Close(), b.Close())
		}
		if b.Len() >= copyChunk {
			if err := b.Commit(pebble.NoSync); err != nil {
				return errors.Join(fmt.Errorf("apply pending index: %w", err), it.Close(), b.Close())
			}
			_ = b.Close() // recycles the committed batch
			b = db.NewBatch()
		}
	}
	if err := it.Close(); err != nil {
		return errors.Join(fmt.Errorf("apply pending index: %w", err), b.Close())
	}
	// If this is lost in a crash, Open copies again: the marker is still there.
	if err := b.DeleteRange(lo, hi, nil); err != nil {
		return errors.Join(fmt.Errorf("apply pending index: %w", err), b.Close())
	}
	if err := b.Delete([]byte(keyIndexRedo), nil); err != nil {
		return errors.Join(fmt.Errorf("apply pending index: %w", err), b.Close())
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return errors.Join(fmt.Errorf("apply pending index: %w", err), b.Close())
	}
	return b.Close()
}

// discardPending deletes the pending updates of an uncommitted Batch.
func discardPending(db *pebble.DB, opts *pebble.WriteOptions) error {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixPending), UpperBound: prefixEnd([]byte(prefixPending))})
	if err != nil {
		return fmt.Errorf("discard pending index: %w", err)
	}
	any := it.First()
	if err := it.Close(); err != nil {
		return fmt.Errorf("discard pending index: %w", err)
	}
	if !any {
		return nil
	}
	if err := db.DeleteRange([]byte(prefixPending), prefixEnd([]byte(prefixPending)), opts); err != nil {
		return fmt.Errorf("discard pending index: %w", err)
	}
	return nil
}

// idxEnt is a Batch's view of one index key.
type idxEnt struct {
	cur     []byte // tenant encoding, valid if present
	present bool
	dirty   bool
}

// idxEntBytes is what an index entry costs in memory: the key, the entry,
// the tenant and the map slot.
func idxEntBytes(key string, e *idxEnt) int64 {
	return int64(len(key)+len(e.cur)) + 144
}
