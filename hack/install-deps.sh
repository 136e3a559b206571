#!/usr/bin/env bash
# Installs what `make test` and `make demo` need on a fresh Debian machine.
# Idempotent: safe to rerun.
set -euo pipefail

need_apt=()
command -v mount >/dev/null || need_apt+=(mount)
command -v make >/dev/null || need_apt+=(make)
command -v git >/dev/null || need_apt+=(git)
# The benchmark's peers (make bench, make bench-smoke): rclone mount and
# s3fs-fuse, with fusermount3 for rclone.
command -v rclone >/dev/null || need_apt+=(rclone)
command -v s3fs >/dev/null || need_apt+=(s3fs)
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
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

# A real S3 server for the tests, the S3 demo and the benchmarks (about a
# minute to build the first time). test/s3server finds it in $PATH or in
# $(go env GOPATH)/bin.
VERSITYGW_VERSION=v1.8.0
gobin="$(go env GOBIN)"; [ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
if ! command -v versitygw >/dev/null && [ ! -x "$gobin/versitygw" ]; then
  echo "installing versitygw $VERSITYGW_VERSION into $gobin"
  go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
fi
echo "dependencies ready: $(go version), versitygw $(command -v versitygw || echo "$gobin/versitygw")"
