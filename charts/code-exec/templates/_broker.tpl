{{/* Names the broker's templates and the operator's share. */}}

{{/* The Secret with the binding token key (data key `key`): broker.tokenKey.existingSecret, else the chart's. */}}
{{- define "code-exec.bindingTokenKeySecret" -}}
{{- .Values.broker.tokenKey.existingSecret | default (printf "%s-binding-token-key" (include "code-exec.fullname" .)) }}
{{- end }}

{{/* The chart's binding token key (base64 text): the existing Secret's when there is one (upgrades keep it, so
     running Executions' tokens stay valid), else 48 random bytes generated once per render and remembered in the
     root context, so the Secret and the pods' checksum annotation agree. */}}
{{- define "code-exec.bindingTokenKey" -}}
{{- if not (hasKey . "codeExecBindingTokenKey") }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "code-exec.bindingTokenKeySecret" .) }}
{{- $_ := set . "codeExecBindingTokenKey" (dig "data" "key" "" $existing | default (randBytes 48 | b64enc)) }}
{{- end }}
{{- index . "codeExecBindingTokenKey" }}
{{- end }}

{{/* The operator's and the broker's pod annotation: each reads the key once, so a new key must restart both
     together (else every call is refused until the other restarts). The chart's key: its hash. Yours
     (broker.tokenKey.existingSecret): its Secret's uid and resourceVersion as the cluster has them at install or
     upgrade (no hash of your key in a pod's metadata; nothing with `helm template`, which has no lookup). */}}
{{- define "code-exec.bindingTokenKeyChecksum" -}}
{{- if .Values.broker.tokenKey.existingSecret }}
{{- $yours := lookup "v1" "Secret" .Release.Namespace .Values.broker.tokenKey.existingSecret }}
{{- printf "%s/%s" (dig "metadata" "uid" "" $yours) (dig "metadata" "resourceVersion" "" $yours) | sha256sum }}
{{- else }}
{{- include "code-exec.bindingTokenKey" . | sha256sum }}
{{- end }}
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
