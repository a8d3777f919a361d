{{/*
The model repository both Triton and inference read (inference.modelRepository): the pod volume
named model-repository, and, when it comes from an image, the init container that fills it.
Takes the root context.
*/}}

{{- define "medledger.modelRepositoryFromImage" -}}
{{- if .Values.inference.modelRepository.image.digest -}}true{{- end -}}
{{- end -}}

{{- define "medledger.modelRepositoryImage" -}}
{{- $image := .Values.inference.modelRepository.image -}}
{{- printf "%s/%s@%s" $image.registry $image.repository $image.digest -}}
{{- end -}}

{{/* The pod volume `model-repository` (list item, without indentation). */}}
{{- define "medledger.modelRepositoryVolume" -}}
- name: model-repository
{{- if include "medledger.modelRepositoryFromImage" . }}
  emptyDir:
    sizeLimit: {{ .Values.inference.modelRepository.image.sizeLimit }}
{{- else }}
  {{- toYaml (required "inference.modelRepository.volume is required" .Values.inference.modelRepository.volume) | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The init container copying the image's repository into the emptyDir (only from an image).
(dict "root" $ "securityContext" <the container's securityContext>)
*/}}
{{- define "medledger.modelRepositoryInit" -}}
{{- $root := .root -}}
{{- $image := $root.Values.inference.modelRepository.image -}}
- name: model-repository
  image: {{ include "medledger.modelRepositoryImage" $root }}
  imagePullPolicy: IfNotPresent
  # The image's files, copied as they are: inference hashes the bytes Triton loads.
  command: ["cp", "-R", "{{ trimSuffix "/" $image.path }}/.", "/model-repository/"]
  resources:
    requests:
      cpu: 50m
      memory: 32Mi
    limits:
      cpu: 500m
      memory: 128Mi
  securityContext:
    {{- toYaml .securityContext | nindent 4 }}
  volumeMounts:
    - name: model-repository
      mountPath: /model-repository
{{- end -}}
