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

{{/* EDGEFLEET_BROKER for the controller. */}}
{{- define "edgefleet.controller.broker" -}}
{{- if eq .Values.mqtt.mode "bundled" }}
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
{{- end }}
