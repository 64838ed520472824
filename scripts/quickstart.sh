#!/usr/bin/env bash
# Set everything up, then serve the sklearn wine sample on 127.0.0.1:5005.
# Extra arguments go to the server, e.g. `bash scripts/quickstart.sh --port 5006`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m mlflow_pluggable_scoring_server.webserver --conf plugin_samples/sklearn_wine/conf.yaml "$@"
