package cdc

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/exportd/exportd/snapshot"
)

// Fencer reads production's current WAL position, the freshness fence of an
// export request: staging at or past it holds everything production had
// committed when the request was accepted. It is the only query an export
// makes on production. It is safe for concurrent use.
type Fencer struct {
	connString string
	mu         sync.Mutex
	conn       *pgx.Conn
}

// NewFencer returns a Fencer for the database at connString. It connects
// on first use and reconnects after an error.
func NewFencer(connString string) *Fencer { return &Fencer{connString: connString} }

// CurrentLSN returns the end of the WAL inserted so far. The insert position
// is used, not pg_current_wal_lsn() (the write position): a transaction
// committed with synchronous_commit off can have its commit record past the
// write position. A heartbeat message is then written, so the replication
// stream moves past the fence at once even when nothing else is written.
func (f *Fencer) CurrentLSN(ctx context.Context) (snapshot.LSN, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn == nil || f.conn.IsClosed() {
		cfg, err := ConnConfig(f.connString)
		if err != nil {
			return 0, err
		}
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return 0, fmt.Errorf("connect for fence: %w", err)
		}
		f.conn = conn
	}
	var s string
	if err := f.conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		f.closeLocked()
		return 0, fmt.Errorf("read WAL position: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		return 0, fmt.Errorf("read WAL position: %w", err)
	}
	if _, err := f.conn.Exec(ctx, "SELECT pg_logical_emit_message(false, $1, '')", heartbeatPrefix); err != nil {
		f.closeLocked()
		return 0, fmt.Errorf("write heartbeat after fence: %w", err)
	}
	return snapshot.LSN(lsn), nil
}

// Close closes the connection.
func (f *Fencer) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closeLocked()
	return nil
}

func (f *Fencer) closeLocked() {
	if f.conn != nil {
		f.conn.Close(context.Background())
		f.conn = nil
	}
}
