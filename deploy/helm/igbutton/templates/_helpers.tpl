{{/* The release's name for everything it creates (the chart's name when they agree). */}}
{{- define "igbutton.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "igbutton.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "igbutton.labels" -}}
{{ include "igbutton.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "igbutton.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "igbutton.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where the Secret's keys appear as files. */}}
{{- define "igbutton.secretsDir" -}}/run/secrets/igbutton{{- end -}}

{{- define "igbutton.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- printf "%s-secrets" (include "igbutton.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Whether any setting names a file of the Secret (then it is mounted). */}}
{{- define "igbutton.usesSecret" -}}
{{- $v := .Values -}}
{{- if or (and (not $v.sandbox.enabled) $v.accounts) $v.callers $v.webhook.appSecretKeys $v.webhook.verifyTokenKey (and (eq $v.storage.engine "nats") (or $v.storage.nats.credsKey $v.storage.nats.tlsCaKey)) -}}
true
{{- end -}}
{{- end -}}

{{- define "igbutton.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The igbutton settings, as environment variables (the ConfigMap's data). */}}
{{- define "igbutton.config" -}}
{{- $v := .Values -}}
{{- $dir := include "igbutton.secretsDir" . -}}
{{- $env := dict -}}
{{- $_ := set $env "IGBUTTON_GRPC__LISTEN" (printf "0.0.0.0:%d" (int $v.ports.grpc)) -}}
{{- $_ := set $env "IGBUTTON_HTTP__HOST" "0.0.0.0" -}}
{{- $_ := set $env "IGBUTTON_HTTP__PORT" (toString $v.ports.ops) -}}
{{- $_ := set $env "IGBUTTON_WEBHOOK__HOST" "0.0.0.0" -}}
{{- $_ := set $env "IGBUTTON_WEBHOOK__PORT" (toString $v.ports.webhook) -}}
{{- $_ := set $env "IGBUTTON_WEBHOOK__PATH" $v.webhook.path -}}
{{- $_ := set $env "IGBUTTON_SANDBOX__ENABLED" (toString $v.sandbox.enabled) -}}
{{- $_ := set $env "IGBUTTON_STORAGE__BACKEND" $v.storage.engine -}}
{{- if eq $v.storage.engine "sqlite" -}}
{{- $_ := set $env "IGBUTTON_STORAGE__SQLITE_PATH" "/var/lib/igbutton/igbutton.db" -}}
{{- else -}}
{{- $_ := set $env "IGBUTTON_STORAGE__NATS__SERVERS" (toJson $v.storage.nats.servers) -}}
{{- $_ := set $env "IGBUTTON_STORAGE__NATS__REPLICAS" (toString $v.storage.nats.replicas) -}}
{{- with $v.storage.nats.credsKey -}}
{{- $_ := set $env "IGBUTTON_STORAGE__NATS__CREDS_FILE" (printf "%s/%s" $dir .) -}}
{{- end -}}
{{- with $v.storage.nats.tlsCaKey -}}
{{- $_ := set $env "IGBUTTON_STORAGE__NATS__TLS_CA_FILE" (printf "%s/%s" $dir .) -}}
{{- end -}}
{{- end -}}
{{- if and $v.accounts (not $v.sandbox.enabled) -}}
{{- $accounts := list -}}
{{- range $v.accounts -}}
{{- $key := default (printf "ig-token-%s" .id) .tokenKey -}}
{{- $accounts = append $accounts (dict "id" .id "access_token_file" (printf "%s/%s" $dir $key)) -}}
{{- end -}}
{{- $_ := set $env "IGBUTTON_ACCOUNTS" (toJson $accounts) -}}
{{- end -}}
{{- if $v.callers -}}
{{- $callers := list -}}
{{- range $v.callers -}}
{{- $key := default (printf "caller-%s" .name) .tokenKey -}}
{{- $callers = append $callers (dict "name" .name "token_file" (printf "%s/%s" $dir $key) "accounts" (default (list "*") .accounts)) -}}
{{- end -}}
{{- $_ := set $env "IGBUTTON_CALLERS" (toJson $callers) -}}
{{- end -}}
{{- if $v.webhook.appSecretKeys -}}
{{- $files := list -}}
{{- range $v.webhook.appSecretKeys -}}
{{- $files = append $files (printf "%s/%s" $dir .) -}}
{{- end -}}
{{- $_ := set $env "IGBUTTON_WEBHOOK__APP_SECRET_FILES" (toJson $files) -}}
{{- end -}}
{{- with $v.webhook.verifyTokenKey -}}
{{- $_ := set $env "IGBUTTON_WEBHOOK__VERIFY_TOKEN_FILE" (printf "%s/%s" $dir .) -}}
{{- end -}}
{{- range $key, $value := $v.config -}}
{{- $_ := set $env $key (toString $value) -}}
{{- end -}}
{{- range $key, $value := $env }}
{{ $key }}: {{ $value | quote }}
{{- end -}}
{{- end -}}
