#!/usr/bin/env bash
# Builds what a local Kubernetes and its e2e suite need, from the Go module
# proxy, into a cache outside the work tree keyed by version:
#
#   $CISTERN_CACHE/k8s-<version>/bin/   kube-apiserver kube-controller-manager
#                                        kube-scheduler kubelet kube-proxy
#                                        kubectl e2e.test agnhost pause
#   $CISTERN_CACHE/etcd-<version>/bin/  etcd
#   $CISTERN_CACHE/csi-provisioner-<version>/bin/csi-provisioner
#   $CISTERN_CACHE/csi-resizer-<version>/bin/csi-resizer
#   $CISTERN_CACHE/helm-<version>/bin/helm
#
# Each binary is built once; a second run only checks that it is there.
# Usage: hack/k8s-build.sh [all|cluster|e2e|helm|sidecars]   (default all;
# cluster: etcd and the Kubernetes binaries; e2e: also e2e.test and agnhost)
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
PROVISIONER_VERSION=${PROVISIONER_VERSION:-v6.4.0}
RESIZER_VERSION=${RESIZER_VERSION:-v2.3.0}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
CACHE=${CISTERN_CACHE:-/var/cache/cistern}
what=${1:-all}

export CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$CACHE"

log() { printf '%s k8s-build: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# staging_replaces MODFILE VERSION prints a replace line pinning every staging
# module of a go.mod that points into ./staging to the published VERSION.
staging_replaces() {
  awk -v v="$2" '$2 == "=>" && $3 ~ /^\.\/staging\// { print "replace " $1 " => " $1 " " v }' "$1"
}

# throwaway_module DIR MODULE VERSION [extra go.mod lines on stdin]
throwaway_module() {
  local dir=$1 mod=$2 ver=$3
  mkdir -p "$dir"
  { echo "module cistern.local/build"; echo; echo "go 1.26"; echo; echo "require $mod $ver"; cat; } > "$dir/go.mod"
}

build_kubernetes() {
  local out="$CACHE/k8s-$K8S_VERSION" mod="$CACHE/k8s-$K8S_VERSION/mod"
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
  local missing=()
  for c in "${cmds[@]}"; do [ -x "$out/bin/$c" ] || missing+=("$c"); done
  [ -x "$out/bin/e2e.test" ] || [ "$what" = cluster ] || missing+=(e2e.test)
  [ -x "$out/bin/agnhost" ] || [ "$what" = cluster ] || missing+=(agnhost)
  [ -x "$out/bin/pause" ] || missing+=(pause)
  [ ${#missing[@]} -gt 0 ] || { log "kubernetes $K8S_VERSION: cached in $out/bin"; return; }

  if [ ! -f "$mod/go.sum" ]; then
    log "kubernetes $K8S_VERSION: resolving modules (about 765 MB the first time)"
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    local minor=${K8S_VERSION#v1.}
    staging_replaces "$gomod" "v0.$minor" | throwaway_module "$mod" k8s.io/kubernetes "$K8S_VERSION"
    cat > "$mod/tools.go" <<'EOF'
//go:build tools

package build

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
EOF
    (cd "$mod" && go mod tidy >/dev/null 2>&1 || go mod tidy)
  fi

  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local vpkg ldflags=""
  for vpkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
  done
  mkdir -p "$out/bin"
  local c start
  for c in "${missing[@]}"; do
    start=$SECONDS
    case $c in
      e2e.test)
        log "building e2e.test (about 3.5 minutes cold)"
        (cd "$mod" && go test -c -ldflags "-s -w $ldflags" -o "$out/bin/e2e.test.tmp" k8s.io/kubernetes/test/e2e)
        mv "$out/bin/e2e.test.tmp" "$out/bin/e2e.test" ;;
      agnhost)
        log "building agnhost"
        (cd "$mod" && go build -ldflags "-s -w" -o "$out/bin/agnhost.tmp" k8s.io/kubernetes/test/images/agnhost)
        mv "$out/bin/agnhost.tmp" "$out/bin/agnhost" ;;
      pause)
        log "building pause (C, static)"
        local src
        src=$(cd "$mod" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
        gcc -Os -static -DVERSION="$K8S_VERSION" -o "$out/bin/pause.tmp" "$src/build/pause/linux/pause.c"
        mv "$out/bin/pause.tmp" "$out/bin/pause" ;;
      *)
        log "building $c (kube-apiserver, the first, took 6 minutes cold on 2 cores)"
        (cd "$mod" && go build -ldflags "-s -w $ldflags" -o "$out/bin/$c.tmp" "k8s.io/kubernetes/cmd/$c")
        mv "$out/bin/$c.tmp" "$out/bin/$c" ;;
    esac
    log "$c built in $((SECONDS - start)) s"
  done
}

build_etcd() {
  local out="$CACHE/etcd-$ETCD_VERSION" mod="$CACHE/etcd-$ETCD_VERSION/mod"
  [ -x "$out/bin/etcd" ] && { log "etcd $ETCD_VERSION: cached"; return; }
  log "building etcd $ETCD_VERSION (about 1 minute cold)"
  throwaway_module "$mod" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" <<EOF

replace (
	go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)
EOF
  printf '//go:build tools\n\npackage build\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > "$mod/tools.go"
  (cd "$mod" && go mod tidy >/dev/null && go build -ldflags "-s -w" -o "$out/bin/etcd" go.etcd.io/etcd/server/v3)
}

# build_sidecar NAME MODULE VERSION CMD: a CSI sidecar with its own go.mod's
# replace lines copied into a throwaway module.
build_sidecar() {
  local name=$1 module=$2 ver=$3 cmd=$4
  local out="$CACHE/$name-$ver" mod="$CACHE/$name-$ver/mod"
  [ -x "$out/bin/$name" ] && { log "$name $ver: cached"; return; }
  log "building $name $ver (about 3.5 minutes cold)"
  local gomod
  gomod=$(go mod download -json "$module@$ver" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  awk '/^replace \(/{r=1; next} r && /^\)/{r=0; next} r {print "replace " $0; next} /^replace /{print}' "$gomod" \
    | { grep -v '=> \./' || true; } | throwaway_module "$mod" "$module" "$ver"
  printf '//go:build tools\n\npackage build\n\nimport _ "%s/%s"\n' "$module" "$cmd" > "$mod/tools.go"
  (cd "$mod" && go mod tidy >/dev/null && go build -ldflags "-s -w -X main.version=$ver" -o "$out/bin/$name" "$module/$cmd")
}

build_helm() {
  local out="$CACHE/helm-$HELM_VERSION"
  [ -x "$out/bin/helm" ] && { log "helm $HELM_VERSION: cached"; return; }
  log "building helm $HELM_VERSION (about 2 minutes cold)"
  GOBIN="$out/bin" go install -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

case $what in
  all) build_helm; build_etcd; build_kubernetes
       build_sidecar csi-provisioner github.com/kubernetes-csi/external-provisioner/v6 "$PROVISIONER_VERSION" cmd/csi-provisioner
       build_sidecar csi-resizer github.com/kubernetes-csi/external-resizer/v2 "$RESIZER_VERSION" cmd/csi-resizer ;;
  cluster) build_etcd; build_kubernetes ;;
  e2e) build_kubernetes ;;
  helm) build_helm ;;
  sidecars)
       build_sidecar csi-provisioner github.com/kubernetes-csi/external-provisioner/v6 "$PROVISIONER_VERSION" cmd/csi-provisioner
       build_sidecar csi-resizer github.com/kubernetes-csi/external-resizer/v2 "$RESIZER_VERSION" cmd/csi-resizer ;;
  *) echo "usage: $0 [all|cluster|e2e|helm|sidecars]" >&2; exit 2 ;;
esac
