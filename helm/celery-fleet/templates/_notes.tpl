{{/* NOTES.txt renders this; a define so tests can render it with `helm template` too. */}}
{{- define "celery-fleet.notes" -}}
celery-fleet {{ .Chart.AppVersion }} is installed as release {{ .Release.Name }} in namespace {{ .Release.Namespace }}.

Open the site:
{{- if .Values.web.ingress.enabled }}
{{- range .Values.web.ingress.hosts }}
  http{{ if $.Values.web.ingress.tls }}s{{ end }}://{{ .host }}/
{{- end }}
{{- else }}
  kubectl --namespace {{ .Release.Namespace }} port-forward service/{{ include "celery-fleet.web.fullname" . }} 8000:{{ .Values.web.service.port }}
  then browse http://localhost:8000/ (API docs: http://localhost:8000/api/docs/)
{{- end }}

Migrations run in Job {{ include "celery-fleet.migrations.fullname" . }}; web and worker pods wait for it:
  kubectl --namespace {{ .Release.Namespace }} logs job/{{ include "celery-fleet.migrations.fullname" . }}

Worker groups:
{{- range (include "celery-fleet.worker.groups" . | fromJson).groups }}
  {{ include "celery-fleet.worker.fullname" (dict "ctx" $ "group" .) }}: queues {{ join "," .queues }}, autoscaling {{ .autoscaling.mode }}
{{- end }}
{{- if .Values.exporter.enabled }}

Queue metrics:
  kubectl --namespace {{ .Release.Namespace }} port-forward service/{{ include "celery-fleet.exporter.fullname" . }} {{ .Values.exporter.port }}
  curl -s http://localhost:{{ .Values.exporter.port }}/metrics | grep celery_fleet_queue_backlog
{{- if .Values.exporter.dashboard.enabled }}

Dashboard: ConfigMap {{ include "celery-fleet.fullname" . }}-dashboards (label grafana_dashboard="1") is loaded by
Grafana's dashboard sidecar; open Grafana, e.g.
  kubectl --namespace monitoring port-forward service/kube-prometheus-stack-grafana 3000:80
and pick the dashboard "celery-fleet".
{{- end }}
{{- end }}

Check the whole fleet end to end (submits a job through the API and waits for it):
  helm test {{ .Release.Name }} --namespace {{ .Release.Namespace }}
{{- end }}
