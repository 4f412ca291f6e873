# The cluster's processes (sourced, never run): their configuration, command lines, health, and
# supervision through pid files — a component is ours only if its pid file names a live process running
# the component's own binary from our cache.

# write_if_changed FILE [COMPONENT] < CONTENT: kube-proxy exits when its config file is rewritten, even with
# the same content, so files are only written when they change; a running COMPONENT is then stopped so that
# start_component brings it back with the new configuration.
write_if_changed() {
  local content
  content=$(cat)
  if [[ -f $1 && $(cat "$1") == "$content" ]]; then return 0; fi
  printf '%s\n' "$content" >"$1"
  if [[ -n ${2:-} ]] && running "$2"; then
    log "configuration of $2 changed"
    stop_component "$2"
  fi
}

write_configs() {
  mkdir -p "$CNI_CONF_DIR"
  # Our own CNI configuration directory: containerd sees only our network, and other networks' files stay.
  write_if_changed "$CNI_CONF_DIR/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {"type": "bridge", "bridge": "$CNI_BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  write_if_changed "$CONF/runsc.toml" <<EOF
binary_name = "$GVISOR_BIN/runsc"
root = "$CONTAINERD_STATE/runsc"
[runsc_config]
  platform = "systrap"
EOF
  write_if_changed "$CONF/containerd.toml" containerd <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"
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
    conf_dir = "$CNI_CONF_DIR"
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
containerRuntimeEndpoint: unix://$CONTAINERD_STATE/containerd.sock
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

# component_argv NAME ARRAY: sets ARRAY to the command line of component NAME (its binary first).
# shellcheck disable=SC2034  # `into` is the caller's array
component_argv() {
  local -n into=$2
  local ip
  ip=$(node_ip)
  case $1 in
    containerd) into=("$CONTAINERD_BIN/containerd" --config "$CONF/containerd.toml") ;;
    etcd) into=("$ETCD_BIN/etcd" --data-dir "$CLUSTER_STATE/etcd"
      --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379
      --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380
      --initial-cluster default=http://127.0.0.1:2380 --quota-backend-bytes 4294967296 --log-level warn) ;;
    kube-apiserver) into=("$K8S_BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379
      --advertise-address "$ip" --bind-address 0.0.0.0 --secure-port 6443
      --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" --client-ca-file "$PKI/ca.crt"
      --kubelet-preferred-address-types "InternalIP,Hostname"
      --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt"
      --kubelet-client-key "$PKI/apiserver-kubelet-client.key"
      --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key"
      --service-account-issuer https://kubernetes.default.svc.cluster.local
      --api-audiences https://kubernetes.default.svc.cluster.local
      --service-cluster-ip-range "$SERVICE_CIDR" --authorization-mode "Node,RBAC" --allow-privileged=true
      --enable-admission-plugins "NamespaceLifecycle,LimitRanger,ServiceAccount,NodeRestriction,PodSecurity,ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy"
      --storage-backend etcd3 --v 1) ;;
    kube-controller-manager) into=("$K8S_BIN/kube-controller-manager"
      --kubeconfig "$CONF/controller-manager.kubeconfig"
      --authentication-kubeconfig "$CONF/controller-manager.kubeconfig"
      --authorization-kubeconfig "$CONF/controller-manager.kubeconfig"
      --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" --use-service-account-credentials=true
      --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key"
      --allocate-node-cidrs=true --cluster-cidr "$CLUSTER_CIDR" --node-cidr-mask-size 24
      --service-cluster-ip-range "$SERVICE_CIDR" --leader-elect=false --v 1) ;;
    kube-scheduler) into=("$K8S_BIN/kube-scheduler" --kubeconfig "$CONF/scheduler.kubeconfig"
      --authentication-kubeconfig "$CONF/scheduler.kubeconfig" --authorization-kubeconfig "$CONF/scheduler.kubeconfig"
      --leader-elect=false --v 1) ;;
    kubelet) into=("$K8S_BIN/kubelet" --config "$CONF/kubelet.yaml" --kubeconfig "$CONF/kubelet.kubeconfig"
      --hostname-override "$NODE_NAME" --node-ip "$ip" --root-dir "$CLUSTER_STATE/kubelet" --v 1) ;;
    kube-proxy) into=("$K8S_BIN/kube-proxy" --config "$CONF/kube-proxy.yaml" --v 1) ;;
    kube-router) into=("$KUBE_ROUTER_BIN/kube-router" --kubeconfig "$CONF/admin.kubeconfig"
      --hostname-override "$NODE_NAME" --run-firewall=true --run-router=false --run-service-proxy=false
      --enable-cni=false --service-cluster-ip-range "$SERVICE_CIDR" --health-port 20244 --v 1) ;;
    *) return 1 ;;
  esac
}

