package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// envPrefix starts the name of every key's environment variable.
const envPrefix = "EXPORTD_"

// fileSuffix ends the key that names the file a secret is read from.
const fileSuffix = "_file"

// sources records where the keys of a Config were set.
type sources struct {
	// file is the file given to Load, "" if none.
	file string
	// at maps a key to where it was set: "<file>:<line>",
	// "environment <variable>" or "flag -<name>".
	at map[string]string
	// viaFile maps a secret read from a file to the key naming the file.
	viaFile map[string]string
}

// set records that key was set at where.
func (s *sources) set(key, where string) {
	if s != nil {
		s.at[key] = where
	}
}

// origin returns where key was set, "" if it was not.
func (s *sources) origin(key string) string {
	if s == nil {
		return ""
	}
	return s.at[key]
}

// where returns where key was set or, for a key left at its default, where
// it could have been: the file, or the environment without one.
func (s *sources) where(key string) string {
	if o := s.origin(key); o != "" {
		return o
	}
	if s != nil && s.file != "" {
		return s.file
	}
	return "environment"
}

// key is a key of the configuration whose value is not a section.
type key struct {
	path  string // "publish.s3.bucket"
	env   string // "EXPORTD_PUBLISH_S3_BUCKET"
	index []int  // of the field in Config
	typ   reflect.Type
}

var (
	durationType    = reflect.TypeFor[time.Duration]()
	secretType      = reflect.TypeFor[Secret]()
	stringSliceType = reflect.TypeFor[[]string]()
)

// keys are the keys of Config, in its order.
var keys = leafKeys(reflect.TypeFor[Config](), "", nil)

// secretFiles pairs each secret with the key naming the file it can be read
// from.
var secretFiles = pairSecretFiles(keys)

// EnvNames returns the environment variables that set the configuration's
// keys, one per key, in the order of the keys.
func EnvNames() []string {
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.env
	}
	return names
}

// field is a key of a struct.
type field struct {
	name  string
	index []int
	typ   reflect.Type
}

// fields returns the keys of struct type t, with those of its inline
// structs, in order.
func fields(t reflect.Type) []field {
	var fs []field
	for i := range t.NumField() {
		sf := t.Field(i)
		tag, ok := sf.Tag.Lookup("yaml")
		if !ok || !sf.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if opts == "inline" {
			for _, f := range fields(sf.Type) {
				f.index = append([]int{i}, f.index...)
				fs = append(fs, f)
			}
			continue
		}
		fs = append(fs, field{name: name, index: []int{i}, typ: sf.Type})
	}
	return fs
}

// isSection reports whether a key of type t holds other keys.
func isSection(t reflect.Type) bool { return t.Kind() == reflect.Struct }

func leafKeys(t reflect.Type, prefix string, index []int) []key {
	var ks []key
	for _, f := range fields(t) {
		path := joinKey(prefix, f.name)
		idx := append(slices.Clone(index), f.index...)
		if isSection(f.typ) {
			ks = append(ks, leafKeys(f.typ, path, idx)...)
			continue
		}
		env := envPrefix + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
		ks = append(ks, key{path: path, env: env, index: idx, typ: f.typ})
	}
	return ks
}

type secretFile struct{ secret, file key }

func pairSecretFiles(ks []key) []secretFile {
	byPath := map[string]key{}
	for _, k := range ks {
		byPath[k.path] = k
	}
	var pairs []secretFile
	for _, k := range ks {
		if k.typ != secretType {
			continue
		}
		f, ok := byPath[k.path+fileSuffix]
		if !ok || f.typ.Kind() != reflect.String {
			panic("config: secret " + k.path + " has no " + k.path + fileSuffix)
		}
		pairs = append(pairs, secretFile{secret: k, file: f})
	}
	return pairs
}

func joinKey(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// yamlLineRE matches the line number in the YAML parser's errors.
var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// decodeYAML sets the keys that the YAML document data of file sets.
func (c *Config) decodeYAML(file string, data []byte) []error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return []error{yamlSyntaxError(file, err)}
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return []error{yamlSyntaxError(file, err)}
	default:
		return []error{fmt.Errorf("config: %s:%d: a second YAML document: keep the configuration in one", file, next.Line)}
	}
	if len(doc.Content) == 0 {
		return nil
	}
	d := &yamlDecoder{file: file, src: c.src}
	d.section(doc.Content[0], reflect.ValueOf(c).Elem(), "")
	return d.errs
}

