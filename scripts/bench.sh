#!/usr/bin/env bash
# bench.sh: end-to-end relay throughput, mailgate against Postfix, measured in the same run on this
# machine. Not a test: it prints figures.
#
#   smtp-source -s SESSIONS -m MSGS -l SIZE  ->  relay  ->  smtp-sink
#
# MODE (default relay):
#   relay   end-to-end time runs from the start of smtp-source until smtp-sink has written MSGS messages
#           (one dump file each; the sink is restarted for every run).
#   ingest  the upstream is paused (a listener that completes TCP handshakes and never greets, so both
#           relays hold their connections and queue everything): the time until smtp-source has its
#           last 250. Queues are emptied between runs (Postfix: postsuper -d ALL; mailgate: restarted on
#           an empty spool).
#   mix     relay mode plus BIGN messages of BIG bytes sent at the same time on one more session; also
#           printed: the small messages' own rate (until the last of them reached the sink), which
#           shows whether large ones stall them.
# Both relays fsync every message before their 250, log every message, and relay to the same sink over
# at most 20 connections; smtp-source cannot AUTH, so each relay trusts 127.0.0.0/8 (Postfix
# mynetworks, mailgate trusted_networks with a service principal whose role still applies). mailgate
# composes every message (display name, Message-ID, Date) on the way. Printed per run: messages per
# second; peak memory as PSS (proportional set size from /proc/PID/smaps_rollup, summed over the relay's
# processes: shared pages are counted once, unlike RSS), sampled every 0.1 s; "machine CPU", the busy CPU
# time of the whole machine (source, relay, sink, kernel) per message, from /proc/stat; and for mailgate
# its own CPU (utime+stime of its process, /proc/PID/stat) per message.
# Other work on the machine moves absolute figures from run to run: the ratio of the two relays in the
# same run is what counts, so runs are interleaved and medians printed.
#
# PROFILE=strace|pprof runs mailgate alone, once, and prints its system calls per message (strace -c -f)
# or the top 10 of a CPU profile and of the bytes allocated, taken during the run from the admin
# listener's /debug/pprof.
# Env (defaults): MODE=relay MSGS=5000 SESSIONS=20 SIZE=10240 REPS=3 BIG=40000000 BIGN=2
#   SINK_PORT=2626 POSTFIX_PORT=2625 MAILGATE_PORT=2627 ADMIN_PORT=2628 PROFILE= PROFILE_SECONDS=8
#   PROFILE_OUT= (a directory to keep the binary and the CPU profile in)
#   DUMP_DIR= (where the sink writes: /dev/shm by default; "disk" for the work directory)
# Loopback only. Everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
MODE=${MODE:-relay} MSGS=${MSGS:-5000} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-10240} REPS=${REPS:-3}
BIG=${BIG:-40000000} BIGN=${BIGN:-2} PROFILE=${PROFILE:-} PROFILE_SECONDS=${PROFILE_SECONDS:-8}
SINK_PORT=${SINK_PORT:-2626} POSTFIX_PORT=${POSTFIX_PORT:-2625} MAILGATE_PORT=${MAILGATE_PORT:-2627}
ADMIN_PORT=${ADMIN_PORT:-2628}
TIMEOUT_S=${TIMEOUT_S:-300}
case "$MODE" in relay|ingest|mix) ;; *) echo "MODE must be relay, ingest or mix" >&2; exit 2;; esac
scripts/install-test-deps.sh >/dev/null
WORK=$(mktemp -d /tmp/mailgate-bench.XXXXXX); chmod 755 "$WORK"
# Where smtp-sink writes its one file per message (how arrivals are counted). Memory by default: on
# the disk, the sink's file creations cost it 510-620 µs of CPU per message and a journal commit
# stream that both relays' fsyncs wait behind — measuring apparatus that capped both relays at about
# 1600 msg/s. DUMP_DIR=disk puts them in $WORK as before.
case "${DUMP_DIR:-}" in
disk) DUMP="$WORK/dump";;
"") if [ -d /dev/shm ] && [ -w /dev/shm ]; then DUMP=$(mktemp -d /dev/shm/mailgate-bench-dump.XXXXXX); else DUMP="$WORK/dump"; fi;;
*) DUMP=$(mktemp -d "$DUMP_DIR/mailgate-bench-dump.XXXXXX");;
esac
PF="$WORK/postfix"; PFQ="$WORK/postfix-queue"; PFD="$WORK/postfix-data"
SINK_PID= MG_PID= MG_PROC= PF_STARTED=
cleanup() {
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
  [ -n "$MG_PID" ] && kill "$MG_PID" 2>/dev/null || true
  [ -n "$PF_STARTED" ] && postfix -c "$PF" stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$WORK" "$DUMP"
}
trap cleanup EXIT INT TERM

