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

{{/* Defaults of every worker group's keys; a group in values only needs name and queues. */}}
{{- define "celery-fleet.worker.groupDefaults" -}}
concurrency: 1
replicaCount: 1
timings: {}
resources: {}
autoscaling:
  mode: none
  minReplicas: 1
  maxReplicas: 10
  targetBacklogPerWorker: 2
  targetOldestAgeSeconds: 0
  activationBacklog: 0
  pollingInterval: 5
  cooldownPeriod: 60
  fallback: {failureThreshold: 3, replicas: 1}
  prometheus: {serverAddress: "http://prometheus-operated.monitoring.svc:9090", query: ""}
  behavior:
    scaleUp:
      stabilizationWindowSeconds: 0
      selectPolicy: Max
      policies:
        - {type: Percent, value: 100, periodSeconds: 10}
        - {type: Pods, value: 10, periodSeconds: 10}
    scaleDown:
      stabilizationWindowSeconds: 30
      selectPolicy: Max
      policies:
        - {type: Percent, value: 100, periodSeconds: 15}
pdb: {enabled: true, maxUnavailable: 1}
podAnnotations: {}
podLabels: {}
nodeSelector: {}
tolerations: []
affinity: {}
extraEnv: []
{{- end }}

{{/* The worker groups with defaults filled in: `(include "celery-fleet.workerGroups" . | fromJson).groups`. */}}
{{- define "celery-fleet.workerGroups" -}}
{{- $groups := list }}
{{- range .Values.workers }}
{{- $groups = append $groups (mergeOverwrite (include "celery-fleet.worker.groupDefaults" $ | fromYaml) (deepCopy .)) }}
{{- end }}
{{- dict "groups" $groups | toJson }}
{{- end }}

{{/* Worker group: (dict "ctx" $ "group" $group). */}}
{{- define "celery-fleet.worker.fullname" -}}{{ include "celery-fleet.fullname" .ctx }}-worker-{{ .group.name }}{{- end }}
{{- define "celery-fleet.worker.labels" -}}
{{ include "celery-fleet.componentLabels" (dict "ctx" .ctx "component" "worker") }}
celery-fleet/worker-group: {{ .group.name }}
{{- end }}
{{- define "celery-fleet.worker.selectorLabels" -}}
{{ include "celery-fleet.componentSelectorLabels" (dict "ctx" .ctx "component" "worker") }}
celery-fleet/worker-group: {{ .group.name }}
{{- end }}

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

{{/* ---------------------------------------------------------------- timings */}}

{{/* Effective timings of a worker group as JSON: (dict "ctx" $ "group" $group). Same rules as celery_fleet.timings. */}}
{{- define "celery-fleet.worker.timings" -}}
{{- $t := mergeOverwrite (deepCopy .ctx.Values.timings) (deepCopy (.group.timings | default dict)) -}}
{{- $drain := int $t.drainWindow -}}
{{- $grace := add $drain 10 -}}
{{- if gt (int ($t.terminationGracePeriodSeconds | default 0)) 0 }}{{ $grace = int $t.terminationGracePeriodSeconds }}{{ end -}}
{{- dict "softTimeLimit" (int $t.softTimeLimit) "timeLimit" (int $t.timeLimit) "drainWindow" $drain "gracePeriod" $grace | toJson -}}
{{- end }}

{{/* The fleet's visibility timeout: set, or the largest timeLimit of every group (and the defaults) + 30. */}}
{{- define "celery-fleet.visibilityTimeout" -}}
{{- if gt (int (.Values.timings.visibilityTimeout | default 0)) 0 }}
{{- int .Values.timings.visibilityTimeout }}
{{- else }}
{{- $max := int .Values.timings.timeLimit }}
{{- range (include "celery-fleet.workerGroups" . | fromJson).groups }}
{{- $t := include "celery-fleet.worker.timings" (dict "ctx" $ "group" .) | fromJson }}
{{- if gt (int $t.timeLimit) $max }}{{ $max = int $t.timeLimit }}{{ end }}
{{- end }}
{{- add $max 30 }}
{{- end }}
{{- end }}

{{/* Every queue of every worker group, comma separated, in order of first appearance. */}}
{{- define "celery-fleet.allQueues" -}}
{{- $queues := list }}
{{- range (include "celery-fleet.workerGroups" . | fromJson).groups }}{{ range .queues }}{{ $queues = append $queues . }}{{ end }}{{ end }}
{{- $queues | uniq | join "," }}
{{- end }}

{{/* ---------------------------------------------------------------- environment */}}

{{- define "celery-fleet.djangoSecretName" -}}
{{- default (include "celery-fleet.secret.fullname" .) .Values.django.existingSecret }}
{{- end }}

