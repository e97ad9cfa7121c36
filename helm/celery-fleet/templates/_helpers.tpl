{{/* ---------------------------------------------------------------- names */}}

{{- define "celery-fleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release full name, the prefix of every object (max 40 chars leaves room for suffixes). */}}
{{- define "celery-fleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "celery-fleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Recommended labels, on every object. */}}
{{- define "celery-fleet.labels" -}}
helm.sh/chart: {{ include "celery-fleet.chart" . }}
{{ include "celery-fleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: celery-fleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "celery-fleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "celery-fleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "web"). */}}
{{- define "celery-fleet.componentLabels" -}}
{{ include "celery-fleet.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "celery-fleet.componentSelectorLabels" -}}
{{ include "celery-fleet.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "celery-fleet.web.fullname" -}}{{ include "celery-fleet.fullname" . }}-web{{- end }}
{{- define "celery-fleet.web.labels" -}}{{ include "celery-fleet.componentLabels" (dict "ctx" . "component" "web") }}{{- end }}
{{- define "celery-fleet.web.selectorLabels" -}}{{ include "celery-fleet.componentSelectorLabels" (dict "ctx" . "component" "web") }}{{- end }}

{{- define "celery-fleet.broker.fullname" -}}{{ include "celery-fleet.fullname" . }}-broker{{- end }}
{{- define "celery-fleet.broker.labels" -}}{{ include "celery-fleet.componentLabels" (dict "ctx" . "component" "broker") }}{{- end }}
{{- define "celery-fleet.broker.selectorLabels" -}}{{ include "celery-fleet.componentSelectorLabels" (dict "ctx" . "component" "broker") }}{{- end }}

{{- define "celery-fleet.database.fullname" -}}{{ include "celery-fleet.fullname" . }}-database{{- end }}
{{- define "celery-fleet.database.labels" -}}{{ include "celery-fleet.componentLabels" (dict "ctx" . "component" "database") }}{{- end }}
{{- define "celery-fleet.database.selectorLabels" -}}{{ include "celery-fleet.componentSelectorLabels" (dict "ctx" . "component" "database") }}{{- end }}

{{- define "celery-fleet.beat.fullname" -}}{{ include "celery-fleet.fullname" . }}-beat{{- end }}
{{- define "celery-fleet.beat.labels" -}}{{ include "celery-fleet.componentLabels" (dict "ctx" . "component" "beat") }}{{- end }}
{{- define "celery-fleet.beat.selectorLabels" -}}{{ include "celery-fleet.componentSelectorLabels" (dict "ctx" . "component" "beat") }}{{- end }}

{{/* The exporter's name contains "celery-exporter" so celery-exporter's dashboards and rules match it. */}}
{{- define "celery-fleet.exporter.fullname" -}}{{ include "celery-fleet.fullname" . }}-celery-exporter{{- end }}
{{- define "celery-fleet.exporter.labels" -}}{{ include "celery-fleet.componentLabels" (dict "ctx" . "component" "exporter") }}{{- end }}
{{- define "celery-fleet.exporter.selectorLabels" -}}{{ include "celery-fleet.componentSelectorLabels" (dict "ctx" . "component" "exporter") }}{{- end }}

{{- define "celery-fleet.migrations.fullname" -}}{{ include "celery-fleet.fullname" . }}-migrate-{{ .Release.Revision }}{{- end }}
{{- define "celery-fleet.migrations.labels" -}}{{ include "celery-fleet.componentLabels" (dict "ctx" . "component" "migrations") }}{{- end }}
{{- define "celery-fleet.migrations.selectorLabels" -}}{{ include "celery-fleet.componentSelectorLabels" (dict "ctx" . "component" "migrations") }}{{- end }}

{{- define "celery-fleet.deletionCost.fullname" -}}{{ include "celery-fleet.fullname" . }}-deletion-cost{{- end }}
{{- define "celery-fleet.deletionCost.labels" -}}{{ include "celery-fleet.componentLabels" (dict "ctx" . "component" "deletion-cost") }}{{- end }}
{{- define "celery-fleet.deletionCost.selectorLabels" -}}{{ include "celery-fleet.componentSelectorLabels" (dict "ctx" . "component" "deletion-cost") }}{{- end }}

{{- define "celery-fleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "celery-fleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "celery-fleet.config.fullname" -}}{{ include "celery-fleet.fullname" . }}-config{{- end }}
{{- define "celery-fleet.secret.fullname" -}}{{ include "celery-fleet.fullname" . }}-app{{- end }}

{{- define "celery-fleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* ---------------------------------------------------------------- security */}}

{{/* (dict "ctx" $ "override" .Values.web.podSecurityContext) */}}
{{- define "celery-fleet.podSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .ctx.Values.podSecurityContext) (deepCopy (.override | default dict))) }}
{{- end }}

{{- define "celery-fleet.securityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .ctx.Values.securityContext) (deepCopy (.override | default dict))) }}
{{- end }}

