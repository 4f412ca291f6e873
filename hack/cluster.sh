#!/usr/bin/env bash
# Runs a real single-node Kubernetes as host processes: up | down | status | env.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.sh"

NODE_NAME=codeexec-node
SERVICE_CIDR=10.0.0.0/24
API_SERVICE_IP=10.0.0.1
CLUSTER_CIDR=10.244.0.0/16
POD_CIDR=10.244.0.0/24
PKI=$CLUSTER_STATE/pki
LOGS=$CLUSTER_STATE/logs
RUN=$CLUSTER_STATE/run
CONF=$CLUSTER_STATE/conf
KUBECONFIG_ADMIN=$CLUSTER_STATE/admin.kubeconfig
COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-router)
DEBIAN_PACKAGES=(runc containernetworking-plugins buildah debootstrap iptables ipset conntrack
  iproute2 openssl curl gcc libc6-dev)

log() { printf '[cluster] %s\n' "$*" >&2; }

node_ip() {
  ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}'
}

install_packages() {
  local missing=()
  for p in "${DEBIAN_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build_binaries() {
  "$here/build-k8s.sh"
  "$here/build-tools.sh"
}

# --- certificates -------------------------------------------------------------------------------

issue_cert() { # NAME CN [O] [SANS]
  local name=$1 cn=$2 org=${3:-} sans=${4:-}
  [[ -f $PKI/$name.crt ]] && return 0
  local subj="/CN=$cn"; [[ -n $org ]] && subj="/O=$org$subj"
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  local ext="$PKI/$name.ext"
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"; [[ -n $sans ]] && echo "subjectAltName=$sans"; } > "$ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

write_kubeconfig() { # NAME USER
  local name=$1 user=$2 file=$CONF/$1.kubeconfig
  [[ -f $file ]] && return 0
  cat > "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: codeexec
  cluster:
    certificate-authority: $PKI/ca.crt
    server: https://127.0.0.1:6443
users:
- name: $user
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: codeexec
  context: {cluster: codeexec, user: $user}
current-context: codeexec
EOF
}

make_pki() {
  mkdir -p "$PKI" "$CONF"
  if [[ ! -f $PKI/ca.crt ]]; then
    openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=codeexec-ca" -days 3650 -out "$PKI/ca.crt" 2>/dev/null
  fi
  local ip; ip=$(node_ip)
  issue_cert apiserver kube-apiserver "" \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$API_SERVICE_IP,IP:$ip"
  issue_cert admin kubernetes-admin system:masters
  issue_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  issue_cert controller-manager system:kube-controller-manager
  issue_cert scheduler system:kube-scheduler
  issue_cert kubelet "system:node:$NODE_NAME" system:nodes "DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$ip"
  issue_cert kube-proxy system:kube-proxy
  issue_cert kube-router kube-router
  [[ -f $PKI/sa.key ]] || { openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null; openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null; }
  for c in admin controller-manager scheduler kubelet kube-proxy kube-router; do write_kubeconfig "$c" "$c"; done
  cp "$CONF/admin.kubeconfig" "$KUBECONFIG_ADMIN"
}

# --- host preparation ---------------------------------------------------------------------------

prepare_host() {
  modprobe br_netfilter 2>/dev/null || true
  modprobe overlay 2>/dev/null || true
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
  sysctl -qw net.bridge.bridge-nf-call-ip6tables=1
  mkdir -p /etc/cni/net.d "$LOGS" "$RUN" "$CONF"
  # Only our network: other CNI configs would be picked first by name order.
  find /etc/cni/net.d -maxdepth 1 -type f ! -name 10-codeexec.conflist -delete
  cat > /etc/cni/net.d/10-codeexec.conflist <<EOF
{
  "cniVersion": "1.0.0",
  "name": "codeexec",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
}

# write_if_changed FILE [COMPONENT] < CONTENT: kube-proxy exits when its config file is rewritten, even with
# the same content, so files are only written when they change; a running COMPONENT is then stopped so that
# start_component brings it back with the new configuration.
write_if_changed() {
  local content; content=$(cat)
  [[ -f $1 && $(cat "$1") == "$content" ]] && return 0
  printf '%s\n' "$content" > "$1"
  if [[ -n ${2:-} ]] && running "$2"; then log "configuration of $2 changed"; stop_component "$2"; fi
}

# Pod network namespaces of sandboxes that no longer run (after `down`, or processes killed): the kubelet
# cannot recreate such a pod while its old netns file stays mounted. iproute2 bind-mounts /run/netns over
# itself, which hides those mounts under a layer, so the layers go first.
clear_pod_netns() {
  while grep -q " /run/netns " /proc/mounts; do umount -l /run/netns 2>/dev/null || break; done
  local ns
  for ns in /run/netns/cni-*; do
    [[ -e $ns ]] || continue
    umount -l "$ns" 2>/dev/null || true
    rm -f "$ns"
  done
}

write_configs() {
  write_if_changed "$CONF/runsc.toml" <<EOF
binary_name = "$GVISOR_BIN/runsc"
root = "/run/containerd/runsc"
[runsc_config]
  platform = "systrap"
EOF
  write_if_changed "$CONF/containerd.toml" containerd <<EOF
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/codeexec/pause:3.10"
  # This VM withholds CAP_SYS_RESOURCE, so nothing may lower an OOM score below containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc]
      runtime_type = "io.containerd.runsc.v1"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc.options]
        TypeUrl = "io.containerd.runsc.v1.options"
        ConfigPath = "$CONF/runsc.toml"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
EOF
  write_if_changed "$CONF/kubelet.yaml" kubelet <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
failSwapOn: false
failCgroupV1: false
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
podCIDR: $POD_CIDR
resolvConf: /etc/resolv.conf
maxPods: 110
# Bounds fork bombs: gVisor enforces the pod's pids limit inside the sandbox as well.
podPidsLimit: 1024
serializeImagePulls: false
containerLogMaxSize: 10Mi
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "200Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
EOF
  write_if_changed "$CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CONF/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $CLUSTER_CIDR
conntrack: {maxPerCore: 0}
EOF
}

# --- processes ----------------------------------------------------------------------------------

component_cmd() {
  local ip; ip=$(node_ip)
  case $1 in
    containerd) echo "env PATH=$CONTAINERD_BIN:$GVISOR_BIN:$PATH $CONTAINERD_BIN/containerd --config $CONF/containerd.toml" ;;
    etcd) echo "$ETCD_BIN/etcd --data-dir $CLUSTER_STATE/etcd --listen-client-urls http://127.0.0.1:2379 \
      --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
      --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster default=http://127.0.0.1:2380 \
      --quota-backend-bytes 4294967296 --log-level warn" ;;
    kube-apiserver) echo "$K8S_BIN/kube-apiserver --etcd-servers http://127.0.0.1:2379 \
      --advertise-address $ip --bind-address 0.0.0.0 --secure-port 6443 \
      --tls-cert-file $PKI/apiserver.crt --tls-private-key-file $PKI/apiserver.key --client-ca-file $PKI/ca.crt \
      --kubelet-preferred-address-types InternalIP,Hostname \
      --kubelet-client-certificate $PKI/apiserver-kubelet-client.crt --kubelet-client-key $PKI/apiserver-kubelet-client.key \
      --service-account-key-file $PKI/sa.pub --service-account-signing-key-file $PKI/sa.key \
      --service-account-issuer https://kubernetes.default.svc.cluster.local --api-audiences https://kubernetes.default.svc.cluster.local \
      --service-cluster-ip-range $SERVICE_CIDR --authorization-mode Node,RBAC --allow-privileged=true \
      --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,NodeRestriction,PodSecurity,ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy \
      --storage-backend etcd3 --v 1" ;;
    kube-controller-manager) echo "$K8S_BIN/kube-controller-manager --kubeconfig $CONF/controller-manager.kubeconfig \
      --authentication-kubeconfig $CONF/controller-manager.kubeconfig --authorization-kubeconfig $CONF/controller-manager.kubeconfig \
      --service-account-private-key-file $PKI/sa.key --root-ca-file $PKI/ca.crt --use-service-account-credentials=true \
      --cluster-signing-cert-file $PKI/ca.crt --cluster-signing-key-file $PKI/ca.key \
      --allocate-node-cidrs=true --cluster-cidr $CLUSTER_CIDR --node-cidr-mask-size 24 \
      --service-cluster-ip-range $SERVICE_CIDR --leader-elect=false --v 1" ;;
    kube-scheduler) echo "$K8S_BIN/kube-scheduler --kubeconfig $CONF/scheduler.kubeconfig \
      --authentication-kubeconfig $CONF/scheduler.kubeconfig --authorization-kubeconfig $CONF/scheduler.kubeconfig \
      --leader-elect=false --v 1" ;;
    kubelet) echo "$K8S_BIN/kubelet --config $CONF/kubelet.yaml --kubeconfig $CONF/kubelet.kubeconfig \
      --hostname-override $NODE_NAME --node-ip $ip --root-dir $CLUSTER_STATE/kubelet --v 1" ;;
    kube-proxy) echo "$K8S_BIN/kube-proxy --config $CONF/kube-proxy.yaml --v 1" ;;
    kube-router) echo "$KUBE_ROUTER_BIN/kube-router --kubeconfig $CONF/admin.kubeconfig --hostname-override $NODE_NAME \
      --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
      --service-cluster-ip-range $SERVICE_CIDR \
      --health-port 20244 --v 1" ;;
  esac
}

