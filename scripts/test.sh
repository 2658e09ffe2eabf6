#!/usr/bin/env bash
# Sets up (idempotently) and runs the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export JAX_PLATFORMS=cpu
python -m pytest -q tests "$@"
