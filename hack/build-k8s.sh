#!/usr/bin/env bash
# Builds the Kubernetes binaries from Go modules into the version-keyed cache (skips what is cached).
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"
components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
missing=()
for c in "${components[@]}"; do [[ -x $K8S_BIN/$c ]] || missing+=("$c"); done
[[ ${#missing[@]} -eq 0 ]] && exit 0

# k8s.io/kubernetes replaces its staging modules with local paths, so a wrapper module points each at its published v0 twin.
work=$CODEEXEC_CACHE/k8s-$K8S_VERSION/wrapper
mkdir -p "$work" "$K8S_BIN"
cd "$work"
staging_version=v0.${K8S_VERSION#v1.}
if [[ ! -f go.sum ]]; then
  rm -f go.mod
  go mod init codeexec.local/k8s-build >/dev/null 2>&1
  mod=$(cd / && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    python3 -c 'import json, sys; print(open(json.load(sys.stdin)["GoMod"]).read())')
  replaces=$(printf '%s\n' "$mod" | awk '/=> .\/staging\/src\// {print $1}')
  for m in $replaces; do go mod edit -replace "$m=$m@$staging_version"; done
  go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
  printf 'package main\nimport (\n' > tools.go
  for c in "${components[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c" >> tools.go; done
  printf ')\nfunc main() {}\n' >> tools.go
  go mod tidy >/dev/null
fi
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
for c in "${missing[@]}"; do
  echo "building $c $K8S_VERSION"
  go build -trimpath -ldflags "$ldflags" -o "$K8S_BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c"
  mv "$K8S_BIN/$c.tmp" "$K8S_BIN/$c"
done
