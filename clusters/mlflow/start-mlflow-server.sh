#!/usr/bin/env bash
# The MLflow tracking server on a VM (the head node or beside it), the same as mlflow-server.yaml.
# Needs, from your secret store, in the environment: MLFLOW_FLASK_SERVER_SECRET_KEY,
# MLFLOW_AUTH_ADMIN_PASSWORD (first start), PGPASSWORD; and PG_HOST, ARTIFACTS (s3://... or a
# path), MLFLOW_HOST (the name clients use) for the Host allow-list.
#   clusters/mlflow/start-mlflow-server.sh
set -euo pipefail
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?from your secret store}"
: "${PGPASSWORD:?the mlflow database user password, from your secret store}"
: "${PG_HOST:?PostgreSQL host}" "${ARTIFACTS:?s3://bucket/prefix or an absolute path}"
: "${MLFLOW_HOST:?the host name clients use}"
config="$(mktemp -d)/basic_auth.ini"
sed "s/dit-scaling-postgres/${PG_HOST}/" > "$config" <<'INI'
[mlflow]
default_permission = READ
database_uri = postgresql+psycopg2://mlflow@dit-scaling-postgres:5432/mlflow_auth
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$config"
exec mlflow server --host 0.0.0.0 --port 5000 --workers 1 --app-name basic-auth \
  --backend-store-uri "postgresql+psycopg2://mlflow@${PG_HOST}:5432/mlflow" \
  --artifacts-destination "$ARTIFACTS" \
  --allowed-hosts "${MLFLOW_HOST},${MLFLOW_HOST}:5000,localhost:5000,127.0.0.1:5000"
