#!/usr/bin/env bash
# Sets up everything the example, tests and benchmarks need; safe to run again.
#   - Fashion-MNIST from Debian's dataset-fashion-mnist package (when apt-get is available)
#   - a virtual environment in .venv with the package (editable) and its dev extras
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
apt_install() {  # Debian packages, quietly; fails when apt-get is missing or the install does
  command -v apt-get >/dev/null 2>&1 &&
    $SUDO apt-get update -qq &&
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing dataset-fashion-mnist (Debian package)"
  if ! apt_install dataset-fashion-mnist; then
    echo "setup: could not install dataset-fashion-mnist; the loader will try to download" >&2
  fi
fi

PY=${PYTHON:-python3}
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then  # missing, or left half-made
  echo "setup: creating .venv"
  rm -rf .venv
  if ! "$PY" -m venv .venv; then
    # Debian ships venv's pip bootstrap separately (python3-venv)
    echo "setup: installing python3-venv (Debian package) and retrying"
    rm -rf .venv
    apt_install python3-venv
    "$PY" -m venv .venv
  fi
fi
echo "setup: installing flax_lr_callbacks[dev] (pinned by constraints.txt)"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
.venv/bin/python -c "import flax_lr_callbacks, jax; print('setup: ok, jax', jax.__version__)"
