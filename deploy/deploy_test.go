package deploy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/exportd/exportd/internal/config"
)

// knownMetrics are the metrics exportd exports that the alert rules and the
// dashboard may use. Histograms are listed by their base name.
var knownMetrics = []string{
	"exportd_replication_lag_bytes",
	"exportd_replication_lag_seconds",
	"exportd_replication_slot_retained_wal_bytes",
	"exportd_replication_connected",
	"exportd_replication_slot_lost_total",
	"exportd_replication_reconnects_total",
	"exportd_replication_changes_total",
	"exportd_replication_transactions_total",
	"exportd_replication_applied_lsn",
	"exportd_snapshot_rows_total",
	"exportd_snapshot_completed_total",
	"exportd_staging_files",
	"exportd_staging_bytes",
	"exportd_staging_segments",
	"exportd_staging_base_files",
	"exportd_staging_compactions_total",
	"exportd_staging_compaction_seconds",
	"exportd_staging_pinned_versions",
	"exportd_exports_total",
	"exportd_export_duration_seconds",
	"exportd_export_phase_duration_seconds",
	"exportd_export_published_bytes_total",
	"exportd_export_rows_rendered_total",
	"exportd_export_rows_prerendered_total",
	"exportd_prerender_bytes",
	"exportd_export_missing_files_total",
	"exportd_requests_total",
	"exportd_requests_parked",
	"exportd_kafka_messages_total",
	"exportd_dead_letters_total",
	"exportd_events_published_total",
	"exportd_fence_wait_seconds",
	"exportd_emails_total",
	"exportd_requests_parked_oldest_seconds",
	"exportd_exports_running",
	"exportd_requests_taken_over_total",
	"exportd_replication_takeovers_total",
	"exportd_cluster_members_alive",
	"exportd_cluster_heartbeat_failures_total",
	"exportd_cluster_heartbeat_age_seconds",
}

// plannedMetrics are known metrics that the code does not define yet.
var plannedMetrics = []string{}

// alertNames are the alerts alerts.yaml must define.
var alertNames = []string{
	"ExportdDown",
	"ExportdReplicationDisconnected",
	"ExportdReplicationLag",
	"ExportdSlotWALRetention",
	"ExportdSlotLost",
	"ExportdExportErrors",
	"ExportdRequestsFailed",
	"ExportdRequestParkedTooLong",
	"ExportdDeadLetters",
	"ExportdClusterHeartbeatFailing",
	"ExportdReplicaMissing",
	"ExportdFrequentTakeovers",
}

// dsVariable is the dashboard's data source variable.
const dsVariable = "${DS_PROMETHEUS}"

// needPromtool returns the path of promtool, or skips the test without it
// (fails under CI=true, where it must be installed).
func needPromtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		msg := "promtool not found: install it (Debian: apt-get install prometheus)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// run runs a command and fails the test with its output if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPromtool(t *testing.T) {
	promtool := needPromtool(t)
	t.Logf("%s", strings.SplitN(run(t, promtool, "--version"), "\n", 2)[0])
	run(t, promtool, "check", "rules", "prometheus/alerts.yaml")
	run(t, promtool, "test", "rules", "prometheus/alerts_test.yaml")
	run(t, promtool, "check", "config", "prometheus/prometheus.example.yml")
}

