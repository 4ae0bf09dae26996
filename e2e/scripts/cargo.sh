#!/usr/bin/env bash
# Run cargo from the repository root with the project's settings (lib.sh):
# CARGO_TARGET_DIR in the shared cache, cargo found even in a non-login shell.
#   e2e/scripts/cargo.sh build --workspace
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TALLY_ROOT"
exec cargo "$@"
