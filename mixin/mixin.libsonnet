// coverage-exporter as a monitoring mixin: its alerts, recording rules and
// Grafana dashboard, configured through _config (config.libsonnet lists
// every key with its default). The parts are generated from alerts/rules.py
// and dashboards/generate.py by `python -m tools.mixin`.
//
//   local coverage = (import 'coverage-exporter-mixin/mixin.libsonnet') + {
//     _config+:: { clusterLabel: 'k8s_cluster', showMultiCluster: true },
//   };
//   coverage.prometheusAlerts, coverage.prometheusRules, coverage.grafanaDashboards
(import 'config.libsonnet') +
(import 'alerts.libsonnet') +
(import 'rules.libsonnet') +
(import 'dashboards.libsonnet')