// ruleFile is a Prometheus rule file.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// ruleTestFile is a promtool rule test file.
type ruleTestFile struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		AlertRuleTest []struct {
			AlertName string `yaml:"alertname"`
			ExpAlerts []struct {
				ExpLabels map[string]string `yaml:"exp_labels"`
			} `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

func decodeYAML(t *testing.T, name string, v any) {
	t.Helper()
	if err := yaml.Unmarshal(readFile(t, name), v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// TestAlerts checks the shape of the alert rules: the alerts of the issue
// are there, each with a severity, a summary and a description, and each
// fires in at least one unit test at each of its severities.
func TestAlerts(t *testing.T) {
	var rules ruleFile
	decodeYAML(t, "prometheus/alerts.yaml", &rules)
	severities := map[string][]string{} // alert -> severities
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule that is not an alert (record %q)", g.Name, r.Record)
				continue
			}
			sev := r.Labels["severity"]
			if sev != "warning" && sev != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, sev)
			}
			if slices.Contains(severities[r.Alert], sev) {
				t.Errorf("%s: severity %s twice", r.Alert, sev)
			}
			severities[r.Alert] = append(severities[r.Alert], sev)
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s (%s): no %s annotation", r.Alert, sev, a)
				}
			}
			if strings.TrimSpace(r.Expr) == "" {
				t.Errorf("%s: no expr", r.Alert)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("%s: for %q: %v", r.Alert, r.For, err)
				}
			}
		}
	}
	for _, name := range alertNames {
		if len(severities[name]) == 0 {
			t.Errorf("alert %s missing", name)
		}
	}

	var tests ruleTestFile
	decodeYAML(t, "prometheus/alerts_test.yaml", &tests)
	if !slices.Equal(tests.RuleFiles, []string{"alerts.yaml"}) {
		t.Errorf("alerts_test.yaml: rule_files %q, want [alerts.yaml]", tests.RuleFiles)
	}
	fired := map[string]bool{} // alert + " " + severity
	for _, tc := range tests.Tests {
		for _, at := range tc.AlertRuleTest {
			for _, a := range at.ExpAlerts {
				fired[at.AlertName+" "+a.ExpLabels["severity"]] = true
			}
		}
	}
	for name, sevs := range severities {
		for _, sev := range sevs {
			if !fired[name+" "+sev] {
				t.Errorf("alerts_test.yaml: no test fires %s at severity %s", name, sev)
			}
		}
	}
}

// metricRE matches exportd's metric names.
var metricRE = regexp.MustCompile(`exportd_[a-z_]+`)

// TestMetricNames checks that the alert rules, their tests and the
// dashboard name no metric but the known ones, and that the code defines
// every known metric but the planned ones.
func TestMetricNames(t *testing.T) {
	known := map[string]bool{}
	for _, m := range knownMetrics {
		known[m] = true
	}
	for _, name := range []string{
		"prometheus/alerts.yaml",
		"prometheus/alerts_test.yaml",
		"grafana/exportd-dashboard.json",
	} {
		seen := map[string]bool{}
		for _, m := range metricRE.FindAllString(string(readFile(t, name)), -1) {
			if seen[m] {
				continue
			}
			seen[m] = true
			base := m
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(m, suffix); ok && known[b] {
					base = b
				}
			}
			if !known[base] {
				t.Errorf("%s: unknown metric %s", name, m)
			}
		}
		if len(seen) == 0 {
			t.Errorf("%s: names no exportd metric", name)
		}
	}

	// The code's metrics: the Name of their options.
	defined := map[string]bool{}
	nameRE := regexp.MustCompile(`Name:\s*"(exportd_[a-z_]+)"`)
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != ".." && (strings.HasPrefix(n, ".") || n == "testdata" || n == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range nameRE.FindAllStringSubmatch(string(b), -1) {
			defined[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range knownMetrics {
		switch {
		case slices.Contains(plannedMetrics, m) && defined[m]:
			t.Logf("planned metric %s is now defined: remove it from plannedMetrics", m)
		case !slices.Contains(plannedMetrics, m) && !defined[m]:
			t.Errorf("known metric %s is not defined in the code (renamed?)", m)
		}
	}
}

// TestDashboard checks the dashboard's structure and, with promtool, the
// syntax of its queries.
func TestDashboard(t *testing.T) {
	var dash struct {
		UID           string            `json:"uid"`
		Title         string            `json:"title"`
		SchemaVersion int               `json:"schemaVersion"`
		Panels        []json.RawMessage `json:"panels"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Annotations struct {
			List []struct {
				Name       string         `json:"name"`
				Datasource map[string]any `json:"datasource"`
				Expr       string         `json:"expr"`
			} `json:"list"`
		} `json:"annotations"`
	}
	b := readFile(t, "grafana/exportd-dashboard.json")
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("exportd-dashboard.json: %v", err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Errorf("uid %q, title %q: want both", dash.UID, dash.Title)
	}
	if dash.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d, want at least 36", dash.SchemaVersion)
	}
	hasDS := false
	for _, v := range dash.Templating.List {
		if "${"+v.Name+"}" == dsVariable && v.Type == "datasource" && v.Query == "prometheus" {
			hasDS = true
		}
	}
	if !hasDS {
		t.Errorf("no datasource variable %s of type prometheus", dsVariable)
	}

	type target struct {
		Expr       string         `json:"expr"`
		RefID      string         `json:"refId"`
		Datasource map[string]any `json:"datasource"`
	}
	type panel struct {
		ID         int                      `json:"id"`
		Type       string                   `json:"type"`
		Title      string                   `json:"title"`
		Datasource map[string]any           `json:"datasource"`
		GridPos    struct{ X, Y, W, H int } `json:"gridPos"`
		Targets    []target                 `json:"targets"`
		Panels     []json.RawMessage        `json:"panels"`
	}
	var exprs []string
	ids := map[int]bool{}
	var walk func(raw []json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("panel: %v", err)
			}
			if ids[p.ID] || p.ID == 0 {
				t.Errorf("panel %q: id %d missing or not unique", p.Title, p.ID)
			}
			ids[p.ID] = true
			if p.Title == "" {
				t.Errorf("panel %d: no title", p.ID)
			}
			if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: gridPos %+v outside the 24 columns", p.Title, p.GridPos)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Datasource["uid"] != dsVariable {
				t.Errorf("panel %q: datasource %v, want uid %s", p.Title, p.Datasource, dsVariable)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q: no targets", p.Title)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q: target %s without expr", p.Title, tg.RefID)
				}
				if refs[tg.RefID] {
					t.Errorf("panel %q: refId %s twice", p.Title, tg.RefID)
				}
				refs[tg.RefID] = true
				if tg.Datasource["uid"] != dsVariable {
					t.Errorf("panel %q: target %s datasource %v, want uid %s", p.Title, tg.RefID, tg.Datasource, dsVariable)
				}
				exprs = append(exprs, tg.Expr)
			}
		}
	}
	walk(dash.Panels)
	for _, a := range dash.Annotations.List {
		if a.Expr != "" {
			if a.Datasource["uid"] != dsVariable {
				t.Errorf("annotation %q: datasource %v, want uid %s", a.Name, a.Datasource, dsVariable)
			}
			exprs = append(exprs, a.Expr)
		}
	}
	if len(exprs) == 0 {
		t.Fatal("no queries")
	}

	// promtool checks the queries as the expressions of recording rules,
	// with Grafana's variables replaced.
	t.Run("promql", func(t *testing.T) { checkQueries(t, exprs) })
}

