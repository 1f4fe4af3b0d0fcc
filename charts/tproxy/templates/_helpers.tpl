{{/* Names. */}}
{{- define "tproxy.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name: "<release>" when it already contains the chart
name, else "<release>-tproxy". */}}
{{- define "tproxy.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tproxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; pass (dict "ctx" $ "component" "node"). */}}
{{- define "tproxy.labels" -}}
helm.sh/chart: {{ include "tproxy.chart" .ctx }}
{{ include "tproxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: tproxy
{{- end -}}

{{- define "tproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tproxy.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* Image reference: (dict "ctx" $ "value" .Values.images.tproxy "default" "tproxy"). */}}
{{- define "tproxy.image" -}}
{{- $name := .value | default (printf "%s:%s" .default .ctx.Chart.AppVersion) -}}
{{- with .ctx.Values.images.tproxy_registry -}}
{{- printf "%s/%s" (trimSuffix "/" .) $name -}}
{{- else -}}
{{- $name -}}
{{- end -}}
{{- end -}}

{{/* Object names. */}}
{{- define "tproxy.node.name" -}}{{ include "tproxy.fullname" . }}-node{{- end -}}
{{- define "tproxy.initializer.name" -}}{{ include "tproxy.fullname" . }}-initializer{{- end -}}
{{- define "tproxy.rules.name" -}}{{ include "tproxy.fullname" . }}-rules{{- end -}}
{{- define "tproxy.initializerTLS.name" -}}{{ include "tproxy.fullname" . }}-initializer-tls{{- end -}}

{{- define "tproxy.caSecret.name" -}}
{{- .Values.ca.existingSecret | default (printf "%s-ca" (include "tproxy.fullname" .)) -}}
{{- end -}}

{{- define "tproxy.podwatch.serviceAccount" -}}
{{- if .Values.tproxy.useRBAC -}}
{{- .Values.serviceAccounts.podwatch | default (printf "%s-podwatch" (include "tproxy.fullname" .)) -}}
{{- else -}}
{{- .Values.serviceAccounts.podwatch | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "tproxy.initializer.serviceAccount" -}}
{{- if .Values.tproxy.useRBAC -}}
{{- .Values.serviceAccounts.initializer | default (printf "%s-initializer" (include "tproxy.fullname" .)) -}}
{{- else -}}
{{- .Values.serviceAccounts.initializer | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Paths inside the containers. Every flag that names a file points below a
mount declared in the same template (charts/tests checks it). */}}
{{- define "tproxy.paths.confdir" -}}/etc/tproxy/ca{{- end -}}
{{- define "tproxy.paths.rulesDir" -}}/etc/tproxy/rules{{- end -}}
{{- define "tproxy.paths.podDirectoryDir" -}}/var/run/tproxy{{- end -}}

{{/* Fixed port of the standard-mode (explicit) listener: the sidecar and the
webhook's proxy env use 1080 by default. */}}
{{- define "tproxy.standardPort" -}}1080{{- end -}}

{{/* The release namespace plus the configured ones, deduplicated. */}}
{{- define "tproxy.excludedNamespaces" -}}
{{- $ns := list .Release.Namespace -}}
{{- range .Values.initializer.excludedNamespaces -}}
{{- $ns = append $ns . -}}
{{- end -}}
{{- toJson (uniq $ns) -}}
{{- end -}}

{{/* Sanity checks that the schema cannot express. */}}
{{- define "tproxy.validate" -}}
{{- if and (eq .Values.initializer.proxyMode "standard") (not .Values.tproxy.addStandardModeProxy) -}}
{{- fail "initializer.proxyMode=standard points pods at port 1080 of their node: also set tproxy.addStandardModeProxy=true" -}}
{{- end -}}
{{- if and .Values.ca.existingSecret .Values.ca.pem -}}
{{- fail "ca.existingSecret and ca.pem are alternatives: set one of them" -}}
{{- end -}}
{{- if and (eq (int .Values.tproxy.hostPort) (int (include "tproxy.standardPort" .))) .Values.tproxy.addStandardModeProxy -}}
{{- fail "tproxy.hostPort 1080 collides with the standard-mode listener (tproxy.addStandardModeProxy): choose another hostPort" -}}
{{- end -}}
{{- if or (eq (int .Values.tproxy.adminPort) (int .Values.tproxy.hostPort)) (eq (int .Values.tproxy.adminPort) (int .Values.podwatch.metricsPort)) (eq (int .Values.podwatch.metricsPort) (int .Values.tproxy.hostPort)) -}}
{{- fail "tproxy.hostPort, tproxy.adminPort and podwatch.metricsPort must differ (all bind on the node)" -}}
{{- end -}}
{{- end -}}

{{/* The interception CA as JSON {"pem": key+cert, "cert": cert}, or {} for
ca.existingSecret. Computed once per render (cached in .Values) because the
Secret and the pods' checksum annotations both need it, and genCA is random.
Order: ca.pem (user file) > the Secret already in the cluster (kept across
upgrades; `lookup` returns nothing under `helm template`) > a new CA. */}}
{{- define "tproxy.ca.material" -}}
{{- if not (hasKey .Values "__tproxyCA") -}}
{{- $m := dict -}}
{{- if .Values.ca.existingSecret -}}
{{- else if .Values.ca.pem -}}
{{- $pem := .Values.ca.pem -}}
{{- $cert := regexFind "(?s)-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----" $pem -}}
{{- if not $cert -}}
{{- fail "ca.pem holds no PEM CERTIFICATE: pass the mitmproxy-ca.pem of a confdir (private key followed by the certificate), e.g. --set-file ca.pem=$HOME/.mitmproxy/mitmproxy-ca.pem" -}}
{{- end -}}
{{- if not (regexMatch "-----BEGIN (RSA |EC )?PRIVATE KEY-----" $pem) -}}
{{- fail "ca.pem holds no unencrypted PEM private key: pass mitmproxy-ca.pem (key + certificate), not mitmproxy-ca-cert.pem" -}}
{{- end -}}
{{- $_ := set $m "pem" $pem -}}
{{- $_ := set $m "cert" (printf "%s\n" $cert) -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "tproxy.caSecret.name" .) -}}
{{- $data := dig "data" (dict) $existing -}}
{{- if and (hasKey $data "mitmproxy-ca.pem") (hasKey $data "mitmproxy-ca-cert.pem") -}}
{{- $_ := set $m "pem" (index $data "mitmproxy-ca.pem" | b64dec) -}}
{{- $_ := set $m "cert" (index $data "mitmproxy-ca-cert.pem" | b64dec) -}}
{{- else -}}
{{- $ca := genCA "mitmproxy" (int .Values.ca.validityDays) -}}
{{- $_ := set $m "pem" (printf "%s%s" $ca.Key $ca.Cert) -}}
{{- $_ := set $m "cert" $ca.Cert -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values "__tproxyCA" $m -}}
{{- end -}}
{{- toJson (index .Values "__tproxyCA") -}}
{{- end -}}

{{/* Checksum that changes when the CA changes (rolls the pods that load it at start). */}}
{{- define "tproxy.ca.checksum" -}}
{{- $m := include "tproxy.ca.material" . | fromJson -}}
{{- if .Values.ca.existingSecret -}}
{{- printf "existing:%s" .Values.ca.existingSecret | sha256sum -}}
{{- else -}}
{{- $m.cert | sha256sum -}}
{{- end -}}
{{- end -}}

{{/*
--max-connections: tproxy.maxConnections, or when it is "" derived from the
proxy's memory limit (Mi/Gi): (MiB - 48) * 1024 / 64. Empty: no flag.
*/}}
{{- define "tproxy.maxConnections" -}}
{{- $v := .Values.tproxy.maxConnections -}}
{{- if kindIs "string" $v -}}
{{- $mem := "" -}}
{{- with .Values.tproxy.resources -}}{{- with .limits -}}{{- $mem = toString (.memory | default "") -}}{{- end -}}{{- end -}}
{{- $mib := 0 -}}
{{- if regexMatch "^[0-9]+Gi$" $mem -}}
{{- $mib = mul (trimSuffix "Gi" $mem | int) 1024 -}}
{{- else if regexMatch "^[0-9]+Mi$" $mem -}}
{{- $mib = trimSuffix "Mi" $mem | int -}}
{{- end -}}
{{- if gt $mib 64 -}}
{{- div (mul (sub $mib 48) 1024) 64 -}}
{{- end -}}
{{- else if gt (int $v) 0 -}}
{{- int $v -}}
{{- end -}}
{{- end -}}
