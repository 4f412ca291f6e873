# Pinned versions and cache locations shared by every hack/ script (sourced through common.sh, never run).
# shellcheck disable=SC2034  # used by the scripts that source this file
K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.19.5
GVISOR_VERSION=v0.0.0-20260905035102-160fafc42237
KUBE_ROUTER_VERSION=v2.1.0
# gVisor's shim speaks the shim bootstrap protocol of containerd >= 1.7; Debian bookworm ships 1.6.
CONTAINERD_VERSION=v1.7.35
CODEEXEC_CACHE=${CODEEXEC_CACHE:-/var/cache/code-exec}
CLUSTER_STATE=${CLUSTER_STATE:-/var/lib/code-exec-cluster}
K8S_BIN=$CODEEXEC_CACHE/k8s-$K8S_VERSION/bin
ETCD_BIN=$CODEEXEC_CACHE/etcd-$ETCD_VERSION/bin
HELM_BIN=$CODEEXEC_CACHE/helm-$HELM_VERSION/bin
GVISOR_BIN=$CODEEXEC_CACHE/gvisor-$GVISOR_VERSION/bin
CONTAINERD_BIN=$CODEEXEC_CACHE/containerd-$CONTAINERD_VERSION/bin
KUBE_ROUTER_BIN=$CODEEXEC_CACHE/kube-router-$KUBE_ROUTER_VERSION/bin
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
