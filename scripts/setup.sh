#!/usr/bin/env bash
# Set up everything the project needs on a fresh machine, idempotently:
# Debian packages (curl, Java), a venv in .venv with uv, the server with its sample and
# test extras, and the trained sample models. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

apt_install() {
  local missing=()
  for cmd_pkg in "$@"; do
    command -v "${cmd_pkg%%:*}" >/dev/null || missing+=("${cmd_pkg##*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
apt_install curl:curl
# Java 17 for Spark (the Spark ML sample, spark-score). Slim Debian images lack the man
# folder that the JRE's post-install script links into.
if ! command -v java >/dev/null && [ "$(id -u)" -eq 0 ]; then mkdir -p /usr/share/man/man1; fi
apt_install java:openjdk-17-jre-headless

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check uv
fi
# uv skips what is already installed; --compile-bytecode because this machine sets
# PYTHONDONTWRITEBYTECODE=1 and `import mlflow` would cost seconds on every start.
.venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode -e ".[samples,test]"

.venv/bin/python plugin_samples/train_samples.py
