#!/usr/bin/env bash
# bench-fleet.sh: one mailgate against three on the same PostgreSQL store, same machine, same load, and
# what the store costs per message. Not a test: it prints figures.
#
#   smtp-source (SESSIONS in all, split over the instances) -> N x mailgate -> smtp-sink
#                                     \-> one PostgreSQL database (bounces, log, budgets)
#
# Each run starts N fresh instances (own spool, listener, admin; one database created for the benchmark
# and dropped at the end), relays MSGS messages of SIZE bytes to one smtp-sink, and stops the instances
# so that their backends flush PostgreSQL's statistics. Store figures per message: statements, counted
# in the server log (log_statement = all is set on the benchmark database only; each line names the
# database), transactions (pg_stat_database), rows written (n_tup_ins + upd + del) and index and
# sequential scans (pg_stat_user_tables) of mailgate's tables. pg_stat_statements needs
# shared_preload_libraries and a restart of the cluster the tests share, so it is not used.
# The instances share the upstream's connection slots (max_connections 20 for the fleet) and windows.
# Env (defaults): MSGS=3000 SESSIONS=18 SIZE=10240 REPS=2 SINK_PORT=2636 BASE_PORT=2640
# Loopback only. Everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
MSGS=${MSGS:-3000} SESSIONS=${SESSIONS:-18} SIZE=${SIZE:-10240} REPS=${REPS:-2}
SINK_PORT=${SINK_PORT:-2636} BASE_PORT=${BASE_PORT:-2640} TIMEOUT_S=${TIMEOUT_S:-300}
scripts/install-test-deps.sh >/dev/null
WORK=$(mktemp -d /tmp/mailgate-bench-fleet.XXXXXX); chmod 755 "$WORK"
DB="mgbench_$$"
PSQL=(psql -h 127.0.0.1 -U postgres -X -q -At)
SINK_PID= MG_PIDS=()
cleanup() {
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
  for p in "${MG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "${PSQL[@]}" -d test -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ms() { date +%s%3N; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
sink_count() { find "$WORK/dump" -type f | wc -l; }
start_sink() {
  rm -rf "$WORK/dump"; mkdir -p "$WORK/dump"; chmod 777 "$WORK/dump"
  /usr/sbin/smtp-sink -u nobody -d "$WORK/dump/%Y%m%d%H%M%S." "127.0.0.1:$SINK_PORT" 1024 > "$WORK/sink.out" 2>&1 &
  SINK_PID=$!; wait_port "$SINK_PORT"
}
stop_sink() { kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null || true; SINK_PID=; }
# store_counters -> "transactions rows_written scans" of the benchmark database so far
store_counters() {
  "${PSQL[@]}" -d "$DB" -F' ' -c "SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()),
    coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0), coalesce(sum(coalesce(idx_scan, 0) + seq_scan), 0)
    FROM pg_stat_user_tables WHERE schemaname = 'public'"
}

"${PSQL[@]}" -d test -c "CREATE DATABASE $DB"
"${PSQL[@]}" -d test -c "ALTER DATABASE $DB SET log_statement = 'all'"
PGLOG=$(ls /var/log/postgresql/postgresql-*-main.log | tail -1)
# statements -> statements the benchmark database has run so far (lines of the server log)
statements() { grep -cE "@$DB LOG:  (statement|execute)" "$PGLOG" || true; }
export MG_PG_DSN="postgres://postgres@127.0.0.1:5432/$DB?sslmode=disable"
go build -o "$WORK/mailgate" ./cmd/mailgate
HASH=$(printf 'unused-password\n' | "$WORK/mailgate" hash-password -cost 4)
config() { # config I -> writes $WORK/mg$I.yaml
  local i=$1 port=$((BASE_PORT + 2*$1)) admin=$((BASE_PORT + 2*$1 + 1))
  cat > "$WORK/mg$i.yaml" <<YAML
hostname: mailgate.bench.invalid
instance: bench-$i
development: true
listeners:
  - {name: bench, address: 127.0.0.1:$port, tls: starttls}
admin: {address: 127.0.0.1:$admin}
spool: {dir: $WORK/mg$i/spool}
store: {postgres: "env:MG_PG_DSN"}
business_units: [{name: BU, time_zone: Europe/Berlin}]
smtp_servers: [{name: sink, host: 127.0.0.1, port: $SINK_PORT, tls: starttls, max_connections: 20}]
channels:
  - {name: Support, from: support@example.com, display_name: Example Support, business_unit: BU, transport: sink, outbound_flow: true}
roles: [{name: app, channels: {Support: [reply, outbound]}}]
users: [{login: unused, password_hash: "$HASH", role: app, business_unit: BU}]
trusted_networks: [{cidr: 127.0.0.0/8, principal: bench-app, role: app, business_unit: BU}]
limits: {max_connections: 1000}
YAML
}
for i in 0 1 2; do config "$i"; done

# run N -> "msg_per_s statements_per_msg xact_per_msg rows_per_msg scans_per_msg"
run() {
  local n=$1 t0 t1 got before after
  MG_PIDS=()
  for i in $(seq 0 $((n-1))); do
    rm -rf "$WORK/mg$i"
    "$WORK/mailgate" serve --config "$WORK/mg$i.yaml" --log-level warn > "$WORK/mg$i.log" 2>&1 &
    MG_PIDS+=($!)
  done
  for i in $(seq 0 $((n-1))); do wait_port $((BASE_PORT + 2*i)) || { cat "$WORK/mg$i.log" >&2; exit 1; }; done
  start_sink
  before=$(store_counters); stmts0=$(statements)
  t0=$(ms)
  local srcs=()
  for i in $(seq 0 $((n-1))); do
    /usr/sbin/smtp-source -s $((SESSIONS / n)) -m $((MSGS / n)) -l "$SIZE" -f support@example.com -t customer@example.net \
      "127.0.0.1:$((BASE_PORT + 2*i))" & srcs+=($!)
  done
  local want=$(( (MSGS / n) * n ))
  while :; do
    got=$(sink_count)
    [ "$got" -ge "$want" ] && break
    [ $(( $(ms) - t0 )) -gt $((TIMEOUT_S*1000)) ] && { echo "timeout: sink got $got of $want" >&2; break; }
    sleep 0.1
  done
  t1=$(ms)
  for p in "${srcs[@]}"; do wait "$p" || true; done
  stop_sink
  for p in "${MG_PIDS[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done   # backends flush their statistics
  MG_PIDS=()
  sleep 1
  after=$(store_counters); stmts1=$(statements)
  read -r x0 w0 s0 <<<"$before"; read -r x1 w1 s1 <<<"$after"
  awk -v n="$got" -v t=$((t1-t0)) -v q=$((stmts1-stmts0)) -v x=$((x1-x0)) -v w=$((w1-w0)) -v s=$((s1-s0)) \
    'BEGIN{printf "%.0f %.2f %.2f %.2f %.2f\n", n*1000/t, q/n, x/n, w/n, s/n}'
}

echo "# $(date -u +%FT%TZ) $(nproc) cores; PostgreSQL $("${PSQL[@]}" -d test -c 'SHOW server_version'); MSGS=$MSGS SESSIONS=$SESSIONS SIZE=$SIZE REPS=$REPS"
for r in $(seq "$REPS"); do   # interleaved, so drift of the machine hits both alike
  for n in 1 3; do
    read -r rate q x w s < <(run "$n")
    echo "run $r, $n instance(s): $rate msg/s end-to-end; store per message: $q statements, $x transactions, $w rows written, $s scans"
  done
done