{{/* Environment of every application container: config, secrets, broker and database URLs. */}}
{{- define "celery-fleet.appEnv" -}}
- name: SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "celery-fleet.djangoSecretName" . }}
      key: {{ ternary .Values.django.existingSecretKey "SECRET_KEY" (not (empty .Values.django.existingSecret)) }}
{{- if .Values.broker.external.enabled }}
- name: CELERY_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "celery-fleet.secret.fullname" .) .Values.broker.external.existingSecret }}
      key: {{ ternary .Values.broker.external.existingSecretKey "CELERY_BROKER_URL" (not (empty .Values.broker.external.existingSecret)) }}
{{- else }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "celery-fleet.broker.fullname" .) .Values.broker.auth.existingSecret }}
      key: {{ .Values.broker.auth.existingSecretKey }}
- name: CELERY_BROKER_URL
  value: "redis://:$(REDIS_PASSWORD)@{{ include "celery-fleet.broker.fullname" . }}:6379/0"
{{- end }}
{{- if .Values.database.external.enabled }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "celery-fleet.secret.fullname" .) .Values.database.external.existingSecret }}
      key: {{ ternary .Values.database.external.existingSecretKey "DATABASE_URL" (not (empty .Values.database.external.existingSecret)) }}
{{- else }}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "celery-fleet.database.fullname" .) .Values.database.auth.existingSecret }}
      key: {{ .Values.database.auth.existingSecretKey }}
- name: DATABASE_URL
  value: "postgres://{{ .Values.database.auth.username }}:$(DATABASE_PASSWORD)@{{ include "celery-fleet.database.fullname" . }}:5432/{{ .Values.database.auth.database }}"
{{- end }}
{{- with .Values.django.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "celery-fleet.envFrom" -}}
- configMapRef:
    name: {{ include "celery-fleet.config.fullname" . }}
{{- end }}

{{/* Pod annotations that roll the pods when the config or the app secret changes. */}}
{{- define "celery-fleet.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/common/configmap.yaml") . | sha256sum }}
{{- /* The secret's inputs, not its rendered text: a generated value would change the hash on every render. */}}
checksum/secret: {{ dict "django" .Values.django "broker" (pick .Values.broker "external" "auth") "database" (pick .Values.database "external" "auth") | toJson | sha256sum }}
{{- end }}

