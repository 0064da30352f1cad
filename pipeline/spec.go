package pipeline

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/exportd/exportd/snapshot"
)

//go:embed default_spec.yaml
var defaultSpecYAML []byte

// defaultSpecSource names the default spec in errors.
const defaultSpecSource = "default_spec.yaml"

// DefaultSpec returns the export spec of the reference schema
// (internal/refschema): the ten CSV files of the Full Data Export with every
// column, attachments with CVs of category 'cv', open invoices as
// outstanding, and active admins as the users who may request an export.
// Each call returns a new Spec.
func DefaultSpec() *Spec {
	s, err := ParseSpec(defaultSpecYAML, defaultSpecSource)
	if err != nil {
		panic("pipeline: invalid default spec: " + err.Error())
	}
	return s
}

// DefaultSpecYAML returns the text of the default spec, a commented starting
// point for the spec of another schema.
func DefaultSpecYAML() []byte { return bytes.Clone(defaultSpecYAML) }

// Spec is an export spec: the CSV files of a tenant's export and where their
// rows come from, which rows are files, which invoices are outstanding, and
// who may request an export.
// ParseSpec, LoadSpec and DefaultSpec return checked specs; Resolve checks a
// Spec built in code the same way (note that its zero FormulaProtection is
// off, while a YAML spec that omits the key has it on).
type Spec struct {
	// Version of the spec format: 1.
	Version int
	// TenantColumn names the tenant column of every table unless a section
	// sets its own. It must be the column the table is staged by; empty: the
	// staged tenant column, whatever its name.
	TenantColumn string
	// FormulaProtection writes text values that begin with =, +, -, @, tab,
	// CR or LF with a leading ' so spreadsheets do not run them (YAML
	// default: true). Only text-typed columns are changed.
	FormulaProtection bool
	// BOM begins each CSV with a UTF-8 byte-order mark.
	BOM bool
	// Files are the CSV files of the export, in order.
	Files []FileSpec
	// Attachments says which rows are files; nil: the export has none.
	Attachments *AttachmentSpec
	// Invoices says which invoices are outstanding; nil: none are.
	Invoices *InvoiceSpec
	// Requesters says who may request an export; nil: anyone.
	Requesters *RequesterSpec

	source string         // file name for errors
	lines  map[string]int // line of each key path in source
}

// FileSpec is one CSV file of the export.
type FileSpec struct {
	// Name is the file name, e.g. "Candidates.csv": letters, digits, _ . -
	// and spaces, ending in .csv, unique ignoring case.
	Name string
	// Table is the source table, "schema.table" or "table" (in public).
	Table string
	// TenantColumn overrides Spec.TenantColumn for this table.
	TenantColumn string
	// Columns lists the exported columns in order; nil: every column of the
	// table in table order (a column added later is exported too).
	Columns []ColumnSpec
	// Exclude lists columns left out of "every column"; only without Columns.
	Exclude []string
}

// ColumnSpec is one exported column.
type ColumnSpec struct {
	Column string // column of the table
	As     string // header in the CSV; empty: the column name
}

// AttachmentSpec says which rows of a table are files, where their content
// is, and how they are named in the zip bundles.
type AttachmentSpec struct {
	Table        string
	TenantColumn string // overrides Spec.TenantColumn
	// ObjectKey, FileName and Size are columns: the object store key of the
	// content, the file's name, its size in bytes.
	ObjectKey string
	FileName  string
	Size      string
	// ContentType is the column of the MIME type; optional.
	ContentType string
	// ObjectKeyPrefix, if set, is the prefix every object key of the tenant
	// must have; "{tenant}" stands for the tenant id. Files with other keys
	// are not read (they are listed as missing).
	ObjectKeyPrefix string
	// Owner lists the columns naming the owning record, e.g. record_type and
	// record_id; the file goes to a folder named after their values.
	Owner []string
	// CV selects the internal CVs (all conditions must hold); they go to the
	// CV bundle and the other files to the attachments bundle. Nil: no CVs.
	CV []ConditionSpec
}

// InvoiceSpec says which invoices count as outstanding.
type InvoiceSpec struct {
	Table        string
	TenantColumn string // overrides Spec.TenantColumn
	// Outstanding: every condition must hold.
	Outstanding []ConditionSpec
}

// RequesterSpec says who may request a tenant's export: the requester's id
// must be that of a row of Table in the tenant meeting every condition of
// Allowed.
type RequesterSpec struct {
	Table        string
	TenantColumn string // overrides Spec.TenantColumn
	ID           string // column holding the requester id
	// Allowed: every condition must hold; nil: every row of the tenant.
	Allowed []ConditionSpec
}

// ConditionSpec is a test on one column's value as PostgreSQL prints it
// (booleans are t and f). Exactly one of In, NotIn and IsNull is set. NULL
// is never in In nor in NotIn.
type ConditionSpec struct {
	Column string
	In     []string // the value is one of these
	NotIn  []string // the value is not NULL and none of these
	IsNull *bool    // the value is NULL (true) or not (false)
}

