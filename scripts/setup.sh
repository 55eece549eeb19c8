#!/usr/bin/env bash
# One command from a fresh clone to a working gansweep: a virtual environment in .venv with
# the package and its test tools, plus the system packages the tests and examples use.
# Usage: bash scripts/setup.sh            (as root, or with sudo available, for apt)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  dataset-fashion-mnist  # the real Fashion-MNIST, found in /usr/share/datasets
  chromium               # headless browser for the MLflow UI and Optuna dashboard tests
  make                   # the quick start's two commands (Makefile)
  postgresql             # a private PostgreSQL on loopback for the storage and stack tests (tests/pgserver.py)
)
if command -v apt-get >/dev/null; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
else
  echo "no apt-get: skipping ${APT_PACKAGES[*]} (set GANSWEEP_DATA to your datasets folder)"
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,test]"  # test: the reference metric packages the tests compare with
echo "gansweep installed in .venv: try  .venv/bin/gansweep run studies/smoke.yaml"
