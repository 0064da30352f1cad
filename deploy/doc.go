// Package deploy holds no code: it is the home of exportd's deployment
// files, checked by its tests.
//
//   - kubernetes/: a StatefulSet (one replica, a persistent volume for
//     state_dir), Service, ServiceMonitor, PodDisruptionBudget, a ConfigMap
//     with an example configuration and an example Secret, tied together by
//     kustomization.yaml.
//   - kubernetes-replicas/: a kustomize overlay of kubernetes/ for several
//     replicas sharing staging in an S3 bucket (JSON patches of the
//     StatefulSet, the ConfigMap and the PodDisruptionBudget).
//   - prometheus/: alert rules (alerts.yaml), their unit tests for
//     `promtool test rules` (alerts_test.yaml) and an example scrape
//     configuration.
//   - grafana/: a dashboard of exportd's metrics.
//   - systemd/: a hardened service unit.
//   - config/: the commented example configuration, a copy of
//     internal/config/example.yaml.
//
// The tests run promtool (Debian package prometheus) and systemd-analyze
// when they are installed; under CI=true a missing promtool is a failure.
// They render the kustomizations themselves (resources and JSON patches)
// and, when kustomize or kubectl is installed, check that it renders them
// the same.
package deploy
