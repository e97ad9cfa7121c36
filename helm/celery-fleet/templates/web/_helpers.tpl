{{/* The web tier: HTTPS behind the TLS-terminating proxy. */}}

{{/* "true" when the site is served over HTTPS: django.https.enabled, where "auto" means web.ingress has a tls section. */}}
{{- define "celery-fleet.web.https" -}}
{{- $on := .Values.django.https.enabled }}
{{- if eq (toString $on) "auto" }}{{ $on = and .Values.web.ingress.enabled (not (empty .Values.web.ingress.tls)) }}{{ end }}
{{- if $on }}true{{ end }}
{{- end }}

{{/* gunicorn's FORWARDED_ALLOW_IPS: the proxies it takes X-Forwarded-* from (loopback only when none is set). */}}
{{- define "celery-fleet.web.forwardedAllowIps" -}}
{{- join "," (.Values.web.proxy.trustedIPs | default (list "127.0.0.1" "::1")) }}
{{- end }}
