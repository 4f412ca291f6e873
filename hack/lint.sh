#!/usr/bin/env bash
# `make lint`, shell part: shellcheck on every hack/ script and library (installs Debian's shellcheck if missing).
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"

install_packages shellcheck
cd "$REPO"
shellcheck --external-sources hack/*.sh hack/lib/*.sh