// SpecError is a problem with a spec, found when it was loaded or resolved.
type SpecError struct {
	Source string // spec file, e.g. "spec.yaml"
	Line   int    // line in Source; 0 if unknown
	Key    string // key path, e.g. "files[3].name"; empty for the whole spec
	Msg    string
}

func (e *SpecError) Error() string {
	var b strings.Builder
	b.WriteString(e.Source)
	if e.Line > 0 {
		b.WriteString(":")
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// maxSpecErrors bounds the errors reported at once.
const maxSpecErrors = 20

// specErrors collects the problems of a spec.
type specErrors struct {
	source string
	lines  map[string]int
	errs   []error
	more   int
}

// addf records a problem at key path key. The line is that of the key or,
// for a missing key, of the nearest enclosing one.
func (e *specErrors) addf(key, format string, args ...any) {
	e.addLine(e.line(key), key, fmt.Sprintf(format, args...))
}

func (e *specErrors) addLine(line int, key, msg string) {
	if len(e.errs) == maxSpecErrors {
		e.more++
		return
	}
	e.errs = append(e.errs, &SpecError{Source: e.source, Line: line, Key: key, Msg: msg})
}

func (e *specErrors) line(key string) int {
	for key != "" {
		if l, ok := e.lines[key]; ok {
			return l
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			break
		}
		key = key[:i]
	}
	return 0
}

func (e *specErrors) err() error {
	if e.more > 0 {
		return errors.Join(append(e.errs, fmt.Errorf("%s: and %d more problems", e.source, e.more))...)
	}
	return errors.Join(e.errs...)
}

// LoadSpec reads and checks the export spec in file path.
func LoadSpec(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read export spec: %w", err)
	}
	return ParseSpec(data, path)
}

// ParseSpec parses and checks an export spec; source names it in errors.
// Every problem found is reported (up to 20), each a *SpecError naming the
// key, e.g. `spec.yaml:12: files[3].name: "../x.csv" is not a safe file
// name: ...`. Whether tables and columns exist is checked by Resolve.
func ParseSpec(data []byte, source string) (*Spec, error) {
	if source == "" {
		source = "spec"
	}
	p := &parser{specErrors: specErrors{source: source, lines: map[string]int{}}}
	s := p.document(data)
	if err := p.err(); err != nil {
		return nil, err
	}
	s.source, s.lines = source, p.lines
	if err := s.validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// parser turns a YAML document into a Spec, strictly: unknown and duplicate
// keys and values of the wrong kind are errors.
type parser struct {
	specErrors
}

// yamlLineRE matches the position in yaml's syntax errors.
var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (p *parser) document(data []byte) *Spec {
	s := &Spec{FormulaProtection: true}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.addf("", "empty spec: want a mapping with version: 1 and files")
		} else {
			p.yamlError(err)
		}
		return s
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		p.addLine(extra.Line, "", "more than one YAML document: a spec is one")
		return s
	} else if !errors.Is(err, io.EOF) {
		p.yamlError(err)
		return s
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) != 1 {
			p.addf("", "empty spec: want a mapping with version: 1 and files")
			return s
		}
		root = root.Content[0]
	}
	p.mapping(root, "", map[string]func(*yaml.Node, string){
		"version":            func(n *yaml.Node, k string) { s.Version = p.integer(n, k) },
		"tenant_column":      func(n *yaml.Node, k string) { s.TenantColumn = p.str(n, k) },
		"formula_protection": func(n *yaml.Node, k string) { s.FormulaProtection = p.boolean(n, k) },
		"bom":                func(n *yaml.Node, k string) { s.BOM = p.boolean(n, k) },
		"files": func(n *yaml.Node, k string) {
			p.sequence(n, k, func(n *yaml.Node, k string) { s.Files = append(s.Files, p.file(n, k)) })
		},
		"attachments": func(n *yaml.Node, k string) { s.Attachments = p.attachments(n, k) },
		"invoices":    func(n *yaml.Node, k string) { s.Invoices = p.invoices(n, k) },
		"requesters":  func(n *yaml.Node, k string) { s.Requesters = p.requesters(n, k) },
	})
	return s
}

func (p *parser) yamlError(err error) {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		p.addLine(line, "", m[2])
		return
	}
	p.addLine(0, "", strings.TrimPrefix(msg, "yaml: "))
}