func checkQueries(t *testing.T, exprs []string) {
	promtool := needPromtool(t)
	vars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$job", ".*", "$instance", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		q, _ := json.Marshal(vars.Replace(e)) // a JSON string is a YAML string
		fmt.Fprintf(&rules, "      - record: dashboard:query_%d\n        expr: %s\n", i, q)
	}
	file := filepath.Join(t.TempDir(), "dashboard-queries.yaml")
	if err := os.WriteFile(file, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, promtool, "check", "rules", file)
}

// Kubernetes objects, the fields the tests read.

type objectMeta struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type envVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		SecretKeyRef *struct {
			Name     string `yaml:"name"`
			Key      string `yaml:"key"`
			Optional bool   `yaml:"optional"`
		} `yaml:"secretKeyRef"`
		FieldRef *struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
	} `yaml:"valueFrom"`
}

// fromSecret reports whether e is set from a key of a Secret.
func (e *envVar) fromSecret() bool { return e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil }

type container struct {
	Name    string   `yaml:"name"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Ports   []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	Env             []envVar       `yaml:"env"`
	Resources       map[string]any `yaml:"resources"`
	StartupProbe    *probe         `yaml:"startupProbe"`
	LivenessProbe   *probe         `yaml:"livenessProbe"`
	ReadinessProbe  *probe         `yaml:"readinessProbe"`
	SecurityContext struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
	} `yaml:"volumeMounts"`
}

// env returns c's environment variable name, nil if it has none; it fails
// the test if c has several.
func (c *container) env(t *testing.T, name string) *envVar {
	t.Helper()
	var found *envVar
	for i := range c.Env {
		if c.Env[i].Name == name {
			if found != nil {
				t.Errorf("env %s set twice", name)
			}
			found = &c.Env[i]
		}
	}
	return found
}

// podAffinityTerm is a term of a pod (anti-)affinity.
type podAffinityTerm struct {
	TopologyKey   string        `yaml:"topologyKey"`
	LabelSelector labelSelector `yaml:"labelSelector"`
}

type statefulSet struct {
	Spec struct {
		Replicas                             *int          `yaml:"replicas"`
		ServiceName                          string        `yaml:"serviceName"`
		PodManagementPolicy                  string        `yaml:"podManagementPolicy"`
		Selector                             labelSelector `yaml:"selector"`
		PersistentVolumeClaimRetentionPolicy *struct {
			WhenDeleted string `yaml:"whenDeleted"`
			WhenScaled  string `yaml:"whenScaled"`
		} `yaml:"persistentVolumeClaimRetentionPolicy"`
		Template struct {
			Metadata objectMeta `yaml:"metadata"`
			Spec     struct {
				TerminationGracePeriodSeconds *int64 `yaml:"terminationGracePeriodSeconds"`
				SecurityContext               struct {
					RunAsNonRoot *bool `yaml:"runAsNonRoot"`
					RunAsUser    *int  `yaml:"runAsUser"`
				} `yaml:"securityContext"`
				Affinity struct {
					PodAntiAffinity struct {
						Preferred []struct {
							Weight          int             `yaml:"weight"`
							PodAffinityTerm podAffinityTerm `yaml:"podAffinityTerm"`
						} `yaml:"preferredDuringSchedulingIgnoredDuringExecution"`
						Required []podAffinityTerm `yaml:"requiredDuringSchedulingIgnoredDuringExecution"`
					} `yaml:"podAntiAffinity"`
				} `yaml:"affinity"`
				Containers []container `yaml:"containers"`
				Volumes    []struct {
					Name      string `yaml:"name"`
					ConfigMap *struct {
						Name  string `yaml:"name"`
						Items []struct {
							Key  string `yaml:"key"`
							Path string `yaml:"path"`
						} `yaml:"items"`
					} `yaml:"configMap"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
		VolumeClaimTemplates []struct {
			Metadata objectMeta `yaml:"metadata"`
			Spec     struct {
				AccessModes []string `yaml:"accessModes"`
			} `yaml:"spec"`
		} `yaml:"volumeClaimTemplates"`
	} `yaml:"spec"`
}

