package cdc_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/cdc"
	"github.com/exportd/exportd/internal/pgtest"
)

// TestBadSetup produces each setup error exportd must explain and checks that
// its message names the fix.
func TestBadSetup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	check := func(t *testing.T, connString string, tables []string, publication string) error {
		t.Helper()
		r, err := cdc.New(cdc.Config{ConnString: connString, Tables: tables, Publication: publication}, nil, nil, nil)
		require.NoError(t, err)
		return r.Check(ctx)
	}

	t.Run("wal_level not logical", func(t *testing.T) {
		pg := pgtest.Start(t, pgtest.WithSetting("wal_level", "replica"))
		err := check(t, pg.ConnString("postgres"), []string{"public.t"}, "")
		require.ErrorIs(t, err, cdc.ErrSetup)
		require.ErrorContains(t, err, `wal_level is "replica"`)
		require.ErrorContains(t, err, "ALTER SYSTEM SET wal_level = logical")
	})

	pg := pgtest.Start(t)
	admin := pgtest.Connect(t, pg.ConnString("postgres"))
	for _, sql := range []string{
		`CREATE TABLE good (tenant_id bigint NOT NULL, id bigint NOT NULL, v text, PRIMARY KEY (tenant_id, id))`,
		`CREATE TABLE other (tenant_id bigint NOT NULL, id bigint PRIMARY KEY)`,
		`CREATE TABLE nopk (tenant_id bigint NOT NULL, id bigint NOT NULL)`,
		`CREATE TABLE nothing (tenant_id bigint NOT NULL, id bigint PRIMARY KEY)`,
		`ALTER TABLE nothing REPLICA IDENTITY NOTHING`,
		`CREATE TABLE notenant (id bigint PRIMARY KEY)`,
		`CREATE ROLE plain LOGIN`,
		`GRANT SELECT ON ALL TABLES IN SCHEMA public TO plain`,
		`CREATE PUBLICATION partial FOR TABLE good`,
		`CREATE PUBLICATION noupdates FOR TABLE good, other WITH (publish = 'insert, delete')`,
		`CREATE PUBLICATION filtered FOR TABLE good WHERE (tenant_id > 1), other`,
	} {
		_, err := admin.Exec(ctx, sql)
		require.NoError(t, err, sql)
	}
	url := pg.ConnString("postgres")

	tests := []struct {
		name        string
		url         string
		tables      []string
		publication string
		want        []string
	}{
		{"role without REPLICATION", "postgres://plain@127.0.0.1:" + strconv.Itoa(pg.Port()) + "/postgres?sslmode=disable",
			[]string{"public.good"}, "", []string{`role "plain" lacks the REPLICATION attribute`, `ALTER ROLE "plain" WITH REPLICATION`}},
		{"table without primary key", url, []string{"public.good", "public.nopk"}, "",
			[]string{"table public.nopk has no primary key", "ADD PRIMARY KEY"}},
		{"replica identity nothing", url, []string{"public.nothing"}, "",
			[]string{"REPLICA IDENTITY NOTHING", "ALTER TABLE public.nothing REPLICA IDENTITY DEFAULT"}},
		{"missing table", url, []string{"public.absent"}, "",
			[]string{"table public.absent does not exist"}},
		{"no tenant column", url, []string{"public.notenant"}, "",
			[]string{`has no tenant column "tenant_id"`}},
		{"adopted publication lacks a table", url, []string{"public.good", "public.other"}, "partial",
			[]string{`publication "partial" exists but does not include table public.other`, `ALTER PUBLICATION "partial" ADD TABLE "public"."other"`}},
		{"adopted publication skips updates", url, []string{"public.good", "public.other"}, "noupdates",
			[]string{`does not publish every kind of change`, `publish = 'insert, update, delete, truncate'`}},
		{"adopted publication filters rows", url, []string{"public.good", "public.other"}, "filtered",
			[]string{`with a row filter`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := check(t, tt.url, tt.tables, tt.publication)
			require.ErrorIs(t, err, cdc.ErrSetup)
			for _, w := range tt.want {
				require.ErrorContains(t, err, w)
			}
		})
	}

	t.Run("good setup creates the publication", func(t *testing.T) {
		require.NoError(t, check(t, url, []string{"public.good", "public.other"}, "fresh"))
		var n int
		require.NoError(t, admin.QueryRow(ctx, `SELECT count(*) FROM pg_publication_tables WHERE pubname = 'fresh'`).Scan(&n))
		require.Equal(t, 2, n)
		// Adopting it the second time is fine.
		require.NoError(t, check(t, url, []string{"public.good", "public.other"}, "fresh"))
	})
}
