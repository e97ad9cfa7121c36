{{/* Worker groups: their values (workers[] over workerDefaults), names, labels, timings and queues. */}}

{{/*
The worker groups as the templates use them: each `workers[]` entry merged over `workerDefaults`
(values.yaml holds every default; nothing is filled in here), plus one derived value, the per-pod
backlog target (`targetBacklogPerWorker`, or targetBacklogPerProcess x concurrency when it is 0).
Use: `(include "celery-fleet.worker.groups" . | fromJson).groups`.
*/}}
{{- define "celery-fleet.worker.groups" -}}
{{- $groups := list }}
{{- range .Values.workers }}
{{- $group := mergeOverwrite (deepCopy $.Values.workerDefaults) (deepCopy .) }}
{{- $a := $group.autoscaling }}
{{- if not (gt (float64 $a.targetBacklogPerWorker) 0.0) }}
{{- $_ := set $a "targetBacklogPerWorker" (mulf $a.targetBacklogPerProcess $group.concurrency) }}
{{- end }}
{{- $groups = append $groups $group }}
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
{{- define "celery-fleet.worker.visibilityTimeout" -}}
{{- if gt (int (.Values.timings.visibilityTimeout | default 0)) 0 }}
{{- int .Values.timings.visibilityTimeout }}
{{- else }}
{{- $max := int .Values.timings.timeLimit }}
{{- range (include "celery-fleet.worker.groups" . | fromJson).groups }}
{{- $t := include "celery-fleet.worker.timings" (dict "ctx" $ "group" .) | fromJson }}
{{- if gt (int $t.timeLimit) $max }}{{ $max = int $t.timeLimit }}{{ end }}
{{- end }}
{{- add $max 30 }}
{{- end }}
{{- end }}

{{/* Every queue of every worker group, comma separated, in order of first appearance. */}}
{{- define "celery-fleet.worker.queues" -}}
{{- $queues := list }}
{{- range (include "celery-fleet.worker.groups" . | fromJson).groups }}{{ range .queues }}{{ $queues = append $queues . }}{{ end }}{{ end }}
{{- $queues | uniq | join "," }}
{{- end }}