type service struct {
	Spec struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort any    `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type serviceMonitor struct {
	Spec struct {
		Selector  labelSelector `yaml:"selector"`
		Endpoints []struct {
			Port string `yaml:"port"`
			Path string `yaml:"path"`
		} `yaml:"endpoints"`
	} `yaml:"spec"`
}

type pdb struct {
	Spec struct {
		MaxUnavailable any           `yaml:"maxUnavailable"`
		MinAvailable   any           `yaml:"minAvailable"`
		Selector       labelSelector `yaml:"selector"`
	} `yaml:"spec"`
}

// k8sObject is one document of a manifest.
type k8sObject struct {
	file       string     // the manifest's path, relative to deploy
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	node       *yaml.Node
}

func (o *k8sObject) decode(t *testing.T, v any) {
	t.Helper()
	if err := o.node.Decode(v); err != nil {
		t.Fatalf("%s: %s %s: %v", o.file, o.Kind, o.Metadata.Name, err)
	}
}

// newObject returns the object of n, a document of the manifest file.
func newObject(t *testing.T, file string, n *yaml.Node) *k8sObject {
	t.Helper()
	o := &k8sObject{file: file, node: n}
	if err := n.Decode(o); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if o.Kind == "" || o.APIVersion == "" {
		t.Fatalf("%s: a document without kind or apiVersion", file)
	}
	return o
}

// loadFile parses the objects of the manifest file.
func loadFile(t *testing.T, file string) []*k8sObject {
	t.Helper()
	var objs []*k8sObject
	dec := yaml.NewDecoder(bytes.NewReader(readFile(t, file)))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		objs = append(objs, newObject(t, file, &n))
	}
	return objs
}

// loadManifests parses every YAML file of deploy/kubernetes.
func loadManifests(t *testing.T) []*k8sObject {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no kubernetes/*.yaml")
	}
	var objs []*k8sObject
	for _, f := range files {
		objs = append(objs, loadFile(t, f)...)
	}
	return objs
}

// only returns the one object of kind in objs, failing the test if there
// is not exactly one.
func only(t *testing.T, objs []*k8sObject, kind string) *k8sObject {
	t.Helper()
	var found []*k8sObject
	for _, o := range objs {
		if o.Kind == kind {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d objects of kind %s, want 1", len(found), kind)
	}
	return found[0]
}

// deref formats the value p points to, "unset" if p is nil.
func deref[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}

// subset reports whether every label of sel is in labels.
func subset(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// exampleSecret is secret.example.yaml.
type exampleSecret struct {
	obj *k8sObject
	// data are its keys (stringData), documented its optional keys, shown
	// in comments ("  # files-s3-access-key-id: AKIA...").
	data       map[string]string
	documented map[string]bool
}

// documentedKeyRE matches a key of stringData shown in a comment.
var documentedKeyRE = regexp.MustCompile(`(?m)^  # ([a-z0-9]+(?:-[a-z0-9]+)*): \S`)

func loadSecret(t *testing.T, obj *k8sObject) *exampleSecret {
	t.Helper()
	var secret struct {
		StringData map[string]string `yaml:"stringData"`
	}
	obj.decode(t, &secret)
	s := &exampleSecret{obj: obj, data: secret.StringData, documented: map[string]bool{}}
	text := string(readFile(t, obj.file))
	_, text, ok := strings.Cut(text, "\nstringData:\n")
	if !ok {
		t.Fatalf("%s: no stringData", obj.file)
	}
	for _, m := range documentedKeyRE.FindAllStringSubmatch(text, -1) {
		s.documented[m[1]] = true
	}
	return s
}

// has reports whether key is a key of the Secret, or an optional one its
// comments show.
func (s *exampleSecret) has(key string, optional bool) bool {
	if _, ok := s.data[key]; ok {
		return true
	}
	return optional && s.documented[key]
}

// deployment is a rendered deployment of exportd, as checkDeployment found
// it.
type deployment struct {
	objs      []*k8sObject
	stsObj    *k8sObject
	sts       statefulSet
	container *container
	podLabels map[string]string
	// mounts maps the container's volumes to their mount paths.
	mounts map[string]string
	// configKey is the key of the configuration file in the ConfigMap,
	// configText the file.
	configKey, configText string
	// secretRefs are the keys of the Secret the container reads.
	secretRefs map[string]bool
	// pods are the names of the StatefulSet's pods, cfgs their
	// configuration, loaded with their environment and valid.
	pods []string
	cfgs []*config.Config
}

// checkDeployment checks what every form of the deployment must satisfy:
// objs are its objects (but the Kustomization and the example Secret),
// secret the example of the Secret its pods read.
func checkDeployment(t *testing.T, objs []*k8sObject, secret *exampleSecret) *deployment {
	d := &deployment{objs: objs, mounts: map[string]string{}, secretRefs: map[string]bool{}}
	for _, o := range objs {
		if o.Metadata.Namespace != "" {
			t.Errorf("%s: %s %s names namespace %q: keep the manifests namespace-agnostic", o.file, o.Kind, o.Metadata.Name, o.Metadata.Namespace)
		}
	}
	stsObj, svcObj, smObj, pdbObj := only(t, objs, "StatefulSet"), only(t, objs, "Service"), only(t, objs, "ServiceMonitor"), only(t, objs, "PodDisruptionBudget")
	cmObj := only(t, objs, "ConfigMap")

	d.stsObj = stsObj
	stsObj.decode(t, &d.sts)
	spec := &d.sts.Spec
	pod := &spec.Template.Spec
	podLabels := spec.Template.Metadata.Labels
	d.podLabels = podLabels
	if spec.Replicas == nil || *spec.Replicas < 1 {
		t.Fatalf("StatefulSet replicas %s, want at least 1", deref(spec.Replicas))
	}
	for i := range *spec.Replicas {
		d.pods = append(d.pods, fmt.Sprintf("%s-%d", stsObj.Metadata.Name, i))
	}
	if !subset(spec.Selector.MatchLabels, podLabels) {
		t.Errorf("StatefulSet selector %v does not select its pods %v", spec.Selector.MatchLabels, podLabels)
	}
	if spec.ServiceName != svcObj.Metadata.Name {
		t.Errorf("StatefulSet serviceName %q, want the Service %q", spec.ServiceName, svcObj.Metadata.Name)
	}
	if sc := pod.SecurityContext; sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Errorf("pod securityContext: want runAsNonRoot and a runAsUser other than 0")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := &pod.Containers[0]
	d.container = c
	if sc := c.SecurityContext; sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("container securityContext: want allowPrivilegeEscalation false, readOnlyRootFilesystem true, capabilities drop ALL")
	}
	mounts := d.mounts
	for _, m := range c.VolumeMounts {
		if m.SubPath != "" {
			t.Errorf("volume mount %s uses subPath", m.Name)
		}
		mounts[m.Name] = m.MountPath
	}
	if mounts["tmp"] != "/tmp" {
		t.Errorf("no writable /tmp (an emptyDir): exports write temporary files with a read-only root filesystem")
	}

	// The configuration file: exportd run -config <file in the ConfigMap's
	// volume>.
	argv := append(slices.Clone(c.Command), c.Args...)
	i := slices.Index(argv, "-config")
	if !slices.Contains(argv, "run") || i < 0 || i+1 >= len(argv) {
		t.Fatalf("container command %q: want exportd run -config <file>", argv)
	}
	configPath := argv[i+1]
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	cmObj.decode(t, &cm)
	configKey := ""
	for _, v := range pod.Volumes {
		if v.ConfigMap == nil || v.ConfigMap.Name != cmObj.Metadata.Name {
			continue
		}
		dir := mounts[v.Name]
		if dir == "" {
			continue
		}
		if len(v.ConfigMap.Items) == 0 {
			if k := strings.TrimPrefix(configPath, dir+"/"); cm.Data[k] != "" {
				configKey = k
			}
		}
		for _, it := range v.ConfigMap.Items {
			if dir+"/"+it.Path == configPath {
				configKey = it.Key
			}
		}
	}
	if configKey == "" || cm.Data[configKey] == "" {
		t.Fatalf("-config %s is not a key of the ConfigMap %s mounted in the container", configPath, cmObj.Metadata.Name)
	}
	d.configKey, d.configText = configKey, cm.Data[configKey]

	// Its environment: secrets from the Secret, which secret.example.yaml
	// shows.
	envNames := config.EnvNames()
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "EXPORTD_") && !slices.Contains(envNames, e.Name) {
			t.Errorf("env %s is not a configuration variable", e.Name)
		}
		c.env(t, e.Name) // set once
		switch {
		case e.fromSecret():
			ref := e.ValueFrom.SecretKeyRef
			if ref.Name != secret.obj.Metadata.Name {
				t.Errorf("env %s: from Secret %q, want %q", e.Name, ref.Name, secret.obj.Metadata.Name)
			}
			if !secret.has(ref.Key, ref.Optional) {
				t.Errorf("env %s: key %s is not in %s (optional keys may be shown in a comment)", e.Name, ref.Key, secret.obj.file)
			}
			d.secretRefs[ref.Key] = true
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			if p := e.ValueFrom.FieldRef.FieldPath; p != "metadata.name" {
				t.Errorf("env %s: fieldRef %s: the test knows only metadata.name", e.Name, p)
			}
		case e.ValueFrom != nil:
			t.Errorf("env %s: a valueFrom the test does not know", e.Name)
		}
	}
	for k := range secret.data {
		if !d.secretRefs[k] {
			t.Errorf("%s: key %s is not used by the StatefulSet", secret.obj.file, k)
		}
	}

	// The configuration loads and is valid in each pod's environment.
	file := filepath.Join(t.TempDir(), "exportd.yaml")
	if err := os.WriteFile(file, []byte(cm.Data[configKey]), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, podName := range d.pods {
		env := map[string]string{}
		for _, e := range c.Env {
			switch {
			case e.fromSecret():
				env[e.Name] = secret.data[e.ValueFrom.SecretKeyRef.Key]
			case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
				env[e.Name] = podName
			case e.ValueFrom == nil:
				env[e.Name] = e.Value
			}
		}
		cfg, err := config.Load(file, func(k string) string { return env[k] })
		if err != nil {
			t.Fatalf("ConfigMap %s, pod %s: %v", configKey, podName, err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("ConfigMap %s, pod %s: %v", configKey, podName, err)
		}
		d.cfgs = append(d.cfgs, cfg)
	}
	cfg := d.cfgs[0]

	// Static credentials of each S3 store can come from the Secret.
	for _, s := range []struct {
		key string
		s3  bool
	}{
		{"files", cfg.Files.Type == config.StoreS3},
		{"publish", cfg.Publish.Type == config.StoreS3},
		{"staging", cfg.Staging.Backend == config.StagingS3},
	} {
		if !s.s3 {
			continue
		}
		for _, v := range []string{"ACCESS_KEY_ID", "SECRET_ACCESS_KEY"} {
			name := "EXPORTD_" + strings.ToUpper(s.key) + "_S3_" + v
			if e := c.env(t, name); e == nil || !e.fromSecret() || !e.ValueFrom.SecretKeyRef.Optional {
				t.Errorf("%s is in S3: want env %s from an optional key of the Secret, for static credentials", s.key, name)
			}
		}
	}

	// It fits the pod: state_dir on the volume, http.addr on the container's
	// port, shutdown_grace within the termination grace period.
	if len(spec.VolumeClaimTemplates) != 1 {
		t.Fatalf("%d volumeClaimTemplates, want 1 (state_dir)", len(spec.VolumeClaimTemplates))
	}
	vct := spec.VolumeClaimTemplates[0]
	if got := mounts[vct.Metadata.Name]; got != filepath.Clean(cfg.StateDir) {
		t.Errorf("state_dir %s is not the mount of the volume %s (%q)", cfg.StateDir, vct.Metadata.Name, got)
	}
	if !slices.Equal(vct.Spec.AccessModes, []string{"ReadWriteOnce"}) {
		t.Errorf("volume access modes %q, want [ReadWriteOnce]", vct.Spec.AccessModes)
	}
	host, portStr, err := net.SplitHostPort(cfg.HTTP.Addr)
	if err != nil {
		t.Fatalf("http.addr: %v", err)
	}
	port, _ := strconv.Atoi(portStr)
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		t.Errorf("http.addr %s: the kubelet and the Service cannot reach a loopback address", cfg.HTTP.Addr)
	}
	httpPort := 0
	for _, p := range c.Ports {
		if p.Name == "http" {
			httpPort = p.ContainerPort
		}
	}
	if httpPort != port {
		t.Errorf("container port http %d, want http.addr's port %d", httpPort, port)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= cfg.HTTP.ShutdownGrace {
		t.Errorf("terminationGracePeriodSeconds %s: want more than http.shutdown_grace %s", deref(g), cfg.HTTP.ShutdownGrace)
	}
	for _, p := range []struct {
		name string
		p    *probe
		path string
	}{
		{"startupProbe", c.StartupProbe, "/healthz"},
		{"livenessProbe", c.LivenessProbe, "/healthz"},
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
	} {
		if p.p == nil || p.p.HTTPGet == nil || p.p.HTTPGet.Path != p.path || p.p.HTTPGet.Port != "http" {
			t.Errorf("%s: want httpGet %s on port http", p.name, p.path)
		}
	}

	// The Service, ServiceMonitor and PodDisruptionBudget select the pod.
	var svc service
	svcObj.decode(t, &svc)
	if !subset(svc.Spec.Selector, podLabels) {
		t.Errorf("Service selector %v does not select the pods %v", svc.Spec.Selector, podLabels)
	}
	svcPorts := map[string]bool{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Name] = true
		if p.TargetPort != "http" && p.TargetPort != httpPort {
			t.Errorf("Service port %s: targetPort %v, want http", p.Name, p.TargetPort)
		}
	}
	var sm serviceMonitor
	smObj.decode(t, &sm)
	if !subset(sm.Spec.Selector.MatchLabels, svcObj.Metadata.Labels) {
		t.Errorf("ServiceMonitor selector %v does not select the Service %v", sm.Spec.Selector.MatchLabels, svcObj.Metadata.Labels)
	}
	if len(sm.Spec.Endpoints) != 1 || !svcPorts[sm.Spec.Endpoints[0].Port] || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v: want /metrics on a port of the Service", sm.Spec.Endpoints)
	}
	if svcObj.Metadata.Name != "exportd" {
		t.Errorf("Service %q: the alerts expect job=\"exportd\", which the Prometheus Operator takes from the Service's name", svcObj.Metadata.Name)
	}
	var budget pdb
	pdbObj.decode(t, &budget)
	if !subset(budget.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("PodDisruptionBudget selector %v does not select the pods %v", budget.Spec.Selector.MatchLabels, podLabels)
	}
	if budget.Spec.MaxUnavailable == nil && budget.Spec.MinAvailable == nil {
		t.Errorf("PodDisruptionBudget: neither maxUnavailable nor minAvailable")
	}
	return d
}

