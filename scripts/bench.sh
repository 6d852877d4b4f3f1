#!/usr/bin/env bash
# bench.sh: end-to-end relay throughput, mailgate against Postfix, measured in the same run on this
# machine. Not a test: it prints figures.
#
#   smtp-source -s SESSIONS -m MSGS -l SIZE  ->  relay  ->  smtp-sink
#
# End-to-end time runs from the start of smtp-source until smtp-sink has written MSGS messages (one
# dump file each; the sink is restarted for every run). Both relays fsync every message before their
# 250, log every message, and relay to the same sink over at most 20 connections; smtp-source cannot
# AUTH, so each relay trusts 127.0.0.0/8 (Postfix mynetworks, mailgate trusted_networks with a service
# principal whose role still applies). mailgate composes every message (display name, Message-ID,
# Date) on the way. Peak RSS of each relay is sampled every 0.1 s; "machine CPU" is the busy CPU time
# of the whole machine (source, relay, sink, kernel) per message during the run, from /proc/stat.
# Env (defaults): MSGS=5000 SESSIONS=20 SIZE=10240 REPS=3 SINK_PORT=2626 POSTFIX_PORT=2625 MAILGATE_PORT=2627
# Loopback only. Everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
MSGS=${MSGS:-5000} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-10240} REPS=${REPS:-3}
SINK_PORT=${SINK_PORT:-2626} POSTFIX_PORT=${POSTFIX_PORT:-2625} MAILGATE_PORT=${MAILGATE_PORT:-2627}
TIMEOUT_S=${TIMEOUT_S:-300}
scripts/install-test-deps.sh >/dev/null
WORK=$(mktemp -d /tmp/mailgate-bench.XXXXXX); chmod 755 "$WORK"
PF="$WORK/postfix"; PFQ="$WORK/postfix-queue"; PFD="$WORK/postfix-data"
SINK_PID= MG_PID= PF_STARTED=
cleanup() {
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
  [ -n "$MG_PID" ] && kill "$MG_PID" 2>/dev/null || true
  [ -n "$PF_STARTED" ] && postfix -c "$PF" stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ms() { date +%s%3N; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# A message counts once smtp-sink has written its dump file: its -c counters reach its buffered
# stdout late and unreliably while sessions are busy.
sink_count() { find "$WORK/dump" -type f | wc -l; }
start_sink() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$SINK_PORT") 2>/dev/null; then echo "127.0.0.1:$SINK_PORT is in use" >&2; exit 1; fi
  rm -rf "$WORK/dump"; mkdir -p "$WORK/dump"; chmod 777 "$WORK/dump"
  /usr/sbin/smtp-sink -u nobody -d "$WORK/dump/%Y%m%d%H%M%S." "127.0.0.1:$SINK_PORT" 1024 > "$WORK/sink.out" 2>&1 &
  SINK_PID=$!; wait_port "$SINK_PORT"
}
stop_sink() { kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null || true; SINK_PID=; }
# rss_of PID... -> summed RSS in KiB of the processes and their children
rss_of() { local s=0 v; for p in "$@"; do for c in $p $(pgrep -P "$p" 2>/dev/null); do
  v=$(awk '/^VmRSS:/{print $2}' /proc/$c/status 2>/dev/null); s=$((s + ${v:-0})); done; done; echo $s; }

# run NAME PORT PIDS... : one measured run; prints "e2e_msg_per_s peak_rss_kib"
run() {
  local port=$1; shift
  start_sink
  local peak=0 t0 t1 got rss busy0 busy1
  busy0=$(cpu_busy)
  t0=$(ms)
  /usr/sbin/smtp-source -s "$SESSIONS" -m "$MSGS" -l "$SIZE" -f support@example.com -t customer@example.net "127.0.0.1:$port" &
  local src=$!
  while :; do
    got=$(sink_count); got=${got:-0}
    rss=$(rss_of "$@"); [ "$rss" -gt "$peak" ] && peak=$rss
    [ "$got" -ge "$MSGS" ] && break
    [ $(( $(ms) - t0 )) -gt $((TIMEOUT_S*1000)) ] && { echo "timeout: sink got $got of $MSGS" >&2; break; }
    sleep 0.1
  done
  t1=$(ms); busy1=$(cpu_busy); wait "$src" || true; stop_sink
  awk -v n="$got" -v t=$((t1-t0)) -v p="$peak" -v b=$((busy1-busy0)) 'BEGIN{printf "%.0f %d %.0f\n", n*1000/t, p, b*10000/n}'
}
# cpu_busy -> CPU time (in clock ticks, all cores) the whole machine has spent busy so far
cpu_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }

