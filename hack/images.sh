#!/usr/bin/env bash
# Writes container images as docker-archive tarballs into $OUT (default
# _output/images), with hack/mkimage (go-containerregistry): no Docker
# engine, no registry. `ctr -n k8s.io images import` loads them.
#
#   cistern.tar          cistern/cistern:$IMAGE_TAG: cistern-csi, cistern-cache
#                        and cistern (static), busybox (mount, umount, sh),
#                        CA certificates
#   csi-provisioner.tar  registry.k8s.io/sig-storage/csi-provisioner
#   csi-resizer.tar      registry.k8s.io/sig-storage/csi-resizer
#   pause.tar            registry.k8s.io/pause (the sandbox image)
#   busybox.tar agnhost.tar nginx.tar glibc-dns-testing.tar
#                        the e2e suite's test images (the last two are
#                        busybox: the storage suite only runs shell in them)
#
# Usage: hack/images.sh [cistern|all]   (default all; the sidecars and test
# images are built from source by hack/k8s-build.sh first, cached).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
OUT=${OUT:-$PWD/_output/images}
IMAGE_TAG=${IMAGE_TAG:-dev}
CACHE=${CISTERN_CACHE:-/var/cache/cistern}
# These follow hack/k8s-build.sh and the e2e suite's image manifest
# (k8s.io/kubernetes/test/utils/image/manifest.go at v1.37.2).
K8S_VERSION=${K8S_VERSION:-v1.37.2}
PROVISIONER_VERSION=${PROVISIONER_VERSION:-v6.4.0}
RESIZER_VERSION=${RESIZER_VERSION:-v2.3.0}
PAUSE_TAG=3.10.2 BUSYBOX_TAG=1.37.0-2 AGNHOST_TAG=2.66.1 NGINX_TAG=1.27.0-2 GLIBC_DNS_TAG=2.1.1

# A static busybox, from Debian's busybox-static (installed if missing).
BUSYBOX=/bin/busybox
if ! "$BUSYBOX" --list-full >/dev/null 2>&1 || ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "images: installing busybox-static"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi
if ! "$BUSYBOX" --list-full >/dev/null 2>&1 || ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "images: $BUSYBOX is not a static busybox (Debian's busybox-static)" >&2; exit 1
fi
mkdir -p "$OUT" _output/bin
go build -o _output/bin/mkimage ./hack/mkimage
mk() { _output/bin/mkimage "$@"; }
log() { printf '%s images: %s\n' "$(date +%H:%M:%S)" "$*"; }

static=_output/static
log "cistern/cistern:$IMAGE_TAG (static builds)"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$IMAGE_TAG" -o "$static/" ./cmd/cistern-csi ./cmd/cistern-cache ./cmd/cistern
mk -out "$OUT/cistern.tar" -ref "cistern/cistern:$IMAGE_TAG" \
  -add /usr/local/bin/cistern-csi="$static/cistern-csi" \
  -add /usr/local/bin/cistern-cache="$static/cistern-cache" \
  -add /usr/local/bin/cistern="$static/cistern" \
  -add /etc/ssl/certs/ca-certificates.crt=/etc/ssl/certs/ca-certificates.crt \
  -busybox "$BUSYBOX" -entrypoint /usr/local/bin/cistern-csi
[ "$what" = cistern ] && exit 0

hack/k8s-build.sh sidecars
hack/k8s-build.sh cluster
hack/k8s-build.sh e2e
kbin="$CACHE/k8s-$K8S_VERSION/bin"
log "sidecars, pause and the e2e test images"
mk -out "$OUT/csi-provisioner.tar" -ref "registry.k8s.io/sig-storage/csi-provisioner:$PROVISIONER_VERSION" \
  -add /csi-provisioner="$CACHE/csi-provisioner-$PROVISIONER_VERSION/bin/csi-provisioner" -entrypoint /csi-provisioner
mk -out "$OUT/csi-resizer.tar" -ref "registry.k8s.io/sig-storage/csi-resizer:$RESIZER_VERSION" \
  -add /csi-resizer="$CACHE/csi-resizer-$RESIZER_VERSION/bin/csi-resizer" -entrypoint /csi-resizer
mk -out "$OUT/pause.tar" -ref "registry.k8s.io/pause:$PAUSE_TAG" -add /pause="$kbin/pause" -entrypoint /pause
mk -out "$OUT/busybox.tar" -ref "registry.k8s.io/e2e-test-images/busybox:$BUSYBOX_TAG" -busybox "$BUSYBOX" -cmd sh
# The storage suite runs shell commands in these two; busybox serves.
mk -out "$OUT/nginx.tar" -ref "registry.k8s.io/e2e-test-images/nginx:$NGINX_TAG" -busybox "$BUSYBOX" -cmd sh
mk -out "$OUT/glibc-dns-testing.tar" -ref "registry.k8s.io/e2e-test-images/glibc-dns-testing:$GLIBC_DNS_TAG" -busybox "$BUSYBOX" -cmd sh
mk -out "$OUT/agnhost.tar" -ref "registry.k8s.io/e2e-test-images/agnhost:$AGNHOST_TAG" \
  -add /agnhost="$kbin/agnhost" -busybox "$BUSYBOX" -entrypoint /agnhost -cmd pause
ls -la "$OUT"
