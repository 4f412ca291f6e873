#!/usr/bin/env bash
# `make helm`: builds helm alone into the version-keyed cache (no cluster needed) and prints its path.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"

"$HACK/build-tools.sh" helm >&2
echo "$HELM_BIN/helm"
