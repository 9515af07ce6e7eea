#!/usr/bin/env bash
# A multi-node Ray cluster on one machine, as the cluster tests start it: a head node with no CPUs
# for training (trial slots only) and N worker nodes, each with its own --temp-dir and resources.
# Token auth is forced on (the token is generated into a 0600 file, never printed); the dashboard
# and job API listen on 127.0.0.1 only. The embedded default needs none of this:
# `dit-scaling run SPEC` starts Ray inside the command.
# MLflow credentials (clusters/README.md, "Credentials on the cluster"): the nodes inherit this
# shell's MLFLOW_TRACKING_USERNAME/PASSWORD, or MLflow reads ~/.mlflow/credentials (mode 0600).
#   clusters/local/start-local-cluster.sh [WORKERS] [CPUS_PER_WORKER]
#   export RAY_AUTH_TOKEN_PATH=$HOME/.dit-scaling/ray/auth_token
#   dit-scaling submit SPEC --address http://127.0.0.1:8265 --output-dir /abs/shared/path
# Stop: kill the process groups listed in $HOME/.dit-scaling/ray/pgids.
set -euo pipefail
workers="${1:-2}"
cpus="${2:-1}"
root="${DIT_LOCAL_CLUSTER_DIR:-$HOME/.dit-scaling/ray}"
mkdir -p "$root"
umask 077
chmod 700 "$root"
[ -s "$root/auth_token" ] || python -c "import secrets; print(secrets.token_hex(32))" > "$root/auth_token"
chmod 600 "$root/auth_token"  # a token file made before, by hand, stays readable by you only
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$root/auth_token" RAY_USAGE_STATS_ENABLED=0
: > "$root/pgids"
setsid ray start --block --head --port 6379 --dashboard-host 127.0.0.1 --dashboard-port 8265 \
  --num-cpus 0 --resources '{"trial_slot": 8}' --object-store-memory 200000000 \
  --temp-dir "$root/head" > "$root/head.log" 2>&1 &
echo $! >> "$root/pgids"
sleep 10
for i in $(seq 1 "$workers"); do
  setsid ray start --block --address 127.0.0.1:6379 --num-cpus "$cpus" \
    --resources "{\"node_$i\": 1}" --object-store-memory 200000000 \
    --temp-dir "$root/node_$i" > "$root/node_$i.log" 2>&1 &
  echo $! >> "$root/pgids"
done
echo "Ray cluster at http://127.0.0.1:8265 (token in $root/auth_token)"
