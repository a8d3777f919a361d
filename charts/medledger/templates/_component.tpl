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

{{- define "medledger.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "medledger.fullname" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "medledger.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "medledger.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ int .config.port }}
      targetPort: grpc
      protocol: TCP
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

{{- define "medledger.deployment" -}}
{{- $config := .config -}}
{{- if le (int $config.terminationGracePeriodSeconds) (int $config.shutdownGraceSeconds) -}}
{{- fail (printf "components.%s: terminationGracePeriodSeconds (%v) must exceed shutdownGraceSeconds (%v)" .name $config.terminationGracePeriodSeconds $config.shutdownGraceSeconds) -}}
{{- end -}}
{{- if and $config.tls.enabled (not $config.healthPort) -}}
{{- fail (printf "components.%s: tls.enabled needs healthPort (kubelet gRPC probes cannot use TLS)" .name) -}}
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
      containers:
        - name: {{ .name }}
          image: {{ include "medledger.image" . }}
          imagePullPolicy: {{ include "medledger.imagePullPolicy" . }}
          ports:
            - name: grpc
              containerPort: {{ int $config.port }}
              protocol: TCP
            {{- if $config.healthPort }}
            - name: health
              containerPort: {{ int $config.healthPort }}
              protocol: TCP
            {{- end }}
          env:
            {{- include "medledger.env" . | nindent 12 }}
          startupProbe:
            {{- include "medledger.grpcProbe" (dict "port" $probePort "probe" $config.probes.startup) | nindent 12 }}
          readinessProbe:
            {{- include "medledger.grpcProbe" (dict "port" $probePort "probe" $config.probes.readiness) | nindent 12 }}
          livenessProbe:
            {{- include "medledger.grpcProbe" (dict "port" $probePort "probe" $config.probes.liveness) | nindent 12 }}
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
            secretName: {{ $config.tls.secretName | default (printf "%s-tls" (include "medledger.fullname" .)) }}
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

{{- define "medledger.networkPolicy" -}}
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
  ingress:
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
{{- end -}}
