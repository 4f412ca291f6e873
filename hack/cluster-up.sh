#!/usr/bin/env bash
# `make cluster`: brings up (or repairs) a real single-node Kubernetes run as host processes; idempotent.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"
# shellcheck source=lib/pki.sh
source "$HACK/lib/pki.sh"
# shellcheck source=lib/host.sh
source "$HACK/lib/host.sh"
# shellcheck source=lib/components.sh
source "$HACK/lib/components.sh"

DEBIAN_PACKAGES=(runc containernetworking-plugins buildah debootstrap iptables ipset conntrack
  iproute2 openssl curl gcc libc6-dev)
# Not the cluster's: headless Chromium renders the gateway's /docs in tests/e2e/test_gateway.py.
DEBIAN_PACKAGES+=(chromium)
# Not the cluster's either: tests/unit/test_broker_postgres.py starts a throwaway PostgreSQL server.
DEBIAN_PACKAGES+=(postgresql-15)

apply_cluster_objects() {
  kubectl_admin apply -f - >/dev/null <<EOT
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: gvisor
handler: runsc
EOT
}

node_ready() {
  kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}

start=$SECONDS
install_packages "${DEBIAN_PACKAGES[@]}"
"$HACK/build-k8s.sh"
"$HACK/build-tools.sh"
mkdir -p "$CLUSTER_STATE"
prepare_host
make_pki
write_configs
if ! running containerd; then clear_pod_netns; fi
start_component containerd 60
"$HACK/build-images.sh" --cluster-only
for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do start_component "$c"; done
apply_cluster_objects
if ! wait_for "node $NODE_NAME Ready" 180 node_ready; then
  tail -n 25 "$LOGS/kubelet.log" >&2
  exit 1
fi
start_component kube-router
# kube-proxy programs Service rules asynchronously after a (re)start; pods rely on the kubernetes Service.
wait_for "kube-proxy to route the kubernetes Service" 60 \
  curl -sk -o /dev/null --max-time 2 "https://$API_SERVICE_IP:443/livez"
wait_for "default service account" 60 kubectl_admin get serviceaccount default -n default
log "cluster up in $((SECONDS - start))s (state: $CLUSTER_STATE, logs: $LOGS)"
