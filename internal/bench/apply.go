package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/exportd/exportd/internal/benchutil"
	"github.com/exportd/exportd/internal/gen"
)

// baselineSlot is pg_recvlogical's slot.
const baselineSlot = "exportd_bench"

// apply measures the apply rate: with exportd stopped, pg_recvlogical
// creates its own pgoutput slot, a backlog is written, then pg_recvlogical
// drains its slot to the backlog's end, and `exportd run` restarts and
// drains its own until staging has applied the end.
func (r *runner) apply(ctx context.Context) error {
	e := r.e
	a := &r.res.Apply
	rl := benchutil.RecvLogical{
		BinDir: e.pg.BinDir(), ConnURL: e.url, Slot: baselineSlot,
		Options: []string{"proto_version=1", "publication_names=exportd"},
	}
	if err := rl.CreateSlot(ctx, "pgoutput"); err != nil {
		return err
	}
	slotDropped := false
	defer func() {
		if !slotDropped {
			e.dropSlot(context.WithoutCancel(ctx), baselineSlot)
		}
	}()
	start, err := e.insertLSN(ctx)
	if err != nil {
		return err
	}
	bstart := time.Now()
	if a.Backlog, err = r.makeBacklog(ctx); err != nil {
		return err
	}
	target, err := e.insertLSN(ctx)
	if err != nil {
		return err
	}
	if err := e.flushWAL(ctx, target); err != nil {
		return err
	}
	a.WALBytes = int64(target - start)
	r.log.InfoContext(ctx, "backlog written", "seconds", time.Since(bstart).Seconds(), "wal_MB", float64(a.WALBytes)/1e6)
	if err := r.countChanges(ctx, baselineSlot, target); err != nil {
		return err
	}
	if a.Changes == 0 {
		return fmt.Errorf("the backlog holds no change")
	}
	r.log.InfoContext(ctx, "backlog counted", "changes", a.Changes, "transactions", a.Txns)

	u, err := rl.Drain(ctx, target.String())
	if err != nil {
		return err
	}
	a.RecvLogical = Rate{Seconds: u.Wall.Seconds(), Rows: a.Changes, Bytes: a.WALBytes, CPUSeconds: u.CPU.Seconds()}
	a.RecvPeakRSS = u.PeakRSS
	r.log.InfoContext(ctx, "pg_recvlogical drained", "seconds", u.Wall.Seconds(), "changes_per_s", int64(a.RecvLogical.RowsPerSec()))
	if err := e.dropSlot(ctx, baselineSlot); err != nil {
		return err
	}
	slotDropped = true

	args, err := r.runProfileArgs("apply")
	if err != nil {
		return err
	}
	d, err := startDaemon(ctx, r.bin, r.stateDir, e.url, filepath.Join(r.dir, "exportd-apply.log"), args...)
	if err != nil {
		return err
	}
	defer d.kill()
	if _, err := d.waitApplied(ctx, target, pollInterval, 2*time.Hour); err != nil {
		return err
	}
	wall := time.Since(d.start)
	a.Exportd = Rate{Seconds: wall.Seconds(), Rows: a.Changes, Bytes: a.WALBytes, CPUSeconds: d.cpu().Seconds()}
	a.PeakRSS = d.peakRSS()
	applied, err := d.metric(ctx, "exportd_replication_changes_total")
	if err != nil {
		return err
	}
	a.Applied = int64(applied)
	if a.Applied != a.Changes {
		r.note("apply: exportd_replication_changes_total is %d; pgoutput sent %d row changes for the backlog", a.Applied, a.Changes)
	}
	r.log.InfoContext(ctx, "exportd drained", "seconds", wall.Seconds(), "changes_per_s", int64(a.Exportd.RowsPerSec()),
		"peak_rss_MiB", mib(a.PeakRSS))
	return d.stop()
}

