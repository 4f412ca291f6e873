{{/* Names, labels and the derived settings every template shares. */}}

{{- define "code-exec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* release-chart, or the release name alone when it already contains the chart name. */}}
{{- define "code-exec.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "code-exec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "code-exec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "code-exec.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "code-exec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: code-exec
{{- end }}

{{/* registry/repository:tag; an empty tag is the chart's appVersion. Argument: dict image, root. */}}
{{- define "code-exec.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag }}
{{- if .image.registry }}
{{- printf "%s/%s:%s" .image.registry .image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{- define "code-exec.serviceName" -}}
{{- include "code-exec.fullname" . }}
{{- end }}

{{/* "true" when operator.watchNamespaces lists plain names only (no Kopf globs or negations):
     then Roles in exactly those namespaces suffice and the webhook can select them by name. */}}
{{- define "code-exec.exactNamespaces" -}}
{{- $exact := gt (len .Values.operator.watchNamespaces) 0 }}
{{- range .Values.operator.watchNamespaces }}
{{- if regexMatch "[*?!\\[]" . }}{{ $exact = false }}{{ end }}
{{- end }}
{{- $exact }}
{{- end }}

{{/* Where `helm test` creates its Execution: helmTest.namespace, else the first watched namespace
     if it is a plain name, else (all namespaces watched) the release namespace; empty when
     operator.watchNamespaces starts with a pattern. */}}
{{- define "code-exec.testNamespace" -}}
{{- if .Values.helmTest.namespace }}
{{- .Values.helmTest.namespace }}
{{- else if not .Values.operator.watchNamespaces }}
{{- .Release.Namespace }}
{{- else }}
{{- $first := first .Values.operator.watchNamespaces }}
{{- if not (regexMatch "[*?!\\[]" $first) }}{{ $first }}{{ end }}
{{- end }}
{{- end }}

{{/* The webhook's namespaceSelector: webhook.namespaceSelector, else the watched namespaces by name,
     else every namespace; with patterns the selector must be given (Kopf globs are no label selectors). */}}
{{- define "code-exec.webhookNamespaceSelector" -}}
{{- if .Values.webhook.namespaceSelector }}
{{- toYaml .Values.webhook.namespaceSelector }}
{{- else if eq (include "code-exec.exactNamespaces" .) "true" }}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: In
    values:
      {{- toYaml .Values.operator.watchNamespaces | nindent 6 }}
{{- else if .Values.operator.watchNamespaces }}
{{- fail "webhook.namespaceSelector must be set when operator.watchNamespaces holds patterns: the webhook must not judge Executions in namespaces no operator of this release watches" }}
{{- else }}
{}
{{- end }}
{{- end }}

{{/* The operator's settings as CODEEXEC_* variables (config.py reads nothing else). */}}
{{- define "code-exec.env" -}}
{{- range $key, $value := .Values.config }}
- name: CODEEXEC_{{ $key | snakecase | upper }}
  {{- if kindIs "slice" $value }}
  value: {{ join "," $value | quote }}
  {{- else if kindIs "float64" $value }}
  value: {{ $value | int64 | toString | quote }}
  {{- else }}
  value: {{ $value | toString | quote }}
  {{- end }}
{{- end }}
- name: CODEEXEC_RUNTIME_CLASS
  value: {{ .Values.runtimeClass.name | quote }}
- name: CODEEXEC_NAMESPACES
  value: {{ join "," .Values.operator.watchNamespaces | quote }}
- name: CODEEXEC_LOG_LEVEL
  value: {{ .Values.operator.logLevel | quote }}
- name: CODEEXEC_METRICS_PORT
  value: {{ ternary .Values.metrics.port 0 .Values.metrics.enabled | int64 | toString | quote }}
- name: CODEEXEC_WEBHOOK_PORT
  value: {{ ternary .Values.webhook.port 0 .Values.webhook.enabled | int64 | toString | quote }}
- name: CODEEXEC_WEBHOOK_CERT_DIR
  value: /etc/codeexec/webhook
- name: CODEEXEC_PEERING
  value: {{ include "code-exec.peeringName" . | quote }}
{{- end }}

{{/* The release's ClusterKopfPeering: cluster-scoped, so named after the release and its namespace
     like the ClusterRoles (two releases elect their active replicas independently). */}}
{{- define "code-exec.peeringName" -}}
{{- include "code-exec.fullname" . }}-{{ .Release.Namespace }}
{{- end }}

{{/* The webhook's CA, serving certificate and key (base64, as YAML): the existing Secret's when there
     is one (upgrades keep the certificate), else generated once per render and remembered in the root
     context, so the Secret, the caBundle and the pod's checksum annotation agree. */}}
{{- define "code-exec.webhookTLS" -}}
{{- if not (hasKey . "codeExecWebhookTLS") }}
{{- $service := include "code-exec.serviceName" . }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-webhook-tls" (include "code-exec.fullname" .)) }}
{{- $data := dig "data" dict $existing }}
{{- $tls := dict }}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") }}
{{- $tls = dict "ca.crt" (index $data "ca.crt") "tls.crt" (index $data "tls.crt") "tls.key" (index $data "tls.key") }}
{{- else }}
{{- $host := printf "%s.%s.svc" $service .Release.Namespace }}
{{- $days := int .Values.webhook.certificateValidityDays }}
{{- $ca := genCA (printf "%s-webhook-ca" $service) $days }}
{{- $names := list $service (printf "%s.%s" $service .Release.Namespace) $host (printf "%s.cluster.local" $host) }}
{{- $cert := genSignedCert $host nil $names $days $ca }}
{{- $tls = dict "ca.crt" ($ca.Cert | b64enc) "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) }}
{{- end }}
{{- $_ := set . "codeExecWebhookTLS" $tls }}
{{- end }}
{{- toYaml (index . "codeExecWebhookTLS") }}
{{- end }}
