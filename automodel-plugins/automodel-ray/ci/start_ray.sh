#!/usr/bin/env bash
# Start (or check) a two-node Ray TEST cluster on this machine with Ray's own tooling (`ray start`):
# a head node and one more node, both on 127.0.0.1 only, small (1 logical CPU each, 100 MB object store),
# dashboard on 127.0.0.1 (the Ray Jobs API the job mode uses). No root needed. Idempotent: when the
# cluster already answers with both nodes, it only checks it.
#
#   automodel-plugins/automodel-ray/ci/start_ray.sh        # start (or check) the cluster
#   automodel-plugins/automodel-ray/ci/start_ray.sh stop   # stop it (`ray stop`: every Ray process of this user)
#
# Ray must be importable (`pip install -r requirements-dev.txt` installs ray[train]). Tests find the cluster
# through $AUTOMODEL_RAY_DIR/address (GCS address) and $AUTOMODEL_RAY_DIR/dashboard (Jobs API URL);
# default directory /tmp/automodel-test-ray, ports 26379 (GCS), 28265 (dashboard), 20001 (Ray Client).
# Each node has its own --temp-dir ($BASE/h, $BASE/n2: sessions, logs; one log monitor each, so worker
# output reaches the driver once). The second node carries the custom resource `automodel_test_node2`, so tests can tell the nodes apart.
set -euo pipefail

BASE=${AUTOMODEL_RAY_DIR:-/tmp/automodel-test-ray}
PORT=${AUTOMODEL_RAY_PORT:-26379}
DASH=${AUTOMODEL_RAY_DASHBOARD_PORT:-28265}
CLIENT=${AUTOMODEL_RAY_CLIENT_PORT:-20001}
ADDR="127.0.0.1:$PORT"
export RAY_USAGE_STATS_ENABLED=0
# Token authentication on every node and client of the test cluster (Ray 2.60 turns it on by itself for a head
# it sees as local but not for a node that joins it, which then fails with InvalidAuthToken): one token, made
# once in ~/.ray/auth_token (Ray's default path); tests/plugins/ray/conftest.py sets RAY_AUTH_MODE=token too.
export RAY_AUTH_MODE=token

log() { echo "start_ray: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v ray >/dev/null || die "the 'ray' command is not on PATH: pip install 'ray[train]' (requirements-dev.txt) first"

if [ "${1:-}" = stop ]; then
    ray stop --force >/dev/null 2>&1 || true
    rm -f "$BASE/address" "$BASE/dashboard"
    log "stopped the Ray test cluster"
    exit 0
fi

nodes_alive() {  # number of alive nodes of the cluster at $ADDR (0 when it does not answer)
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || { echo 0; return; }  # nothing listens: skip ray.init's retries
    timeout 30 python - "$ADDR" <<'PY' 2>/dev/null || echo 0
import sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
PY
}

t0=$(date +%s.%N)
[ -s "$HOME/.ray/auth_token" ] || { ray get-auth-token --generate >/dev/null && chmod 600 "$HOME/.ray/auth_token"; }
mkdir -p "$BASE"
alive=$(nodes_alive | tail -n 1)
if [ "$alive" != 2 ]; then
    [ "$alive" = 0 ] || log "cluster at $ADDR has $alive node(s), restarting it"
    ray stop --force >/dev/null 2>&1 || true
    log "starting the head node on $ADDR (dashboard 127.0.0.1:$DASH)"
    ray start --head --temp-dir="$BASE/h" --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus=1 --object-store-memory=100000000 \
        --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH" \
        --ray-client-server-port="$CLIENT" --disable-usage-stats >"$BASE/head.out" 2>&1 \
        || { cat "$BASE/head.out" >&2; die "ray start --head failed"; }
    log "starting the second node"
    ray start --address="$ADDR" --temp-dir="$BASE/n2" --node-ip-address=127.0.0.1 --num-cpus=1 --object-store-memory=100000000 \
        --resources='{"automodel_test_node2": 1}' --disable-usage-stats >"$BASE/node2.out" 2>&1 \
        || { cat "$BASE/node2.out" >&2; die "ray start (second node) failed"; }
    for _ in $(seq 60); do alive=$(nodes_alive | tail -n 1); [ "$alive" = 2 ] && break; sleep 1; done
    [ "$alive" = 2 ] || die "the cluster at $ADDR has $alive alive node(s), expected 2 (logs: $BASE/h/session_latest/logs)"
fi
echo "$ADDR" >"$BASE/address"
echo "http://127.0.0.1:$DASH" >"$BASE/dashboard"
t1=$(date +%s.%N)
log "cluster up: 2 nodes at $ADDR, Jobs API http://127.0.0.1:$DASH ($(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s)"
log "use it with: export RAY_ADDRESS=$ADDR"
