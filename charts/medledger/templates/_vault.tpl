{{/*
Vault policies from files/vault-layout.json (scripts/vault-layout.py writes it from
medledger.common.vault_layout), in vault_layout's own text format, with the chart's mounts.
*/}}

{{- define "medledger.vaultLayout" -}}
{{- .Files.Get "files/vault-layout.json" -}}
{{- end -}}

{{/*
A policy's HCL. (dict "rules" <rules of vault-layout.json> "mounts" (dict "transit" ... "kv" ...
"witness" ...) "witnessKey" <key>)
*/}}
{{- define "medledger.vaultPolicy" -}}
{{- $mounts := .mounts -}}
{{- $witnessKey := .witnessKey | default "" -}}
{{- $rules := list -}}
{{- range $rule := .rules -}}
{{- $mount := required (printf "no mount for %s rules" $rule.mount) (get $mounts $rule.mount) -}}
{{- $path := printf "%s/%s" $mount (replace "{witnessKey}" $witnessKey $rule.path) -}}
{{- $capabilities := list -}}
{{- range $capability := $rule.capabilities -}}
{{- $capabilities = append $capabilities (printf "%q" $capability) -}}
{{- end -}}
{{- $rules = append $rules (printf "path %q {\n  capabilities = [%s]\n}" $path (join ", " $capabilities)) -}}
{{- end -}}
{{- join "\n\n" $rules }}
{{ end -}}

{{/* The components that log in to Vault: (list (dict "name" "config")) as JSON. */}}
{{- define "medledger.vaultComponents" -}}
{{- $found := list -}}
{{- range $name := keys .Values.components | sortAlpha -}}
{{- if (index $.Values.components $name).enabled -}}
{{- $config := include "medledger.component" (dict "root" $ "name" $name) | fromJson -}}
{{- if has "vault" ($config.backends | default list) -}}
{{- $found = append $found (dict "name" $name "config" $config) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "components" $found) -}}
{{- end -}}
