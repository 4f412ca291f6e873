#!/usr/bin/env bash
# `make demo`: installs the chart into the local cluster and runs one example Execution per language, then one
# per language that uses the SQLite database of the SandboxBinding `notes` through the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(hack/cluster-env.sh)"
NAMESPACE=code-exec-demo

# The local cluster provides the gvisor RuntimeClass itself; the demo release watches only its own
# namespace, so it never races the operators that the e2e tests start for theirs.
# Helm installs CRDs only with a release's first install: an upgrade of an older demo release needs
# Kopf's peering CRD too (the release's ClusterKopfPeering object is of its kind).
kubectl apply -f crds/execution.yaml -f crds/runtime.yaml -f crds/warmpool.yaml -f crds/sandboxbinding.yaml \
  -f crds/kopf-peering.yaml >/dev/null
# Helm cannot adopt Runtimes created outside it (the e2e tests apply crds/runtimes/): keep those as they are.
runtime_flags=()
for runtime in python javascript typescript; do
  manager=$(kubectl get runtime "$runtime" -o jsonpath='{.metadata.labels.app\.kubernetes\.io/managed-by}' 2>/dev/null || true)
  if kubectl get runtime "$runtime" >/dev/null 2>&1 && [[ $manager != Helm ]]; then
    runtime_flags+=(--set "runtimes.$runtime.enabled=false")
  fi
done
# One WarmPool per language (DEMO_POOL_REPLICAS pods each, default 1; 0: none): the examples below ask for
# no resources, so they fit the pools' default size and run in pre-started sandboxes (status.sandbox warm).
# Each pool pod holds its requests (500m CPU, 256Mi) while the release is installed.
pool_replicas=${DEMO_POOL_REPLICAS:-1}
pools=()
if ((pool_replicas > 0)); then
  for runtime in python javascript typescript; do
    pools+=("{\"name\":\"$runtime\",\"runtime\":\"$runtime\",\"replicas\":$pool_replicas}")
  done
fi
helm upgrade --install code-exec charts/code-exec --namespace "$NAMESPACE" --create-namespace \
  --set runtimeClass.create=false --set "operator.watchNamespaces={$NAMESPACE}" "${runtime_flags[@]}" \
  --set-json "warmPools=[$(IFS=,; echo "${pools[*]}")]" \
  --wait --timeout 180s >/dev/null
echo "installed: $(helm list -n "$NAMESPACE" -o json | python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print(r["name"], r["chart"], r["status"])')"
kubectl get runtimes
if ((pool_replicas > 0)); then
  kubectl wait -n "$NAMESPACE" warmpools --all --timeout 180s \
    --for=jsonpath='{.status.readyReplicas}'="$pool_replicas" >/dev/null
fi
kubectl get warmpools -n "$NAMESPACE"

# Runs the given example Executions (afresh: each is deleted first) and shows each one's status once it finished.
run_examples() {
  local example name
  for example in "$@"; do
    name=$(basename "$example" .yaml)
    kubectl delete execution "$name" -n "$NAMESPACE" --ignore-not-found --wait >/dev/null
    kubectl apply -n "$NAMESPACE" -f "$example" >/dev/null
  done
  for example in "$@"; do
    name=$(basename "$example" .yaml)
    kubectl wait -n "$NAMESPACE" "execution/$name" --timeout 180s \
      --for=jsonpath='{.status.conditions[?(@.type=="Finished")].status}'=True >/dev/null
    echo
    echo "== execution/$name"
    kubectl get execution "$name" -n "$NAMESPACE" -o jsonpath='phase={.status.phase} reason={.status.reason} sandbox={.status.sandbox} exitCode={.status.exitCode} durationMs={.status.durationMs}{"\n"}result={.status.result}{"\n"}logs={.status.logs}{"\n"}stdout:{"\n"}{.status.stdout}'
  done
}
run_examples crds/examples/hello-*.yaml

# The db examples name the SandboxBinding `notes` (a SQLite database the broker keeps); each run adds its row,
# so a re-run shows the earlier rows too (until the broker pod goes: its volume is an emptyDir by default).
# An Execution with bindings always runs cold, and a cold sandbox (500m CPU) does not fit the 2-core node
# beside the full pools: the pools are emptied while they run and refilled afterwards.
resize_pools() {
  local pool
  for pool in $(kubectl get warmpools -n "$NAMESPACE" -o name); do
    kubectl patch "$pool" -n "$NAMESPACE" --type merge -p "{\"spec\":{\"replicas\":$1}}" >/dev/null
  done
}
kubectl apply -n "$NAMESPACE" -f crds/examples/binding-notes.yaml >/dev/null
if ((pool_replicas > 0)); then
  resize_pools 0
fi
run_examples crds/examples/db-*.yaml
echo
echo "== the broker's account of the db examples (status.bindings) and the binding"
for example in crds/examples/db-*.yaml; do
  name=$(basename "$example" .yaml)
  kubectl get execution "$name" -n "$NAMESPACE" -o jsonpath='{.metadata.name}: {.status.bindings}{"\n"}'
done
kubectl get sandboxbindings -n "$NAMESPACE"
if ((pool_replicas > 0)); then
  resize_pools "$pool_replicas"
  kubectl wait -n "$NAMESPACE" warmpools --all --timeout 180s \
    --for=jsonpath='{.status.readyReplicas}'="$pool_replicas" >/dev/null
fi
echo
kubectl get executions -n "$NAMESPACE"
kubectl get warmpools -n "$NAMESPACE"

# The HTTP gateway and the CLI: a service account allowed to run code here (the built-in `edit` role, into
# which the chart aggregates its user ClusterRole), a token, one call through `kubectl port-forward`.
kubectl create serviceaccount demo-user -n "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl create rolebinding demo-user-edit --clusterrole=edit --serviceaccount="$NAMESPACE:demo-user" \
  -n "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
port=18080
kubectl port-forward -n "$NAMESPACE" svc/code-exec-gateway "$port:80" >/dev/null 2>&1 &
forward=$!
trap 'kill "$forward" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -sf "localhost:$port/health" >/dev/null && break
  sleep 0.2
done
TOKEN=$(kubectl create token demo-user -n "$NAMESPACE")
echo
echo "== the HTTP gateway (kubectl port-forward -n $NAMESPACE svc/code-exec-gateway $port:80 &)"
cat <<COMMANDS
\$ TOKEN=\$(kubectl create token demo-user -n $NAMESPACE)
\$ curl -s localhost:$port/execute -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
    -d '{"language": "python", "code": "print(input)\nreturn 6 * 7", "input": {"from": "curl"}}'
COMMANDS
curl -s "localhost:$port/execute" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"language": "python", "code": "print(input)\nreturn 6 * 7", "input": {"from": "curl"}}' |
  python3 -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({k: r.get(k) for k in ("id", "phase", "exitCode", "stdout", "result")}))'
echo
echo "== the CLI (the package's console script; -o json|yaml, --gateway URL --token-file FILE)"
printf 'import sys\nprint("hello from codeexec run", sys.argv[1:])\n' >"${TMPDIR:-/tmp}/hello.py"
echo "\$ codeexec run -n $NAMESPACE ${TMPDIR:-/tmp}/hello.py --arg x"
"${VENV:-.venv}/bin/codeexec" run -n "$NAMESPACE" "${TMPDIR:-/tmp}/hello.py" --arg x
echo "(exit code $?)"