ms() { date +%s%3N; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# A message counts once smtp-sink has written its dump file: its -c counters reach its buffered
# stdout late and unreliably while sessions are busy.
sink_count() { find "$DUMP" -type f | wc -l; }
port_free() { if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then echo "127.0.0.1:$1 is in use" >&2; exit 1; fi; }
start_sink() {
  port_free "$SINK_PORT"
  rm -rf "$DUMP"; mkdir -p "$DUMP"; chmod 777 "$DUMP"
  if [ "$MODE" = ingest ]; then
    # The paused upstream: handshakes complete in the kernel's backlog, nobody ever greets.
    python3 -c 'import socket,sys,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(("127.0.0.1",int(sys.argv[1]))); s.listen(4096); time.sleep(1e6)' "$SINK_PORT" &
  else
    /usr/sbin/smtp-sink -u nobody -d "$DUMP/%Y%m%d%H%M%S." "127.0.0.1:$SINK_PORT" 1024 > "$WORK/sink.out" 2>&1 &
  fi
  SINK_PID=$!; wait_port "$SINK_PORT"
}
stop_sink() { kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null || true; SINK_PID=; }
# pss_of PID... -> summed PSS in KiB of the processes and their children
pss_of() { local s=0 v; for p in "$@"; do for c in $p $(pgrep -P "$p" 2>/dev/null); do
  v=$(awk '/^Pss:/{print $2}' /proc/$c/smaps_rollup 2>/dev/null); s=$((s + ${v:-0})); done; done; echo $s; }
# cpu_busy -> CPU time (in clock ticks, all cores) the whole machine has spent busy so far
cpu_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
# proc_cpu PID -> utime+stime of one process, in clock ticks (0 when none is given)
proc_cpu() { if [ -n "${1:-}" ]; then awk '{print $14+$15}' "/proc/$1/stat"; else echo 0; fi; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# run PORT OWNPID PIDS... : one measured run; prints "msg_per_s peak_pss_kib machine_us_per_msg
# own_us_per_msg small_msg_per_s sink_us_per_msg" (OWNPID: the process whose own CPU is reported, or
# "-" for none; small_msg_per_s: in MODE=mix, the rate of the small messages alone, until the last of
# them arrived; sink_us_per_msg: smtp-sink's own CPU, the apparatus's share of machine CPU)
run() {
  local port=$1 own=$2; shift 2; [ "$own" = - ] && own=
  start_sink
  local peak=0 t0 t1 got pss busy0 busy1 own0 own1 want=$MSGS big= tsmall=
  [ "$MODE" = mix ] && want=$((MSGS + BIGN))
  busy0=$(cpu_busy); own0=$(proc_cpu "$own")
  t0=$(ms)
  /usr/sbin/smtp-source -s "$SESSIONS" -m "$MSGS" -l "$SIZE" -f support@example.com -t customer@example.net "127.0.0.1:$port" &
  local src=$!
  if [ "$MODE" = mix ]; then
    /usr/sbin/smtp-source -s 1 -m "$BIGN" -l "$BIG" -f support@example.com -t customer@example.net "127.0.0.1:$port" &
    big=$!
  fi
  while :; do
    if [ "$MODE" = ingest ]; then
      kill -0 "$src" 2>/dev/null || { got=$MSGS; break; }
    else
      got=$(sink_count); got=${got:-0}
    fi
    pss=$(pss_of "$@"); [ "$pss" -gt "$peak" ] && peak=$pss
    if [ "$MODE" = mix ] && [ -z "$tsmall" ] && [ "$(find "$DUMP" -type f -size -1M | wc -l)" -ge "$MSGS" ]; then
      tsmall=$(ms)
    fi
    [ "$MODE" != ingest ] && [ "$got" -ge "$want" ] && break
    [ $(( $(ms) - t0 )) -gt $((TIMEOUT_S*1000)) ] && { echo "timeout: got $got of $want" >&2; break; }
    sleep 0.1
  done
  t1=$(ms); busy1=$(cpu_busy); own1=$(proc_cpu "$own"); tsmall=${tsmall:-$t1}
  local sink_cpu; sink_cpu=$(proc_cpu "$SINK_PID")
  wait "$src" || true; [ -n "$big" ] && { wait "$big" || true; }
  stop_sink
  awk -v n="$got" -v t=$((t1-t0)) -v p="$peak" -v b=$((busy1-busy0)) -v o=$((own1-own0)) -v tick="$TICK_US" \
    -v m="$MSGS" -v ts=$((tsmall-t0)) -v sk="$sink_cpu" \
    'BEGIN{printf "%.0f %d %.0f %.0f %.0f %.0f\n", n*1000/t, p, b*tick/n, o*tick/n, m*1000/ts, sk*tick/n}'
}

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
# Room for the 40 MB messages of MODE=mix (Postfix's default limit is 10 MB; mailgate's 50 MiB).
message_size_limit = 52428800
CF
postconf -c "$PF" -F '*/*/chroot = n'
postconf -c "$PF" -M# smtp/inet
postconf -c "$PF" -M "127.0.0.1:$POSTFIX_PORT/inet=127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd"
postfix -c "$PF" set-permissions >"$WORK/postfix-setup.log" 2>&1 || { cat "$WORK/postfix-setup.log"; exit 1; }
if [ -z "$PROFILE" ]; then
  postfix -c "$PF" start >/dev/null 2>&1; PF_STARTED=1; wait_port "$POSTFIX_PORT"
  PF_MASTER=$(tr -d ' ' < "$PFQ/pid/master.pid")
fi

# --- mailgate ---
go build -o "$WORK/mailgate" ./cmd/mailgate
HASH=$(printf 'unused-password\n' | "$WORK/mailgate" hash-password -cost 4)
# The operator token for /debug/pprof (PROFILE=pprof); never on argv: curl reads it from a file.
(umask 077; head -c 24 /dev/urandom | base64 > "$WORK/admin.token"; printf 'header "Authorization: Bearer %s"\n' "$(cat "$WORK/admin.token")" > "$WORK/curl.cfg")
cat > "$WORK/mailgate.yaml" <<YAML
hostname: mailgate.bench.invalid
development: true
listeners:
  - {name: bench, address: 127.0.0.1:$MAILGATE_PORT, tls: starttls}
admin: {address: 127.0.0.1:$ADMIN_PORT, token_file: $WORK/admin.token}
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
# 20 deliveries at once, as Postfix's default_destination_concurrency_limit (mailgate's default is 16).
queue: {workers_per_transport: 20}
YAML
# start_mailgate [WRAPPER...]: starts mailgate on an empty spool and store; MG_PROC is mailgate itself
# (MG_PID is the wrapper's, when there is one).
start_mailgate() {
  rm -rf "$WORK/mg"
  "$@" "$WORK/mailgate" serve --config "$WORK/mailgate.yaml" --log-level info > "$WORK/mailgate.log" 2>&1 &
  MG_PID=$!; wait_port "$MAILGATE_PORT" || { cat "$WORK/mailgate.log"; exit 1; }
  MG_PROC=$MG_PID
  if [ $# -gt 0 ]; then MG_PROC=$(pgrep -P "$MG_PID" | head -1); fi
}
stop_mailgate() { kill "$MG_PID" 2>/dev/null || true; wait "$MG_PID" 2>/dev/null || true; MG_PID=; }

echo "# $(date -u +%FT%TZ) $(nproc) cores; postfix $(postconf -h mail_version); mailgate $("$WORK/mailgate" version | cut -d' ' -f2); MODE=$MODE MSGS=$MSGS SESSIONS=$SESSIONS SIZE=$SIZE REPS=$REPS${PROFILE:+ PROFILE=$PROFILE}; sink dumps in $(df --output=fstype "$(dirname "$DUMP")" | tail -1)"
[ "$MODE" = mix ] && echo "# plus $BIGN messages of $BIG bytes on one more session, at the same time"

case "$PROFILE" in
strace)
  start_mailgate strace -c -f -S calls -o "$WORK/strace.txt"
  read -r e p c o sm sk < <(run "$MAILGATE_PORT" "$MG_PROC" "$MG_PROC")
  echo "mailgate under strace: $e msg/s (strace slows it), own CPU $o µs/msg"
  kill "$MG_PROC"; wait "$MG_PID" 2>/dev/null || true; MG_PID=
  # Rows of strace -c: % time, seconds, usecs/call, calls, [errors,] syscall (sorted by calls).
  awk -v n="$MSGS" '$1 ~ /^[0-9.]+$/ && NF >= 5 {printf "%-20s %9d calls %8.2f per message\n", $NF, $4, $4/n}' "$WORK/strace.txt" | head -16
  awk -v n="$MSGS" '$NF == "total" {printf "system calls per message: %.1f (every thread, start-up included)\n", $4/n}' "$WORK/strace.txt"
  exit 0;;
pprof)
  start_mailgate
  curl -s -K "$WORK/curl.cfg" -o "$WORK/cpu.pprof" "http://127.0.0.1:$ADMIN_PORT/debug/pprof/profile?seconds=$PROFILE_SECONDS" &
  prof=$!
  curl -s -K "$WORK/curl.cfg" -o "$WORK/allocs.pprof" "http://127.0.0.1:$ADMIN_PORT/debug/pprof/allocs?seconds=$PROFILE_SECONDS" &
  aprof=$!
  read -r e p c o sm sk < <(run "$MAILGATE_PORT" "$MG_PROC" "$MG_PROC")
  wait "$prof" "$aprof"
  echo "mailgate: $e msg/s, own CPU $o µs/msg (profile: the first $PROFILE_SECONDS s of the run)"
  go tool pprof -top -nodecount=10 "$WORK/mailgate" "$WORK/cpu.pprof" 2>/dev/null | sed -n '5,16p'
  echo "where the system calls are made (cumulative):"
  go tool pprof -top -cum -nodecount=25 -focus='linux\.Syscall6$' "$WORK/mailgate" "$WORK/cpu.pprof" 2>/dev/null | sed -n '8,40p'
  echo "allocated bytes during the profile, top 10:"
  go tool pprof -top -sample_index=alloc_space -nodecount=10 "$WORK/mailgate" "$WORK/allocs.pprof" 2>/dev/null | sed -n '5,16p'
  if [ -n "${PROFILE_OUT:-}" ]; then mkdir -p "$PROFILE_OUT"; cp "$WORK/mailgate" "$WORK/cpu.pprof" "$WORK/allocs.pprof" "$PROFILE_OUT/"; fi
  exit 0;;
"") ;;
*) echo "PROFILE must be strace or pprof" >&2; exit 2;;
esac

