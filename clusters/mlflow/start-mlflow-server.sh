#!/usr/bin/env bash
# The MLflow tracking server on a VM (the head node or beside it), the same as mlflow-server.yaml:
# HTTPS only (uvicorn serves TLS itself: there is no plain-HTTP listener), basic-auth with
# default_permission = NO_PERMISSIONS (a user sees only the experiments it created or was granted,
# clusters/README.md "Who can read a study"), PostgreSQL backend store, Host-header allow-list.
# Needs, from your secret store, in the environment:
#   MLFLOW_FLASK_SERVER_SECRET_KEY, MLFLOW_AUTH_ADMIN_PASSWORD (first start only), PGPASSWORD;
# and the TLS files and names:
#   MLFLOW_TLS_CERT  PEM certificate (chain) whose names include MLFLOW_HOST
#   MLFLOW_TLS_KEY   its private key: a file only its owner may read (mode 0600 or 0400)
#   PG_HOST, ARTIFACTS (s3://... or an absolute path), MLFLOW_HOST (the name clients use)
# Optional: PG_PORT (5432), PG_USER (mlflow), MLFLOW_PORT (5000), MLFLOW_BIND (0.0.0.0; TLS either
# way: restrict who reaches the port with the host firewall / security group as well).
#   clusters/mlflow/start-mlflow-server.sh
# Clients use MLFLOW_TRACKING_URI=https://$MLFLOW_HOST:$MLFLOW_PORT, and
# MLFLOW_TRACKING_SERVER_CERT_PATH=/path/to/ca.pem when the certificate is not from a public CA.
set -euo pipefail
umask 077
die() { echo "start-mlflow-server: $*" >&2; exit 2; }
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?from your secret store}"
: "${PGPASSWORD:?the mlflow database user password, from your secret store}"
: "${PG_HOST:?PostgreSQL host}" "${ARTIFACTS:?s3://bucket/prefix or an absolute path}"
: "${MLFLOW_HOST:?the host name clients use (and the certificate names)}"
: "${MLFLOW_TLS_CERT:?PEM certificate for MLFLOW_HOST}"
: "${MLFLOW_TLS_KEY:?PEM private key of MLFLOW_TLS_CERT, mode 0600}"
port="${MLFLOW_PORT:-5000}"
bind="${MLFLOW_BIND:-0.0.0.0}"
pg="${PG_USER:-mlflow}@${PG_HOST}:${PG_PORT:-5432}"
for f in "$MLFLOW_TLS_CERT" "$MLFLOW_TLS_KEY"; do
  [ -f "$f" ] && [ -r "$f" ] && [ -s "$f" ] || die "cannot read $f"
done
key_mode="$(stat -L -c %a "$MLFLOW_TLS_KEY")"
if (( 8#$key_mode & 8#077 )); then
  die "$MLFLOW_TLS_KEY is readable by other users (mode $key_mode): chmod 600 it"
fi
config="$(mktemp -d)/basic_auth.ini"
cat > "$config" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = postgresql+psycopg2://${pg}/mlflow_auth
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
INI
export MLFLOW_AUTH_CONFIG_PATH="$config"
tls="--ssl-certfile $(printf %q "$MLFLOW_TLS_CERT") --ssl-keyfile $(printf %q "$MLFLOW_TLS_KEY")"
exec mlflow server --host "$bind" --port "$port" --workers 1 --app-name basic-auth \
  --uvicorn-opts "$tls" \
  --backend-store-uri "postgresql+psycopg2://${pg}/mlflow" \
  --artifacts-destination "$ARTIFACTS" \
  --allowed-hosts "${MLFLOW_HOST},${MLFLOW_HOST}:${port},localhost:${port},127.0.0.1:${port}"
