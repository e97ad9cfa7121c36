{{/* The environment of the application containers: ConfigMap, secrets, checksums, /tmp, the migrations wait. */}}

{{/*
Environment of one component's containers: only the secrets celery-fleet.secretsUsedBy gives it,
then django.extraEnv. (dict "ctx" $ "component" "web")

The URLs: the chart composes them, percent-encoded, in the broker's and database's own Secret
whenever it knows the password (set in values, generated, or kept from the last release). A password
in a Secret of yours (auth.existingSecret) is unknown at render time: the kubelet puts it into the
URL as it is ($(VAR) expansion cannot encode), so it must be URL-safe (A-Z a-z 0-9 - _ . ~); or give
the whole URL (external.existingSecret).
*/}}
{{- define "celery-fleet.appEnv" -}}
{{- $ := .ctx }}
{{- $uses := include "celery-fleet.secretsUsedBy" . | fromJsonArray }}
{{- if has "secretKey" $uses }}
- name: SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "celery-fleet.djangoSecretName" $ }}
      key: {{ ternary $.Values.django.existingSecretKey "SECRET_KEY" (not (empty $.Values.django.existingSecret)) }}
{{- end }}
{{- if has "broker" $uses }}
{{- $broker := $.Values.broker }}
{{- if $broker.external.enabled }}
- name: CELERY_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "celery-fleet.secret.fullname" $) $broker.external.existingSecret }}
      key: {{ ternary $broker.external.existingSecretKey "CELERY_BROKER_URL" (not (empty $broker.external.existingSecret)) }}
{{- else if $broker.auth.existingSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $broker.auth.existingSecret }}
      key: {{ $broker.auth.existingSecretKey }}
- name: CELERY_BROKER_URL
  value: "redis://:$(REDIS_PASSWORD)@{{ include "celery-fleet.broker.fullname" $ }}:6379/0"
{{- else }}
- name: CELERY_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "celery-fleet.broker.fullname" $ }}
      key: CELERY_BROKER_URL
{{- end }}
{{- end }}
{{- if has "database" $uses }}
{{- $database := $.Values.database }}
{{- if $database.external.enabled }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "celery-fleet.secret.fullname" $) $database.external.existingSecret }}
      key: {{ ternary $database.external.existingSecretKey "DATABASE_URL" (not (empty $database.external.existingSecret)) }}
{{- else if $database.auth.existingSecret }}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $database.auth.existingSecret }}
      key: {{ $database.auth.existingSecretKey }}
- name: DATABASE_URL
  value: "postgres://{{ include "celery-fleet.urlEscape" $database.auth.username }}:$(DATABASE_PASSWORD)@{{ include "celery-fleet.database.fullname" $ }}:5432/{{ include "celery-fleet.urlEscape" $database.auth.database }}"
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "celery-fleet.database.fullname" $ }}
      key: DATABASE_URL
{{- end }}
{{- end }}
{{- with $.Values.django.extraEnv }}
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
    {{- include "celery-fleet.appEnv" (dict "ctx" . "component" "migrations") | nindent 4 }}
  resources:
    {{- toYaml .Values.migrations.resources | nindent 4 }}
  securityContext:
    {{- include "celery-fleet.securityContext" (dict "ctx" . "override" dict) | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end }}

