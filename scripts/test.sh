#!/usr/bin/env bash
# Sets up (idempotently) and runs the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# PyTorch and fra31's AutoAttack are test-only oracles (their tests skip
# with a reason where they are missing).
python -m pip install -q --disable-pip-version-check -r requirements-test.txt
export JAX_PLATFORMS=cpu
python -m pytest -q tests "$@"
