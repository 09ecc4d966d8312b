{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "edgefleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or just <release> when it already contains the chart name; at most 40
characters so that suffixes like "-controller-leader-election" keep names under 63. */}}
{{- define "edgefleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "edgefleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "edgefleet.controller.fullname" -}}
{{- printf "%s-controller" (include "edgefleet.fullname" .) }}
{{- end }}

{{- define "edgefleet.mosquitto.fullname" -}}
{{- printf "%s-mosquitto" (include "edgefleet.fullname" .) }}
{{- end }}

{{- define "edgefleet.agent.fullname" -}}
{{- printf "%s-agent" (include "edgefleet.fullname" .) }}
{{- end }}

{{- define "edgefleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "edgefleet.controller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------- */}}

{{- define "edgefleet.labels" -}}
helm.sh/chart: {{ include "edgefleet.chart" . }}
app.kubernetes.io/name: {{ include "edgefleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edgefleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels for one component: (dict "ctx" $ "component" "controller") */}}
{{- define "edgefleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edgefleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "edgefleet.componentLabels" -}}
{{ include "edgefleet.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Images: (dict "image" .Values.x.image "ctx" $) -> repo:tag or repo@digest */}}
{{- define "edgefleet.image" -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ default .ctx.Chart.AppVersion .image.tag }}
{{- end -}}
{{- end }}

{{/* Port of a host:port listen address. */}}
{{- define "edgefleet.portOf" -}}
{{- $parts := splitList ":" . }}
{{- last $parts }}
{{- end }}

{{/* Broker URLs -------------------------------------------------------------------------- */}}

{{- define "edgefleet.mosquitto.host" -}}
{{- printf "%s.%s.svc" (include "edgefleet.mosquitto.fullname" .) .Release.Namespace }}
{{- end }}

{{/* EDGEFLEET_BROKER for the controller: with a client certificate (mqtt.controllerTls) the
bundled broker's TLS listener, else its plain listener. */}}
{{- define "edgefleet.controller.broker" -}}
{{- if and (eq .Values.mqtt.mode "bundled") .Values.mqtt.controllerTls.secretName }}
{{- printf "mqtts://%s:%d" (include "edgefleet.mosquitto.host" .) (int .Values.mqtt.bundled.service.tlsPort) }}
{{- else if eq .Values.mqtt.mode "bundled" }}
{{- printf "mqtt://%s:%d" (include "edgefleet.mosquitto.host" .) (int .Values.mqtt.bundled.service.port) }}
{{- else }}
{{- required "mqtt.external.url is required when mqtt.mode=external (e.g. mqtt://broker.example:1883)" .Values.mqtt.external.url }}
{{- end }}
{{- end }}

{{/* EDGEFLEET_AGENT_BROKER for the agent DaemonSet. */}}
{{- define "edgefleet.agent.broker" -}}
{{- if .Values.agent.broker }}
{{- .Values.agent.broker }}
{{- else if and (eq .Values.mqtt.mode "bundled") .Values.mqtt.bundled.tls.enabled }}
{{- printf "mqtts://%s:%d" (include "edgefleet.mosquitto.host" .) (int .Values.mqtt.bundled.service.tlsPort) }}
{{- else }}
{{- include "edgefleet.controller.broker" . }}
{{- end }}
{{- end }}

{{/* Agent labels map -> "k=v,k2=v2" in key order. */}}
{{- define "edgefleet.agent.labels" -}}
{{- $pairs := list }}
{{- range $k, $v := .Values.agent.labels }}
{{- $pairs = append $pairs (printf "%s=%v" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* Where the controller's MQTT files are mounted. */}}
{{- define "edgefleet.controller.mqttTlsDir" -}}/etc/edgefleet/mqtt-tls{{- end }}
{{- define "edgefleet.controller.mqttPasswordDir" -}}/etc/edgefleet/mqtt-password{{- end }}

{{/* Agent signing: the ConfigMap (name, key) holding the trusted keys; empty name = off. */}}
{{- define "edgefleet.agent.trustedKeysConfigMap" -}}
{{- if .Values.agent.signing.trustedKeys }}
{{- printf "%s-trusted-keys" (include "edgefleet.agent.fullname" .) }}
{{- else }}
{{- .Values.agent.signing.existingConfigMap }}
{{- end }}
{{- end }}

{{- define "edgefleet.agent.trustedKeysKey" -}}
{{- if .Values.agent.signing.trustedKeys }}trusted-keys{{ else }}{{ .Values.agent.signing.existingConfigMapKey }}{{ end }}
{{- end }}

{{/* Database --------------------------------------------------------------------------- */}}

{{- define "edgefleet.sqlite.claimName" -}}
{{- default (printf "%s-data" (include "edgefleet.controller.fullname" .)) .Values.database.sqlite.persistence.existingClaim }}
{{- end }}

{{/* RBAC: the rules of controller/rbac.yaml. tests/helm/test_rbac.py checks that these
render exactly that file, in both watch modes. Keep the two in step. */}}

{{/* Rules with scope "cluster": ClusterRole when watching all namespaces, Role in the watch
namespace otherwise. */}}
{{- define "edgefleet.rbac.watchRules" -}}
- apiGroups: ["edgefleet.io"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["edgefleet.io"]
  resources: ["modeldeployments/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["edgefleet.io"]
  resources: ["modeldeployments/finalizers"]
  verbs: ["update"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Rules with scope "namespace": always a Role in the controller's own namespace. */}}
{{- define "edgefleet.rbac.ownNamespaceRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update", "patch"]
{{- end }}

{{/* Checks ------------------------------------------------------------------------------ */}}

{{- define "edgefleet.validate" -}}
{{- if and (eq .Values.database.type "sqlite") (gt (int .Values.controller.replicas) 1) }}
{{- fail (printf "\n\ndatabase.type=sqlite supports only controller.replicas=1 (got %d): SQLite is one file on a ReadWriteOnce volume and cannot be shared by several controllers.\nFor high availability set database.type=postgres with database.postgres.secretName (a Secret holding the PostgreSQL URL), or set controller.replicas=1." (int .Values.controller.replicas)) }}
{{- end }}
{{- if and (eq .Values.database.type "postgres") (not .Values.database.postgres.secretName) }}
{{- fail "\n\ndatabase.type=postgres needs database.postgres.secretName: an existing Secret whose key database.postgres.secretKey (default \"url\") holds postgres://user:password@host:5432/db." }}
{{- end }}
{{- if and (eq .Values.mqtt.mode "external") (not .Values.mqtt.external.url) }}
{{- fail "\n\nmqtt.mode=external needs mqtt.external.url (e.g. mqtt://broker.example:1883)." }}
{{- end }}
{{- if and (eq .Values.mqtt.mode "bundled") .Values.mqtt.bundled.tls.enabled (not .Values.mqtt.bundled.tls.secretName) }}
{{- fail "\n\nmqtt.bundled.tls.enabled=true needs mqtt.bundled.tls.secretName: an existing Secret with tls.crt, tls.key and ca.crt." }}
{{- end }}
{{- if and (eq .Values.mqtt.mode "bundled") .Values.mqtt.bundled.networkPolicy.enabled (not .Values.mqtt.bundled.tls.enabled) }}
{{- fail "\n\nmqtt.bundled.networkPolicy.enabled=true restricts the plain MQTT port to the controller, so devices must use TLS: also set mqtt.bundled.tls.enabled=true." }}
{{- end }}
{{- $ctls := .Values.mqtt.controllerTls.secretName }}
{{- if and $ctls (eq .Values.mqtt.mode "bundled") (not .Values.mqtt.bundled.tls.enabled) }}
{{- fail (printf "\n\nmqtt.controllerTls.secretName=%s makes the controller connect to the bundled broker's TLS listener, which is off: also set mqtt.bundled.tls.enabled=true (with mqtt.bundled.tls.secretName), or unset mqtt.controllerTls.secretName." $ctls) }}
{{- end }}
{{- if and $ctls (eq .Values.mqtt.mode "external") (not (hasPrefix "mqtts://" .Values.mqtt.external.url)) }}
{{- fail (printf "\n\nmqtt.controllerTls.secretName=%s needs a TLS broker: mqtt.external.url must start with mqtts:// (got %q)." $ctls .Values.mqtt.external.url) }}
{{- end }}
{{- if and (eq .Values.mqtt.mode "bundled") (not .Values.mqtt.bundled.plainListenerAnonymous) (not $ctls) }}
{{- fail "\n\nmqtt.bundled.plainListenerAnonymous=false closes the plain listener, which the controller uses when it has no client certificate: set mqtt.controllerTls.secretName (with mqtt.bundled.tls.enabled=true), or keep plainListenerAnonymous=true." }}
{{- end }}
{{- $cred := .Values.mqtt.controllerCredentials }}
{{- if or (and $cred.username (not $cred.passwordSecret)) (and $cred.passwordSecret (not $cred.username)) }}
{{- fail (printf "\n\nmqtt.controllerCredentials needs both username and passwordSecret, or neither (got username=%q, passwordSecret=%q)." $cred.username $cred.passwordSecret) }}
{{- end }}
{{- if and $cred.username (eq .Values.mqtt.mode "bundled") }}
{{- fail "\n\nmqtt.controllerCredentials is for external brokers (mqtt.mode=external): the bundled Mosquitto has no password file and identifies the controller by its client certificate (mqtt.controllerTls.secretName)." }}
{{- end }}
{{- include "edgefleet.validate.trustedKeys" . }}
{{- end }}

{{/* agent.signing: one source, and inline keys in the format the agent parses (so a typo
fails the install, not every agent at start-up). Never a private key in a ConfigMap. */}}
{{- define "edgefleet.validate.trustedKeys" -}}
{{- $s := .Values.agent.signing }}
{{- if and $s.trustedKeys $s.existingConfigMap }}
{{- fail "\n\nagent.signing: set trustedKeys (inline) or existingConfigMap, not both." }}
{{- end }}
{{- if $s.trustedKeys }}
{{- if contains "PRIVATE KEY" $s.trustedKeys }}
{{- fail "\n\nagent.signing.trustedKeys contains a PRIVATE KEY: give only the public key (openssl pkey -in key.pem -pubout) and keep the private key off the cluster." }}
{{- end }}
{{- $inPem := false }}
{{- $body := "" }}
{{- $found := 0 }}
{{- range $i, $raw := splitList "\n" $s.trustedKeys }}
{{- $line := trim $raw }}
{{- if eq $line "-----BEGIN PUBLIC KEY-----" }}
{{- $inPem = true }}
{{- $body = "" }}
{{- else if eq $line "-----END PUBLIC KEY-----" }}
{{- /* An ed25519 SubjectPublicKeyInfo is 44 bytes: a fixed 12-byte DER prefix (base64
"MCowBQYDK2VwAyEA") and the raw 32-byte key. */}}
{{- if not (regexMatch "^MCowBQYDK2VwAyEA[A-Za-z0-9+/]{43}=$" $body) }}
{{- fail (printf "\n\nagent.signing.trustedKeys line %d: this PUBLIC KEY block is not an ed25519 key (make one with: openssl genpkey -algorithm ed25519 -out key.pem; openssl pkey -in key.pem -pubout)." (add1 $i)) }}
{{- end }}
{{- $inPem = false }}
{{- $found = add1 $found }}
{{- else if $inPem }}
{{- $body = printf "%s%s" $body $line }}
{{- else if or (eq $line "") (hasPrefix "#" $line) }}
{{- else if regexMatch "^[A-Za-z0-9+/]{43}=$" $line }}
{{- $found = add1 $found }}
{{- else }}
{{- fail (printf "\n\nagent.signing.trustedKeys line %d: expected a PEM PUBLIC KEY block (openssl pkey -pubout) or a base64 raw 32-byte ed25519 key, got %q" (add1 $i) $line) }}
{{- end }}
{{- end }}
{{- if $inPem }}
{{- fail "\n\nagent.signing.trustedKeys: a -----BEGIN PUBLIC KEY----- block has no -----END PUBLIC KEY----- line." }}
{{- end }}
{{- if eq $found 0 }}
{{- fail "\n\nagent.signing.trustedKeys has no public key in it (only comments or blank lines)." }}
{{- end }}
{{- end }}
{{- end }}