func (p *parser) file(n *yaml.Node, key string) FileSpec {
	var f FileSpec
	p.mapping(n, key, map[string]func(*yaml.Node, string){
		"name":          func(n *yaml.Node, k string) { f.Name = p.str(n, k) },
		"table":         func(n *yaml.Node, k string) { f.Table = p.str(n, k) },
		"tenant_column": func(n *yaml.Node, k string) { f.TenantColumn = p.str(n, k) },
		"columns": func(n *yaml.Node, k string) {
			f.Columns = []ColumnSpec{}
			p.sequence(n, k, func(n *yaml.Node, k string) { f.Columns = append(f.Columns, p.column(n, k)) })
		},
		"exclude": func(n *yaml.Node, k string) { f.Exclude = p.strings(n, k) },
	})
	return f
}

func (p *parser) column(n *yaml.Node, key string) ColumnSpec {
	n = deref(n)
	if n.Kind == yaml.ScalarNode {
		return ColumnSpec{Column: p.str(n, key)}
	}
	var c ColumnSpec
	p.mapping(n, key, map[string]func(*yaml.Node, string){
		"column": func(n *yaml.Node, k string) { c.Column = p.str(n, k) },
		"as":     func(n *yaml.Node, k string) { c.As = p.str(n, k) },
	})
	return c
}

func (p *parser) attachments(n *yaml.Node, key string) *AttachmentSpec {
	a := &AttachmentSpec{}
	p.mapping(n, key, map[string]func(*yaml.Node, string){
		"table":             func(n *yaml.Node, k string) { a.Table = p.str(n, k) },
		"tenant_column":     func(n *yaml.Node, k string) { a.TenantColumn = p.str(n, k) },
		"object_key":        func(n *yaml.Node, k string) { a.ObjectKey = p.str(n, k) },
		"object_key_prefix": func(n *yaml.Node, k string) { a.ObjectKeyPrefix = p.str(n, k) },
		"file_name":         func(n *yaml.Node, k string) { a.FileName = p.str(n, k) },
		"size":              func(n *yaml.Node, k string) { a.Size = p.str(n, k) },
		"content_type":      func(n *yaml.Node, k string) { a.ContentType = p.str(n, k) },
		"owner":             func(n *yaml.Node, k string) { a.Owner = p.strings(n, k) },
		"cv":                func(n *yaml.Node, k string) { a.CV = p.conditions(n, k) },
	})
	return a
}

func (p *parser) invoices(n *yaml.Node, key string) *InvoiceSpec {
	v := &InvoiceSpec{}
	p.mapping(n, key, map[string]func(*yaml.Node, string){
		"table":         func(n *yaml.Node, k string) { v.Table = p.str(n, k) },
		"tenant_column": func(n *yaml.Node, k string) { v.TenantColumn = p.str(n, k) },
		"outstanding":   func(n *yaml.Node, k string) { v.Outstanding = p.conditions(n, k) },
	})
	return v
}

func (p *parser) requesters(n *yaml.Node, key string) *RequesterSpec {
	r := &RequesterSpec{}
	p.mapping(n, key, map[string]func(*yaml.Node, string){
		"table":         func(n *yaml.Node, k string) { r.Table = p.str(n, k) },
		"tenant_column": func(n *yaml.Node, k string) { r.TenantColumn = p.str(n, k) },
		"id":            func(n *yaml.Node, k string) { r.ID = p.str(n, k) },
		"allowed":       func(n *yaml.Node, k string) { r.Allowed = p.conditions(n, k) },
	})
	return r
}

// conditions parses one condition (a mapping) or a list of them.
func (p *parser) conditions(n *yaml.Node, key string) []ConditionSpec {
	n = deref(n)
	if n.Kind == yaml.MappingNode {
		return []ConditionSpec{p.condition(n, key)}
	}
	out := []ConditionSpec{}
	p.sequence(n, key, func(n *yaml.Node, k string) { out = append(out, p.condition(n, k)) })
	return out
}

func (p *parser) condition(n *yaml.Node, key string) ConditionSpec {
	var c ConditionSpec
	p.mapping(n, key, map[string]func(*yaml.Node, string){
		"column": func(n *yaml.Node, k string) { c.Column = p.str(n, k) },
		"in":     func(n *yaml.Node, k string) { c.In = p.values(n, k) },
		"not_in": func(n *yaml.Node, k string) { c.NotIn = p.values(n, k) },
		"is_null": func(n *yaml.Node, k string) {
			b := p.boolean(n, k)
			c.IsNull = &b
		},
	})
	return c
}

// deref follows an alias to the node it names.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// describe names the kind of a node in errors.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return "null"
		}
		return strconv.Quote(truncateRunes(n.Value, 40))
	default:
		return "nothing"
	}
}

