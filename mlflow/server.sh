#!/usr/bin/env bash
# Start the MLflow tracking server and UI on the project's local store (`make mlflow-ui`).
# The code logs to the same store directly (sqlite:///mlflow/mlflow.db, artifacts in mlflow/artifacts)
# unless MLFLOW_TRACKING_URI says otherwise, so the UI shows every run whether or not it was running.
# No Python lives in this folder: a mlflow/__init__.py would shadow the mlflow library.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
mkdir -p "$here/artifacts"
echo "MLflow UI: http://$host:$port  (store: $here/mlflow.db)"
exec mlflow server --host "$host" --port "$port" --workers 1 \
  --backend-store-uri "sqlite:///$here/mlflow.db" \
  --default-artifact-root "file://$here/artifacts"
