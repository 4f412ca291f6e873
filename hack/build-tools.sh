#!/usr/bin/env bash
# Builds etcd, helm, gVisor (runsc + its containerd shim), containerd and kube-router from Go modules into the
# version-keyed cache, skipping what is cached. Usage: hack/build-tools.sh [TOOL...] (default: all of them).
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"

# build_in_wrapper BIN_DIR NAME MODULE@VERSION PACKAGE [LDFLAGS]: a wrapper module ignores the dependency's own
# replace directives (etcd's point at sibling folders), which `go install pkg@version` refuses.
build_in_wrapper() {
  local bin=$1 name=$2 modver=$3 pkg=$4 ldflags=${5:-}
  if [[ -x $bin/$name ]]; then return 0; fi
  local work
  work=$(dirname "$bin")/wrapper-$name
  mkdir -p "$work" "$bin"
  (
    cd "$work"
    [[ -f go.mod ]] || go mod init "codeexec.local/build-$name" >/dev/null 2>&1
    printf 'package main\nimport _ "%s"\nfunc main() {}\n' "$pkg" >tools.go
    go get "$modver" >/dev/null 2>&1 || go get "$modver"
    go mod tidy >/dev/null
    echo "building $name ($modver)"
    go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/$name.tmp" "$pkg"
    mv "$bin/$name.tmp" "$bin/$name"
  )
}

# The shim lowers its own OOM score to -999, which needs CAP_SYS_RESOURCE; the VMs we run on withhold it, so
# the build uses the published module with that one constant set to 0 (no change in behaviour otherwise).
build_gvisor_shim() {
  local name=containerd-shim-runsc-v1
  if [[ -x $GVISOR_BIN/$name ]]; then return 0; fi
  local work=$CODEEXEC_CACHE/gvisor-$GVISOR_VERSION/wrapper-$name src manager
  src=$(go mod download -json "gvisor.dev/gvisor@$GVISOR_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$work" && mkdir -p "$work" && cp -r "$src" "$work/gvisor" && chmod -R u+w "$work/gvisor"
  manager=$work/gvisor/pkg/shim/v1/manager.go
  if ! grep -q 'oomScoreMax = -999' "$manager"; then
    echo "gvisor shim: OOM score constant not found in $manager" >&2
    return 1
  fi
  sed -i 's/oomScoreMax = -999/oomScoreMax = 0/' "$manager"
  (
    cd "$work/gvisor"
    echo "building $name (gvisor.dev/gvisor@$GVISOR_VERSION, OOM score 0)"
    go build -trimpath -ldflags "-s -w" -o "$GVISOR_BIN/$name.tmp" ./shim
    mv "$GVISOR_BIN/$name.tmp" "$GVISOR_BIN/$name"
  )
  rm -rf "$work"
}

build_tool() {
  local c
  case $1 in
    etcd) build_in_wrapper "$ETCD_BIN" etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION" go.etcd.io/etcd/server/v3 ;;
    helm) build_in_wrapper "$HELM_BIN" helm "helm.sh/helm/v3@$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
      "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
    gvisor)
      build_in_wrapper "$GVISOR_BIN" runsc "gvisor.dev/gvisor@$GVISOR_VERSION" gvisor.dev/gvisor/runsc
      build_gvisor_shim ;;
    containerd)
      for c in containerd containerd-shim-runc-v2 ctr; do
        build_in_wrapper "$CONTAINERD_BIN" "$c" "github.com/containerd/containerd@$CONTAINERD_VERSION" \
          "github.com/containerd/containerd/cmd/$c" "-X github.com/containerd/containerd/version.Version=$CONTAINERD_VERSION"
      done ;;
    kube-router) build_in_wrapper "$KUBE_ROUTER_BIN" kube-router \
      "github.com/cloudnativelabs/kube-router/v2@$KUBE_ROUTER_VERSION" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router ;;
    *) echo "usage: $0 [etcd|helm|gvisor|containerd|kube-router]..." >&2; exit 2 ;;
  esac
}

tools=("$@")
if ((${#tools[@]} == 0)); then tools=(etcd helm gvisor containerd kube-router); fi
for tool in "${tools[@]}"; do build_tool "$tool"; done
