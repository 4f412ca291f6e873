# The host around the cluster (sourced, never run): kernel settings, and what our pods and components leave
# behind — pod processes, mounts, network namespaces, links, iptables chains and ipsets. Teardown removes
# only what is provably ours; anything else on the host is left as it is.

# Chains our components make: kube-proxy's and the kubelet's (fixed names, and per Service and endpoint
# prefixes), kube-router's firewall (fixed names, and per policy and pod prefixes). The CNI plugins' chains
# are found by our network's name in their rules' comments (our_chains).
OUR_CHAINS='^KUBE-((SERVICES|EXTERNAL-SERVICES|NODEPORTS|POSTROUTING|MARK-MASQ|FORWARD|FIREWALL|PROXY-FIREWALL)'
OUR_CHAINS+='|(PROXY|KUBELET)-CANARY|IPTABLES-HINT|ROUTER-(INPUT|FORWARD|OUTPUT)|(SVC|SVL|SEP|FW|EXT|POD-FW|NWPLCY)-.*)$'
# kube-router's firewall's sets (IPv4, and IPv6 with its inet6: prefix).
OUR_IPSETS='^(inet6:)?(KUBE-(SRC|DST)-|kube-router-)'

prepare_host() {
  modprobe br_netfilter 2>/dev/null || true
  modprobe overlay 2>/dev/null || true
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
  sysctl -qw net.bridge.bridge-nf-call-ip6tables=1
  mkdir -p "$LOGS" "$RUN" "$CONF"
}

# Pod network namespaces of sandboxes that no longer run (after `down`, or processes killed): the kubelet
# cannot recreate such a pod while its old netns file stays mounted. containerd names them cni-<uuid>.
# A layer of /run/netns mounted over itself (iproute2 does that) can hide them: a layer goes only while
# one of ours is still mounted beneath it.
clear_pod_netns() {
  local ns
  while true; do
    for ns in /run/netns/cni-*; do
      if [[ -e $ns ]]; then
        umount -l "$ns" 2>/dev/null || true
        rm -f "$ns"
      fi
    done
    grep -q " /run/netns/cni-" /proc/mounts || return 0
    umount -l /run/netns 2>/dev/null || return 0
  done
}

# remove_pod_tasks: our containerd removes the pods' containers itself (their shims exit with them).
remove_pod_tasks() {
  local ctr=("$CONTAINERD_BIN/ctr" --address "$CONTAINERD_STATE/containerd.sock" -n "$CONTAINERD_NAMESPACE") t
  for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
  for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true; done
  for t in $("${ctr[@]}" containers ls -q 2>/dev/null); do "${ctr[@]}" containers delete "$t" >/dev/null 2>&1 || true; done
}