// mapping calls fields[k] for each key k of mapping n, in document order,
// recording each key's line; unknown and repeated keys are errors.
func (p *parser) mapping(n *yaml.Node, path string, fields map[string]func(*yaml.Node, string)) {
	n = deref(n)
	if _, ok := p.lines[path]; !ok && path != "" {
		p.lines[path] = n.Line
	}
	if n.Kind != yaml.MappingNode {
		p.addLine(n.Line, path, "want a mapping, got "+describe(n))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.addLine(k.Line, path, "want a key, got "+describe(k))
			continue
		}
		key := joinKey(path, k.Value)
		if seen[k.Value] {
			p.addLine(k.Line, key, "repeated key")
			continue
		}
		seen[k.Value] = true
		f, ok := fields[k.Value]
		if !ok {
			if k.ShortTag() == "!!merge" {
				p.addLine(k.Line, key, "merge keys are not supported")
			} else {
				p.addLine(k.Line, key, "unknown key (known: "+strings.Join(slices.Sorted(maps.Keys(fields)), ", ")+")")
			}
			continue
		}
		p.lines[key] = k.Line
		f(v, key)
	}
}

func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// sequence calls item for each element of list n.
func (p *parser) sequence(n *yaml.Node, path string, item func(*yaml.Node, string)) {
	n = deref(n)
	if n.Kind != yaml.SequenceNode {
		p.addLine(n.Line, path, "want a list, got "+describe(n))
		return
	}
	for i, c := range n.Content {
		key := path + "[" + strconv.Itoa(i) + "]"
		p.lines[key] = deref(c).Line
		item(c, key)
	}
}

// str returns a scalar's text; numbers and booleans count as their text.
func (p *parser) str(n *yaml.Node, path string) string {
	n = deref(n)
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		p.addLine(n.Line, path, "want a string, got "+describe(n))
		return ""
	}
	return n.Value
}

// strings returns a list of strings; an empty list is non-nil.
func (p *parser) strings(n *yaml.Node, path string) []string {
	out := []string{}
	p.sequence(n, path, func(n *yaml.Node, k string) { out = append(out, p.str(n, k)) })
	return out
}

// values returns a list of condition values.
func (p *parser) values(n *yaml.Node, path string) []string {
	out := []string{}
	p.sequence(n, path, func(n *yaml.Node, k string) {
		if d := deref(n); d.Kind == yaml.ScalarNode && d.ShortTag() == "!!null" {
			p.addLine(d.Line, k, "null never equals a value: use is_null")
			return
		}
		out = append(out, p.str(n, k))
	})
	return out
}

func (p *parser) boolean(n *yaml.Node, path string) bool {
	n = deref(n)
	var b bool
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
		p.addLine(n.Line, path, "want true or false, got "+describe(n))
	}
	return b
}

func (p *parser) integer(n *yaml.Node, path string) int {
	n = deref(n)
	var i int
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil {
		p.addLine(n.Line, path, "want an integer, got "+describe(n))
		return -1
	}
	return i
}

// fileNameRE is the shape of an output file name.
var fileNameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_. -]*\.csv$`)

// maxFileName bounds an output file name, in bytes.
const maxFileName = 100

// identRE is the shape of a schema or table name (as package cdc takes them).
var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_$]{0,62}$`)

// checkFileName returns why name cannot be an output file name, or "".
func checkFileName(name string) string {
	switch {
	case name == "":
		return "required"
	case len(name) > maxFileName || !fileNameRE.MatchString(name):
		return fmt.Sprintf("%q is not a safe file name: want at most %d letters, digits, _ . - or spaces, not starting with . - or a space, ending in .csv", truncateRunes(name, 60), maxFileName)
	}
	stem := strings.TrimRight(name[:strings.IndexByte(name, '.')], " ")
	switch {
	case strings.EqualFold(name, "missing_files.csv") || strings.EqualFold(stem, "README"):
		return fmt.Sprintf("%q is reserved for the bundle's own files", name)
	case windowsReserved(stem):
		return fmt.Sprintf("%q is a reserved device name on Windows", name)
	}
	return ""
}

// checkTable returns why name cannot be a table name, or "".
func checkTable(name string) string {
	if name == "" {
		return "required"
	}
	schema, table, ok := strings.Cut(name, ".")
	if !ok {
		schema, table = "public", name
	}
	if !identRE.MatchString(schema) || !identRE.MatchString(table) {
		return fmt.Sprintf("%q is not a table name: want schema.table or table (in public), in lowercase letters, digits and _", truncateRunes(name, 60))
	}
	return ""
}

// qualify returns a table name with its schema.
func qualify(table string) string {
	if strings.Contains(table, ".") {
		return table
	}
	return "public." + table
}

// checkHeader returns why h cannot be a CSV header, or "".
func checkHeader(h string) string {
	if !utf8.ValidString(h) {
		return "not valid UTF-8"
	}
	if strings.ContainsFunc(h, unicode.IsControl) {
		return fmt.Sprintf("%q holds control characters", truncateRunes(h, 60))
	}
	return ""
}

