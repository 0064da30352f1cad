package cdc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/exportd/exportd/snapshot"
)

// heartbeatPrefix marks exportd's own logical decoding messages.
const heartbeatPrefix = "exportd_heartbeat"

// errResnapshot asks the run loop for a fresh snapshot: what the stream
// showed cannot be applied faithfully (a column changed type, staging found
// a row it should have had missing).
var errResnapshot = errors.New("fresh snapshot needed")

// relation is what the stream told of one relation id.
type relation struct {
	name       string
	configured bool
}

// streamer applies one replication connection's stream to staging.
type streamer struct {
	r       *Replicator
	conn    *pgconn.PgConn
	rels    map[uint32]relation
	schemas map[string]snapshot.TableSchema // current schema of each configured table
	batch   *snapshot.Batch
	inTxn   bool
	// Transactions committed into batch but not yet made durable.
	batchTxns      int
	batchStart     time.Time
	batchFirstTime time.Time // commit time of the batch's first transaction
	lastCommitEnd  snapshot.LSN
	serverWALEnd   snapshot.LSN
	// pendingAdvance is a keepalive or heartbeat position received while
	// batch held transactions, applied when the batch is committed.
	pendingAdvance snapshot.LSN
	// durable is the position staging has made durable: the only one ever
	// confirmed to the slot. Advance moves staging's position in memory only;
	// persist makes it durable.
	durable    snapshot.LSN
	lastStatus time.Time
	dec        decoder
}

// stream starts replication at staging's position and applies changes until
// ctx ends or the connection fails.
func (r *Replicator) stream(ctx context.Context) error {
	rcfg, err := replicationConfig(r.cfg.ConnString)
	if err != nil {
		return err
	}
	conn, err := pgconn.ConnectConfig(ctx, rcfg)
	if err != nil {
		return fmt.Errorf("connect for replication: %w", err)
	}
	defer conn.Close(context.Background())

	v, err := r.store.Pin(ctx)
	if err != nil {
		return fmt.Errorf("pin staging: %w", err)
	}
	schemas := map[string]snapshot.TableSchema{}
	for _, t := range v.Tables() {
		schemas[t.Name] = t
	}
	if err := v.Close(); err != nil {
		return fmt.Errorf("unpin staging: %w", err)
	}

	start := r.store.State().LSN
	err = pglogrepl.StartReplication(ctx, conn, r.cfg.Slot, pglogrepl.LSN(start), pglogrepl.StartReplicationOptions{
		Mode: pglogrepl.LogicalReplication,
		PluginArgs: []string{
			"proto_version '1'",
			fmt.Sprintf("publication_names '%s'", r.cfg.Publication),
			"messages 'true'",
		},
	})
	if err != nil {
		return classifyStreamErr(fmt.Errorf("start replication on slot %s at %s: %w", r.cfg.Slot, pglogrepl.LSN(start), err))
	}
	r.log.Info("streaming", "slot", r.cfg.Slot, "lsn", pglogrepl.LSN(start).String())
	r.metrics.connected.Set(1)
	r.connected.Store(true)
	defer func() {
		r.metrics.connected.Set(0)
		r.connected.Store(false)
	}()

	s := &streamer{r: r, conn: conn, rels: map[uint32]relation{}, schemas: schemas, lastCommitEnd: start, lastStatus: time.Now()}
	defer func() {
		if s.batch != nil {
			s.batch.Abort()
		}
	}()
	// A previous session in this process may have advanced staging in memory.
	if err := s.persist(ctx); err != nil {
		return err
	}
	return s.run(ctx)
}

func (s *streamer) run(ctx context.Context) error {
	cfg := s.r.cfg
	for {
		if err := ctx.Err(); err != nil {
			return s.shutdown()
		}
		now := time.Now()
		deadline := s.lastStatus.Add(cfg.StatusInterval)
		if s.batchTxns > 0 && !s.inTxn {
			deadline = minTime(deadline, s.batchStart.Add(cfg.FlushInterval))
		}
		if !deadline.After(now) {
			if err := s.tick(ctx); err != nil {
				return err
			}
			continue
		}
		rctx, cancel := context.WithDeadline(ctx, deadline)
		msg, err := s.conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if pgconn.Timeout(err) {
				continue
			}
			if ctx.Err() != nil {
				return s.shutdown()
			}
			return classifyStreamErr(fmt.Errorf("receive replication message: %w", err))
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if err := s.copyData(ctx, m.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return classifyStreamErr(fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(m)))
		case *pgproto3.CopyDone:
			return fmt.Errorf("replication stream ended by the server")
		default:
			// NoticeResponse and the like carry nothing to apply.
		}
	}
}

