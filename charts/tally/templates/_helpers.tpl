{{/*
Names, labels and images shared by every template.
*/}}

{{/* The chart name (app.kubernetes.io/name). */}}
{{- define "tally.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The base name of every resource: fullnameOverride, else the release name when it
contains the chart name, else "<release>-<chart>". Truncated so that the longest
suffix ("-operator-leader-election") still fits 63 characters.
*/}}
{{- define "tally.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 38 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 38 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 38 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* helm.sh/chart: "<chart>-<version>". */}}
{{- define "tally.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every resource of the release carries. */}}
{{- define "tally.commonLabels" -}}
helm.sh/chart: {{ include "tally.chart" . }}
app.kubernetes.io/name: {{ include "tally.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tally
{{- end }}

{{/*
Labels of one component: (dict "root" $ "component" "operator").
*/}}
{{- define "tally.labels" -}}
{{ include "tally.commonLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Selector labels of one component (stable across upgrades):
(dict "root" $ "component" "operator").
*/}}
{{- define "tally.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tally.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The operator's resource name: Deployment, Service, ClusterRole... */}}
{{- define "tally.operator.fullname" -}}
{{- printf "%s-operator" (include "tally.fullname" .) }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "tally.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tally.operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Lease the operator elects its leader with. The operator fixes this name (in the
namespace from POD_NAMESPACE); the Role grants access to it only.
*/}}
{{- define "tally.leaseName" -}}
tally-operator
{{- end }}

{{- define "tally.nats.fullname" -}}
{{- printf "%s-nats" (include "tally.fullname" .) }}
{{- end }}

{{- define "tally.clickhouse.fullname" -}}
{{- printf "%s-clickhouse" (include "tally.fullname" .) }}
{{- end }}

{{/*
A Tally image reference: (dict "root" $ "image" .Values.collectorImage).
Registry defaults to image.registry, tag to the appVersion; a digest wins over the tag.
*/}}
{{- define "tally.image" -}}
{{- $root := .root }}
{{- $registry := .image.registry | default $root.Values.image.registry | trimSuffix "/" }}
{{- $ref := .image.repository }}
{{- if $registry }}
{{- $ref = printf "%s/%s" $registry $ref }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $ref .image.digest }}
{{- else }}
{{- printf "%s:%s" $ref (.image.tag | default $root.Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
A third-party image reference (NATS, ClickHouse): (dict "image" .Values.nats.image).
*/}}
{{- define "tally.thirdPartyImage" -}}
{{- $ref := .image.repository }}
{{- with .image.registry }}
{{- $ref = printf "%s/%s" (trimSuffix "/" .) $ref }}
{{- end }}
{{- printf "%s:%s" $ref (toString .image.tag) }}
{{- end }}

{{/* In-cluster URLs of the trial servers (for NOTES.txt). */}}
{{- define "tally.nats.url" -}}
{{- printf "nats://%s.%s.svc.%s:%v" (include "tally.nats.fullname" .) .Release.Namespace .Values.clusterDomain .Values.nats.service.clientPort }}
{{- end }}

{{- define "tally.clickhouse.url" -}}
{{- printf "http://%s.%s.svc.%s:%v" (include "tally.clickhouse.fullname" .) .Release.Namespace .Values.clusterDomain .Values.clickhouse.service.httpPort }}
{{- end }}
