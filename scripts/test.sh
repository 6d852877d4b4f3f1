#!/usr/bin/env bash
# test.sh: the whole test suite. Installs every peer the tests need (idempotent), then runs the Go
# tests of every package (unit, real-peer integration, end-to-end tests of the built binary, and every
# fuzz target on its seed corpus). Exit status is the suite's.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
scripts/install-test-deps.sh
# EC2 metadata lookups would stall the AWS SDK for seconds on a machine without AWS settings.
export AWS_EC2_METADATA_DISABLED=true
go vet ./...
go test -count=1 -timeout 20m ./... 2>&1 | tee /tmp/mailgate-test.out
# The patched go-smtp is a module of its own (go.mod's replace): its tests of mailgate's changes.
(cd relay/internal/gosmtp && go vet . && go test -count=1 .) 2>&1 | tee -a /tmp/mailgate-test.out
# go test above already runs every fuzz target on its seed corpus (testdata/fuzz included). With
# FUZZTIME set (e.g. FUZZTIME=30s scripts/test.sh), every target is also fuzzed for that long: new
# inputs are a developer's job, not something that should flip CI at random.
if [ -n "${FUZZTIME:-}" ]; then
  for pkg in $(go list ./...); do
    dir=$(go list -f '{{.Dir}}' "$pkg")
    for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
      echo "fuzz $pkg $target ($FUZZTIME)"
      go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg" >/tmp/mailgate-fuzz.out 2>&1 || { cat /tmp/mailgate-fuzz.out; exit 1; }
    done
  done
  echo "fuzz targets: ok"
fi
