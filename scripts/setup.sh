#!/usr/bin/env bash
# Sets up everything the example, tests and benchmarks need; safe to run again.
#   - Fashion-MNIST from Debian's dataset-fashion-mnist package (when apt-get is available)
#   - a virtual environment in .venv with the package (editable) and its dev extras
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  echo "setup: installing dataset-fashion-mnist (Debian package)"
  if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; then
    echo "setup: could not install dataset-fashion-mnist; the loader will try to download" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
echo "setup: installing flax_lr_callbacks[dev] (pinned by constraints.txt)"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
.venv/bin/python -c "import flax_lr_callbacks, jax; print('setup: ok, jax', jax.__version__)"
