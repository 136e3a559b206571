#!/usr/bin/env bash
# Installs what `make test` and `make demo` need on a fresh Debian machine.
# Idempotent: safe to rerun.
set -euo pipefail

need_apt=()
command -v mount >/dev/null || need_apt+=(mount)
command -v make >/dev/null || need_apt+=(make)
command -v git >/dev/null || need_apt+=(git)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if ! command -v go >/dev/null; then
  if [ -x /usr/local/go/bin/go ]; then
    export PATH=/usr/local/go/bin:$PATH
  else
    echo "Go is not installed: install Go 1.26 or later" >&2
    exit 1
  fi
fi

cd "$(dirname "$0")/.."
go mod download
echo "dependencies ready: $(go version)"
