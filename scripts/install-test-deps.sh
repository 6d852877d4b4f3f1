#!/usr/bin/env bash
# install-test-deps.sh: installs, idempotently, every real peer the test suite talks to. Safe to re-run;
# about a second when everything is present.
#   Debian: swaks (+ the Perl TLS modules it only recommends), Postfix (for smtp-sink, smtp-source and
#           the benchmark baseline; never started at boot), openssl, curl, python3, prometheus (for
#           promtool, which checks examples/prometheus; never started), chromium (headless, renders
#           `preview --html-out` for the screenshot test), PostgreSQL (the shared store's tests: its
#           cluster on 127.0.0.1:5432, trust auth for local TCP, database "test"; started here if down)
#   npm:    aws-ses-v2-local, smtp-server, oauth2-mock-server, nodemailer  -> $MAILGATE_PEERS/node
#   Go:     local-kms (AWS KMS emulator)                                    -> $MAILGATE_PEERS/bin
# Nothing is installed inside the repository.
set -euo pipefail
PEERS="${MAILGATE_PEERS:-/opt/mailgate-peers}"
NPM_PKGS="aws-ses-v2-local@2.10.2 smtp-server@3.21.6 oauth2-mock-server@8.2.3 nodemailer@10.6.1"
LOCAL_KMS="github.com/nsmithuk/local-kms@v0.0.0-20260228092603-2a5e92d09ab6"
export PATH="/usr/local/go/bin:$PATH"
mkdir -p "$PEERS/node" "$PEERS/bin"

apt_pkgs=(swaks libnet-ssleay-perl libio-socket-ssl-perl libio-socket-inet6-perl libauthen-sasl-perl
          postfix openssl curl python3 iproute2 procps prometheus chromium postgresql)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-test-deps: apt-get install ${missing[*]}" >&2
  printf '%s\n' "postfix postfix/main_mailer_type select Local only" \
    "postfix postfix/mailname string mailgate-test.localdomain" | debconf-set-selections
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  systemctl --root=/ disable postfix.service prometheus.service >/dev/null 2>&1 || true
fi

need_npm=0
for want in $NPM_PKGS; do
  name="${want%@*}" ver="${want##*@}"
  have=$(node -p "try{require('$PEERS/node/node_modules/$name/package.json').version}catch(e){''}" 2>/dev/null || true)
  [ "$have" = "$ver" ] || need_npm=1
done
if [ $need_npm = 1 ]; then
  echo "install-test-deps: npm install $NPM_PKGS" >&2
  (cd "$PEERS/node" && { [ -f package.json ] || echo '{"name":"mailgate-peers","private":true}' > package.json; } &&
    npm install --no-audit --no-fund --loglevel=error $NPM_PKGS >/dev/null)
fi

if [ ! -x "$PEERS/bin/local-kms" ]; then
  echo "install-test-deps: go install $LOCAL_KMS" >&2
  (cd /tmp && GOBIN="$PEERS/bin" GOFLAGS=-mod=mod go install "$LOCAL_KMS")
fi
# PostgreSQL: the cluster the store's tests use (each test makes its own schema and drops it).
pg_version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
if [ -n "$pg_version" ]; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "install-test-deps: pg_ctlcluster $pg_version main start" >&2
    pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start
  fi
  hba="/etc/postgresql/$pg_version/main/pg_hba.conf"
  if ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
    echo "install-test-deps: trust auth for 127.0.0.1 in $hba" >&2
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$pg_version" main reload
  fi
  if ! psql -h 127.0.0.1 -U postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
    psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE test"
  fi
fi
echo "install-test-deps: peers ready in $PEERS"
