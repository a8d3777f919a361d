{{/*
The objects of one component. Each template takes (dict "root" $ "name" <component> "config"
<default merged with the component>).
*/}}

{{- define "medledger.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "medledger.fullname" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "medledger.labels" . | nindent 4 }}
# Pods that log in to Vault get an audience-bound projected token instead.
automountServiceAccountToken: false
{{- end -}}

{{/* Whether a component is the MLLP listener (HL7 v2 over TCP), not a gRPC server. */}}
{{- define "medledger.isMllp" -}}
{{- if eq (.config.protocol | default "grpc") "mllp" }}true{{ end -}}
{{- end -}}

{{- define "medledger.service" -}}
{{- $mllp := include "medledger.isMllp" . -}}
{{- $port := ternary "mllp" "grpc" (eq $mllp "true") -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "medledger.fullname" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "medledger.labels" . | nindent 4 }}
spec:
  {{- if $mllp }}
  # How engines outside the cluster reach the listener (mllp.serviceType).
  type: {{ .root.Values.mllp.serviceType }}
  {{- else }}
  type: ClusterIP
  {{- end }}
  selector:
    {{- include "medledger.selectorLabels" . | nindent 4 }}
  ports:
    - name: {{ $port }}
      port: {{ int .config.port }}
      targetPort: {{ $port }}
      protocol: TCP
    {{- if and .root.Values.metrics.port (not $mllp) }}
    - name: metrics
      port: {{ int .root.Values.metrics.port }}
      targetPort: metrics
      protocol: TCP
    {{- end }}
{{- end -}}

{{- define "medledger.grpcProbe" -}}
grpc:
  port: {{ int .port }}
  {{- with .probe.service }}
  service: {{ . | quote }}
  {{- end }}
periodSeconds: {{ int .probe.periodSeconds }}
timeoutSeconds: {{ int .probe.timeoutSeconds }}
failureThreshold: {{ int .probe.failureThreshold }}
{{- end -}}

{{/* The MLLP listener is ready when its port accepts connections (it has no gRPC health). */}}
{{- define "medledger.tcpProbe" -}}
tcpSocket:
  port: mllp
periodSeconds: {{ int .probe.periodSeconds }}
timeoutSeconds: {{ int .probe.timeoutSeconds }}
failureThreshold: {{ int .probe.failureThreshold }}
{{- end -}}

{{- define "medledger.deployment" -}}
{{- $config := .config -}}
{{- $mllp := include "medledger.isMllp" . -}}
{{- if le (int $config.terminationGracePeriodSeconds) (int $config.shutdownGraceSeconds) -}}
{{- fail (printf "components.%s: terminationGracePeriodSeconds (%v) must exceed shutdownGraceSeconds (%v)" .name $config.terminationGracePeriodSeconds $config.shutdownGraceSeconds) -}}
{{- end -}}
{{- if and $config.tls.enabled (not $config.healthPort) (not $mllp) -}}
{{- fail (printf "components.%s: tls.enabled needs healthPort (kubelet gRPC probes cannot use TLS)" .name) -}}
{{- end -}}
{{- if and $config.healthPort (eq (int $config.healthPort) (int $config.port)) -}}
{{- fail (printf "components.%s: healthPort must differ from port" .name) -}}
{{- end -}}
{{- $probePort := $config.healthPort | default $config.port -}}
{{- $backends := $config.backends | default list -}}
{{- $usesVault := has "vault" $backends -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "medledger.fullname" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "medledger.labels" . | nindent 4 }}
  {{- with include "medledger.checkovSkips" . | trim }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  replicas: {{ int $config.replicas }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "medledger.selectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "medledger.selectorLabels" . | nindent 8 }}
        app.kubernetes.io/component: {{ .name }}
        app.kubernetes.io/part-of: medledger
        {{- with $config.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $config.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "medledger.fullname" . }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ int $config.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $config.podSecurityContext | nindent 8 }}
      {{- with $config.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $config.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $config.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $config.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $config.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $config.topologySpread.enabled }}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: {{ $config.topologySpread.topologyKey }}
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "medledger.selectorLabels" . | nindent 14 }}
      {{- end }}
      {{- if and (eq .name "inference") (include "medledger.modelRepositoryFromImage" .root) }}
      initContainers:
        {{- include "medledger.modelRepositoryInit" (dict "root" .root "securityContext" $config.securityContext) | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .name }}
          image: {{ include "medledger.image" . }}
          imagePullPolicy: {{ include "medledger.imagePullPolicy" . }}
          ports:
            - name: {{ ternary "mllp" "grpc" (eq $mllp "true") }}
              containerPort: {{ int $config.port }}
              protocol: TCP
            {{- if and $config.healthPort (not $mllp) }}
            - name: health
              containerPort: {{ int $config.healthPort }}
              protocol: TCP
            {{- end }}
            {{- if and .root.Values.metrics.port (not $mllp) }}
            - name: metrics
              containerPort: {{ int .root.Values.metrics.port }}
              protocol: TCP
            {{- end }}
          env:
            {{- include "medledger.env" . | nindent 12 }}
          {{- if $mllp }}
          startupProbe:
            {{- include "medledger.tcpProbe" (dict "probe" $config.probes.startup) | nindent 12 }}
          readinessProbe:
            {{- include "medledger.tcpProbe" (dict "probe" $config.probes.readiness) | nindent 12 }}
          livenessProbe:
            {{- include "medledger.tcpProbe" (dict "probe" $config.probes.liveness) | nindent 12 }}
          {{- else }}
          startupProbe:
            {{- include "medledger.grpcProbe" (dict "port" $probePort "probe" $config.probes.startup) | nindent 12 }}
          readinessProbe:
            {{- include "medledger.grpcProbe" (dict "port" $probePort "probe" $config.probes.readiness) | nindent 12 }}
          livenessProbe:
            {{- include "medledger.grpcProbe" (dict "port" $probePort "probe" $config.probes.liveness) | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml $config.resources | nindent 12 }}
          securityContext:
            {{- toYaml $config.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $config.tls.enabled }}
            - name: tls
              mountPath: /etc/medledger/tls
              readOnly: true
            {{- end }}
            {{- if and (eq .name "identity") .root.Values.identity.bootstrapClient.id }}
            - name: bootstrap
              mountPath: /etc/medledger/bootstrap
              readOnly: true
            {{- end }}
            {{- if $mllp }}
            # The facilities file and each facility client's private key (docs/hl7-v2.md).
            - name: mllp-facilities
              mountPath: /etc/medledger/mllp
              readOnly: true
            # The listener's certificate and the CA of the senders' client certificates.
            - name: mllp-tls
              mountPath: /etc/medledger/mllp-tls
              readOnly: true
            {{- end }}
            {{- if eq .name "inference" }}
            # The model repository Triton serves: RegisterModel hashes the files Triton loads.
            - name: model-repository
              mountPath: {{ .root.Values.inference.modelRepository.mountPath }}
              readOnly: true
            {{- end }}
            {{- if $usesVault }}
            # Where Vault's Kubernetes auth clients read the service-account token by default.
            - name: vault-token
              mountPath: /var/run/secrets/kubernetes.io/serviceaccount
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $config.tmpSizeLimit }}
        {{- if $config.tls.enabled }}
        - name: tls
          secret:
            secretName: {{ include "medledger.tlsSecretName" . }}
            defaultMode: 0440
        {{- end }}
        {{- if and (eq .name "identity") .root.Values.identity.bootstrapClient.id }}
        - name: bootstrap
          configMap:
            name: {{ required "identity.bootstrapClient.jwksConfigMap is required with an id" .root.Values.identity.bootstrapClient.jwksConfigMap }}
            items:
              - key: jwks.json
                path: jwks.json
        {{- end }}
        {{- if $mllp }}
        - name: mllp-facilities
          secret:
            secretName: {{ required "mllp.facilitiesSecret is required when the mllp component is enabled" .root.Values.mllp.facilitiesSecret }}
            defaultMode: 0440
        - name: mllp-tls
          secret:
            secretName: {{ required "mllp.tlsSecret is required when the mllp component is enabled" .root.Values.mllp.tlsSecret }}
            defaultMode: 0440
        {{- end }}
        {{- if eq .name "inference" }}
        {{- include "medledger.modelRepositoryVolume" .root | nindent 8 }}
        {{- end }}
        {{- if $usesVault }}
        - name: vault-token
          projected:
            defaultMode: 0440
            sources:
              - serviceAccountToken:
                  audience: {{ .root.Values.vault.tokenAudience }}
                  expirationSeconds: {{ int .root.Values.vault.tokenExpirationSeconds }}
                  path: token
        {{- end }}
{{- end -}}

