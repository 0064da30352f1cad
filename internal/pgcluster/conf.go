package pgcluster

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// hbaConf trusts every local and loopback connection, replication included.
const hbaConf = `# Written by exportd pgcluster: a private test cluster.
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 trust
local   replication  all                 trust
host    all          all   127.0.0.1/32  trust
host    replication  all   127.0.0.1/32  trust
`

// settingName matches PostgreSQL configuration parameter names, including
// custom ones such as "auto_explain.log_min_duration".
var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// validateSettings rejects settings that cannot be written to
// postgresql.conf as one line each, and "port", which Options.Port owns.
func validateSettings(settings map[string]string) error {
	for _, name := range slices.Sorted(maps.Keys(settings)) {
		value := settings[name]
		switch {
		case !settingName.MatchString(name):
			return fmt.Errorf("invalid setting name %q", name)
		case strings.EqualFold(name, "port"):
			return errors.New("setting \"port\": use Options.Port")
		case strings.ContainsAny(value, "\n\r\x00"):
			return fmt.Errorf("setting %s: value contains a line break or NUL", name)
		}
	}
	return nil
}

// defaultSettings are the postgresql.conf settings of every cluster.
// max_slot_wal_keep_size is left at its default (unlimited) on purpose.
func defaultSettings(port int, sockDir string) map[string]string {
	return map[string]string{
		"wal_level":                "logical",
		"max_replication_slots":    "20",
		"max_wal_senders":          "20",
		"listen_addresses":         "127.0.0.1",
		"port":                     strconv.Itoa(port),
		"unix_socket_directories":  sockDir,
		"fsync":                    "off",
		"synchronous_commit":       "off",
		"full_page_writes":         "off",
		"shared_buffers":           "256MB",
		"max_connections":          "200",
		"wal_sender_timeout":       "60s",
		"logging_collector":        "off",
		"log_destination":          "stderr", // stderr is the log file Start opened
		"log_line_prefix":          "%m [%p] %q%u@%d ",
		"log_replication_commands": "on",
	}
}

// renderConf returns the lines appended to initdb's postgresql.conf: the
// defaults overridden by extra, sorted by name. extra must have passed
// validateSettings. Later lines of
// postgresql.conf win, so these override initdb's.
func renderConf(port int, sockDir string, extra map[string]string) []byte {
	settings := defaultSettings(port, sockDir)
	for name, value := range extra {
		settings[strings.ToLower(name)] = value // names are case-insensitive
	}
	var b strings.Builder
	b.WriteString("\n# Added by exportd pgcluster.\n")
	for _, name := range slices.Sorted(maps.Keys(settings)) {
		fmt.Fprintf(&b, "%s = %s\n", name, quoteConf(settings[name]))
	}
	return []byte(b.String())
}

// quoteConf quotes a postgresql.conf value. Any value may be quoted.
func quoteConf(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(v) + "'"
}