func yamlSyntaxError(file string, err error) error {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("config: %s:%s: %s", file, m[1], m[2])
	}
	return fmt.Errorf("config: %s: %s", file, strings.TrimPrefix(msg, "yaml: "))
}

// yamlDecoder sets a Config's fields from a YAML document, collecting an
// error for each key it cannot set.
type yamlDecoder struct {
	file string
	src  *sources
	errs []error
}

func (d *yamlDecoder) errorf(n *yaml.Node, key, format string, args ...any) {
	d.errs = append(d.errs, fmt.Errorf("config: %s:%d: %s: %s", d.file, n.Line, key, fmt.Sprintf(format, args...)))
}

// section sets the fields of struct v, the section at path ("" for the
// top), from n.
func (d *yamlDecoder) section(n *yaml.Node, v reflect.Value, path string) {
	n = deref(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		if path == "" {
			d.errs = append(d.errs, fmt.Errorf("config: %s:%d: want a mapping of keys, got %s", d.file, n.Line, describe(n)))
			return
		}
		d.errorf(n, path, "want a mapping of keys, got %s", describe(n))
		return
	}
	fs := fields(v.Type())
	byName := make(map[string]field, len(fs))
	for _, f := range fs {
		byName[f.name] = f
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := deref(n.Content[i]), n.Content[i+1]
		if kn.Kind != yaml.ScalarNode {
			d.errorf(kn, joinKey(path, "?"), "a key must be a name, got %s", describe(kn))
			continue
		}
		keyPath := joinKey(path, kn.Value)
		if line, dup := seen[kn.Value]; dup {
			d.errorf(kn, keyPath, "given twice (first on line %d)", line)
			continue
		}
		seen[kn.Value] = kn.Line
		f, ok := byName[kn.Value]
		if !ok {
			d.errorf(kn, keyPath, "unknown key%s", suggest(kn.Value, path, fs))
			continue
		}
		fv := v.FieldByIndex(f.index)
		if isSection(f.typ) {
			d.section(vn, fv, keyPath)
			continue
		}
		val, err := parseNode(f.typ, vn)
		if err != nil {
			at := deref(vn)
			var ie *itemError
			if errors.As(err, &ie) {
				at = ie.node
			}
			d.errorf(at, keyPath, "%v", err)
			continue
		}
		fv.Set(val)
		d.src.set(keyPath, fmt.Sprintf("%s:%d", d.file, kn.Line))
	}
}

// suggest returns the hint of the error of an unknown key name in section
// path: the closest known key, or the known keys.
func suggest(name, path string, fs []field) string {
	best, bestDist := "", 3
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.name
		if dist := editDistance(name, f.name); dist < bestDist {
			best, bestDist = f.name, dist
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %s?)", joinKey(path, best))
	}
	if path == "" {
		return " (the top-level keys are " + strings.Join(names, ", ") + ")"
	}
	return " (the keys of " + path + " are " + strings.Join(names, ", ") + ")"
}

// editDistance returns the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// deref returns the node an alias refers to, or n.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names the kind of n's value for an error message.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "no value"
		case "!!int":
			return "an integer"
		case "!!float":
			return "a number"
		case "!!bool":
			return "a boolean"
		}
		return "a string"
	}
	return "an unexpected node"
}

// want names the values of a key of type t for an error message.
func want(t reflect.Type) string {
	switch {
	case t == stringSliceType:
		return "a list of strings"
	case t == durationType:
		return "a duration such as 30s or 1h30m"
	case t.Kind() == reflect.String:
		return "a string"
	case t.Kind() == reflect.Bool:
		return "true or false"
	default:
		return "an integer"
	}
}

