#!/usr/bin/env bash
# Checks protos/ for breaking changes (buf, FILE rules) against an earlier version.
# BUF_BREAKING_AGAINST is any buf input; default: protos/ as of the previous commit.
# When that git ref does not exist (first commit, shallow clone) or has no protos yet,
# there is nothing to compare with: say why and succeed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UV=${UV:-$(command -v uv 2>/dev/null || echo "$HOME/.local/bin/uv")}
against=${BUF_BREAKING_AGAINST:-.git#ref=HEAD~1,subdir=protos}

# For a local git input ("<dir>.git#ref=...,subdir=..."), check the ref and the subdir exist.
input=${against%%#*}
if [[ $input == *.git && -e $input ]]; then
  rev="HEAD" subdir=""
  if [[ $against == *#* ]]; then
    IFS=',' read -r -a opts <<<"${against#*#}"
    for opt in "${opts[@]}"; do
      case $opt in
        ref=*) rev=${opt#ref=} ;;
        branch=*) rev=refs/heads/${opt#branch=} ;;
        tag=*) rev=refs/tags/${opt#tag=} ;;
        subdir=*) subdir=${opt#subdir=} ;;
      esac
    done
  fi
  git_in() { git --git-dir="$input" "$@"; }
  if ! commit=$(git_in rev-parse --verify --quiet "$rev^{commit}"); then
    echo "proto-breaking: skipped: $rev does not exist in $input (first commit or shallow clone)"
    exit 0
  fi
  if ! git_in ls-tree -r --name-only "$commit" -- "${subdir:-.}" | grep -q '\.proto$'; then
    echo "proto-breaking: skipped: $rev has no .proto files under ${subdir:-the repository root}"
    exit 0
  fi
fi

"$UV" run --frozen buf breaking protos --against "$against"
echo "proto-breaking: no breaking changes against $against"
