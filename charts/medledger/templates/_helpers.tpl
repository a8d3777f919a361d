{{/*
Deep merge of two maps, the second winning; unlike sprig's mergeOverwrite, false, 0 and ""
in the second map do override. Lists are replaced, not concatenated.
Usage: include "medledger.deepMerge" (list $base $override) | fromJson
*/}}
{{- define "medledger.deepMerge" -}}
{{- $out := deepCopy (index . 0) -}}
{{- range $key, $value := (index . 1) -}}
{{- $current := get $out $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- $_ := set $out $key (include "medledger.deepMerge" (list $current $value) | fromJson) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
A component's settings: `default` merged under `components.<name>`, plus its name.
Usage: include "medledger.component" (dict "root" $ "name" $name) | fromJson
*/}}
{{- define "medledger.component" -}}
{{- $component := index .root.Values.components .name -}}
{{- $merged := include "medledger.deepMerge" (list .root.Values.default $component) | fromJson -}}
{{- $_ := set $merged "name" .name -}}
{{- toJson $merged -}}
{{- end -}}

{{/* Kubernetes name of a component's objects: <release>-<component>. */}}
{{- define "medledger.fullname" -}}
{{- printf "%s-%s" .root.Release.Name .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "medledger.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "medledger.labels" -}}
{{ include "medledger.selectorLabels" . }}
app.kubernetes.io/component: {{ .name }}
app.kubernetes.io/part-of: medledger
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The image reference: registry/repository, then @digest or :tag. */}}
{{- define "medledger.image" -}}
{{- $image := .config.image -}}
{{- $repository := $image.repository | default (printf "medledger-%s" .name) -}}
{{- $ref := printf "%s/%s" $image.registry $repository -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $ref $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref ($image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "medledger.imagePullPolicy" -}}
{{- if .config.image.pullPolicy -}}
{{- .config.image.pullPolicy -}}
{{- else if .config.image.digest -}}
IfNotPresent
{{- else -}}
Always
{{- end -}}
{{- end -}}

{{/*
Where a component's MONGODB_URI is: (dict "name" <Secret> "key" <key>) as JSON; the Secret
defaults to <release>-<component>-mongodb.
*/}}
{{- define "medledger.mongodbSecretRef" -}}
{{- $mongodb := .config.mongodb -}}
{{- $name := $mongodb.existingSecret | default (printf "%s-mongodb" (include "medledger.fullname" .)) -}}
{{- toJson (dict "name" $name "key" $mongodb.secretKey) -}}
{{- end -}}

{{/*
Checks across components, run once: no two enabled components that use Mongo share a database
or a credential (Secret and key), so none can read or rewrite another's data.
*/}}
{{- define "medledger.checkMongoIsolation" -}}
{{- $databases := dict -}}
{{- $credentials := dict -}}
{{- range $name := keys .Values.components | sortAlpha -}}
{{- if (index $.Values.components $name).enabled -}}
{{- $config := include "medledger.component" (dict "root" $ "name" $name) | fromJson -}}
{{- if has "mongodb" ($config.backends | default list) -}}
{{- $database := required (printf "components.%s.database is required: it uses mongodb" $name) $config.database -}}
{{- with get $databases $database -}}
{{- fail (printf "components.%s and components.%s share the database %q: give each its own" . $name $database) -}}
{{- end -}}
{{- $_ := set $databases $database $name -}}
{{- $ref := include "medledger.mongodbSecretRef" (dict "root" $ "name" $name "config" $config) | fromJson -}}
{{- $credential := printf "%s/%s" $ref.name $ref.key -}}
{{- with get $credentials $credential -}}
{{- fail (printf "components.%s and components.%s share the Mongo credential %s (Secret/key): give each its own user and Secret" . $name $credential) -}}
{{- end -}}
{{- $_ := set $credentials $credential $name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Checks across components, run once: no two enabled components that use Vault log in as the same
role (each role has its component's policy only), and the witness, another organisation's,
never uses the transit mount of the log's components.
*/}}
{{- define "medledger.checkVaultIsolation" -}}
{{- $roles := dict -}}
{{- $mounts := dict -}}
{{- range $name := keys .Values.components | sortAlpha -}}
{{- if (index $.Values.components $name).enabled -}}
{{- $config := include "medledger.component" (dict "root" $ "name" $name) | fromJson -}}
{{- if has "vault" ($config.backends | default list) -}}
{{- $role := required (printf "components.%s.vaultRole is required: it uses vault" $name) $config.vaultRole -}}
{{- with get $roles $role -}}
{{- fail (printf "components.%s and components.%s share the Vault role %q: give each its own role and policy" . $name $role) -}}
{{- end -}}
{{- $_ := set $roles $role $name -}}
{{- $_ := set $mounts $name ($config.vaultTransitMount | default $.Values.vault.transitMount) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with get $mounts "witness" -}}
{{- $witnessMount := . -}}
{{- range $name, $mount := $mounts -}}
{{- if and (ne $name "witness") (eq $mount $witnessMount) -}}
{{- fail (printf "the witness uses the transit mount %q of components.%s: give it its own organisation's mount (components.witness.vaultTransitMount)" $mount $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The port of a URL (scheme://host[:port]...); without one, the scheme's (443 or 80). */}}
{{- define "medledger.urlPort" -}}
{{- $url := urlParse . -}}
{{- $hostPort := splitList ":" $url.host -}}
{{- if gt (len $hostPort) 1 -}}
{{- last $hostPort -}}
{{- else if eq $url.scheme "https" -}}
443
{{- else -}}
80
{{- end -}}
{{- end -}}

{{/* The port of a host:port address. */}}
{{- define "medledger.addressPort" -}}
{{- $parts := splitList ":" . -}}
{{- if lt (len $parts) 2 -}}
{{- fail (printf "%q is not host:port" .) -}}
{{- end -}}
{{- last $parts -}}
{{- end -}}

{{/* The gRPC address other pods use to reach a component: <release>-<component>:<port>. */}}
{{- define "medledger.address" -}}
{{- $component := index .root.Values.components .name -}}
{{- printf "%s:%v" (include "medledger.fullname" .) (int $component.port) -}}
{{- end -}}

{{/*
The container's environment as a YAML list. The chart's variables come first; `env` from
default and then from the component follow, and a later entry replaces an earlier one of the
same name in its place.
*/}}
{{- define "medledger.env" -}}
{{- $root := .root -}}
{{- $config := .config -}}
{{- $backends := $config.backends | default list -}}
{{- $env := list -}}
{{- if include "medledger.isMllp" . -}}
{{- /* The MLLP listener (docs/hl7-v2.md): senders over mTLS, facilities from a Secret. */ -}}
{{- $mllp := $root.Values.mllp -}}
{{- $env = append $env (dict "name" "MEDLEDGER_MLLP_HOST" "value" "0.0.0.0") -}}
{{- $env = append $env (dict "name" "MEDLEDGER_MLLP_PORT" "value" (printf "%v" (int $config.port))) -}}
{{- $env = append $env (dict "name" "MEDLEDGER_MLLP_FACILITIES_FILE" "value" "/etc/medledger/mllp/facilities.json") -}}
{{- $env = append $env (dict "name" "MEDLEDGER_MLLP_TLS_CERT_FILE" "value" "/etc/medledger/mllp-tls/tls.crt") -}}
{{- $env = append $env (dict "name" "MEDLEDGER_MLLP_TLS_KEY_FILE" "value" "/etc/medledger/mllp-tls/tls.key") -}}
{{- $env = append $env (dict "name" "MEDLEDGER_MLLP_TLS_CLIENT_CA_FILE" "value" "/etc/medledger/mllp-tls/ca.crt") -}}
{{- $env = append $env (dict "name" "MEDLEDGER_MLLP_MAX_MESSAGE_BYTES" "value" (printf "%v" (int $mllp.maxMessageBytes))) -}}
{{- $env = append $env (dict "name" "MEDLEDGER_MLLP_IDLE_TIMEOUT_SECONDS" "value" (printf "%v" (int $mllp.idleTimeoutSeconds))) -}}
{{- $env = append $env (dict "name" "MEDLEDGER_MLLP_MAX_CONNECTIONS" "value" (printf "%v" (int $mllp.maxConnections))) -}}
{{- $env = append $env (dict "name" "MEDLEDGER_MLLP_PURPOSE" "value" $mllp.purpose) -}}
{{- else -}}
{{- $env = append $env (dict "name" "MEDLEDGER_GRPC_HOST" "value" "0.0.0.0") -}}
{{- $env = append $env (dict "name" "MEDLEDGER_GRPC_PORT" "value" (printf "%v" (int $config.port))) -}}
{{- end -}}
{{- $env = append $env (dict "name" "MEDLEDGER_LOG_LEVEL" "value" $root.Values.logLevel) -}}
{{- if and $config.healthPort (not (include "medledger.isMllp" .)) -}}
{{- $env = append $env (dict "name" "MEDLEDGER_HEALTH_PORT" "value" (printf "%v" (int $config.healthPort))) -}}
{{- end -}}
{{- $env = append $env (dict "name" "MEDLEDGER_SHUTDOWN_GRACE_SECONDS" "value" (printf "%v" (int $config.shutdownGraceSeconds))) -}}
{{- range $service := list "identity" "ledger" "record" -}}
{{- if and (ne $service $.name) (index $root.Values.components $service).enabled -}}
{{- $env = append $env (dict "name" (printf "MEDLEDGER_%s_ADDR" (upper $service)) "value" (include "medledger.address" (dict "root" $root "name" $service))) -}}
{{- end -}}
{{- end -}}
{{- $env = append $env (dict "name" "K8S_NAMESPACE" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.namespace"))) -}}
{{- $env = append $env (dict "name" "K8S_POD_NAME" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.name"))) -}}
{{- $env = append $env (dict "name" "K8S_NODE_NAME" "valueFrom" (dict "fieldRef" (dict "fieldPath" "spec.nodeName"))) -}}
{{- $env = append $env (dict "name" "OTEL_SERVICE_NAME" "value" .name) -}}
{{- $attributes := list "service.namespace=medledger" (printf "service.version=%s" $root.Chart.AppVersion) "k8s.namespace.name=$(K8S_NAMESPACE)" "k8s.pod.name=$(K8S_POD_NAME)" "k8s.node.name=$(K8S_NODE_NAME)" -}}
{{- range $key, $value := $root.Values.telemetry.resourceAttributes -}}
{{- $attributes = append $attributes (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- $env = append $env (dict "name" "OTEL_RESOURCE_ATTRIBUTES" "value" (join "," $attributes)) -}}
{{- with include "medledger.otlpEndpoint" $root -}}
{{- $env = append $env (dict "name" "OTEL_EXPORTER_OTLP_ENDPOINT" "value" .) -}}
{{- end -}}
{{- if and $root.Values.metrics.port (not (include "medledger.isMllp" .)) -}}
{{- $env = append $env (dict "name" "MEDLEDGER_METRICS_PORT" "value" (printf "%v" (int $root.Values.metrics.port))) -}}
{{- end -}}
{{- if $config.tls.enabled -}}
{{- $env = append $env (dict "name" "MEDLEDGER_TLS_CERT_FILE" "value" "/etc/medledger/tls/tls.crt") -}}
{{- $env = append $env (dict "name" "MEDLEDGER_TLS_KEY_FILE" "value" "/etc/medledger/tls/tls.key") -}}
{{- $env = append $env (dict "name" "MEDLEDGER_TLS_CA_FILE" "value" "/etc/medledger/tls/ca.crt") -}}
{{- end -}}
{{- if has "mongodb" $backends -}}
{{- $env = append $env (dict "name" "MONGODB_URI" "valueFrom" (dict "secretKeyRef" (include "medledger.mongodbSecretRef" . | fromJson))) -}}
{{- $database := required (printf "components.%s.database is required: it uses mongodb" .name) $config.database -}}
{{- $env = append $env (dict "name" "MEDLEDGER_MONGODB_DATABASE" "value" $database) -}}
{{- end -}}
{{- if has "vault" $backends -}}
{{- $env = append $env (dict "name" "VAULT_ADDR" "value" (required "vault.address is required" $root.Values.vault.address)) -}}
{{- $env = append $env (dict "name" "VAULT_AUTH_METHOD" "value" "kubernetes") -}}
{{- $env = append $env (dict "name" "VAULT_K8S_ROLE" "value" (required (printf "components.%s.vaultRole is required: it uses vault" .name) $config.vaultRole)) -}}
{{- if ne $root.Values.vault.kubernetesAuthMount "kubernetes" -}}
{{- $env = append $env (dict "name" "VAULT_K8S_MOUNT" "value" $root.Values.vault.kubernetesAuthMount) -}}
{{- end -}}
{{- $env = append $env (dict "name" "VAULT_TRANSIT_MOUNT" "value" ($config.vaultTransitMount | default $root.Values.vault.transitMount)) -}}
{{- end -}}
{{- if and (has "triton" $backends) $root.Values.triton.enabled -}}
{{- $env = append $env (dict "name" "TRITON_URL" "value" (printf "%s:%v" (include "medledger.fullname" (dict "root" $root "name" "triton")) (int $root.Values.triton.ports.grpc))) -}}
{{- if and $config.tls.enabled $root.Values.default.tls.enabled -}}
{{- /* The chart's Triton speaks mutual TLS (templates/triton.yaml): the component's own certificate. */ -}}
{{- $env = append $env (dict "name" "TRITON_TLS_CA_FILE" "value" "/etc/medledger/tls/ca.crt") -}}
{{- $env = append $env (dict "name" "TRITON_TLS_CERT_FILE" "value" "/etc/medledger/tls/tls.crt") -}}
{{- $env = append $env (dict "name" "TRITON_TLS_KEY_FILE" "value" "/etc/medledger/tls/tls.key") -}}
{{- end -}}
{{- else if has "triton" $backends -}}
{{- $env = append $env (dict "name" "TRITON_URL" "value" (required "triton.url is required" $root.Values.triton.url)) -}}
{{- end -}}
{{- if eq .name "identity" -}}
{{- $env = append $env (dict "name" "IDENTITY_SERVICE_CLIENTS" "value" (join "," $root.Values.identity.serviceClients)) -}}
{{- if $root.Values.identity.trustedProxies -}}
{{- $env = append $env (dict "name" "IDENTITY_TRUSTED_PROXIES" "value" (join "," $root.Values.identity.trustedProxies)) -}}
{{- end -}}
{{- if $root.Values.identity.bootstrapClient.id -}}
{{- $env = append $env (dict "name" "IDENTITY_BOOTSTRAP_CLIENT_ID" "value" $root.Values.identity.bootstrapClient.id) -}}
{{- $env = append $env (dict "name" "IDENTITY_BOOTSTRAP_CLIENT_JWKS_FILE" "value" "/etc/medledger/bootstrap/jwks.json") -}}
{{- end -}}
{{- end -}}
{{- if eq .name "inference" -}}
{{- $env = append $env (dict "name" "INFERENCE_MODEL_REPOSITORY" "value" (required "inference.modelRepository.mountPath is required" $root.Values.inference.modelRepository.mountPath)) -}}
{{- end -}}
{{- if eq .name "witness" -}}
{{- $env = append $env (dict "name" "WITNESS_NAME" "value" (required "witness.name is required when the witness is enabled" $root.Values.witness.name)) -}}
{{- $env = append $env (dict "name" "WITNESS_KEY" "value" $root.Values.witness.key) -}}
{{- $env = append $env (dict "name" "WITNESS_LOG_VKEYS" "value" (join "," (required "witness.logVkeys is required when the witness is enabled" $root.Values.witness.logVkeys))) -}}
{{- end -}}
{{- if eq .name "ledger" -}}
{{- $env = append $env (dict "name" "LEDGER_ORIGIN" "value" (required "ledger.origin is required" $root.Values.ledger.origin)) -}}
{{- $env = append $env (dict "name" "LEDGER_WITNESSES" "value" (join "," $root.Values.ledger.witnesses)) -}}
{{- $env = append $env (dict "name" "LEDGER_WITNESS_VKEYS" "value" (join "," ($root.Values.ledger.witnessVkeys | default list))) -}}
{{- /* Replicas forward appends to the one holding the writer lease, at its pod IP. */ -}}
{{- $env = append $env (dict "name" "POD_IP" "valueFrom" (dict "fieldRef" (dict "fieldPath" "status.podIP"))) -}}
{{- $env = append $env (dict "name" "MEDLEDGER_ADVERTISE_ADDRESS" "value" (printf "$(POD_IP):%v" (int $config.port))) -}}
{{- if $config.tls.enabled -}}
{{- /* No certificate names a pod IP: a forwarding replica checks the ledger Service's name. */ -}}
{{- $env = append $env (dict "name" "MEDLEDGER_SEQUENCER_TLS_NAME" "value" (include "medledger.fullname" .)) -}}
{{- end -}}
{{- end -}}
{{- $names := list -}}
{{- $byName := dict -}}
{{- range $entry := concat $env ($root.Values.default.env | default list) ((index $root.Values.components .name).env | default list) -}}
{{- if not (hasKey $byName $entry.name) -}}
{{- $names = append $names $entry.name -}}
{{- end -}}
{{- $_ := set $byName $entry.name $entry -}}
{{- end -}}
{{- $final := list -}}
{{- range $name := $names -}}
{{- $final = append $final (get $byName $name) -}}
{{- end -}}
{{- toYaml $final -}}
{{- end -}}

{{/*
The services' OTLP endpoint: telemetry.otlpEndpoint, else the in-chart collector's, else none.
*/}}
{{- define "medledger.otlpEndpoint" -}}
{{- if .Values.telemetry.otlpEndpoint -}}
{{- .Values.telemetry.otlpEndpoint -}}
{{- else if .Values.observability.collector.enabled -}}
{{- printf "http://%s:4317" (include "medledger.fullname" (dict "root" . "name" "otel-collector")) -}}
{{- end -}}
{{- end -}}

{{/* checkov skip annotations for the findings in `checkovSkips` that apply to this component. */}}
{{- define "medledger.checkovSkips" -}}
{{- $skips := list -}}
{{- if has "mongodb" (.config.backends | default list) -}}
{{- $skips = append $skips "CKV_K8S_35" -}}
{{- end -}}
{{- if not .config.image.digest -}}
{{- $skips = append $skips "CKV_K8S_43" -}}
{{- end -}}
{{- range $index, $id := $skips }}
{{- with get $.root.Values.checkovSkips $id }}
checkov.io/skip{{ add1 $index }}: {{ printf "%s=%s" $id . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A memory quantity (Mi or Gi) in mebibytes. */}}
{{- define "medledger.mebibytes" -}}
{{- $quantity := toString . -}}
{{- if hasSuffix "Gi" $quantity -}}
{{- mul (trimSuffix "Gi" $quantity | int) 1024 -}}
{{- else if hasSuffix "Mi" $quantity -}}
{{- trimSuffix "Mi" $quantity | int -}}
{{- else -}}
{{- fail (printf "%q: give the collector's memory limit in Mi or Gi" $quantity) -}}
{{- end -}}
{{- end -}}