healthy() {
  local c=(curl -fsS -o /dev/null --max-time 3)
  case $1 in
    containerd) "$CONTAINERD_BIN/ctr" --timeout 3s version >/dev/null 2>&1 ;;
    etcd) "${c[@]}" http://127.0.0.1:2379/health ;;
    kube-apiserver)
      "${c[@]}" --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" https://127.0.0.1:6443/readyz ;;
    kube-controller-manager) "${c[@]}" -k https://127.0.0.1:10257/healthz ;;
    kube-scheduler) "${c[@]}" -k https://127.0.0.1:10259/healthz ;;
    kubelet) "${c[@]}" http://127.0.0.1:10248/healthz ;;
    kube-proxy) "${c[@]}" http://127.0.0.1:10256/healthz ;;
    kube-router) "${c[@]}" http://127.0.0.1:20244/healthz ;;
  esac 2>/dev/null
}

# runs_binary PID BINARY: PID is a live process (not a zombie waiting for its parent) executing BINARY, so a
# pid that was reused by some other program after a reboot or a crash is never taken for ours.
runs_binary() {
  local exe state
  exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ ${exe% (deleted)} == "$2" && $state != Z* ]]
}

# component_pid NAME: prints the pid of our running component NAME; fails when it does not run.
component_pid() {
  local pid argv
  [[ -f $RUN/$1.pid ]] || return 1
  pid=$(<"$RUN/$1.pid")
  component_argv "$1" argv
  runs_binary "$pid" "${argv[0]}" || return 1
  echo "$pid"
}

running() { component_pid "$1" >/dev/null; }

# stop_pid PID: SIGTERM, ten seconds' grace, then SIGKILL.
stop_pid() {
  kill "$1" 2>/dev/null || return 0
  local _
  for _ in $(seq 1 40); do
    if ! kill -0 "$1" 2>/dev/null; then return 0; fi
    sleep 0.25
  done
  kill -9 "$1" 2>/dev/null || true
}

stop_component() {
  local pid
  if pid=$(component_pid "$1"); then stop_pid "$pid"; fi
  rm -f "$RUN/$1.pid"
}

start_component() {
  local name=$1 timeout=${2:-120} argv
  if running "$name" && healthy "$name"; then return 0; fi
  if ! running "$name"; then
    log "starting $name"
    component_argv "$name" argv
    # setsid: our components outlive this script; containerd finds its shims and runsc on PATH.
    PATH=$CONTAINERD_BIN:$GVISOR_BIN:$PATH setsid "${argv[@]}" >>"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
    # Until setsid has exec'd the component, its pid runs another binary.
    local _
    for _ in {1..50}; do
      if running "$name"; then break; fi
      sleep 0.1
    done
  fi
  local deadline=$((SECONDS + timeout))
  until healthy "$name"; do
    if ! running "$name" || ((SECONDS > deadline)); then
      log "$name failed to become healthy; last lines of $LOGS/$name.log:"
      tail -n 25 "$LOGS/$name.log" >&2
      exit 1
    fi
    sleep 0.5
  done
}