{{- define "medledger.podDisruptionBudget" -}}
{{- $budget := .config.podDisruptionBudget -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "medledger.fullname" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "medledger.labels" . | nindent 4 }}
spec:
  {{- if hasKey $budget "minAvailable" }}
  minAvailable: {{ $budget.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $budget.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "medledger.selectorLabels" . | nindent 6 }}
{{- end -}}

{{- define "medledger.tlsSecretName" -}}
{{- .config.tls.secretName | default (printf "%s-tls" (include "medledger.fullname" .)) -}}
{{- end -}}

{{/*
The component's certificate, from cert-manager: for its Service's names, as server (its gRPC
port) and as client (its calls to the other components, which demand one).
*/}}
{{- define "medledger.certificate" -}}
{{- $certManager := .config.tls.certManager -}}
{{- $service := include "medledger.fullname" . -}}
{{- $namespace := .root.Release.Namespace -}}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ $service }}
  namespace: {{ $namespace }}
  labels:
    {{- include "medledger.labels" . | nindent 4 }}
spec:
  secretName: {{ include "medledger.tlsSecretName" . }}
  secretTemplate:
    labels:
      {{- include "medledger.labels" . | nindent 6 }}
  dnsNames:
    - {{ $service }}
    - {{ $service }}.{{ $namespace }}
    - {{ $service }}.{{ $namespace }}.svc
    - {{ $service }}.{{ $namespace }}.svc.{{ $certManager.clusterDomain }}
  duration: {{ $certManager.duration }}
  renewBefore: {{ $certManager.renewBefore }}
  privateKey:
    algorithm: ECDSA
    size: 256
    rotationPolicy: Always
  usages:
    - digital signature
    - server auth
    - client auth
  issuerRef:
    {{- toYaml $certManager.issuerRef | nindent 4 }}
{{- end -}}