// validate checks what can be checked without the staged tables.
func (s *Spec) validate() error {
	e := &specErrors{source: s.source, lines: s.lines}
	if e.source == "" {
		e.source = "spec"
	}
	switch {
	case s.Version == 0 && e.line("version") == 0:
		e.addf("version", "required: set version: 1")
	case s.Version != 1:
		e.addf("version", "unsupported version %d: want 1", s.Version)
	}
	if len(s.Files) == 0 {
		e.addf("files", "at least one file is required")
	}
	names := map[string]int{}
	for i, f := range s.Files {
		key := fmt.Sprintf("files[%d]", i)
		if msg := checkFileName(f.Name); msg != "" {
			e.addf(key+".name", "%s", msg)
		} else if j, dup := names[strings.ToLower(f.Name)]; dup {
			e.addf(key+".name", "%q is also the name of files[%d] (names are compared ignoring case)", f.Name, j)
		} else {
			names[strings.ToLower(f.Name)] = i
		}
		if msg := checkTable(f.Table); msg != "" {
			e.addf(key+".table", "%s", msg)
		}
		s.validateColumns(e, key, f)
	}
	if a := s.Attachments; a != nil {
		const key = "attachments"
		if msg := checkTable(a.Table); msg != "" {
			e.addf(key+".table", "%s", msg)
		}
		for _, c := range []struct{ key, val string }{{"object_key", a.ObjectKey}, {"file_name", a.FileName}, {"size", a.Size}} {
			if c.val == "" {
				e.addf(key+"."+c.key, "required: the column holding the file's %s", strings.ReplaceAll(c.key, "_", " "))
			}
		}
		if rest := strings.ReplaceAll(a.ObjectKeyPrefix, "{tenant}", ""); strings.ContainsAny(rest, "{}") {
			e.addf(key+".object_key_prefix", "%q: the only placeholder is {tenant}", a.ObjectKeyPrefix)
		} else if strings.HasSuffix(a.ObjectKeyPrefix, "{tenant}") {
			e.addf(key+".object_key_prefix", "%q: end it with a separator after {tenant} (e.g. /), or tenant 7 could read the files of tenant 77", a.ObjectKeyPrefix)
		}
		if len(a.Owner) == 0 {
			e.addf(key+".owner", "required: the columns naming the file's owning record, e.g. [record_type, record_id]")
		}
		for i, c := range a.Owner {
			if c == "" {
				e.addf(fmt.Sprintf("%s.owner[%d]", key, i), "required")
			}
		}
		if a.CV != nil {
			validateConditions(e, key+".cv", a.CV)
		}
	}
	if v := s.Invoices; v != nil {
		const key = "invoices"
		if msg := checkTable(v.Table); msg != "" {
			e.addf(key+".table", "%s", msg)
		}
		if v.Outstanding == nil {
			e.addf(key+".outstanding", "required: the conditions an outstanding invoice meets, e.g. [{column: status, in: [open]}]")
		} else {
			validateConditions(e, key+".outstanding", v.Outstanding)
		}
	}
	if r := s.Requesters; r != nil {
		const key = "requesters"
		if msg := checkTable(r.Table); msg != "" {
			e.addf(key+".table", "%s", msg)
		}
		if r.ID == "" {
			e.addf(key+".id", "required: the column holding the requester id")
		}
		if r.Allowed != nil {
			validateConditions(e, key+".allowed", r.Allowed)
		}
	}
	return e.err()
}

func (s *Spec) validateColumns(e *specErrors, key string, f FileSpec) {
	if f.Columns != nil && f.Exclude != nil {
		e.addf(key+".exclude", "cannot be combined with columns: list the columns to export, or exclude some of all")
	}
	if f.Columns != nil && len(f.Columns) == 0 {
		e.addf(key+".columns", "empty: omit it to export every column")
	}
	if f.Exclude != nil && len(f.Exclude) == 0 {
		e.addf(key+".exclude", "empty: omit it to export every column")
	}
	cols := map[string]int{}
	headers := map[string]int{}
	for j, c := range f.Columns {
		ck := fmt.Sprintf("%s.columns[%d]", key, j)
		if c.Column == "" {
			e.addf(ck+".column", "required")
			continue
		}
		if k, dup := cols[c.Column]; dup {
			e.addf(ck, "column %q is also columns[%d]", c.Column, k)
			continue
		}
		cols[c.Column] = j
		h := c.Column
		if c.As != "" {
			h = c.As
			if msg := checkHeader(c.As); msg != "" {
				e.addf(ck+".as", "%s", msg)
			}
		}
		if k, dup := headers[h]; dup {
			e.addf(ck, "header %q is also the header of columns[%d]", h, k)
		} else {
			headers[h] = j
		}
	}
	excluded := map[string]int{}
	for j, c := range f.Exclude {
		ck := fmt.Sprintf("%s.exclude[%d]", key, j)
		if c == "" {
			e.addf(ck, "required")
		} else if k, dup := excluded[c]; dup {
			e.addf(ck, "column %q is also exclude[%d]", c, k)
		} else {
			excluded[c] = j
		}
	}
}

