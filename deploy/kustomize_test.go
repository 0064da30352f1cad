package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The tests render the kustomizations themselves, with the subset of
// kustomize the manifests use: resources (files, or directories with a
// kustomization.yaml) and patches that are JSON patches (RFC 6902) of one
// target named by kind and name. A kustomization or a patch using anything
// else fails the test rather than rendering differently. TestKustomize
// compares the renderings with kustomize's when kubectl or kustomize is
// installed.

// kustomization is the part of a Kustomization the tests render.
type kustomization struct {
	APIVersion string   `yaml:"apiVersion"`
	Kind       string   `yaml:"kind"`
	Resources  []string `yaml:"resources"`
	Patches    []struct {
		Path   string `yaml:"path"`
		Target struct {
			Kind string `yaml:"kind"`
			Name string `yaml:"name"`
		} `yaml:"target"`
	} `yaml:"patches"`
}

// readKustomization decodes dir/kustomization.yaml, refusing the fields the
// tests do not render.
func readKustomization(t *testing.T, dir string) *kustomization {
	t.Helper()
	file := filepath.Join(dir, "kustomization.yaml")
	dec := yaml.NewDecoder(bytes.NewReader(readFile(t, file)))
	dec.KnownFields(true)
	var k kustomization
	if err := dec.Decode(&k); err != nil {
		t.Fatalf("%s: %v (the tests render only resources and JSON patches with a kind and name target)", file, err)
	}
	if k.Kind != "Kustomization" {
		t.Fatalf("%s: kind %q, want Kustomization", file, k.Kind)
	}
	return &k
}

// renderedObject is an object of a rendered kustomization.
type renderedObject struct {
	file string // the manifest it comes from
	doc  map[string]any
}

func (o *renderedObject) id() string {
	md, _ := o.doc["metadata"].(map[string]any)
	return fmt.Sprintf("%v %v", o.doc["kind"], md["name"])
}

// kustomize renders the kustomization in dir.
func kustomize(t *testing.T, dir string) []*renderedObject {
	t.Helper()
	k := readKustomization(t, dir)
	var objs []*renderedObject
	for _, r := range k.Resources {
		p := filepath.Join(dir, r)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s/kustomization.yaml: resource %s: %v", dir, r, err)
		}
		if fi.IsDir() {
			objs = append(objs, kustomize(t, p)...)
			continue
		}
		dec := yaml.NewDecoder(bytes.NewReader(readFile(t, p)))
		for {
			var doc map[string]any
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			objs = append(objs, &renderedObject{file: p, doc: doc})
		}
	}
	for _, p := range k.Patches {
		file := filepath.Join(dir, p.Path)
		if p.Path == "" || p.Target.Kind == "" || p.Target.Name == "" {
			t.Fatalf("%s/kustomization.yaml: a patch without path, target kind or target name", dir)
		}
		ops := readJSONPatch(t, file)
		want := p.Target.Kind + " " + p.Target.Name
		var targets []*renderedObject
		for _, o := range objs {
			if o.id() == want {
				targets = append(targets, o)
			}
		}
		if len(targets) != 1 {
			t.Fatalf("%s: %d targets %s, want 1", file, len(targets), want)
		}
		doc, err := applyJSONPatch(targets[0].doc, ops)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		m, ok := doc.(map[string]any)
		if !ok {
			t.Fatalf("%s: the patched %s is not an object", file, want)
		}
		targets[0].doc = m
	}
	return objs
}

// k8sObjects returns objs as the objects the checks decode.
func k8sObjects(t *testing.T, objs []*renderedObject) []*k8sObject {
	t.Helper()
	var out []*k8sObject
	for _, o := range objs {
		b, err := yaml.Marshal(o.doc)
		if err != nil {
			t.Fatalf("%s: %s: %v", o.file, o.id(), err)
		}
		var n yaml.Node
		if err := yaml.Unmarshal(b, &n); err != nil {
			t.Fatalf("%s: %s: %v", o.file, o.id(), err)
		}
		out = append(out, newObject(t, o.file, &n))
	}
	return out
}

// patchOp is an operation of a JSON patch.
type patchOp struct {
	Op       string
	Path     string
	Value    any
	HasValue bool
}