// tick flushes a due batch and confirms the durable position.
func (s *streamer) tick(ctx context.Context) error {
	if s.batchTxns > 0 && !s.inTxn && time.Since(s.batchStart) >= s.r.cfg.FlushInterval {
		if err := s.flush(ctx); err != nil {
			return err
		}
	}
	return s.sendStatus(ctx)
}

// shutdown makes what was applied durable and confirms it, on the way out.
func (s *streamer) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s.batchTxns > 0 && !s.inTxn {
		if err := s.flush(ctx); err != nil {
			return err
		}
	}
	if s.batch == nil {
		if err := s.persist(ctx); err != nil {
			return err
		}
	}
	if err := s.sendStatus(ctx); err != nil {
		s.r.log.Warn("confirm position on shutdown", "err", err)
	}
	return nil
}

// persist makes a position staging reached by Advance durable, with an
// empty batch: one small synced metadata write.
func (s *streamer) persist(ctx context.Context) error {
	st := s.r.store.State()
	if st.LSN <= s.durable || s.batch != nil {
		return nil
	}
	b, err := s.r.store.Begin()
	if err != nil {
		return fmt.Errorf("begin staging batch: %w", err)
	}
	if err := b.Commit(ctx, st.LSN); err != nil {
		b.Abort()
		return fmt.Errorf("persist position %s: %w", pglogrepl.LSN(st.LSN), err)
	}
	s.durable = st.LSN
	return nil
}

func (s *streamer) sendStatus(ctx context.Context) error {
	pos := pglogrepl.LSN(s.durable)
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	s.lastStatus = time.Now()
	s.r.metrics.confirmedLSN.Set(float64(pos))
	return nil
}

// flush commits the batch: its transactions become durable and visible.
func (s *streamer) flush(ctx context.Context) error {
	if s.batch == nil {
		return nil
	}
	start := time.Now()
	if err := s.batch.Commit(ctx, s.lastCommitEnd); err != nil {
		s.batch.Abort()
		s.batch = nil
		s.batchTxns = 0
		return fmt.Errorf("commit batch at %s: %w", pglogrepl.LSN(s.lastCommitEnd), err)
	}
	m := s.r.metrics
	m.commitSeconds.Observe(time.Since(start).Seconds())
	m.appliedLSN.Set(float64(s.lastCommitEnd))
	m.transactions.Add(float64(s.batchTxns))
	s.r.setLagSeconds(time.Since(s.batchFirstTime).Seconds())
	s.batch = nil
	s.batchTxns = 0
	// Commit made staging's whole position durable, advances included.
	s.durable = s.r.store.State().LSN
	s.updateLagBytes()
	if p := s.pendingAdvance; p > s.durable {
		if err := s.r.store.Advance(ctx, p); err != nil {
			return fmt.Errorf("advance staging to %s: %w", pglogrepl.LSN(p), err)
		}
		m.appliedLSN.Set(float64(p))
		s.updateLagBytes()
	}
	s.pendingAdvance = 0
	// Confirm at once: the slot stops retaining WAL for what is durable, and
	// whoever watches confirmed_flush_lsn sees progress without delay.
	return s.sendStatus(ctx)
}

func (s *streamer) updateLagBytes() {
	applied := s.r.store.State().LSN
	if s.serverWALEnd > applied {
		s.r.setLagBytes(int64(s.serverWALEnd - applied))
	} else {
		s.r.setLagBytes(0)
	}
}

// advance moves the applied position when nothing is pending: keepalives and
// heartbeats past the last transaction.
func (s *streamer) advance(ctx context.Context, lsn snapshot.LSN) error {
	if s.inTxn {
		return nil
	}
	if s.batchTxns > 0 {
		// Not a reason to commit the batch now: the walsender sends a
		// keepalive whenever it waits for WAL, which under a steady trickle
		// of writes is after nearly every transaction, and committing then
		// made one durable staging commit per transaction (lag grew to
		// minutes at 1,000 transactions/s). The batch commits on its timer
		// or size; the position is applied then.
		s.pendingAdvance = max(s.pendingAdvance, lsn)
		return nil
	}
	if lsn <= s.r.store.State().LSN {
		return nil
	}
	if err := s.r.store.Advance(ctx, lsn); err != nil {
		return fmt.Errorf("advance staging to %s: %w", pglogrepl.LSN(lsn), err)
	}
	s.r.metrics.appliedLSN.Set(float64(lsn))
	s.r.setLagSeconds(0)
	s.updateLagBytes()
	return nil
}