func validateConditions(e *specErrors, key string, cs []ConditionSpec) {
	if len(cs) == 0 {
		e.addf(key, "empty: give at least one condition, or omit the key")
	}
	for i, c := range cs {
		ck := conditionKey(e.lines, key, i, len(cs))
		if c.Column == "" {
			e.addf(ck+".column", "required")
		}
		set := 0
		for _, present := range []bool{c.In != nil, c.NotIn != nil, c.IsNull != nil} {
			if present {
				set++
			}
		}
		if set != 1 {
			e.addf(ck, "want exactly one of in, not_in and is_null")
		}
		if c.In != nil && len(c.In) == 0 {
			e.addf(ck+".in", "empty: nothing would match")
		}
		if c.NotIn != nil && len(c.NotIn) == 0 {
			e.addf(ck+".not_in", "empty: use is_null: false to match every value")
		}
	}
}

// conditionKey is the key path of condition i of n under key: key itself
// for a single condition not written as a list.
func conditionKey(lines map[string]int, key string, i, n int) string {
	ck := key + "[" + strconv.Itoa(i) + "]"
	if n == 1 && lines[ck] == 0 {
		return key
	}
	return ck
}

// Plan is a Spec resolved against the staged table schemas: what to read and
// write, by column index. It is valid for the schemas it was resolved with.
type Plan struct {
	Files             []FilePlan
	FormulaProtection bool
	BOM               bool
	Attachments       *AttachmentPlan // nil: no files
	Invoices          *InvoicePlan    // nil: no outstanding invoices
	Requesters        *RequesterPlan  // nil: anyone may request
}

// FilePlan is one CSV file of the export.
type FilePlan struct {
	Name         string   // e.g. "Candidates.csv"
	Table        string   // schema-qualified, e.g. "public.candidates"
	TenantColumn int      // index of the tenant column in a row of Table
	Header       []string // the CSV header, one per column
	Columns      []int    // index in a row of Table of each CSV column
	Protect      []bool   // per CSV column: apply formula protection (text columns, if on)
}

// AttachmentPlan says, by column index, which rows of Table are files and
// where their content is.
type AttachmentPlan struct {
	Table        string
	TenantColumn int
	ObjectKey    int
	FileName     int
	Size         int
	ContentType  int   // -1: none
	Owner        []int // columns naming the owning record
	// CV selects the internal CVs; nil: none.
	CV *Condition

	objectKeyPrefix string
}

// IsCV reports whether row is an internal CV (else an ordinary attachment).
func (a *AttachmentPlan) IsCV(row [][]byte) bool {
	return a.CV != nil && a.CV.Match(row)
}

// KeyAllowed returns why the file at object key must not be read for tenant,
// or "" if it may: the key must be valid UTF-8 without control characters,
// not absolute, without . or .. segments, and begin with the spec's
// object_key_prefix for the tenant. A row pointing at another tenant's file
// so fails to export it.
func (a *AttachmentPlan) KeyAllowed(key, tenant string) string {
	switch {
	case key == "":
		return "no object key"
	case !utf8.ValidString(key):
		return "object key is not valid UTF-8"
	case strings.ContainsFunc(key, unicode.IsControl):
		return "object key holds control characters"
	case strings.HasPrefix(key, "/"):
		return "object key is an absolute path"
	}
	for seg := range strings.SplitSeq(key, "/") {
		if seg == "." || seg == ".." {
			return "object key has a . or .. segment"
		}
	}
	if a.objectKeyPrefix != "" {
		if p := strings.ReplaceAll(a.objectKeyPrefix, "{tenant}", tenant); !strings.HasPrefix(key, p) {
			return "object key is outside the tenant's prefix " + p
		}
	}
	return ""
}

// InvoicePlan says which rows of Table are outstanding invoices.
type InvoicePlan struct {
	Table        string
	TenantColumn int
	Condition    *Condition
}

// Outstanding reports whether the invoice row is outstanding.
func (p *InvoicePlan) Outstanding(row [][]byte) bool { return p.Condition.Match(row) }

// RequesterPlan says which rows of Table are users allowed to request an
// export: those whose ID column holds the requester id and that meet
// Allowed.
type RequesterPlan struct {
	Table        string
	TenantColumn int
	ID           int
	Allowed      *Condition // never nil
}

// Condition is a resolved list of conditions on a row: every one must hold.
type Condition struct {
	terms []term
}

type termKind uint8

const (
	termIn termKind = iota
	termNotIn
	termIsNull
	termNotNull
)

type term struct {
	col    int
	name   string
	kind   termKind
	values []string
}

// Match reports whether row (a value per column, nil for NULL) meets every
// condition. A column missing from row is NULL. A nil or empty Condition
// matches every row.
func (c *Condition) Match(row [][]byte) bool {
	if c == nil {
		return true
	}
	for _, t := range c.terms {
		var v []byte
		if t.col < len(row) {
			v = row[t.col]
		}
		var ok bool
		switch t.kind {
		case termIn:
			ok = v != nil && containsValue(t.values, v)
		case termNotIn:
			ok = v != nil && !containsValue(t.values, v)
		case termIsNull:
			ok = v == nil
		case termNotNull:
			ok = v != nil
		}
		if !ok {
			return false
		}
	}
	return true
}

