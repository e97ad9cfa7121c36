{{/* NetworkPolicy rules: who may reach the broker and the database (the users of their secrets), and egress. */}}

{{/*
Ingress rule: the release's pods of the components that use a secret ("broker" or "database",
celery-fleet.secretsUsedBy), on one named port. (dict "ctx" $ "secret" "broker" "port" "redis")
*/}}
{{- define "celery-fleet.networkPolicy.fromUsersOf" -}}
- from:
    - podSelector:
        matchLabels:
          {{- include "celery-fleet.selectorLabels" .ctx | nindent 10 }}
        matchExpressions:
          - key: app.kubernetes.io/component
            operator: In
            values: {{ include "celery-fleet.componentsUsing" . }}
  ports:
    - port: {{ .port }}
      protocol: TCP
{{- end }}

{{/* Whether a component's egress is restricted: (dict "ctx" $ "component" "beat"). Prints "true" or nothing. */}}
{{- define "celery-fleet.networkPolicy.restrictsEgress" -}}
{{- $egress := .ctx.Values.networkPolicy.egress }}
{{- if and $egress.enabled (or (has .component (list "beat" "exporter" "migrations" "test")) (and $egress.appPods (has .component (list "web" "worker")))) }}true{{ end }}
{{- end }}

{{/*
Egress rules of a component: DNS (port 53 anywhere: kube-dns, CoreDNS or a node-local cache), the
bundled broker and database if it uses them (an external one: anywhere, its address may sit in a
Secret), the web pods for the helm test, then networkPolicy.egress.extraRules.
(dict "ctx" $ "component" "beat")
*/}}
{{- define "celery-fleet.networkPolicy.egress" -}}
{{- $ := .ctx }}
{{- $uses := include "celery-fleet.secretsUsedBy" . | fromJsonArray }}
{{- $tcp := dict "protocol" "TCP" }}
{{- $rules := list (dict "ports" (list (dict "port" 53 "protocol" "UDP") (dict "port" 53 "protocol" "TCP"))) }}
{{- range $service := list "broker" "database" }}
{{- if has $service $uses }}
{{- if (index $.Values $service).external.enabled }}
{{- $rules = append $rules dict }}
{{- else }}
{{- $pods := include (printf "celery-fleet.%s.selectorLabels" $service) $ | fromYaml }}
{{- $port := ternary 6379 5432 (eq $service "broker") }}
{{- $rules = append $rules (dict "to" (list (dict "podSelector" (dict "matchLabels" $pods))) "ports" (list (merge (dict "port" $port) $tcp))) }}
{{- end }}
{{- end }}
{{- end }}
{{- if eq .component "test" }}
{{- $pods := include "celery-fleet.web.selectorLabels" $ | fromYaml }}
{{- $rules = append $rules (dict "to" (list (dict "podSelector" (dict "matchLabels" $pods))) "ports" (list (merge (dict "port" (int $.Values.web.port)) $tcp))) }}
{{- end }}
{{- concat $rules $.Values.networkPolicy.egress.extraRules | uniq | toYaml }}
{{- end }}

{{/* policyTypes (Ingress always, Egress when restricted) and egress rules of a component's policy: (dict "ctx" $ "component" "beat"). */}}
{{- define "celery-fleet.networkPolicy.types" -}}
{{- if include "celery-fleet.networkPolicy.restrictsEgress" . -}}
policyTypes: [Ingress, Egress]
egress:
  {{- include "celery-fleet.networkPolicy.egress" . | nindent 2 }}
{{- else -}}
policyTypes: [Ingress]
{{- end }}
{{- end }}