// parseNode returns the value of type t that n holds. Its errors do not
// quote the values of secrets.
func parseNode(t reflect.Type, n *yaml.Node) (reflect.Value, error) {
	n = deref(n)
	if isNull(n) {
		return reflect.Value{}, errors.New("no value: give one, or remove the key for the default")
	}
	if t == stringSliceType {
		if n.Kind != yaml.SequenceNode {
			return reflect.Value{}, fmt.Errorf("want a list of strings, got %s", describe(n))
		}
		list := make([]string, 0, len(n.Content))
		for i, item := range n.Content {
			item = deref(item)
			if item.Kind != yaml.ScalarNode || isNull(item) {
				return reflect.Value{}, &itemError{node: item, msg: fmt.Sprintf("item %d: want a string, got %s", i+1, describe(item))}
			}
			list = append(list, item.Value)
		}
		return reflect.ValueOf(list), nil
	}
	if n.Kind != yaml.ScalarNode {
		return reflect.Value{}, fmt.Errorf("want %s, got %s", want(t), describe(n))
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int64:
		if t == durationType {
			return parseText(t, n.Value)
		}
		var i int64
		if n.ShortTag() != "!!int" || n.Decode(&i) != nil || reflect.Zero(t).OverflowInt(i) {
			return reflect.Value{}, fmt.Errorf("%q is not %s", n.Value, want(t))
		}
		return reflect.ValueOf(i).Convert(t), nil
	case reflect.Bool:
		var b bool
		if n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
			return reflect.Value{}, fmt.Errorf("%q is not %s", n.Value, want(t))
		}
		return reflect.ValueOf(b), nil
	}
	return parseText(t, n.Value)
}

// itemError is an error of parseNode about an item of a list.
type itemError struct {
	node *yaml.Node
	msg  string
}

func (e *itemError) Error() string { return e.msg }

// parseText returns the value of type t that s, an environment variable,
// holds. Lists are comma-separated. Its errors do not quote the values of
// secrets.
func parseText(t reflect.Type, s string) (reflect.Value, error) {
	switch {
	case t == stringSliceType:
		list := []string{}
		for item := range strings.SplitSeq(s, ",") {
			if item = strings.TrimSpace(item); item != "" {
				list = append(list, item)
			}
		}
		return reflect.ValueOf(list), nil
	case t == durationType:
		d, err := time.ParseDuration(s)
		if err != nil {
			return reflect.Value{}, fmt.Errorf("%q is not %s", s, want(t))
		}
		return reflect.ValueOf(d), nil
	}
	switch t.Kind() {
	case reflect.String:
		return reflect.ValueOf(s).Convert(t), nil
	case reflect.Int, reflect.Int64:
		i, err := strconv.ParseInt(s, 10, t.Bits())
		if err != nil {
			return reflect.Value{}, fmt.Errorf("%q is not %s", s, want(t))
		}
		return reflect.ValueOf(i).Convert(t), nil
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return reflect.Value{}, fmt.Errorf("%q is not %s", s, want(t))
		}
		return reflect.ValueOf(b), nil
	}
	panic("config: no parser for " + t.String())
}

// applyEnv sets the keys whose environment variable env returns a value
// for.
func (c *Config) applyEnv(env func(string) string) []error {
	var errs []error
	v := reflect.ValueOf(c).Elem()
	for _, k := range keys {
		s := env(k.env)
		if s == "" {
			continue
		}
		where := "environment " + k.env
		val, err := parseText(k.typ, s)
		if err != nil {
			errs = append(errs, fmt.Errorf("config: %s: %s: %w", where, k.path, err))
			continue
		}
		v.FieldByIndex(k.index).Set(val)
		c.src.set(k.path, where)
	}
	return errs
}

// readSecretFiles reads the secrets whose *_file key is set.
func (c *Config) readSecretFiles() []error {
	var errs []error
	v := reflect.ValueOf(c).Elem()
	for _, p := range secretFiles {
		name := v.FieldByIndex(p.file.index).String()
		if name == "" {
			continue
		}
		where := c.src.where(p.file.path)
		sv := v.FieldByIndex(p.secret.index)
		if sv.String() != "" {
			errs = append(errs, fmt.Errorf("config: %s: %s: %s is also set (%s): keep one",
				where, p.file.path, p.secret.path, c.src.where(p.secret.path)))
			continue
		}
		data, err := os.ReadFile(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("config: %s: %s: %w", where, p.file.path, err))
			continue
		}
		s := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
		if s == "" {
			errs = append(errs, fmt.Errorf("config: %s: %s: %s is empty", where, p.file.path, name))
			continue
		}
		sv.SetString(s)
		if c.src.viaFile == nil {
			c.src.viaFile = map[string]string{}
		}
		c.src.viaFile[p.secret.path] = p.file.path
	}
	return errs
}
