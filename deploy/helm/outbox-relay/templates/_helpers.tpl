{{/* The chart's name. */}}
{{- define "outbox-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, the name of every object. */}}
{{- define "outbox-relay.fullname" -}}
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

{{- define "outbox-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "outbox-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "outbox-relay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "outbox-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "outbox-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "outbox-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The RELAY_* variables the chart sets itself, from its values; .Values.env may
not set them too.
*/}}
{{- define "outbox-relay.managedEnv" -}}
RELAY_DATABASE_URL RELAY_DATABASE_URL_FILE RELAY_KAFKA_BROKERS RELAY_HTTP_ADDR RELAY_SHUTDOWN_TIMEOUT RELAY_INSTANCE RELAY_KAFKA_TLS RELAY_KAFKA_TLS_CA_FILE RELAY_KAFKA_TLS_CERT_FILE RELAY_KAFKA_TLS_KEY_FILE RELAY_KAFKA_SASL_MECHANISM RELAY_KAFKA_SASL_USERNAME RELAY_KAFKA_SASL_PASSWORD RELAY_KAFKA_SASL_PASSWORD_FILE
{{- end }}