func (s *streamer) copyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		s.serverWALEnd = max(s.serverWALEnd, snapshot.LSN(ka.ServerWALEnd))
		// The server has sent everything before its WAL end: when no
		// transaction is open, nothing below it is pending.
		if err := s.advance(ctx, snapshot.LSN(ka.ServerWALEnd)); err != nil {
			return err
		}
		if ka.ReplyRequested {
			return s.sendStatus(ctx)
		}
		return nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse XLogData: %w", err)
		}
		s.serverWALEnd = max(s.serverWALEnd, snapshot.LSN(xld.ServerWALEnd))
		c, ok, err := s.dec.decodeChange(xld.WALData)
		if err != nil {
			return fmt.Errorf("decode pgoutput message at %s: %w", xld.WALStart, err)
		}
		if ok {
			return s.applyChange(c)
		}
		msg, err := pglogrepl.Parse(xld.WALData)
		if err != nil {
			return fmt.Errorf("decode pgoutput message at %s: %w", xld.WALStart, err)
		}
		return s.apply(ctx, snapshot.LSN(xld.WALStart), msg)
	default:
		return nil
	}
}

func (s *streamer) apply(ctx context.Context, at snapshot.LSN, msg pglogrepl.Message) error {
	m := s.r.metrics
	switch msg := msg.(type) {
	case *pglogrepl.BeginMessage:
		if s.batch == nil {
			b, err := s.r.store.Begin()
			if err != nil {
				return fmt.Errorf("begin staging batch: %w", err)
			}
			s.batch = b
			s.batchStart = time.Now()
			s.batchFirstTime = msg.CommitTime
		}
		s.inTxn = true
	case *pglogrepl.CommitMessage:
		s.inTxn = false
		s.batchTxns++
		s.lastCommitEnd = snapshot.LSN(msg.TransactionEndLSN)
		if n, _ := s.batch.Pending(); n >= s.r.cfg.FlushChanges {
			return s.flush(ctx)
		}
	case *pglogrepl.RelationMessage:
		return s.relation(msg)
	case *pglogrepl.TruncateMessage:
		for _, id := range msg.RelationIDs {
			rel, ok := s.rels[id]
			if !ok || !rel.configured {
				continue
			}
			if err := s.batch.Truncate(rel.name); err != nil {
				return s.applyErr("truncate", rel.name, err)
			}
			m.changes.WithLabelValues(rel.name, "truncate").Inc()
		}
	case *pglogrepl.LogicalDecodingMessage:
		if !msg.Transactional && msg.Prefix == heartbeatPrefix {
			m.heartbeatsReceived.Inc()
			if err := s.advance(ctx, snapshot.LSN(msg.LSN)); err != nil {
				return err
			}
			if s.inTxn {
				return nil
			}
			// Make the heartbeat's position durable and confirm it, so the
			// slot stops retaining WAL even when no published table changes.
			if err := s.persist(ctx); err != nil {
				return err
			}
			return s.sendStatus(ctx)
		}
	case *pglogrepl.TypeMessage, *pglogrepl.OriginMessage:
		// Values arrive as text: type details don't change how they are staged.
	default:
		s.r.log.Warn("unexpected pgoutput message", "type", fmt.Sprintf("%T", msg), "lsn", pglogrepl.LSN(at).String())
	}
	return nil
}

func (s *streamer) applyErr(op, table string, err error) error {
	if errors.Is(err, snapshot.ErrInconsistent) {
		s.r.log.Error("staging is inconsistent with the stream; taking a fresh snapshot", "table", table, "err", err)
		return fmt.Errorf("%s %s: %w: %w", op, table, errResnapshot, err)
	}
	return fmt.Errorf("%s %s: %w", op, table, err)
}

