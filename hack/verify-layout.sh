#!/usr/bin/env bash
# Checks the code layout rules of the README's "Code layout" section:
# - the CSI driver binary links neither go-fuse nor the Prometheus client
#   (it reaches the cache only through pkg/cache/api);
# - no non-test .go file under pkg/ is over 500 lines;
# - every package under pkg/ has a doc comment.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0

bad=$(go list -deps ./cmd/cistern-csi | grep -E 'hanwen/go-fuse|prometheus/client_golang' || true)
if [ -n "$bad" ]; then
  echo "cmd/cistern-csi links what only the cache daemon needs:"; echo "$bad"; fail=1
fi
for pkg in ./pkg/cache/api ./pkg/cache/source ./pkg/cache/source/posix ./pkg/cache/s3store; do
  bad=$(go list -deps "$pkg" | grep -E 'hanwen/go-fuse|prometheus/client_golang|cistern/pkg/cache$|cistern/pkg/cache/(fusefs|daemon)$' || true)
  if [ -n "$bad" ]; then
    echo "$pkg imports up the data path:"; echo "$bad"; fail=1
  fi
done

while IFS= read -r f; do
  n=$(wc -l < "$f")
  if [ "$n" -gt 500 ]; then echo "$f: $n lines (at most 500)"; fail=1; fi
done < <(find pkg -name '*.go' ! -name '*_test.go')

while IFS= read -r dir; do
  if ! grep -lq '^// Package ' "$dir"/*.go 2>/dev/null; then
    echo "$dir: no package doc comment"; fail=1
  fi
done < <(find pkg -name '*.go' ! -name '*_test.go' -printf '%h\n' | sort -u)

if [ "$fail" -ne 0 ]; then exit 1; fi
echo "layout: ok"