start_mailgate
# Ingest runs leave every message queued behind the paused upstream. Each relay's backlog is removed
# right after its own run, and the relay restarted: Postfix left with 5000 messages whose connections
# die with the paused upstream defers them all while mailgate's run is measured (that churn of qmgr,
# smtp and its log took half the machine in mailgate's first run), and a Postfix that remembers the
# upstream as dead defers every new message during its next run instead of queueing it.
reset_postfix() {
  [ "$MODE" = ingest ] || return 0
  postfix -c "$PF" stop >/dev/null 2>&1 || true
  postsuper -c "$PF" -d ALL >/dev/null 2>&1 || true
  postfix -c "$PF" start >/dev/null 2>&1; wait_port "$POSTFIX_PORT"
  PF_MASTER=$(tr -d ' ' < "$PFQ/pid/master.pid")
}
reset_mailgate() {
  [ "$MODE" = ingest ] || return 0
  stop_mailgate; start_mailgate
}
PF_E2E=() PF_PSS=() PF_SMALL=() MG_E2E=() MG_PSS=() MG_OWN=() MG_SMALL=()
small=; [ "$MODE" = mix ] && small=1
for i in $(seq "$REPS"); do   # interleaved, so drift of the machine hits both alike
  read -r e p c o sm sk < <(run "$POSTFIX_PORT" - "$PF_MASTER"); PF_E2E+=("$e"); PF_PSS+=("$p"); PF_SMALL+=("$sm")
  echo "run $i postfix : $e msg/s, peak PSS $((p/1024)) MiB (summed over its processes), machine CPU $c µs/msg (sink $sk)${small:+, small ones $sm msg/s}"
  reset_postfix
  read -r e p c o sm sk < <(run "$MAILGATE_PORT" "$MG_PROC" "$MG_PROC"); MG_E2E+=("$e"); MG_PSS+=("$p"); MG_OWN+=("$o"); MG_SMALL+=("$sm")
  echo "run $i mailgate: $e msg/s, peak PSS $((p/1024)) MiB, machine CPU $c µs/msg (sink $sk), mailgate CPU $o µs/msg${small:+, small ones $sm msg/s}"
  reset_mailgate
done
what="end-to-end"; [ "$MODE" = ingest ] && what="ingest (upstream paused)"
pm=$(median "${PF_E2E[@]}"); mm=$(median "${MG_E2E[@]}")
echo "MEDIAN postfix : $pm msg/s $what; peak PSS $(( $(median "${PF_PSS[@]}" | cut -d. -f1) / 1024 )) MiB"
echo "MEDIAN mailgate: $mm msg/s $what; peak PSS $(( $(median "${MG_PSS[@]}" | cut -d. -f1) / 1024 )) MiB; mailgate CPU $(median "${MG_OWN[@]}") µs/msg"
awk -v m="$mm" -v p="$pm" 'BEGIN{printf "mailgate / postfix = %.2f\n", m/p}'
if [ -n "$small" ]; then
  ps=$(median "${PF_SMALL[@]}"); ms_=$(median "${MG_SMALL[@]}")
  awk -v m="$ms_" -v p="$ps" 'BEGIN{printf "small messages alone: postfix %s msg/s, mailgate %s msg/s, mailgate / postfix = %.2f\n", p, m, m/p}'
fi
