{{/* The chart name, overridable. */}}
{{- define "vaultsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the prefix of every object this chart creates. */}}
{{- define "vaultsync.fullname" -}}
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

{{- define "vaultsync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vaultsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vaultsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of every object. Note: app.kubernetes.io/managed-by is Helm here; the Secrets the
operator writes carry app.kubernetes.io/managed-by=vaultsync, so the two never mix.
*/}}
{{- define "vaultsync.labels" -}}
helm.sh/chart: {{ include "vaultsync.chart" . }}
{{ include "vaultsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vaultsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vaultsync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vaultsync.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* "true" when leader election is on: forced by the value, or more than one replica. */}}
{{- define "vaultsync.leaderElection" -}}
{{- if kindIs "bool" .Values.leaderElection.enabled }}
{{- .Values.leaderElection.enabled }}
{{- else }}
{{- gt (int .Values.replicaCount) 1 }}
{{- end }}
{{- end }}

{{/* Fails the render when the values contradict each other. */}}
{{- define "vaultsync.validate" -}}
{{- if and (eq .Values.rbac.scope "namespaces") (empty .Values.watchNamespaces) }}
{{- fail "rbac.scope=namespaces needs watchNamespaces: the namespaces to grant the operator access to" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (eq (include "vaultsync.leaderElection" .) "false") }}
{{- fail "replicaCount > 1 needs leaderElection.enabled (or null): several replicas without a leader would all write" }}
{{- end }}
{{- end }}

{{/* The operator's configuration file (src/config.rs). */}}
{{- define "vaultsync.config" -}}
{{- $le := dict "enabled" (eq (include "vaultsync.leaderElection" .) "true") "leaseName" .Values.leaderElection.leaseName "leaseDuration" .Values.leaderElection.leaseDuration }}
{{- $config := dict "metricsAddress" (printf "0.0.0.0:%d" (int .Values.metrics.port)) "logFormat" .Values.logFormat "operatorNamespace" .Release.Namespace "watchNamespaces" .Values.watchNamespaces "leaderElection" $le "defaults" .Values.defaults "vault" .Values.vault }}
{{- if .Values.azure }}
{{- $_ := set $config "azure" .Values.azure }}
{{- end }}
{{- if .Values.admission.enabled }}
{{- $_ := set $config "admission" (dict "enabled" true "address" (printf "0.0.0.0:%d" (int .Values.admission.port)) "certFile" "/etc/vaultsync/tls/tls.crt" "keyFile" "/etc/vaultsync/tls/tls.key") }}
{{- if .Values.injection.enabled }}
{{- $_ := set $config "injection" (dict "enabled" true "image" (include "vaultsync.image" .) "imagePullPolicy" .Values.image.pullPolicy) }}
{{- end }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
The rules the operator needs where it syncs resources, verb by verb (see README.md):
a ClusterRole with scope=cluster, a Role per watched namespace with scope=namespaces.
*/}}
{{- define "vaultsync.syncRules" -}}
# Watch the custom resources: list+watch feed the controller (get grants nothing that
# list does not, and keeps `kubectl get` style tools working under this identity).
- apiGroups: [vaultsync.dev]
  resources: [vaultsecrets, azurekeyvaultsecrets]
  verbs: [get, list, watch]
# Dynamic (database) sources of VaultSecrets: the finalizer that revokes their
# credentials on deletion (a JSON patch of metadata.finalizers), and a fresh read of the
# lease recorded in status (GET /status rather than the watch cache, so that a reconcile
# right after a write never issues credentials twice).
- apiGroups: [vaultsync.dev]
  resources: [vaultsecrets]
  verbs: [patch]
- apiGroups: [vaultsync.dev]
  resources: [vaultsecrets/status]
  verbs: [get]
# Write Ready and the sync fields through the status subresource (server-side apply).
- apiGroups: [vaultsync.dev]
  resources: [vaultsecrets/status, azurekeyvaultsecrets/status]
  verbs: [patch]
# The managed Secrets: get (ownership check before writing; AppRole/token auth read
# their credential Secret), list+watch (drift repair and the expiry collector),
# create+patch (server-side apply; an apply that creates the object is also authorized
# as create), delete (expiry collector; replacing a Secret whose type changed).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch, delete]
# Short-lived, audience-bound tokens of the tenants' service accounts, to log in to
# Vault as the tenant.
- apiGroups: [""]
  resources: [serviceaccounts/token]
  verbs: [create]
# The app registration a service account is annotated with
# (azure.workload.identity/client-id), for Azure workload identity and injection.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get]
# akv2k8s' output.configMap (public material of AzureKeyVaultSecrets): the ownership
# check (get), a create that fails if it exists, a replace at the version read (update).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, update]
# Events on the resources (src/events.rs creates one per occurrence and never updates).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
# Rollout restarts of spec.rolloutRestartTargets (a pod-template annotation, as
# `kubectl rollout restart` does).
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [patch]
{{- end }}
