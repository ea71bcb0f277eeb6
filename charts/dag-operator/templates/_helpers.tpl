{{/* Names and labels shared by every template. */}}

{{- define "dag-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name, with the chart name in front unless it is in it already. */}}
{{- define "dag-operator.fullname" -}}
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

{{- define "dag-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dag-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dag-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dag-operator.labels" -}}
helm.sh/chart: {{ include "dag-operator.chart" . }}
{{ include "dag-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: dag-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "dag-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dag-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dag-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The data of the chart's Secret, as YAML lines (empty: no Secret is rendered). */}}
{{- define "dag-operator.secretData" -}}
{{- with .Values.database }}
{{- if .url }}
database-url: {{ .url | b64enc }}
{{- else if and .host .password }}
db-password: {{ .password | b64enc }}
{{- end }}
{{- end }}
{{- with .Values.redis }}
{{- if .url }}
redis-url: {{ .url | b64enc }}
{{- else if and (or .host (.sentinel | default dict).addresses) .password }}
redis-password: {{ .password | b64enc }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dag-operator.secretName" -}}
{{- include "dag-operator.fullname" . }}
{{- end }}

{{/* A secretKeyRef env var: name, secret, key. */}}
{{- define "dag-operator.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end }}

{{/* DATABASE_URL or DB_* variables, in the order of values.yaml's database comment. */}}
{{- define "dag-operator.databaseEnv" -}}
{{- $secret := include "dag-operator.secretName" . }}
{{- with .Values.database }}
{{- if .urlFile }}
- name: DATABASE_URL_FILE
  value: {{ .urlFile | quote }}
{{- else if .url }}
{{ include "dag-operator.secretEnv" (dict "name" "DATABASE_URL" "secret" $secret "key" "database-url") }}
{{- else if .host }}
- name: DB_HOST
  value: {{ .host | quote }}
- name: DB_PORT
  value: {{ .port | quote }}
- name: DB_USER
  value: {{ .user | quote }}
- name: DB_NAME
  value: {{ .name | quote }}
{{- if .password }}
{{ include "dag-operator.secretEnv" (dict "name" "DB_PASSWORD" "secret" $secret "key" "db-password") }}
{{- else if and .existingSecret .existingSecretPasswordKey }}
{{ include "dag-operator.secretEnv" (dict "name" "DB_PASSWORD" "secret" .existingSecret "key" .existingSecretPasswordKey) }}
{{- else if .passwordFile }}
- name: DB_PASSWORD_FILE
  value: {{ .passwordFile | quote }}
{{- end }}
{{- else if .existingSecret }}
{{ include "dag-operator.secretEnv" (dict "name" "DATABASE_URL" "secret" .existingSecret "key" (required "database.existingSecretKey is required with database.existingSecret" .existingSecretKey)) }}
{{- else }}
{{- fail "no database configured: set database.url, database.urlFile, database.host or database.existingSecret" }}
{{- end }}
{{- with .tls.mode }}
- name: DB_SSLMODE
  value: {{ . | quote }}
{{- end }}
{{- if .tls.caSecret }}
- name: DB_SSLROOTCERT
  value: /etc/dag-operator/tls/database/ca.crt
{{- end }}
{{- end }}
{{- end }}

{{/* REDIS_URL or REDIS_* variables; nothing when Redis is not configured. */}}
{{- define "dag-operator.redisEnv" -}}
{{- $secret := include "dag-operator.secretName" . }}
{{- with .Values.redis }}
{{- $sentinel := .sentinel | default dict }}
{{- if .url }}
{{ include "dag-operator.secretEnv" (dict "name" "REDIS_URL" "secret" $secret "key" "redis-url") }}
{{- else if or .host $sentinel.addresses }}
{{- if $sentinel.addresses }}
- name: REDIS_SENTINELS
  value: {{ join "," $sentinel.addresses | quote }}
- name: REDIS_SENTINEL_MASTER
  value: {{ $sentinel.masterName | default "mymaster" | quote }}
{{- else }}
- name: REDIS_HOST
  value: {{ .host | quote }}
- name: REDIS_PORT
  value: {{ .port | quote }}
{{- end }}
- name: REDIS_DB
  value: {{ .db | quote }}
{{- if .password }}
{{ include "dag-operator.secretEnv" (dict "name" "REDIS_PASSWORD" "secret" $secret "key" "redis-password") }}
{{- else if and .existingSecret .existingSecretPasswordKey }}
{{ include "dag-operator.secretEnv" (dict "name" "REDIS_PASSWORD" "secret" .existingSecret "key" .existingSecretPasswordKey) }}
{{- else if .passwordFile }}
- name: REDIS_PASSWORD_FILE
  value: {{ .passwordFile | quote }}
{{- end }}
{{- if .tls.enabled }}
- name: REDIS_TLS
  value: "true"
{{- end }}
{{- else if .existingSecret }}
{{ include "dag-operator.secretEnv" (dict "name" "REDIS_URL" "secret" .existingSecret "key" (required "redis.existingSecretKey is required with redis.existingSecret" .existingSecretKey)) }}
{{- end }}
{{- if .tls.caSecret }}
- name: REDIS_CA_FILE
  value: /etc/dag-operator/tls/redis/ca.crt
{{- end }}
{{- end }}
{{- end }}

{{/* Whether Redis is configured at all ("true" or ""). */}}
{{- define "dag-operator.redisConfigured" -}}
{{- if or .Values.redis.url .Values.redis.host .Values.redis.existingSecret (.Values.redis.sentinel | default dict).addresses }}true{{ end }}
{{- end }}