// makeBacklog writes about Scale.BacklogFraction × rows row changes on
// several tables, plus a short random workload: small mixed transactions
// (some with unchanged TOAST values, tenant moves, rollbacks), updates in
// transactions of 5,000 rows, and large transactions (an update, a delete
// and an insert of hundreds of thousands of rows at scale M) that exportd
// spills to disk.
func (r *runner) makeBacklog(ctx context.Context) (string, error) {
	e := r.e
	var desc []string
	st, err := gen.Workload{
		Seed: 21, Tenants: e.tenantIDs(), Workers: 4, Duration: r.scale.BacklogWorkload, Logger: quiet(r.log),
	}.Run(ctx, e.url)
	if err != nil {
		return "", fmt.Errorf("workload: %w", err)
	}
	desc = append(desc, fmt.Sprintf("a %s random workload (%d commits: %d inserts, %d updates, %d TOAST updates, %d deletes, %d tenant moves)",
		r.scale.BacklogWorkload, st.Commits, st.Inserts, st.Updates, st.ToastUpdates, st.Deletes, st.TenantMoves+st.TenantKeyMoves))

	bulk := int64(r.scale.BacklogFraction * float64(r.scale.Rows))
	exec := func(sql string, args ...any) (int64, error) {
		tag, err := e.admin.Exec(ctx, sql, args...)
		if err != nil {
			return 0, fmt.Errorf("backlog: %s: %w", strings.Fields(sql)[0]+" "+strings.Fields(sql)[1], err)
		}
		return tag.RowsAffected(), nil
	}
	// Tasks, in transactions of 5,000 rows.
	var lo, hi int64
	if err := e.admin.QueryRow(ctx, "SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM public.tasks").Scan(&lo, &hi); err != nil {
		return "", err
	}
	hi = min(hi, lo+bulk*4/10)
	var txns, n int64
	for from := lo; from <= hi; from += 5000 {
		m, err := exec(`UPDATE public.tasks SET completed = NOT completed, priority = priority % 4 + 1, updated_at = updated_at + interval '1 second'
			WHERE id >= $1 AND id < $2`, from, min(from+5000, hi+1))
		if err != nil {
			return "", err
		}
		n += m
		txns++
	}
	desc = append(desc, fmt.Sprintf("%d updates of %d tasks", txns, n))
	n, err = exec(`UPDATE public.contacts SET is_primary = NOT is_primary, updated_at = updated_at + interval '1 second' WHERE id <= $1`, bulk/4)
	if err != nil {
		return "", err
	}
	desc = append(desc, fmt.Sprintf("1 update of %d contacts", n))
	n, err = exec(`DELETE FROM public.audit_logs WHERE id % 3 = 0 AND id <= $1`, bulk/5*3)
	if err != nil {
		return "", err
	}
	desc = append(desc, fmt.Sprintf("1 delete of %d audit_logs", n))
	big := max(int(bulk*15/100), 1)
	if err := gen.BigTransaction(ctx, e.admin, 1, big); err != nil {
		return "", err
	}
	desc = append(desc, fmt.Sprintf("1 insert of %d audit_logs", big))
	return strings.Join(desc, "; "), nil
}

// countChanges decodes slot up to upto without consuming it and counts the
// row changes pgoutput sends for exportd's publication.
func (r *runner) countChanges(ctx context.Context, slot string, upto pglogrepl.LSN) error {
	a := &r.res.Apply
	// Insert, Update, Delete and Truncate messages start with I, U, D, T;
	// commits with C.
	rows, err := r.e.admin.Query(ctx, `SELECT get_byte(data, 0), count(*)
		FROM pg_logical_slot_peek_binary_changes($1, $2::pg_lsn, NULL, 'proto_version', '1', 'publication_names', 'exportd')
		GROUP BY 1`, slot, upto.String())
	if err != nil {
		return fmt.Errorf("count backlog: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var kind int32
		var n int64
		if err := rows.Scan(&kind, &n); err != nil {
			return fmt.Errorf("count backlog: %w", err)
		}
		switch kind {
		case 'I':
			a.Inserts += n
		case 'U':
			a.Updates += n
		case 'D':
			a.Deletes += n
		case 'T':
			a.Changes += n
		case 'C':
			a.Txns += n
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("count backlog: %w", err)
	}
	a.Changes += a.Inserts + a.Updates + a.Deletes
	return nil
}
