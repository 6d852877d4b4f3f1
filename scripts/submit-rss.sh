#!/usr/bin/env bash
# submit-rss.sh: peak resident memory of a running mailgate while CONCURRENT agents submit replies
# whose body (MEDIA: html or plain) is SIZE bytes (the development default: template, signature,
# outbox delivery).
# Not a test: it prints the figure (VmHWM of the mailgate process, from /proc/PID/status).
#
#   scripts/submit-rss.sh                         # this tree
#   MAILGATE_BIN=/tmp/mailgate-old scripts/submit-rss.sh   # another build, e.g. before a change
#
# Env (defaults): CONCURRENT=10 SIZE=9000000 MEDIA=html PORT=2727 ADMIN_PORT=9727. Loopback only; everything
# started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
CONCURRENT=${CONCURRENT:-10} SIZE=${SIZE:-9000000} MEDIA=${MEDIA:-html} PORT=${PORT:-2727} ADMIN_PORT=${ADMIN_PORT:-9727}
WORK=$(mktemp -d /tmp/mailgate-rss.XXXXXX)
MG_PID=
cleanup() {
  [ -n "$MG_PID" ] && kill "$MG_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

BIN=${MAILGATE_BIN:-}
if [ -z "$BIN" ]; then
  BIN="$WORK/mailgate"
  go build -o "$BIN" ./cmd/mailgate
fi
"$BIN" serve -data-dir "$WORK/data" -listen "127.0.0.1:$PORT" -admin "127.0.0.1:$ADMIN_PORT" -log-level warn \
  >"$WORK/mailgate.log" 2>&1 &
MG_PID=$!
for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done

python3 - "$PORT" "$CONCURRENT" "$SIZE" "$MEDIA" <<'EOF'
import smtplib, sys, threading
port, n, size, media = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
line = "<p>Thank you for your message about the <b>order</b>; here is everything we know so far.</p>\r\n"
if media == "plain":
    line = "Thank you for your message about the order; here is everything we know so far, point by point.\r\n"
body = line * (size // len(line))
msg = ("From: support@example.com\r\nTo: customer@example.net\r\nSubject: Re: your order [#123456]\r\n"
       "In-Reply-To: <c@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/" + media + "; charset=utf-8\r\n"
       "Content-Transfer-Encoding: 8bit\r\n\r\n" + body).encode()
replies = []
def send():
    with smtplib.SMTP("127.0.0.1", port, timeout=300) as s:
        s.login("demo", "demo")
        replies.append(s.sendmail("support@example.com", ["customer@example.net"], msg) or "250")
threads = [threading.Thread(target=send) for _ in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(f"{len(replies)} of {n} accepted")
EOF
hwm=$(awk '/^VmHWM:/ {print int($2/1024)}' "/proc/$MG_PID/status")
echo "submit-rss: $CONCURRENT concurrent $SIZE-byte text/$MEDIA replies, mailgate peak RSS ${hwm} MiB"
