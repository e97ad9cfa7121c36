{{/*
Values checks the schema cannot express. celery-fleet.validateValues runs every check below and
fails the render once, listing every problem. Each check prints a JSON list of messages; add a check
by defining `celery-fleet.validate.<name>` and naming it in the list.
*/}}
{{- define "celery-fleet.validateValues" -}}
{{- $errors := list }}
{{- range $check := list "timings" "workerGroups" "queues" "web" "https" "secrets" }}
{{- $errors = concat $errors (include (printf "celery-fleet.validate.%s" $check) $ | fromJsonArray) }}
{{- end }}
{{- if $errors }}
{{- fail (printf "\n\ncelery-fleet: invalid values:\n  - %s\n" (join "\n  - " $errors)) }}
{{- end }}
{{- end }}

{{/* The timing rules of celery_fleet.timings for one set of timings: (dict "where" "timings" "t" $t "visibility" 330). */}}
{{- define "celery-fleet.validate.timingRules" -}}
{{- $errors := list }}
{{- $t := .t }}
{{- if ge (int $t.softTimeLimit) (int $t.timeLimit) }}
{{- $errors = append $errors (printf "%s: softTimeLimit (%ds) must be below timeLimit (%ds) so the task gets SoftTimeLimitExceeded before it is killed" .where (int $t.softTimeLimit) (int $t.timeLimit)) }}
{{- end }}
{{- if lt (int $t.gracePeriod) (add (int $t.drainWindow) 10) }}
{{- $errors = append $errors (printf "%s: terminationGracePeriodSeconds (%ds) must be at least drainWindow (%ds) + 10s, or the worker is SIGKILLed before it can requeue its tasks" .where (int $t.gracePeriod) (int $t.drainWindow)) }}
{{- end }}
{{- if lt (int .visibility) (add (int $t.timeLimit) 30) }}
{{- $errors = append $errors (printf "%s: visibilityTimeout (%ds) must be at least timeLimit (%ds) + 30s, or Redis redelivers tasks that are still running" .where (int .visibility) (int $t.timeLimit)) }}
{{- end }}
{{- $errors | toJson }}
{{- end }}

{{/* The fleet-wide timings (top-level `timings`). */}}
{{- define "celery-fleet.validate.timings" -}}
{{- $t := include "celery-fleet.worker.timings" (dict "ctx" . "group" dict) | fromJson }}
{{- include "celery-fleet.validate.timingRules" (dict "where" "timings" "t" $t "visibility" (include "celery-fleet.worker.visibilityTimeout" .)) }}
{{- end }}

{{/* Every worker group: its timings, and autoscaling bounds that KEDA or the HPA would refuse or misuse. */}}
{{- define "celery-fleet.validate.workerGroups" -}}
{{- $errors := list }}
{{- $visibility := include "celery-fleet.worker.visibilityTimeout" . }}
{{- range (include "celery-fleet.worker.groups" . | fromJson).groups }}
{{- $g := printf "workers[%s]" .name }}
{{- $t := include "celery-fleet.worker.timings" (dict "ctx" $ "group" .) | fromJson }}
{{- $errors = concat $errors (include "celery-fleet.validate.timingRules" (dict "where" $g "t" $t "visibility" $visibility) | fromJsonArray) }}
{{- $a := .autoscaling }}
{{- if and (eq $a.mode "keda") (lt (int $a.cooldownPeriod) (int $t.drainWindow)) }}
{{- $errors = append $errors (printf "%s: autoscaling.cooldownPeriod (%ds) must be at least the drain window (%ds)" $g (int $a.cooldownPeriod) (int $t.drainWindow)) }}
{{- end }}
{{- if and (ne $a.mode "none") (gt (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- $errors = append $errors (printf "%s: autoscaling.minReplicas (%d) is above maxReplicas (%d)" $g (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- end }}
{{- end }}
{{- $errors | toJson }}
{{- end }}

{{/* Each queue is consumed by one group (two would split its backlog between two scalers), and beat's queue by one. */}}
{{- define "celery-fleet.validate.queues" -}}
{{- $errors := list }}
{{- $seen := dict }}
{{- range .Values.workers }}
{{- $g := printf "workers[%s]" .name }}
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
{{- $errors | toJson }}
{{- end }}

{{/* The web pod's grace period covers the preStop sleep and gunicorn's graceful drain. */}}
{{- define "celery-fleet.validate.web" -}}
{{- $errors := list }}
{{- $w := .Values.web }}
{{- if le (int $w.terminationGracePeriodSeconds) (add (int $w.preStopSleepSeconds) (int $w.gracefulTimeout)) }}
{{- $errors = append $errors (printf "web: terminationGracePeriodSeconds (%ds) must exceed preStopSleepSeconds (%ds) + gracefulTimeout (%ds)" (int $w.terminationGracePeriodSeconds) (int $w.preStopSleepSeconds) (int $w.gracefulTimeout)) }}
{{- end }}
{{- $errors | toJson }}
{{- end }}

{{/* HTTPS on needs a trusted proxy: gunicorn would see every request as plain HTTP and the SSL redirect would never end. */}}
{{- define "celery-fleet.validate.https" -}}
{{- $errors := list }}
{{- if and (include "celery-fleet.web.https" .) (not .Values.web.proxy.trustedIPs) }}
{{- $errors = append $errors "web: HTTPS is on (django.https.enabled, or web.ingress.tls) but web.proxy.trustedIPs is empty: gunicorn would trust no proxy's X-Forwarded-Proto, every request would look like plain HTTP and SECURE_SSL_REDIRECT would redirect it forever; set web.proxy.trustedIPs to the ingress controller's pod CIDR (or django.https.enabled: false)" }}
{{- end }}
{{- $errors | toJson }}
{{- end }}

{{/* Every secret has a source. */}}
{{- define "celery-fleet.validate.secrets" -}}
{{- $errors := list }}
{{- if and (not .Values.django.secretKey) (not .Values.django.existingSecret) (not .Values.django.generateSecretKey) }}
{{- $errors = append $errors "django: no SECRET_KEY: set django.secretKey or django.existingSecret (or django.generateSecretKey: true)" }}
{{- end }}
{{- if and .Values.broker.external.enabled (not .Values.broker.external.url) (not .Values.broker.external.existingSecret) }}
{{- $errors = append $errors "broker: broker.external.enabled is true but neither broker.external.url nor broker.external.existingSecret is set" }}
{{- end }}
{{- if and .Values.database.external.enabled (not .Values.database.external.url) (not .Values.database.external.existingSecret) }}
{{- $errors = append $errors "database: database.external.enabled is true but neither database.external.url nor database.external.existingSecret is set" }}
{{- end }}
{{- $errors | toJson }}
{{- end }}
