#!/usr/bin/env bash
# `make down`: stops the processes `make cluster` started (by their pid files) and their pods, and removes what
# they made on the host; state, images and logs stay for the next `make cluster`. Nothing else is touched.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"
# shellcheck source=lib/host.sh
source "$HACK/lib/host.sh"
# shellcheck source=lib/components.sh
source "$HACK/lib/components.sh"

if healthy kube-apiserver; then
  kubectl_admin delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
fi
for ((i = ${#COMPONENTS[@]} - 1; i >= 1; i--)); do
  if running "${COMPONENTS[i]}"; then
    log "stopping ${COMPONENTS[i]}"
    stop_component "${COMPONENTS[i]}"
  fi
done
# Pod sandboxes and containers outlive the kubelet: containerd removes them while it still runs.
if running containerd; then
  remove_pod_tasks
  log "stopping containerd"
  stop_component containerd
fi
kill_pod_processes
unmount_ours
clear_pod_netns
remove_pod_links
remove_our_chains iptables
remove_our_chains ip6tables
remove_our_ipsets
rm -rf "/var/lib/cni/networks/$CNI_NETWORK"
log "cluster stopped (state and images kept in $CLUSTER_STATE and containerd; logs in $LOGS)"
