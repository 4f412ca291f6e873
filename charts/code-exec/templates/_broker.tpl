{{/* Names the broker's templates and the operator's share. */}}

{{/* The Secret with the binding token key (data key `key`): broker.tokenKey.existingSecret, else the chart's. */}}
{{- define "code-exec.bindingTokenKeySecret" -}}
{{- .Values.broker.tokenKey.existingSecret | default (printf "%s-binding-token-key" (include "code-exec.fullname" .)) }}
{{- end }}

{{/* The broker's Deployment, Service and ServiceAccount. */}}
{{- define "code-exec.brokerName" -}}
{{- include "code-exec.fullname" . }}-broker
{{- end }}

{{/* The broker pods' labels: the Service's selector, distinct from the operator's and the gateway's. */}}
{{- define "code-exec.brokerSelectorLabels" -}}
{{ include "code-exec.selectorLabels" . }}
app.kubernetes.io/component: broker
{{- end }}