healthy() {
  local c=(curl -fsS -o /dev/null --max-time 3)
  case $1 in
    containerd) "$CONTAINERD_BIN/ctr" --timeout 3s version >/dev/null 2>&1 ;;
    etcd) "${c[@]}" http://127.0.0.1:2379/health ;;
    kube-apiserver) "${c[@]}" --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" https://127.0.0.1:6443/readyz ;;
    kube-controller-manager) "${c[@]}" -k https://127.0.0.1:10257/healthz ;;
    kube-scheduler) "${c[@]}" -k https://127.0.0.1:10259/healthz ;;
    kubelet) "${c[@]}" http://127.0.0.1:10248/healthz ;;
    kube-proxy) "${c[@]}" http://127.0.0.1:10256/healthz ;;
    kube-router) "${c[@]}" http://127.0.0.1:20244/healthz ;;
  esac 2>/dev/null
}

# A killed component can linger as a zombie until its parent reaps it: that is not running.
running() {
  [[ -f $RUN/$1.pid ]] || return 1
  local state; state=$(ps -o stat= -p "$(cat "$RUN/$1.pid")" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

stop_component() {
  local pid; pid=$(cat "$RUN/$1.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$RUN/$1.pid"
}

start_component() {
  local name=$1 timeout=${2:-120}
  if running "$name" && healthy "$name"; then return 0; fi
  running "$name" || {
    log "starting $name"
    # shellcheck disable=SC2046
    setsid $(component_cmd "$name") >> "$LOGS/$name.log" 2>&1 < /dev/null &
    echo $! > "$RUN/$name.pid"
  }
  local deadline=$((SECONDS + timeout))
  until healthy "$name"; do
    if ! running "$name" || (( SECONDS > deadline )); then
      log "$name failed to become healthy; last lines of $LOGS/$name.log:"
      tail -n 25 "$LOGS/$name.log" >&2
      exit 1
    fi
    sleep 0.5
  done
}

kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

wait_for() { # DESCRIPTION TIMEOUT COMMAND...
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    (( SECONDS > deadline )) && { log "timed out waiting for $what"; return 1; }
    sleep 1
  done
}

apply_cluster_objects() {
  kubectl_admin apply -f - >/dev/null <<EOF
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: gvisor
handler: runsc
EOF
}

node_ready() { kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True; }

cmd_up() {
  local start=$SECONDS
  install_packages
  build_binaries
  mkdir -p "$CLUSTER_STATE"
  prepare_host
  make_pki
  write_configs
  running containerd || clear_pod_netns
  start_component containerd 60
  "$here/build-images.sh" --cluster-only
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do start_component "$c"; done
  apply_cluster_objects
  wait_for "node $NODE_NAME Ready" 180 node_ready || { tail -n 25 "$LOGS/kubelet.log" >&2; exit 1; }
  start_component kube-router
  # kube-proxy programs Service rules asynchronously after a (re)start; pods rely on the kubernetes Service.
  wait_for "kube-proxy to route the kubernetes Service" 60 \
    curl -sk -o /dev/null --max-time 2 "https://$API_SERVICE_IP:443/livez"
  wait_for "default service account" 60 kubectl_admin get serviceaccount default -n default
  log "cluster up in $((SECONDS - start))s (state: $CLUSTER_STATE, logs: $LOGS)"
}

cmd_status() {
  local rc=0
  for c in "${COMPONENTS[@]}"; do
    if running "$c" && healthy "$c"; then printf '%-24s healthy (pid %s)\n' "$c" "$(cat "$RUN/$c.pid")"
    elif running "$c"; then printf '%-24s running, NOT healthy (log %s)\n' "$c" "$LOGS/$c.log"; rc=1
    else printf '%-24s stopped\n' "$c"; rc=1; fi
  done
  if healthy kube-apiserver; then kubectl_admin get nodes -o wide 2>/dev/null || true; fi
  return $rc
}

cmd_down() {
  if healthy kube-apiserver; then
    kubectl_admin delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  fi
  local c
  for ((i = ${#COMPONENTS[@]} - 1; i >= 1; i--)); do
    c=${COMPONENTS[i]}
    if running "$c"; then log "stopping $c"; stop_component "$c"; fi
  done
  # Pod sandboxes and containers outlive the kubelet: remove them while containerd still runs.
  if running containerd; then
    local ctr=("$CONTAINERD_BIN/ctr" -n k8s.io)
    for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true; done
    for t in $("${ctr[@]}" containers ls -q 2>/dev/null); do "${ctr[@]}" containers delete "$t" >/dev/null 2>&1 || true; done
    log "stopping containerd"; stop_component containerd
  fi
  pkill -9 -f containerd-shim 2>/dev/null || true
  pkill -9 -f "$GVISOR_BIN/runsc" 2>/dev/null || true
  # Mounts left by the kubelet and containerd sandboxes (grep finds none on a clean host: not an error).
  { grep -E " ($CLUSTER_STATE/kubelet|/run/containerd/(io.containerd|runsc))" /proc/mounts || true; } |
    awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  clear_pod_netns
  ip link delete cni0 2>/dev/null || true
  "$KUBE_ROUTER_BIN/kube-router" --cleanup-config >/dev/null 2>&1 || true
  local table chain rule
  for table in filter nat mangle; do
    for chain in $(iptables-save -t "$table" 2>/dev/null | sed -nE 's/^:((KUBE|CNI)[^ ]*).*/\1/p'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    iptables-save -t "$table" 2>/dev/null | sed -nE 's/^-A (.*(KUBE|CNI-).*)/-D \1/p' | while read -r rule; do
      eval "iptables -t $table $rule" 2>/dev/null || true
    done
    for chain in $(iptables-save -t "$table" 2>/dev/null | sed -nE 's/^:((KUBE|CNI)[^ ]*).*/\1/p'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  for set in $(ipset list -n 2>/dev/null | sed -nE '/^(KUBE|kube)/p'); do ipset destroy "$set" 2>/dev/null || true; done
  rm -rf /var/lib/cni/networks/codeexec
  log "cluster stopped (state and images kept in $CLUSTER_STATE and containerd; logs in $LOGS)"
}

cmd_env() {
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
  echo "export PATH=$K8S_BIN:$HELM_BIN:\$PATH"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