# kill_pod_processes: what outlives containerd — the shims it started (they run our shim binaries with their
# task's bundle in our namespace as working directory) and the processes in the pod cgroups our kubelet made
# (cgroup v2: /kubepods; v1: /<controller>/kubepods).
kill_pod_processes() {
  local proc exe cwd shims=() pids=() _
  for proc in /proc/[0-9]*; do
    exe=$(readlink "$proc/exe" 2>/dev/null) || continue
    case ${exe% (deleted)} in
      "$CONTAINERD_BIN/containerd-shim-runc-v2" | "$GVISOR_BIN/containerd-shim-runsc-v1") ;;
      *) continue ;;
    esac
    cwd=$(readlink "$proc/cwd" 2>/dev/null) || continue
    if [[ $cwd == "$CONTAINERD_STATE/io.containerd.runtime.v2.task/$CONTAINERD_NAMESPACE/"* ]]; then
      shims+=("${proc#/proc/}")
    fi
  done
  if ((${#shims[@]})); then
    log "stopping ${#shims[@]} shims"
    kill -9 "${shims[@]}" 2>/dev/null || true
  fi
  # Pod processes may still fork while they are being killed: until the cgroups are empty.
  for _ in {1..20}; do
    mapfile -t pids < <(find /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods -name cgroup.procs \
      -exec cat {} + 2>/dev/null | sort -u)
    if ((${#pids[@]} == 0)); then return 0; fi
    log "stopping ${#pids[@]} pod processes"
    kill -9 "${pids[@]}" 2>/dev/null || true
    sleep 0.2
  done
}

# unmount_ours: mounts under our kubelet's and our containerd's state directories, deepest first.
unmount_ours() {
  awk -v a="$CLUSTER_STATE/" -v b="$CONTAINERD_STATE/" 'index($2, a) == 1 || index($2, b) == 1 { print $2 }' /proc/mounts |
    sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

# remove_pod_links: our bridge and the host ends of our pods' veths (attached to it).
remove_pod_links() {
  local link
  for link in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'); do
    ip link delete "$link" 2>/dev/null || true
  done
  ip link delete "$CNI_BRIDGE" 2>/dev/null || true
}

# pod_cni_chains: the chain names the bridge plugin derives from our network and each pod sandbox our
# containerd knows ("CNI-" and 24 hex digits of sha512(network + sandbox id)), so that a chain whose tagged
# rules a teardown interrupted half-way is still recognised.
pod_cni_chains() {
  local dir id
  for dir in "$CONTAINERD_STATE" "$CONTAINERD_ROOT"; do
    for id in "$dir/io.containerd.grpc.v1.cri/sandboxes"/*; do
      [[ -d $id ]] || continue
      printf '%s' "$CNI_NETWORK${id##*/}" | sha512sum | awk '{ print "CNI-" substr($1, 1, 24) }'
    done
  done | sort -u
}

# our_chains < DUMP: in one table's iptables-save dump, the chains our cluster made: OUR_CHAINS, the CNI
# chains of our pods (POD_CNI_CHAINS), and the CNI chains that hold, or are the target of, a rule tagged with
# our network's name (CNI_TAG).
our_chains() {
  awk -v pattern="$OUR_CHAINS" '
    BEGIN { n = split(ENVIRON["POD_CNI_CHAINS"], list, "\n"); for (i = 1; i <= n; i++) pods[list[i]] = 1 }
    /^:/ { chain = substr($1, 2); if (chain ~ pattern || chain in pods) print chain }
    /^-A / && index($0, ENVIRON["CNI_TAG"]) {
      if ($2 ~ /^CNI-/) print $2
      for (i = 3; i < NF; i++) if (($i == "-j" || $i == "-g") && $(i + 1) ~ /^CNI-/) print $(i + 1)
    }' | sort -u
}

# remove_our_chains IPTABLES: in each table, deletes the rules in other chains that lead to ours or carry our
# network's tag, then empties and deletes our chains; foreign chains and their other rules stay as they are.
remove_our_chains() {
  local family=$1 table dump chains
  command -v "$family-save" >/dev/null || return 0
  # The CNI plugins tag their rules with: name: "<network>" (quotes escaped as iptables-save prints them).
  local -x CNI_TAG="name: \\\"$CNI_NETWORK\\\"" POD_CNI_CHAINS
  POD_CNI_CHAINS=$(pod_cni_chains)
  for table in filter nat mangle raw; do
    dump=$("$family-save" -t "$table" 2>/dev/null) || continue
    chains=$(our_chains <<<"$dump")
    [[ -n $chains ]] || continue
    awk -v ours="$chains" -v table="$table" '
      BEGIN { n = split(ours, list, "\n"); for (i = 1; i <= n; i++) mine[list[i]] = 1; print "*" table }
      /^-A / && !($2 in mine) {
        hit = index($0, ENVIRON["CNI_TAG"])
        for (i = 3; i < NF; i++) if (($i == "-j" || $i == "-g") && ($(i + 1) in mine)) hit = 1
        if (hit) { sub(/^-A /, "-D "); print }
      }
      END { for (c in mine) print "-F " c; for (c in mine) print "-X " c; print "COMMIT" }' <<<"$dump" |
      "$family-restore" --noflush || log "could not remove all of our $family chains in table $table"
  done
}

remove_our_ipsets() {
  local set
  for set in $(ipset list -n 2>/dev/null | grep -E "$OUR_IPSETS"); do ipset destroy "$set" 2>/dev/null || true; done
}
