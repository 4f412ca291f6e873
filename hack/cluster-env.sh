#!/usr/bin/env bash
# `make cluster-env`: shell exports for kubectl and helm against the local cluster (`eval "$(make -s cluster-env)"`).
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"

echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
echo "export PATH=$K8S_BIN:$HELM_BIN:\$PATH"