{{/* An egress rule: to `to` (NetworkPolicyPeer objects; none: anywhere) on TCP `ports`. */}}
{{- define "medledger.egressRule" -}}
- ports:
    {{- range $port := .ports }}
    - port: {{ int $port }}
      protocol: TCP
    {{- end }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "medledger.networkPolicy" -}}
{{- $root := .root -}}
{{- $config := .config -}}
{{- $backends := $config.backends | default list -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "medledger.fullname" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "medledger.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "medledger.selectorLabels" . | nindent 6 }}
  policyTypes:
    - Ingress
    - Egress
  egress:
    - ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
      {{- with $config.networkPolicy.dnsTo }}
      to:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- range $peer := $config.peers | default list }}
    {{- $component := index $root.Values.components $peer }}
    {{- if $component.enabled }}
    - to:
        - podSelector:
            matchLabels:
              {{- include "medledger.selectorLabels" (dict "root" $root "name" $peer) | nindent 14 }}
      ports:
        - port: {{ int $component.port }}
          protocol: TCP
    {{- end }}
    {{- end }}
    {{- if has "mongodb" $backends }}
    {{- include "medledger.egressRule" (dict "to" $root.Values.mongodb.egressTo "ports" $root.Values.mongodb.ports) | nindent 4 }}
    {{- end }}
    {{- if has "vault" $backends }}
    {{- include "medledger.egressRule" (dict "to" $root.Values.vault.egressTo "ports" (list (include "medledger.urlPort" $root.Values.vault.address))) | nindent 4 }}
    {{- end }}
    {{- if and (has "triton" $backends) $root.Values.triton.enabled }}
    - to:
        - podSelector:
            matchLabels:
              {{- include "medledger.selectorLabels" (dict "root" $root "name" "triton") | nindent 14 }}
      ports:
        - port: {{ int $root.Values.triton.ports.grpc }}
          protocol: TCP
    {{- else if has "triton" $backends }}
    {{- include "medledger.egressRule" (dict "to" $root.Values.triton.egressTo "ports" (list (include "medledger.addressPort" $root.Values.triton.url))) | nindent 4 }}
    {{- end }}
    {{- if and (eq .name "ledger") $root.Values.ledger.witnesses }}
    {{- $ports := list }}
    {{- range $address := $root.Values.ledger.witnesses }}
    {{- $ports = append $ports (include "medledger.addressPort" $address) }}
    {{- end }}
    {{- include "medledger.egressRule" (dict "to" $root.Values.ledger.witnessEgressTo "ports" ($ports | uniq)) | nindent 4 }}
    {{- end }}
    {{- if $root.Values.telemetry.otlpEndpoint }}
    {{- include "medledger.egressRule" (dict "to" $root.Values.telemetry.egressTo "ports" (list (include "medledger.urlPort" $root.Values.telemetry.otlpEndpoint))) | nindent 4 }}
    {{- else if $root.Values.observability.collector.enabled }}
    - to:
        - podSelector:
            matchLabels:
              {{- include "medledger.selectorLabels" (dict "root" $root "name" "otel-collector") | nindent 14 }}
      ports:
        - port: 4317
          protocol: TCP
    {{- end }}
    {{- with $config.networkPolicy.extraEgress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ingress:
    {{- if include "medledger.isMllp" . }}
    # Hospital interface engines, from outside the release: mllp.ingressFrom ([]: anywhere).
    - {{- with .root.Values.mllp.ingressFrom }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - port: mllp
          protocol: TCP
    {{- else }}
    - from:
        - podSelector:
            matchLabels:
              app.kubernetes.io/instance: {{ .root.Release.Name }}
              app.kubernetes.io/part-of: medledger
        {{- with .config.networkPolicy.extraIngressFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - port: grpc
          protocol: TCP
    {{- end }}
    {{- if and .root.Values.metrics.port (not (include "medledger.isMllp" .)) }}
    - {{- with .root.Values.metrics.scrapeFrom }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - port: metrics
          protocol: TCP
    {{- end }}
{{- end -}}
