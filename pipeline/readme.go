package pipeline

import (
	"fmt"
	"strings"
	"time"
)

// bundleReadme is README.txt of the data-files bundle: what the files are
// and how their values are written.
func bundleReadme(plan *Plan, tenant, lsn string, at time.Time, rows map[string]int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Full Data Export\n================\n\n")
	fmt.Fprintf(&b, "Tenant:   %s\nCreated:  %s\nPosition: %s (every file reflects the same moment of the database)\n\n",
		tenant, at.UTC().Format(time.RFC3339), lsn)
	b.WriteString("Files\n-----\n")
	for _, f := range plan.Files {
		fmt.Fprintf(&b, "%-22s %d rows\n", f.Name, rows[f.Name])
	}
	b.WriteString(`
Format
------
Every file is CSV as described by RFC 4180, encoded in UTF-8, with a header
row. Lines end with LF. Rows are in primary-key order.

- Values are written exactly as PostgreSQL prints them (dates as YYYY-MM-DD,
  timestamps in UTC as "YYYY-MM-DD HH:MM:SS+00", arrays as {a,b}, JSON as
  stored, binary data as \x followed by hex digits).
- An empty field with no quotes is NULL (no value); "" (two double quotes) is
  an empty text.
- A field is quoted when it holds a comma, a double quote, a line break, or is
  empty text; a double quote inside a field is doubled.
`)
	if plan.FormulaProtection {
		b.WriteString(`
Spreadsheet formula protection is ON: in text columns, a value that begins
with =, +, -, @, a tab, a carriage return or a line feed is written with a
leading apostrophe (') so that spreadsheet programs show it as text instead
of running it as a formula (OWASP "CSV injection"). Remove the first
character of such values to get the original text. Columns that are not text
(numbers, dates, ...) are never changed.
`)
	} else {
		b.WriteString(`
Spreadsheet formula protection is OFF: values are written unchanged. Take
care when opening these files in a spreadsheet program: a value beginning
with =, +, -, or @ may be run as a formula.
`)
	}
	if plan.BOM {
		b.WriteString("\nEach CSV file begins with a UTF-8 byte-order mark, so spreadsheet programs\ndetect the encoding.\n")
	}
	b.WriteString(`
The attachments and internal CVs are published as two other bundles, each
with a missing_files.csv listing any file that could not be read.
`)
	return b.String()
}