// readJSONPatch reads a JSON patch written in YAML.
func readJSONPatch(t *testing.T, file string) []patchOp {
	t.Helper()
	var raw []struct {
		Op    string    `yaml:"op"`
		Path  string    `yaml:"path"`
		Value yaml.Node `yaml:"value"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(readFile(t, file)))
	dec.KnownFields(true)
	if err := dec.Decode(&raw); err != nil {
		t.Fatalf("%s: %v (the tests apply only JSON patches of add, replace, remove and test)", file, err)
	}
	var ops []patchOp
	for _, r := range raw {
		op := patchOp{Op: r.Op, Path: r.Path, HasValue: r.Value.Kind != 0}
		if op.HasValue {
			if err := r.Value.Decode(&op.Value); err != nil {
				t.Fatalf("%s: %s %s: %v", file, r.Op, r.Path, err)
			}
		}
		ops = append(ops, op)
	}
	return ops
}

// applyJSONPatch applies the operations add, replace, remove and test of
// RFC 6902 to doc, a decoded YAML document, and returns the result. doc
// may be modified.
func applyJSONPatch(doc any, ops []patchOp) (any, error) {
	for _, op := range ops {
		var err error
		if doc, err = applyPatchOp(doc, op); err != nil {
			return nil, fmt.Errorf("%s %s: %w", op.Op, op.Path, err)
		}
	}
	return doc, nil
}

func applyPatchOp(doc any, op patchOp) (any, error) {
	switch op.Op {
	case "add", "replace", "test":
		if !op.HasValue {
			return nil, errors.New("no value")
		}
	case "remove":
	default:
		return nil, fmt.Errorf("operation %q: the tests apply only add, replace, remove and test", op.Op)
	}
	if op.Path == "" {
		return patchAt(doc, nil, op)
	}
	if !strings.HasPrefix(op.Path, "/") {
		return nil, errors.New("the path does not start with /")
	}
	tokens := strings.Split(op.Path[1:], "/")
	for i, tok := range tokens {
		tokens[i] = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
	}
	return patchAt(doc, tokens, op)
}

// patchAt applies op at tokens, the path below node, and returns the new
// node.
func patchAt(node any, tokens []string, op patchOp) (any, error) {
	if len(tokens) == 0 {
		switch op.Op {
		case "add", "replace":
			return op.Value, nil
		case "test":
			if !reflect.DeepEqual(node, op.Value) {
				return nil, fmt.Errorf("value %v, want %v", node, op.Value)
			}
			return node, nil
		}
		return nil, errors.New("cannot remove the whole document")
	}
	tok, rest := tokens[0], tokens[1:]
	switch n := node.(type) {
	case map[string]any:
		child, ok := n[tok]
		if len(rest) > 0 || op.Op != "add" {
			if !ok {
				return nil, fmt.Errorf("no member %q", tok)
			}
		}
		if len(rest) == 0 && op.Op == "remove" {
			delete(n, tok)
			return n, nil
		}
		c, err := patchAt(child, rest, op)
		if err != nil {
			return nil, err
		}
		n[tok] = c
		return n, nil
	case []any:
		if len(rest) == 0 && op.Op == "add" {
			i := len(n)
			if tok != "-" {
				var err error
				if i, err = arrayIndex(tok, len(n)); err != nil {
					return nil, err
				}
			}
			return slices.Insert(n, i, op.Value), nil
		}
		i, err := arrayIndex(tok, len(n)-1)
		if err != nil {
			return nil, err
		}
		if len(rest) == 0 && op.Op == "remove" {
			return slices.Delete(n, i, i+1), nil
		}
		c, err := patchAt(n[i], rest, op)
		if err != nil {
			return nil, err
		}
		n[i] = c
		return n, nil
	}
	return nil, fmt.Errorf("%q: the parent is not an object or an array", tok)
}

// arrayIndex parses tok, an array index of RFC 6901 of at most max.
func arrayIndex(tok string, max int) (int, error) {
	i, err := strconv.Atoi(tok)
	if err != nil || i < 0 || tok != strconv.Itoa(i) {
		return 0, fmt.Errorf("%q is not an array index", tok)
	}
	if i > max {
		return 0, fmt.Errorf("index %d is out of range", i)
	}
	return i, nil
}

func TestJSONPatch(t *testing.T) {
	doc := func() any {
		return map[string]any{
			"spec": map[string]any{
				"replicas": 1,
				"env":      []any{"a", "b"},
				"a/b~c":    "x",
			},
		}
	}
	for _, tc := range []struct {
		name string
		ops  []patchOp
		want any // nil: an error
	}{
		{"replace", []patchOp{{Op: "replace", Path: "/spec/replicas", Value: 3, HasValue: true}},
			map[string]any{"spec": map[string]any{"replicas": 3, "env": []any{"a", "b"}, "a/b~c": "x"}}},
		{"add member", []patchOp{{Op: "add", Path: "/spec/policy", Value: "Parallel", HasValue: true}},
			map[string]any{"spec": map[string]any{"replicas": 1, "env": []any{"a", "b"}, "a/b~c": "x", "policy": "Parallel"}}},
		{"append", []patchOp{{Op: "add", Path: "/spec/env/-", Value: "c", HasValue: true}},
			map[string]any{"spec": map[string]any{"replicas": 1, "env": []any{"a", "b", "c"}, "a/b~c": "x"}}},
		{"insert", []patchOp{{Op: "add", Path: "/spec/env/0", Value: "c", HasValue: true}},
			map[string]any{"spec": map[string]any{"replicas": 1, "env": []any{"c", "a", "b"}, "a/b~c": "x"}}},
		{"remove", []patchOp{{Op: "remove", Path: "/spec/env/0"}, {Op: "remove", Path: "/spec/replicas"}},
			map[string]any{"spec": map[string]any{"env": []any{"b"}, "a/b~c": "x"}}},
		{"escapes", []patchOp{{Op: "replace", Path: "/spec/a~1b~0c", Value: "y", HasValue: true}},
			map[string]any{"spec": map[string]any{"replicas": 1, "env": []any{"a", "b"}, "a/b~c": "y"}}},
		{"test", []patchOp{{Op: "test", Path: "/spec/env/1", Value: "b", HasValue: true}}, doc()},
		{"test fails", []patchOp{{Op: "test", Path: "/spec/env/1", Value: "a", HasValue: true}}, nil},
		{"replace missing", []patchOp{{Op: "replace", Path: "/spec/policy", Value: "x", HasValue: true}}, nil},
		{"remove missing", []patchOp{{Op: "remove", Path: "/spec/policy"}}, nil},
		{"add below missing", []patchOp{{Op: "add", Path: "/spec/affinity/x", Value: "x", HasValue: true}}, nil},
		{"index out of range", []patchOp{{Op: "replace", Path: "/spec/env/2", Value: "x", HasValue: true}}, nil},
		{"insert out of range", []patchOp{{Op: "add", Path: "/spec/env/3", Value: "x", HasValue: true}}, nil},
		{"leading zero", []patchOp{{Op: "replace", Path: "/spec/env/01", Value: "x", HasValue: true}}, nil},
		{"below a scalar", []patchOp{{Op: "add", Path: "/spec/replicas/x", Value: "x", HasValue: true}}, nil},
		{"no value", []patchOp{{Op: "add", Path: "/spec/x"}}, nil},
		{"move", []patchOp{{Op: "move", Path: "/spec/x"}}, nil},
		{"relative path", []patchOp{{Op: "replace", Path: "spec/replicas", Value: 3, HasValue: true}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := applyJSONPatch(doc(), tc.ops)
			switch {
			case tc.want == nil && err == nil:
				t.Errorf("got %v, want an error", got)
			case tc.want != nil && err != nil:
				t.Errorf("error %v", err)
			case tc.want != nil && !reflect.DeepEqual(got, tc.want):
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// kustomizeTool returns the command that renders a kustomization
// directory, or skips the test without kubectl or kustomize.
func kustomizeTool(t *testing.T) []string {
	t.Helper()
	if p, err := exec.LookPath("kustomize"); err == nil {
		return []string{p, "build"}
	}
	if p, err := exec.LookPath("kubectl"); err == nil {
		return []string{p, "kustomize"}
	}
	t.Skip("neither kustomize nor kubectl found")
	return nil
}

// TestKustomize checks that kustomize renders the base and the overlay as
// the tests do.
func TestKustomize(t *testing.T) {
	tool := kustomizeTool(t)
	for _, dir := range []string{"kubernetes", replicasDir} {
		t.Run(dir, func(t *testing.T) {
			out := run(t, tool[0], append(tool[1:], dir)...)
			got := map[string]any{}
			dec := yaml.NewDecoder(strings.NewReader(out))
			for {
				var doc map[string]any
				if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					t.Fatalf("%s: %v", strings.Join(tool, " "), err)
				}
				o := &renderedObject{doc: doc}
				got[o.id()] = doc
			}
			want := map[string]any{}
			for _, o := range kustomize(t, dir) {
				want[o.id()] = o.doc
			}
			for id, w := range want {
				g, ok := got[id]
				if !ok {
					t.Errorf("%s: kustomize renders no %s", dir, id)
					continue
				}
				for _, p := range diffPaths(g, w, "", "kustomize's", "the tests'") {
					t.Errorf("%s: %s: %s", dir, id, p)
				}
			}
			for id := range got {
				if _, ok := want[id]; !ok {
					t.Errorf("%s: kustomize renders %s, which the tests do not", dir, id)
				}
			}
			if len(got) == 0 {
				t.Errorf("%s: kustomize renders nothing", dir)
			}
		})
	}
}

// diffPaths describes where a and b, decoded YAML named aName and bName,
// differ.
func diffPaths(a, b any, path, aName, bName string) []string {
	switch a := a.(type) {
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok {
			break
		}
		var ps []string
		for k, av := range a {
			bv, ok := b[k]
			if !ok {
				ps = append(ps, fmt.Sprintf("%s/%s: only in %s", path, k, aName))
				continue
			}
			ps = append(ps, diffPaths(av, bv, path+"/"+k, aName, bName)...)
		}
		for k := range b {
			if _, ok := a[k]; !ok {
				ps = append(ps, fmt.Sprintf("%s/%s: only in %s", path, k, bName))
			}
		}
		slices.Sort(ps)
		return ps
	case []any:
		b, ok := b.([]any)
		if !ok || len(a) != len(b) {
			break
		}
		var ps []string
		for i := range a {
			ps = append(ps, diffPaths(a[i], b[i], path+"/"+strconv.Itoa(i), aName, bName)...)
		}
		return ps
	}
	if !reflect.DeepEqual(a, b) {
		return []string{fmt.Sprintf("%s: %v in %s, %v in %s", path, a, aName, b, bName)}
	}
	return nil
}