{{/* Volumes every application pod mounts: /tmp (read-only root filesystem). */}}
{{- define "celery-fleet.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end }}

{{/* A command list as one line of sh words, each single-quoted (values are never shell-interpreted). */}}
{{- define "celery-fleet.shellWords" -}}
{{- $words := list -}}
{{- range . }}{{ $words = append $words (printf "'%s'" (replace "'" "'\\''" .)) }}{{ end -}}
{{- join " " $words -}}
{{- end }}

{{/* initContainer: wait until the migrations Job has migrated the database (web and workers). */}}
{{- define "celery-fleet.waitForMigrations" -}}
{{- if and .Values.migrations.enabled .Values.migrations.waitInInitContainers }}
- name: wait-for-migrations
  image: {{ include "celery-fleet.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - sh
    - -c
    - |
      until {{ include "celery-fleet.shellWords" .Values.migrations.checkCommand }} >/dev/null 2>&1; do
        echo "waiting for the database migrations"
        sleep 5
      done
  envFrom:
    {{- include "celery-fleet.envFrom" . | nindent 4 }}
  env:
    {{- include "celery-fleet.appEnv" . | nindent 4 }}
  resources:
    {{- toYaml .Values.migrations.resources | nindent 4 }}
  securityContext:
    {{- include "celery-fleet.securityContext" (dict "ctx" . "override" dict) | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- validation */}}

{{/* Fails the render with a clear message on inconsistent timings or missing secrets. */}}
{{- define "celery-fleet.validateValues" -}}
{{- $errors := list }}
{{- $visibility := int (include "celery-fleet.visibilityTimeout" .) }}
{{- $seen := dict }}
{{- $defaults := include "celery-fleet.worker.timings" (dict "ctx" . "group" (dict)) | fromJson }}
{{- if ge (int $defaults.softTimeLimit) (int $defaults.timeLimit) }}
{{- $errors = append $errors (printf "timings: softTimeLimit (%ds) must be below timeLimit (%ds) so the task gets SoftTimeLimitExceeded before it is killed" (int $defaults.softTimeLimit) (int $defaults.timeLimit)) }}
{{- end }}
{{- if lt $visibility (add (int $defaults.timeLimit) 30) }}
{{- $errors = append $errors (printf "timings: visibilityTimeout (%ds) must be at least timeLimit (%ds) + 30s, or Redis redelivers tasks that are still running" $visibility (int $defaults.timeLimit)) }}
{{- end }}
{{- if not .Values.workers }}
{{- $errors = append $errors "workers: at least one worker group is needed" }}
{{- end }}
{{- range (include "celery-fleet.workerGroups" . | fromJson).groups }}
{{- $t := include "celery-fleet.worker.timings" (dict "ctx" $ "group" .) | fromJson }}
{{- $g := printf "workers[%s]" .name }}
{{- if ge (int $t.softTimeLimit) (int $t.timeLimit) }}
{{- $errors = append $errors (printf "%s: softTimeLimit (%ds) must be below timeLimit (%ds) so the task gets SoftTimeLimitExceeded before it is killed" $g (int $t.softTimeLimit) (int $t.timeLimit)) }}
{{- end }}
{{- if lt (int $t.gracePeriod) (add (int $t.drainWindow) 10) }}
{{- $errors = append $errors (printf "%s: terminationGracePeriodSeconds (%ds) must be at least drainWindow (%ds) + 10s, or the worker is SIGKILLed before it can requeue its tasks" $g (int $t.gracePeriod) (int $t.drainWindow)) }}
{{- end }}
{{- if lt $visibility (add (int $t.timeLimit) 30) }}
{{- $errors = append $errors (printf "%s: visibilityTimeout (%ds) must be at least timeLimit (%ds) + 30s, or Redis redelivers tasks that are still running" $g $visibility (int $t.timeLimit)) }}
{{- end }}
{{- $mode := .autoscaling.mode | default "none" }}
{{- if and (eq $mode "keda") (lt (int .autoscaling.cooldownPeriod) (int $t.drainWindow)) }}
{{- $errors = append $errors (printf "%s: autoscaling.cooldownPeriod (%ds) must be at least the drain window (%ds)" $g (int .autoscaling.cooldownPeriod) (int $t.drainWindow)) }}
{{- end }}
{{- if and (ne $mode "none") (gt (int .autoscaling.minReplicas) (int .autoscaling.maxReplicas)) }}
{{- $errors = append $errors (printf "%s: autoscaling.minReplicas (%d) is above maxReplicas (%d)" $g (int .autoscaling.minReplicas) (int .autoscaling.maxReplicas)) }}
{{- end }}
{{- if and (eq $mode "hpa") (lt (int .autoscaling.minReplicas) 1) }}
{{- $errors = append $errors (printf "%s: autoscaling.minReplicas must be at least 1 with mode hpa (use keda to scale to zero)" $g) }}
{{- end }}
{{- range .queues }}
{{- if hasKey $seen . }}
{{- $errors = append $errors (printf "workers: queue %q is consumed by both %s and %s; give each queue to one group" . (get $seen .) $g) }}
{{- else }}
{{- $_ := set $seen . $g }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.beat.enabled (not (hasKey $seen "periodic")) }}
{{- $errors = append $errors "beat: beat.enabled is true but no worker group consumes the \"periodic\" queue; add it to a group's queues" }}
{{- end }}
{{- if le (int .Values.web.terminationGracePeriodSeconds) (add (int .Values.web.preStopSleepSeconds) (int .Values.web.gracefulTimeout)) }}
{{- $errors = append $errors (printf "web: terminationGracePeriodSeconds (%ds) must exceed preStopSleepSeconds (%ds) + gracefulTimeout (%ds)" (int .Values.web.terminationGracePeriodSeconds) (int .Values.web.preStopSleepSeconds) (int .Values.web.gracefulTimeout)) }}
{{- end }}
{{- if and (not .Values.django.secretKey) (not .Values.django.existingSecret) (not .Values.django.generateSecretKey) }}
{{- $errors = append $errors "django: no SECRET_KEY: set django.secretKey or django.existingSecret (or django.generateSecretKey: true)" }}
{{- end }}
{{- if and .Values.broker.external.enabled (not .Values.broker.external.url) (not .Values.broker.external.existingSecret) }}
{{- $errors = append $errors "broker: broker.external.enabled is true but neither broker.external.url nor broker.external.existingSecret is set" }}
{{- end }}
{{- if and .Values.database.external.enabled (not .Values.database.external.url) (not .Values.database.external.existingSecret) }}
{{- $errors = append $errors "database: database.external.enabled is true but neither database.external.url nor database.external.existingSecret is set" }}
{{- end }}
{{- if $errors }}
{{- fail (printf "\n\ncelery-fleet: invalid values:\n  - %s\n" (join "\n  - " $errors)) }}
{{- end }}
{{- end }}

{{/* A secret value generated once and kept across upgrades: (dict "ctx" $ "name" "obj" "key" "k" "value" "explicit"). */}}
{{- define "celery-fleet.keptSecretValue" -}}
{{- if .value }}
{{- .value | b64enc }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- randAlphaNum 40 | b64enc }}
{{- end }}
{{- end }}
{{- end }}
