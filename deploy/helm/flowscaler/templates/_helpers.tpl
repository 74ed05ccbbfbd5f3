{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "flowscaler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, unless it already contains the chart name. */}}
{{- define "flowscaler.fullname" -}}
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

{{- define "flowscaler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flowscaler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowscaler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "flowscaler.labels" -}}
helm.sh/chart: {{ include "flowscaler.chart" . }}
{{ include "flowscaler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: scaler
app.kubernetes.io/part-of: flowscaler
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "flowscaler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flowscaler.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flowscaler.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the server certificate. */}}
{{- define "flowscaler.tlsSecretName" -}}
{{- if .Values.tls.existingSecret }}
{{- .Values.tls.existingSecret }}
{{- else }}
{{- printf "%s-tls" (include "flowscaler.fullname" .) }}
{{- end }}
{{- end }}

{{/* Where the pod finds its files: one projected volume at /etc/flowscaler. */}}
{{- define "flowscaler.configDir" -}}/etc/flowscaler{{- end }}

{{/*
The Secrets that connections read, as a YAML list: one entry per password or
bearer token, with the environment variable (from: env) or the file under
the config volume (from: file) that carries it into the pod, and one per TLS
file of a prometheus connection. The ConfigMap and the Deployment both render
from this list, so the config never names a variable or file the pod lacks.
*/}}
{{- define "flowscaler.connectionSecrets" -}}
{{- $out := list }}
{{- range $name, $conn := .Values.config.connections }}
{{- $envName := regexReplaceAll "[^A-Z0-9]+" (upper $name) "_" }}
{{- /* value key: default Secret key, environment suffix, file name */}}
{{- $kinds := dict
      "password" (list "password" "PASSWORD" "password")
      "bearerToken" (list "token" "BEARER_TOKEN" "bearer-token")
      "connectionString" (list "connectionString" "CONNECTION_STRING" "connection-string") }}
{{- range $kind := list "password" "bearerToken" "connectionString" }}
{{- $s := get $conn $kind }}
{{- if and $s $s.secretName }}
{{- $k := get $kinds $kind }}
{{- $out = append $out (dict
      "connection" $name
      "field" $kind
      "secretName" $s.secretName
      "secretKey" (default (index $k 0) $s.secretKey)
      "from" (default "env" $s.from)
      "env" (printf "FLOWSCALER_%s_%s" $envName (index $k 1))
      "path" (printf "secrets/%s/%s" $name (index $k 2))) }}
{{- end }}
{{- end }}
{{- with $conn.tls }}
{{- if and .caSecret .caSecret.name }}
{{- $out = append $out (dict "connection" $name "field" "tls.caFile" "secretName" .caSecret.name "secretKey" (default "ca.crt" .caSecret.key) "from" "file" "path" (printf "secrets/%s/ca.crt" $name)) }}
{{- end }}
{{- with .clientCertSecret }}
{{- $out = append $out (dict "connection" $name "field" "tls.certFile" "secretName" . "secretKey" "tls.crt" "from" "file" "path" (printf "secrets/%s/tls.crt" $name)) }}
{{- $out = append $out (dict "connection" $name "field" "tls.keyFile" "secretName" . "secretKey" "tls.key" "from" "file" "path" (printf "secrets/%s/tls.key" $name)) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* Whether the readiness probe uses the kubelet's gRPC probe. */}}
{{- define "flowscaler.grpcReadiness" -}}
{{- if eq .Values.probes.readiness "grpc" }}true
{{- else if and (eq .Values.probes.readiness "auto") (not .Values.tls.enabled) }}true
{{- end }}
{{- end }}

{{/* Checks the combinations of values a schema cannot explain well; each message names the values and the rule. */}}
{{- define "flowscaler.validate" -}}
{{- $tls := .Values.tls }}
{{- if $tls.enabled }}
{{- if and (not $tls.existingSecret) (not $tls.certManager.enabled) }}
{{- fail "tls.enabled = true: set tls.existingSecret or enable tls.certManager" }}
{{- end }}
{{- if and $tls.existingSecret $tls.certManager.enabled }}
{{- fail (printf "tls.existingSecret = %q, tls.certManager.enabled = true: choose one" $tls.existingSecret) }}
{{- end }}
{{- if and $tls.certManager.enabled (not $tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.issuerRef.name = \"\": must name the Issuer or ClusterIssuer that signs the server certificate" }}
{{- end }}
{{- if eq .Values.probes.readiness "grpc" }}
{{- fail "probes.readiness = \"grpc\" with tls.enabled = true: the kubelet's gRPC probe speaks plaintext only; use auto or http" }}
{{- end }}
{{- else }}
{{- if $tls.certManager.enabled }}
{{- fail "tls.certManager.enabled = true with tls.enabled = false: enable TLS too" }}
{{- end }}
{{- if $tls.clientAuth.enabled }}
{{- fail "tls.clientAuth.enabled = true with tls.enabled = false: mutual TLS needs TLS" }}
{{- end }}
{{- end }}
{{- with .Values.config.state }}
{{- if eq .backend "redis" }}
{{- $conn := get $.Values.config.connections (.connection | default "") }}
{{- if not .connection }}
{{- fail "config.state.connection = \"\": must name a connection of type redis when config.state.backend is redis" }}
{{- else if not $conn }}
{{- fail (printf "config.state.connection = %q: must name a connection in config.connections" .connection) }}
{{- else if ne $conn.type "redis" }}
{{- fail (printf "config.state.connection = %q: must be a connection of type redis, not %s" .connection $conn.type) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
