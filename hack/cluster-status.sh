#!/usr/bin/env bash
# `make cluster-status`: each component's health (exit status 1 unless all are healthy) and the node.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"
# shellcheck source=lib/components.sh
source "$HACK/lib/components.sh"

rc=0
for c in "${COMPONENTS[@]}"; do
  if pid=$(component_pid "$c") && healthy "$c"; then
    printf '%-24s healthy (pid %s)\n' "$c" "$pid"
  elif running "$c"; then
    printf '%-24s running, NOT healthy (log %s)\n' "$c" "$LOGS/$c.log"
    rc=1
  else
    printf '%-24s stopped\n' "$c"
    rc=1
  fi
done
if healthy kube-apiserver; then kubectl_admin get nodes -o wide 2>/dev/null || true; fi
exit $rc