// applyChange applies an Insert, Update or Delete to the open batch.
func (s *streamer) applyChange(c change) error {
	rel, ok := s.rels[c.relation]
	if !ok || !rel.configured {
		return s.unknownRelation(c.relation, rel)
	}
	if s.batch == nil || !s.inTxn {
		return fmt.Errorf("change on %s outside a transaction", rel.name)
	}
	var err error
	var op string
	switch c.kind {
	case 'I':
		op, err = "insert", s.batch.Insert(rel.name, c.row)
	case 'U':
		op, err = "update", s.batch.Update(rel.name, c.old, c.row, c.unchanged)
	case 'D':
		if c.old == nil {
			return fmt.Errorf("delete on %s carries no old tuple (replica identity NOTHING?)", rel.name)
		}
		op, err = "delete", s.batch.Delete(rel.name, c.old)
	}
	if err != nil {
		return s.applyErr(op, rel.name, err)
	}
	s.r.metrics.changes.WithLabelValues(rel.name, op).Inc()
	return nil
}

func (s *streamer) unknownRelation(id uint32, rel relation) error {
	if rel.name != "" {
		return nil // a published table exportd was not asked to replicate
	}
	return fmt.Errorf("change for relation %d before its Relation message", id)
}

// relation records a Relation message and tells staging when a configured
// table's columns changed.
func (s *streamer) relation(msg *pglogrepl.RelationMessage) error {
	name := msg.Namespace + "." + msg.RelationName
	cur, configured := s.schemas[name]
	s.rels[msg.RelationID] = relation{name: name, configured: configured}
	if !configured {
		return nil
	}
	next := snapshot.TableSchema{Name: name, TenantColumn: -1}
	for i, c := range msg.Columns {
		next.Columns = append(next.Columns, snapshot.Column{Name: c.Name, TypeOID: c.DataType})
		if c.Name == cur.Columns[cur.TenantColumn].Name {
			next.TenantColumn = i
		}
	}
	if next.TenantColumn < 0 {
		return fmt.Errorf("table %s: %w: the tenant column %q was dropped", name, ErrSetup, cur.Columns[cur.TenantColumn].Name)
	}
	for _, k := range cur.KeyColumns {
		keyName := cur.Columns[k].Name
		i := slices.IndexFunc(next.Columns, func(c snapshot.Column) bool { return c.Name == keyName })
		if i < 0 {
			return fmt.Errorf("table %s: primary key column %q is gone: %w", name, keyName, errResnapshot)
		}
		next.KeyColumns = append(next.KeyColumns, i)
	}
	if sameSchema(cur, next) {
		return nil
	}
	// A column that kept its name but changed type was rewritten by the
	// server without any change reaching the stream: only a snapshot has it.
	for _, c := range next.Columns {
		if j := slices.IndexFunc(cur.Columns, func(o snapshot.Column) bool { return o.Name == c.Name }); j >= 0 && cur.Columns[j].TypeOID != c.TypeOID {
			return fmt.Errorf("table %s: column %q changed type: %w", name, c.Name, errResnapshot)
		}
	}
	if s.batch == nil {
		b, err := s.r.store.Begin()
		if err != nil {
			return fmt.Errorf("begin staging batch: %w", err)
		}
		s.batch = b
		s.batchStart = time.Now()
	}
	if err := s.batch.SetSchema(next); err != nil {
		return fmt.Errorf("change schema of %s: %w", name, err)
	}
	s.r.log.Info("table columns changed", "table", name, "columns", len(next.Columns))
	s.schemas[name] = next
	return nil
}

func sameSchema(a, b snapshot.TableSchema) bool {
	return a.Name == b.Name && a.TenantColumn == b.TenantColumn &&
		slices.Equal(a.Columns, b.Columns) && slices.Equal(a.KeyColumns, b.KeyColumns)
}

// classifyStreamErr maps the server's answers about a missing or invalidated
// slot to ErrSlotLost, and one about an active slot to ErrSlotInUse.
func classifyStreamErr(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "42704": // undefined_object: replication slot does not exist
			return fmt.Errorf("%w: %w", ErrSlotLost, err)
		case "55000": // object_not_in_prerequisite_state: slot invalidated
			return fmt.Errorf("%w: %w", ErrSlotLost, err)
		case "55006": // object_in_use: slot is active for another PID
			return fmt.Errorf("%w: %w", ErrSlotInUse, err)
		}
	}
	return err
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func parseLSN(s string) (snapshot.LSN, error) {
	l, err := pglogrepl.ParseLSN(s)
	if err != nil {
		return 0, fmt.Errorf("parse LSN %q: %w", s, err)
	}
	return snapshot.LSN(l), nil
}
