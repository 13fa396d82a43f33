{{/* The chart name, overridable. */}}
{{- define "smartspec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: the release name, with the chart name appended unless the release
name already contains it (release "smartspec" -> "smartspec"). Truncated so suffixes still fit 63.
*/}}
{{- define "smartspec.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "smartspec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "smartspec.labels" -}}
helm.sh/chart: {{ include "smartspec.chart" . }}
app.kubernetes.io/name: {{ include "smartspec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: smartspec
{{- end }}

{{/* Selector labels of one component: include "smartspec.selectorLabels" (list $ "operator"). */}}
{{- define "smartspec.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "smartspec.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* repository:tag of images.<role>, the tag defaulting to the chart's appVersion: include "smartspec.image" (list $ "target"). */}}
{{- define "smartspec.image" -}}
{{- $root := index . 0 }}
{{- $image := index $root.Values.images (index . 1) }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}

{{- define "smartspec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "smartspec.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Redis every SpeculativeService without spec.redis uses; a cluster DNS name so pods in any namespace reach it. */}}
{{- define "smartspec.redisUrl" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s-redis.%s.svc:6379" (include "smartspec.fullname" .) .Release.Namespace }}
{{- else }}
{{- required "externalRedis.url is required when redis.enabled is false" .Values.externalRedis.url }}
{{- end }}
{{- end }}

{{/* Pod securityContext: non-root, RuntimeDefault seccomp; ids from a podSecurityContext value. */}}
{{- define "smartspec.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
fsGroup: {{ .fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container securityContext of every container the chart runs. */}}
{{- define "smartspec.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Namespaces the operator watches (JSON list): watchNamespaces; else [] (all) with clusterWide; else the release's. */}}
{{- define "smartspec.watchedNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}{{ toJson .Values.operator.watchNamespaces }}
{{- else if .Values.operator.clusterWide }}[]
{{- else }}{{ toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/* Namespaces the default SpeculationPolicy goes to: defaultPolicy.namespaces, else the watched ones, else the release's. */}}
{{- define "smartspec.defaultPolicyNamespaces" -}}
{{- $watched := include "smartspec.watchedNamespaces" . | fromJsonArray }}
{{- $ns := .Values.defaultPolicy.namespaces | default $watched | default (list .Release.Namespace) }}
{{- toJson $ns }}
{{- end }}