func TestKubernetes(t *testing.T) {
	objs := loadManifests(t)
	kustObj, secretObj := only(t, objs, "Kustomization"), only(t, objs, "Secret")

	// kustomization.yaml lists every manifest but itself and the example
	// Secret.
	var kust struct {
		Resources []string `yaml:"resources"`
	}
	kustObj.decode(t, &kust)
	var rest []*k8sObject
	var want []string
	for _, o := range objs {
		if o == kustObj || o == secretObj {
			continue
		}
		rest = append(rest, o)
		if f := filepath.Base(o.file); !slices.Contains(want, f) {
			want = append(want, f)
		}
	}
	got := slices.Clone(kust.Resources)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("kustomization.yaml resources %q, want %q", got, want)
	}

	d := checkDeployment(t, rest, loadSecret(t, secretObj))

	// One replica, with staging in its state_dir: a single-writer store.
	if r := *d.sts.Spec.Replicas; r != 1 {
		t.Errorf("StatefulSet replicas %d, want 1: one process holds the replication slot, and local staging has one writer (several replicas: kubernetes-replicas)", r)
	}
	cfg := d.cfgs[0]
	if cfg.Staging.Backend != config.StagingLocal {
		t.Errorf("staging.backend %s, want %s in the one-replica form", cfg.Staging.Backend, config.StagingLocal)
	}
	if cfg.Publish.Type == config.StoreFS && !strings.HasPrefix(filepath.Clean(cfg.Publish.FS.Dir)+"/", filepath.Clean(cfg.StateDir)+"/") {
		t.Errorf("publish.fs.dir %s is not on the volume %s", cfg.Publish.FS.Dir, cfg.StateDir)
	}
}

