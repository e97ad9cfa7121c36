{{/* Secrets: who gets which, generated values, and the broker and database URLs composed from passwords. */}}

{{/*
The secrets each component's containers receive, the one table of it: the env (celery-fleet.appEnv)
and the NetworkPolicies (who may reach the broker and the database) both read it.
`secretKey` is SECRET_KEY (Django settings need it to import), `broker` CELERY_BROKER_URL,
`database` DATABASE_URL. Beat reads the database only with a database scheduler (django-celery-beat's
or celery_fleet.beat.LockedDatabaseScheduler); the exporter and the deletion-cost controller read
the broker only. Use: `include "celery-fleet.secretsUsedBy" (dict "ctx" $ "component" "beat") | fromJsonArray`.
*/}}
{{- define "celery-fleet.secretsUsedBy" -}}
{{- $beat := list "secretKey" "broker" }}
{{- if contains "DatabaseScheduler" .ctx.Values.beat.scheduler }}{{ $beat = append $beat "database" }}{{ end }}
{{- $table := dict
  "web" (list "secretKey" "broker" "database")
  "worker" (list "secretKey" "broker" "database")
  "beat" $beat
  "migrations" (list "secretKey" "database")
  "exporter" (list "broker")
  "deletion-cost" (list "broker")
  "test" list }}
{{- if not (hasKey $table .component) }}{{ fail (printf "celery-fleet.secretsUsedBy: unknown component %q" .component) }}{{ end }}
{{- get $table .component | toJson }}
{{- end }}

{{/* The components that use a secret ("broker" or "database"), as a JSON list: (dict "ctx" $ "secret" "broker"). */}}
{{- define "celery-fleet.componentsUsing" -}}
{{- $users := list }}
{{- range $component := list "web" "worker" "beat" "migrations" "exporter" "deletion-cost" }}
{{- if has $.secret (include "celery-fleet.secretsUsedBy" (dict "ctx" $.ctx "component" $component) | fromJsonArray) }}
{{- $users = append $users $component }}
{{- end }}
{{- end }}
{{- $users | toJson }}
{{- end }}

{{/*
A secret value generated once and kept across upgrades, base64: (dict "ctx" $ "name" "obj" "key" "k"
"value" "explicit" "length" 64). An explicit value wins; else the value already in the Secret `name`
(lookup, so upgrades keep it); else `length` random alphanumerics.
*/}}
{{- define "celery-fleet.keptSecretValue" -}}
{{- if .value }}
{{- .value | b64enc }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- randAlphaNum (int (.length | default 40)) | b64enc }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A URL userinfo part, percent-encoded: every byte but A-Z a-z 0-9 - _ . ~ (Go's urlquery, with its
"+" for a space turned into "%20": in userinfo "+" is a plus). kombu and dj_database_url unquote it.
*/}}
{{- define "celery-fleet.urlEscape" -}}
{{- urlquery . | replace "+" "%20" }}
{{- end }}

{{/* CELERY_BROKER_URL of the bundled Redis for a password: (dict "ctx" $ "password" "p"). */}}
{{- define "celery-fleet.broker.url" -}}
{{- printf "redis://:%s@%s:6379/0" (include "celery-fleet.urlEscape" .password) (include "celery-fleet.broker.fullname" .ctx) }}
{{- end }}

{{/* DATABASE_URL of the bundled PostgreSQL for a password: (dict "ctx" $ "password" "p"). */}}
{{- define "celery-fleet.database.url" -}}
{{- $auth := .ctx.Values.database.auth }}
{{- printf "postgres://%s:%s@%s:5432/%s" (include "celery-fleet.urlEscape" $auth.username) (include "celery-fleet.urlEscape" .password) (include "celery-fleet.database.fullname" .ctx) (include "celery-fleet.urlEscape" $auth.database) }}
{{- end }}

{{- define "celery-fleet.djangoSecretName" -}}
{{- default (include "celery-fleet.secret.fullname" .) .Values.django.existingSecret }}
{{- end }}