# --- Postfix as a plain relay to the sink (its own instance; never the system one) ---
mkdir -p "$PF" "$PFQ" "$PFD"
cp /etc/postfix/master.cf "$PF/master.cf"
cat > "$PF/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $PFQ
data_directory = $PFD
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.invalid
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery disabled
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$SINK_PORT
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_tls_security_level = none
smtputf8_enable = no
maillog_file = /var/log/mailgate-bench-postfix.log
CF
postconf -c "$PF" -F '*/*/chroot = n'
postconf -c "$PF" -M# smtp/inet
postconf -c "$PF" -M "127.0.0.1:$POSTFIX_PORT/inet=127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd"
postfix -c "$PF" set-permissions >"$WORK/postfix-setup.log" 2>&1 || { cat "$WORK/postfix-setup.log"; exit 1; }
postfix -c "$PF" start >/dev/null 2>&1; PF_STARTED=1; wait_port "$POSTFIX_PORT"
PF_MASTER=$(tr -d ' ' < "$PFQ/pid/master.pid")

# --- mailgate ---
go build -o "$WORK/mailgate" ./cmd/mailgate
HASH=$(printf 'unused-password\n' | "$WORK/mailgate" hash-password -cost 4)
cat > "$WORK/mailgate.yaml" <<YAML
hostname: mailgate.bench.invalid
development: true
listeners:
  - {name: bench, address: 127.0.0.1:$MAILGATE_PORT, tls: starttls}
admin: {address: 127.0.0.1:0}
spool: {dir: $WORK/mg/spool}
store: {path: $WORK/mg/mailgate.db}
business_units: [{name: BU, time_zone: Europe/Berlin}]
smtp_servers: [{name: sink, host: 127.0.0.1, port: $SINK_PORT, tls: starttls, max_connections: 20}]
channels:
  - {name: Support, from: support@example.com, display_name: Example Support, business_unit: BU, transport: sink, outbound_flow: true}
roles: [{name: app, channels: {Support: [reply, outbound]}}]
users: [{login: unused, password_hash: "$HASH", role: app, business_unit: BU}]
trusted_networks: [{cidr: 127.0.0.0/8, principal: bench-app, role: app, business_unit: BU}]
limits: {max_connections: 1000}
YAML
"$WORK/mailgate" serve --config "$WORK/mailgate.yaml" --log-level info > "$WORK/mailgate.log" 2>&1 &
MG_PID=$!; wait_port "$MAILGATE_PORT" || { cat "$WORK/mailgate.log"; exit 1; }

echo "# $(date -u +%FT%TZ) $(nproc) cores; postfix $(postconf -h mail_version); mailgate $("$WORK/mailgate" version | cut -d' ' -f2); MSGS=$MSGS SESSIONS=$SESSIONS SIZE=$SIZE REPS=$REPS"
PF_E2E=() PF_RSS=() MG_E2E=() MG_RSS=()
for i in $(seq "$REPS"); do   # interleaved, so drift of the machine hits both alike
  read -r e r c < <(run "$POSTFIX_PORT" "$PF_MASTER"); PF_E2E+=("$e"); PF_RSS+=("$r")
  echo "run $i postfix : $e msg/s end-to-end, peak RSS $((r/1024)) MiB (sum over its processes), machine CPU $c µs/msg"
  read -r e r c < <(run "$MAILGATE_PORT" "$MG_PID"); MG_E2E+=("$e"); MG_RSS+=("$r")
  echo "run $i mailgate: $e msg/s end-to-end, peak RSS $((r/1024)) MiB, machine CPU $c µs/msg"
done
pm=$(median "${PF_E2E[@]}"); mm=$(median "${MG_E2E[@]}")
echo "MEDIAN postfix : $pm msg/s end-to-end; peak RSS $(( $(median "${PF_RSS[@]}" | cut -d. -f1) / 1024 )) MiB"
echo "MEDIAN mailgate: $mm msg/s end-to-end; peak RSS $(( $(median "${MG_RSS[@]}" | cut -d. -f1) / 1024 )) MiB"
awk -v m="$mm" -v p="$pm" 'BEGIN{printf "mailgate / postfix = %.2f\n", m/p}'