func containsValue(values []string, v []byte) bool {
	for _, s := range values {
		if string(v) == s {
			return true
		}
	}
	return false
}

// String describes the condition, e.g. `status in (open) and paid_at is null`;
// "" for one that matches every row.
func (c *Condition) String() string {
	if c == nil {
		return ""
	}
	parts := make([]string, len(c.terms))
	for i, t := range c.terms {
		switch t.kind {
		case termIn:
			parts[i] = t.name + " in (" + strings.Join(t.values, ", ") + ")"
		case termNotIn:
			parts[i] = t.name + " not in (" + strings.Join(t.values, ", ") + ")"
		case termIsNull:
			parts[i] = t.name + " is null"
		case termNotNull:
			parts[i] = t.name + " is not null"
		}
	}
	return strings.Join(parts, " and ")
}

// Type OIDs of PostgreSQL's text types, whose values formula protection
// applies to; the values of other types (numbers, dates, arrays, JSON...)
// cannot begin with a formula character that matters.
const (
	oidBool    = 16
	oidName    = 19
	oidText    = 25
	oidBpchar  = 1042
	oidVarchar = 1043
)

func isTextType(oid uint32) bool {
	switch oid {
	case oidText, oidVarchar, oidBpchar, oidName:
		return true
	}
	return false
}

// Resolve checks the spec against the staged tables (each table exists, has
// the named columns, and is staged by the named tenant column) and returns
// the plan of an export of them. Columns are matched by name now, so when a
// file lists none, a column added to its table since is exported too.
// Resolve does not change the Spec: concurrent calls are safe.
func (s *Spec) Resolve(tables []snapshot.TableSchema) (*Plan, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	r := &resolver{spec: s, tables: map[string]*snapshot.TableSchema{}}
	r.source, r.lines = s.source, s.lines
	if r.source == "" {
		r.source = "spec"
	}
	for i := range tables {
		r.tables[tables[i].Name] = &tables[i]
	}
	plan := &Plan{FormulaProtection: s.FormulaProtection, BOM: s.BOM}
	for i, f := range s.Files {
		if fp, ok := r.file(fmt.Sprintf("files[%d]", i), f); ok {
			plan.Files = append(plan.Files, fp)
		}
	}
	if a := s.Attachments; a != nil {
		plan.Attachments = r.attachments("attachments", a)
	}
	if v := s.Invoices; v != nil {
		plan.Invoices = r.invoices("invoices", v)
	}
	if q := s.Requesters; q != nil {
		plan.Requesters = r.requesters("requesters", q)
	}
	if err := r.err(); err != nil {
		return nil, err
	}
	return plan, nil
}

type resolver struct {
	specErrors
	spec   *Spec
	tables map[string]*snapshot.TableSchema
}

// table returns the staged schema of the table named at key.
func (r *resolver) table(key, name string) *snapshot.TableSchema {
	ts := r.tables[qualify(name)]
	if ts == nil {
		r.addf(key+".table", "table %s is not staged: replicate it, or remove it from the spec", qualify(name))
		return nil
	}
	if ts.TenantColumn < 0 || ts.TenantColumn >= len(ts.Columns) {
		r.addf(key+".table", "table %s is staged without a tenant column", ts.Name)
		return nil
	}
	return ts
}

// tenant checks the tenant column named for the section at key (or for the
// whole spec) against the one the table is staged by, and returns its index.
func (r *resolver) tenant(key, override string, ts *snapshot.TableSchema) (int, bool) {
	name, nameKey := override, key+".tenant_column"
	if name == "" {
		name, nameKey = r.spec.TenantColumn, "tenant_column"
	}
	staged := ts.Columns[ts.TenantColumn].Name
	if name != "" && name != staged {
		if columnIndex(ts, name) < 0 {
			r.addf(nameKey, "column %q not found in %s (it is staged by tenant column %q)", name, ts.Name, staged)
		} else {
			r.addf(nameKey, "%q is not the tenant column of %s: it is staged by %q", name, ts.Name, staged)
		}
		return 0, false
	}
	return ts.TenantColumn, true
}

func columnIndex(ts *snapshot.TableSchema, name string) int {
	return slices.IndexFunc(ts.Columns, func(c snapshot.Column) bool { return c.Name == name })
}

// column returns the index of the column named at key.
func (r *resolver) column(key, name string, ts *snapshot.TableSchema) (int, bool) {
	i := columnIndex(ts, name)
	if i < 0 {
		r.addf(key, "column %q not found in %s", name, ts.Name)
		return 0, false
	}
	return i, true
}

