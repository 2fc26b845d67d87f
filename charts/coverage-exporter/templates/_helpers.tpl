{{/* Chart name, cut to the 63 characters of a DNS label. */}}
{{- define "coverage-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. The release name is used alone when it already
contains the chart name, as in the prometheus-community charts.
*/}}
{{- define "coverage-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "coverage-exporter.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "coverage-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "coverage-exporter.labels" -}}
helm.sh/chart: {{ include "coverage-exporter.chart" . }}
{{ include "coverage-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: metrics
app.kubernetes.io/part-of: {{ include "coverage-exporter.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "coverage-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coverage-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "coverage-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "coverage-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "coverage-exporter.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}
{{- end }}

{{/*
A generated file of files/ (tools/chart.py writes them from alerts/ and
dashboards/, and they are committed); rendering fails with the fix when one
is missing, rather than shipping an empty rule group or dashboard.
*/}}
{{- define "coverage-exporter.sourceFile" -}}
{{- $content := .root.Files.Get .path }}
{{- if not $content }}
{{- fail (printf "%s is missing: run `python -m tools.chart files` (it writes the rules and dashboard from alerts/ and dashboards/)" .path) }}
{{- end }}
{{- $content }}
{{- end }}

{{/*
A probe from values, with scheme HTTPS on its httpGet when webConfig.tls is
on (a scheme the probe sets itself wins). Called with (list $ probe).
*/}}
{{- define "coverage-exporter.probe" -}}
{{- $root := index . 0 -}}
{{- $probe := deepCopy (index . 1) -}}
{{- if and $probe.httpGet $root.Values.webConfig.tls (not $probe.httpGet.scheme) -}}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end -}}

{{/*
The namespaced resources the exporter lists and watches: in the ClusterRole
when it reads the whole cluster, in a Role per namespace of scope.namespaces.
*/}}
{{- define "coverage-exporter.namespacedRules" -}}
- apiGroups: [""]
  resources: [services, endpoints, pods]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
- apiGroups: [apps]
  resources: [daemonsets]
  verbs: [list, watch]
{{- if .Values.rbac.events }}
# Kubernetes' Warning events on Endpoints objects, read as evidence beside
# the findings (coverage_exporter/sources/kubernetes/events.py); without it
# the findings stand alone and the audit says the events were not read.
- apiGroups: [""]
  resources: [events]
  verbs: [list]
{{- end }}
{{- end -}}

{{/*
What discovery (coverage_exporter/sources/kubernetes/discovery.py) lists and
watches: the Operator's Prometheus and PrometheusAgent objects, and the pods
that run them (operator.prometheus.io/name, or prometheus.discovery.podSelector).
In the ClusterRole when it looks cluster-wide, in a Role per namespace of
prometheus.discovery.namespaces otherwise; never tied to scope.namespaces,
since the servers seldom live in the namespaces whose Services are judged.
*/}}
{{- define "coverage-exporter.discoveryRules" -}}
- apiGroups: [monitoring.coreos.com]
  resources: [prometheuses, prometheusagents]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
{{- end -}}
