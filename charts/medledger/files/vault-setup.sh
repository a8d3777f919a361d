#!/bin/sh
# Sets Vault (or OpenBao) up for a medledger release: the chart's vault.setup hook Job runs it
# before install and before each upgrade. Every step first looks at what is there, so a second
# run changes nothing, and a mount or key of another type stops it instead of being replaced.
#
# It reads, from $SETUP_DIR (the hook's ConfigMap):
#   transit-keys      lines "<mount> <key> <type>": transit mounts and keys to create if missing
#   policy.<name>.hcl the policies to write, each named <name>
#   roles             lines "<role> <service account> <policy>": Kubernetes auth roles
# and from the environment: VAULT_ADDR, VAULT_TOKEN_FILE (a token allowed to do this: README,
# "Vault"), KV_MOUNT and SUBJECT_KEY_PATH (the ledger pseudonyms' HMAC key), AUTH_MOUNT,
# K8S_NAMESPACE, TOKEN_AUDIENCE, TOKEN_TTL, KUBERNETES_HOST (empty: leave the auth method's
# config alone) and VAULT_CLI (vault, or bao for OpenBao's image).
set -eu

: "${SETUP_DIR:?}" "${VAULT_ADDR:?}" "${VAULT_TOKEN_FILE:?}" "${KV_MOUNT:?}" "${SUBJECT_KEY_PATH:?}"
: "${AUTH_MOUNT:?}" "${K8S_NAMESPACE:?}" "${TOKEN_AUDIENCE:?}" "${TOKEN_TTL:?}"
KUBERNETES_HOST=${KUBERNETES_HOST:-}
cli=${VAULT_CLI:-vault}
VAULT_TOKEN=$(cat "$VAULT_TOKEN_FILE")
export VAULT_ADDR VAULT_TOKEN

say() { echo "vault-setup: $*"; }
fail() { echo "vault-setup: $*" >&2; exit 1; }

# The type of the secrets engine mounted at $1, or nothing when none is.
mount_type() { "$cli" read -field=type "sys/mounts/$1" 2>/dev/null || true; }

ensure_transit_mount() {
  found=$(mount_type "$1")
  if [ -z "$found" ]; then
    "$cli" secrets enable -path="$1" transit >/dev/null
    say "enabled the transit engine at $1/"
  elif [ "$found" != transit ]; then
    fail "$1/ is mounted as $found, not transit"
  fi
}

ensure_kv_mount() {
  found=$(mount_type "$KV_MOUNT")
  if [ -z "$found" ]; then
    "$cli" secrets enable -path="$KV_MOUNT" -version=2 kv >/dev/null
    say "enabled the KV version 2 engine at $KV_MOUNT/"
  elif [ "$found" != kv ] || ! "$cli" read -format=json -field=options "sys/mounts/$KV_MOUNT" |
    tr -d ' \n' | grep -q '"version":"2"'; then
    fail "$KV_MOUNT/ is mounted but is not a KV version 2 engine"
  fi
}

ensure_transit_key() { # mount key type
  if found=$("$cli" read -field=type "$1/keys/$2" 2>/dev/null); then
    [ "$found" = "$3" ] || fail "the transit key $1/$2 is $found, expected $3"
  else
    "$cli" write -f "$1/keys/$2" type="$3" >/dev/null
    say "created the transit key $1/$2 ($3)"
  fi
}

# The ledger pseudonyms' HMAC key: 32 random bytes from Vault, written only if absent
# (check-and-set 0): no service may replace it, and nor may a second run of this.
ensure_subject_key() {
  if "$cli" kv get -mount="$KV_MOUNT" -field=key "$SUBJECT_KEY_PATH" >/dev/null 2>&1; then
    return
  fi
  if "$cli" write -field=random_bytes sys/tools/random/32 format=base64 |
    "$cli" kv put -mount="$KV_MOUNT" -cas=0 "$SUBJECT_KEY_PATH" key=- >/dev/null; then
    say "created $KV_MOUNT/$SUBJECT_KEY_PATH"
  elif ! "$cli" kv get -mount="$KV_MOUNT" -field=key "$SUBJECT_KEY_PATH" >/dev/null 2>&1; then
    fail "cannot create $KV_MOUNT/$SUBJECT_KEY_PATH"
  fi # else another run created it first: that one stays.
}

ensure_kubernetes_auth() {
  if ! found=$("$cli" read -field=type "sys/auth/$AUTH_MOUNT" 2>/dev/null); then
    "$cli" auth enable -path="$AUTH_MOUNT" kubernetes >/dev/null
    say "enabled Kubernetes auth at auth/$AUTH_MOUNT/"
  elif [ "$found" != kubernetes ]; then
    fail "auth/$AUTH_MOUNT/ is a $found auth method, not kubernetes"
  fi
  if [ -n "$KUBERNETES_HOST" ]; then
    "$cli" write "auth/$AUTH_MOUNT/config" kubernetes_host="$KUBERNETES_HOST" >/dev/null
    say "configured auth/$AUTH_MOUNT/ for $KUBERNETES_HOST"
  fi
}

while read -r mount; do
  [ -z "$mount" ] || ensure_transit_mount "$mount"
done <<MOUNTS
$(cut -d' ' -f1 "$SETUP_DIR/transit-keys" | sort -u)
MOUNTS
while read -r mount key type; do
  [ -z "$mount" ] || ensure_transit_key "$mount" "$key" "$type"
done <"$SETUP_DIR/transit-keys"
ensure_kv_mount
ensure_subject_key

for file in "$SETUP_DIR"/policy.*.hcl; do
  name=${file##*/policy.}
  name=${name%.hcl}
  "$cli" policy write "$name" "$file" >/dev/null
  say "wrote the policy $name"
done

ensure_kubernetes_auth
while read -r role account policy; do
  [ -n "$role" ] || continue
  # Each role: one service account of this namespace, tokens with this audience only, and its
  # one policy (plus Vault's default: a token may look itself up).
  "$cli" write "auth/$AUTH_MOUNT/role/$role" \
    bound_service_account_names="$account" \
    bound_service_account_namespaces="$K8S_NAMESPACE" \
    audience="$TOKEN_AUDIENCE" \
    token_policies="$policy" \
    token_ttl="$TOKEN_TTL" \
    token_max_ttl="$TOKEN_TTL" >/dev/null
  say "wrote the role $role ($K8S_NAMESPACE/$account: $policy)"
done <"$SETUP_DIR/roles"
say "done"