// replicasDir is the kustomize overlay of the several-replica form.
const replicasDir = "kubernetes-replicas"

// TestKubernetesReplicas renders the overlay of the several-replica form
// and checks it: as checkDeployment checks the base, and for what several
// replicas sharing staging in a bucket need.
func TestKubernetesReplicas(t *testing.T) {
	// The overlay patches the base, and holds nothing but its patches.
	k := readKustomization(t, replicasDir)
	if !slices.Equal(k.Resources, []string{"../kubernetes"}) {
		t.Errorf("%s resources %q, want [../kubernetes]: the base, patched", replicasDir, k.Resources)
	}
	files, err := filepath.Glob(filepath.Join(replicasDir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{"kustomization.yaml": true}
	for _, p := range k.Patches {
		named[p.Path] = true
	}
	for _, f := range files {
		if !named[filepath.Base(f)] {
			t.Errorf("%s is not a patch of %s/kustomization.yaml", f, replicasDir)
		}
	}

	// The base's objects, patched: none added (a second
	// PodDisruptionBudget of the pods would make them unevictable), none
	// dropped.
	base, rendered := kustomize(t, "kubernetes"), kustomize(t, replicasDir)
	ids := func(objs []*renderedObject) []string {
		var ids []string
		for _, o := range objs {
			ids = append(ids, o.id())
		}
		slices.Sort(ids)
		return ids
	}
	if got, want := ids(rendered), ids(base); !slices.Equal(got, want) {
		t.Errorf("%s renders %q, want the base's %q", replicasDir, got, want)
	}
	baseObjs := k8sObjects(t, base)

	secret := loadSecret(t, only(t, loadFile(t, "kubernetes/secret.example.yaml"), "Secret"))
	d := checkDeployment(t, k8sObjects(t, rendered), secret)
	spec := &d.sts.Spec
	cfg := d.cfgs[0]

	// Three replicas, started together: none is ready before the first
	// snapshot, which one of them takes.
	if r := *spec.Replicas; r != 3 {
		t.Errorf("StatefulSet replicas %d, want 3", r)
	}
	if spec.PodManagementPolicy != "Parallel" {
		t.Errorf("StatefulSet podManagementPolicy %q, want Parallel: with OrderedReady the second pod waits for the first to be ready, after the initial snapshot", spec.PodManagementPolicy)
	}
	if p := spec.PersistentVolumeClaimRetentionPolicy; p != nil {
		for _, v := range []string{p.WhenDeleted, p.WhenScaled} {
			if v != "Retain" && v != "Delete" {
				t.Errorf("persistentVolumeClaimRetentionPolicy %+v: want Retain or Delete", *p)
			}
		}
	}
	var baseSts statefulSet
	only(t, baseObjs, "StatefulSet").decode(t, &baseSts)
	bc := &baseSts.Spec.Template.Spec.Containers[0]
	if !reflect.DeepEqual(d.container.Resources, bc.Resources) {
		t.Errorf("container resources %v, want the base's %v", d.container.Resources, bc.Resources)
	}
	if e, be := d.container.env(t, "GOMEMLIMIT"), bc.env(t, "GOMEMLIMIT"); e == nil || be == nil || e.Value != be.Value {
		t.Errorf("env GOMEMLIMIT: want the base's, in step with the memory limit")
	}

	// Each replica's id is its pod's name: unique, and stable across
	// restarts.
	if e := d.container.env(t, "EXPORTD_CLUSTER_REPLICA_ID"); e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("env EXPORTD_CLUSTER_REPLICA_ID: want it from fieldRef metadata.name, the pod's name")
	}
	for i, c := range d.cfgs {
		if c.Cluster.ReplicaID != d.pods[i] {
			t.Errorf("pod %s: cluster.replica_id %q, want the pod's name", d.pods[i], c.Cluster.ReplicaID)
		}
	}

	// Staging in a bucket the replicas share, the requests through the
	// consumer group, the exports where any replica's links reach them.
	if cfg.Staging.Backend != config.StagingS3 {
		t.Errorf("staging.backend %s, want %s", cfg.Staging.Backend, config.StagingS3)
	}
	if len(cfg.Kafka.Brokers) == 0 {
		t.Errorf("no kafka.brokers: the replicas share the export requests through the consumer group")
	}
	if cfg.Publish.Type == config.StoreFS && strings.HasPrefix(filepath.Clean(cfg.Publish.FS.Dir)+"/", filepath.Clean(cfg.StateDir)+"/") {
		t.Errorf("publish.fs.dir %s is on the volume of one pod (%s): a download link reaches any pod", cfg.Publish.FS.Dir, cfg.StateDir)
	}

	// Apart from those sections, the configuration is the base's.
	var baseCM struct {
		Data map[string]string `yaml:"data"`
	}
	only(t, baseObjs, "ConfigMap").decode(t, &baseCM)
	var want, got map[string]any
	if err := yaml.Unmarshal([]byte(baseCM.Data[d.configKey]), &want); err != nil {
		t.Fatalf("base ConfigMap %s: %v", d.configKey, err)
	}
	if err := yaml.Unmarshal([]byte(d.configText), &got); err != nil {
		t.Fatalf("ConfigMap %s: %v", d.configKey, err)
	}
	for _, k := range []string{"staging", "cluster", "publish"} {
		delete(want, k)
		delete(got, k)
	}
	for _, p := range diffPaths(got, want, "", "the overlay's", "the base's") {
		t.Errorf("ConfigMap %s: %s: keep the overlay's configuration the base's but for staging, cluster and publish", d.configKey, p)
	}

	// Every key secret.example.yaml shows is read.
	for k := range secret.documented {
		if !d.secretRefs[k] {
			t.Errorf("%s: key %s is read by neither form", secret.obj.file, k)
		}
	}

	// One pod down at a time: two of the three serve meanwhile, and if the
	// writer is down a standby takes over the slot.
	var budget pdb
	only(t, d.objs, "PodDisruptionBudget").decode(t, &budget)
	if budget.Spec.MaxUnavailable != 1 || budget.Spec.MinAvailable != nil {
		t.Errorf("PodDisruptionBudget maxUnavailable %v, minAvailable %v: want maxUnavailable 1", budget.Spec.MaxUnavailable, budget.Spec.MinAvailable)
	}

	// Rather on different nodes.
	aa := spec.Template.Spec.Affinity.PodAntiAffinity
	byNode := false
	for _, p := range aa.Preferred {
		term := p.PodAffinityTerm
		if !subset(term.LabelSelector.MatchLabels, d.podLabels) {
			t.Errorf("pod anti-affinity selector %v does not select the pods %v", term.LabelSelector.MatchLabels, d.podLabels)
		}
		if p.Weight < 1 || p.Weight > 100 {
			t.Errorf("pod anti-affinity weight %d, want 1 to 100", p.Weight)
		}
		byNode = byNode || term.TopologyKey == "kubernetes.io/hostname"
	}
	if !byNode {
		t.Errorf("no preferred pod anti-affinity by kubernetes.io/hostname: spread the replicas across nodes")
	}
}

// TestExampleConfig checks that config/exportd.example.yaml is the example
// of internal/config, and valid with the secrets it asks for.
func TestExampleConfig(t *testing.T) {
	const copyName, orig = "config/exportd.example.yaml", "../internal/config/example.yaml"
	b := readFile(t, copyName)
	if !bytes.Equal(b, readFile(t, orig)) {
		t.Fatalf("%s differs from %s: cp %s deploy/%s", copyName, orig, strings.TrimPrefix(orig, "../"), copyName)
	}
	env := map[string]string{
		"EXPORTD_POSTGRES_URL":        "postgres://exportd@db:5432/platform",
		"EXPORTD_PUBLISH_LINK_SECRET": strings.Repeat("x", 48),
	}
	cfg, err := config.Load(copyName, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

// unitSetting returns the values of key in a systemd unit.
func unitSetting(unit, key string) []string {
	var vals []string
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+"="); ok {
			vals = append(vals, v)
		}
	}
	return vals
}

func TestSystemdUnit(t *testing.T) {
	const name = "systemd/exportd.service"
	unit := string(readFile(t, name))
	exec0 := unitSetting(unit, "ExecStart")
	if len(exec0) != 1 {
		t.Fatalf("ExecStart %q, want one", exec0)
	}
	argv := strings.Fields(exec0[0])
	if len(argv) < 4 || argv[1] != "run" || argv[2] != "-config" {
		t.Fatalf("ExecStart %q: want <exportd> run -config <file>", exec0[0])
	}

	// The example configuration's state_dir is the StateDirectory, and its
	// shutdown_grace fits in TimeoutStopSec.
	env := map[string]string{
		"EXPORTD_POSTGRES_URL":        "postgres://exportd@db:5432/platform",
		"EXPORTD_PUBLISH_LINK_SECRET": strings.Repeat("x", 48),
	}
	cfg, err := config.Load("config/exportd.example.yaml", func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if sd := unitSetting(unit, "StateDirectory"); len(sd) != 1 || "/var/lib/"+sd[0] != cfg.StateDir {
		t.Errorf("StateDirectory %q: want the example's state_dir %s", sd, cfg.StateDir)
	}
	stop := unitSetting(unit, "TimeoutStopSec")
	if len(stop) != 1 {
		t.Fatalf("TimeoutStopSec %q, want one", stop)
	}
	d, err := time.ParseDuration(stop[0])
	if err != nil {
		n, aerr := strconv.Atoi(stop[0])
		if aerr != nil {
			t.Fatalf("TimeoutStopSec %q: %v", stop[0], err)
		}
		d = time.Duration(n) * time.Second
	}
	if d <= cfg.HTTP.ShutdownGrace || d <= config.Default().HTTP.ShutdownGrace {
		t.Errorf("TimeoutStopSec %s: want more than http.shutdown_grace %s", d, cfg.HTTP.ShutdownGrace)
	}
	for _, kv := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "Restart=on-failure", "PrivateTmp=yes"} {
		k, v, _ := strings.Cut(kv, "=")
		if got := unitSetting(unit, k); !slices.Equal(got, []string{v}) {
			t.Errorf("%s %q, want %s", k, got, v)
		}
	}
	if len(unitSetting(unit, "DynamicUser")) == 0 && len(unitSetting(unit, "User")) == 0 {
		t.Error("neither DynamicUser nor User")
	}
	if len(unitSetting(unit, "EnvironmentFile")) == 0 {
		t.Error("no EnvironmentFile for the secrets")
	}

	t.Run("verify", func(t *testing.T) {
		sa, err := exec.LookPath("systemd-analyze")
		if err != nil {
			t.Skip("systemd-analyze not found")
		}
		// verify wants ExecStart's program to exist: point it at a stub.
		dir := t.TempDir()
		stub := filepath.Join(dir, "exportd")
		if err := os.WriteFile(stub, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, "exportd.service")
		if err := os.WriteFile(file, []byte(strings.Replace(unit, "ExecStart="+argv[0], "ExecStart="+stub, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		out := run(t, sa, "verify", file)
		// verify warns of unknown or bad settings but still succeeds.
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "exportd.service") {
				t.Errorf("systemd-analyze verify: %s", line)
			} else if strings.TrimSpace(line) != "" {
				t.Logf("systemd-analyze verify: %s", line)
			}
		}
	})
}
