# Shared by every hack/ script (sourced, never run): pinned versions, the local cluster's names and paths,
# logging, waiting and Debian packages.
# shellcheck disable=SC2034  # the constants below are used by the scripts that source this file
HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO=$(dirname "$HACK")
# shellcheck source=versions.sh
source "$HACK/lib/versions.sh"

NODE_NAME=codeexec-node
SERVICE_CIDR=10.0.0.0/24
API_SERVICE_IP=10.0.0.1
CLUSTER_CIDR=10.244.0.0/16
POD_CIDR=10.244.0.0/24
# The CNI network our pods are attached to; its plugins tag the rules they make with this name.
CNI_NETWORK=codeexec
CNI_BRIDGE=cni0
PKI=$CLUSTER_STATE/pki
LOGS=$CLUSTER_STATE/logs
RUN=$CLUSTER_STATE/run
CONF=$CLUSTER_STATE/conf
CNI_CONF_DIR=$CONF/cni
KUBECONFIG_ADMIN=$CLUSTER_STATE/admin.kubeconfig
# containerd's state and persistent directories, and the namespace the kubelet's pods live in.
CONTAINERD_STATE=/run/containerd
CONTAINERD_ROOT=/var/lib/containerd
CONTAINERD_NAMESPACE=k8s.io
# Start order; they stop in reverse.
COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-router)

log() { printf '[cluster] %s\n' "$*" >&2; }

# install_packages PACKAGE...: installs the Debian packages that are missing.
install_packages() {
  local p missing=()
  for p in "$@"; do
    if ! dpkg -s "$p" >/dev/null 2>&1; then missing+=("$p"); fi
  done
  if ((${#missing[@]} == 0)); then return 0; fi
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# wait_for DESCRIPTION TIMEOUT COMMAND...: runs COMMAND every second until it succeeds.
wait_for() {
  local what=$1 timeout=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      log "timed out waiting for $what"
      return 1
    fi
    sleep 1
  done
}

node_ip() {
  ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}'
}

kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