func (r *resolver) file(key string, f FileSpec) (FilePlan, bool) {
	ts := r.table(key, f.Table)
	if ts == nil {
		return FilePlan{}, false
	}
	tc, ok := r.tenant(key, f.TenantColumn, ts)
	fp := FilePlan{Name: f.Name, Table: ts.Name, TenantColumn: tc}
	add := func(col int, header string) {
		fp.Columns = append(fp.Columns, col)
		fp.Header = append(fp.Header, header)
		fp.Protect = append(fp.Protect, r.spec.FormulaProtection && isTextType(ts.Columns[col].TypeOID))
	}
	if f.Columns != nil {
		for j, c := range f.Columns {
			col, found := r.column(fmt.Sprintf("%s.columns[%d]", key, j), c.Column, ts)
			if !found {
				ok = false
				continue
			}
			h := c.As
			if h == "" {
				h = c.Column
			}
			add(col, h)
		}
		return fp, ok
	}
	excluded := make([]bool, len(ts.Columns))
	for j, c := range f.Exclude {
		col, found := r.column(fmt.Sprintf("%s.exclude[%d]", key, j), c, ts)
		if !found {
			ok = false
			continue
		}
		excluded[col] = true
	}
	for col, c := range ts.Columns {
		if !excluded[col] {
			add(col, c.Name)
		}
	}
	if len(fp.Columns) == 0 && ok {
		r.addf(key+".exclude", "excludes every column of %s", ts.Name)
		ok = false
	}
	return fp, ok
}

func (r *resolver) attachments(key string, a *AttachmentSpec) *AttachmentPlan {
	ts := r.table(key, a.Table)
	if ts == nil {
		return nil
	}
	tc, _ := r.tenant(key, a.TenantColumn, ts)
	ap := &AttachmentPlan{Table: ts.Name, TenantColumn: tc, ContentType: -1, objectKeyPrefix: a.ObjectKeyPrefix}
	ap.ObjectKey, _ = r.column(key+".object_key", a.ObjectKey, ts)
	ap.FileName, _ = r.column(key+".file_name", a.FileName, ts)
	ap.Size, _ = r.column(key+".size", a.Size, ts)
	if a.ContentType != "" {
		ap.ContentType, _ = r.column(key+".content_type", a.ContentType, ts)
	}
	for i, c := range a.Owner {
		col, _ := r.column(fmt.Sprintf("%s.owner[%d]", key, i), c, ts)
		ap.Owner = append(ap.Owner, col)
	}
	if a.CV != nil {
		ap.CV = r.condition(key+".cv", a.CV, ts)
	}
	return ap
}

func (r *resolver) invoices(key string, v *InvoiceSpec) *InvoicePlan {
	ts := r.table(key, v.Table)
	if ts == nil {
		return nil
	}
	tc, _ := r.tenant(key, v.TenantColumn, ts)
	return &InvoicePlan{Table: ts.Name, TenantColumn: tc, Condition: r.condition(key+".outstanding", v.Outstanding, ts)}
}

func (r *resolver) requesters(key string, q *RequesterSpec) *RequesterPlan {
	ts := r.table(key, q.Table)
	if ts == nil {
		return nil
	}
	tc, _ := r.tenant(key, q.TenantColumn, ts)
	rp := &RequesterPlan{Table: ts.Name, TenantColumn: tc, Allowed: &Condition{}}
	rp.ID, _ = r.column(key+".id", q.ID, ts)
	if q.Allowed != nil {
		rp.Allowed = r.condition(key+".allowed", q.Allowed, ts)
	}
	return rp
}

func (r *resolver) condition(key string, specs []ConditionSpec, ts *snapshot.TableSchema) *Condition {
	c := &Condition{}
	for i, cs := range specs {
		ck := conditionKey(r.lines, key, i, len(specs))
		col, ok := r.column(ck+".column", cs.Column, ts)
		if !ok {
			continue
		}
		t := term{col: col, name: cs.Column}
		switch {
		case cs.In != nil:
			t.kind, t.values = termIn, slices.Clone(cs.In)
		case cs.NotIn != nil:
			t.kind, t.values = termNotIn, slices.Clone(cs.NotIn)
		case *cs.IsNull:
			t.kind = termIsNull
		default:
			t.kind = termNotNull
		}
		if ts.Columns[col].TypeOID == oidBool {
			for _, v := range t.values {
				if v != "t" && v != "f" {
					r.addf(ck, "%q never matches boolean column %s: PostgreSQL prints booleans as t and f", v, cs.Column)
				}
			}
		}
		c.terms = append(c.terms, t)
	}
	return c
}

// truncateRunes cuts s to at most n runes, marking the cut with "...".
func truncateRunes(s string, n int) string {
	i := 0
	for j := range s {
		if i == n {
			return s[:j] + "..."
		}
		i++
	}
	return s
}
