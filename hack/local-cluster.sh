#!/usr/bin/env bash
# A single-node Kubernetes on this machine, for the e2e suite:
#
#   hack/local-cluster.sh up      build (cached) and start it; prints KUBECONFIG
#   hack/local-cluster.sh down    stop what `up` started, in order; unmount
#                                 what it left; remove its network set-up
#   hack/local-cluster.sh load T  import image tarballs into its containerd
#
# Kubernetes $K8S_VERSION and etcd are built from the Go module proxy by
# hack/k8s-build.sh (cached outside the work tree); containerd, runc and the
# CNI plugins come from Debian. Everything listens on loopback; pods live on
# a bridge the cluster creates, and nothing they send is forwarded off this
# machine (an iptables rule drops it). The node's address is the bridge's
# gateway, 10.88.0.1. State: $CLUSTER_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
CACHE=${CISTERN_CACHE:-/var/cache/cistern}
DIR=${CLUSTER_DIR:-/var/lib/cistern-cluster}
KUBELET_DIR=/var/lib/kubelet
NODE=$(hostname | tr '[:upper:]' '[:lower:]')
SERVICE_CIDR=10.0.0.0/24 SERVICE_IP=10.0.0.1 POD_CIDR=10.88.0.0/16
# The node's address is the pod bridge's own (the kubelet refuses a loopback
# node IP): host-network pods get it, and nothing sent to it leaves the host.
BRIDGE=cni-cistern0 NODE_IP=10.88.0.1
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
kbin="$CACHE/k8s-$K8S_VERSION/bin"
etcd="$CACHE/etcd-$ETCD_VERSION/bin/etcd"
export KUBECONFIG="$DIR/admin.kubeconfig"

log() { printf '%s local-cluster: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }
kubectl() { "$kbin/kubectl" "$@"; }

install_packages() {
  local need=()
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || need+=(iptables)
  command -v conntrack >/dev/null || need+=(conntrack)
  command -v socat >/dev/null || need+=(socat)
  command -v openssl >/dev/null || need+=(openssl)
  command -v ip >/dev/null || need+=(iproute2)
  command -v pgrep >/dev/null || need+=(procps)
  command -v findmnt >/dev/null || need+=(util-linux)
  command -v curl >/dev/null || need+=(curl)
  [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || need+=(busybox-static)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# cert NAME CN ORG [SANS]: a key and a certificate signed by the cluster CA.
cert() {
  local name=$1 cn=$2 org=$3 sans=${4:-} p="$DIR/pki"
  [ -f "$p/$name.crt" ] && return
  local subj="/CN=$cn"; [ -n "$org" ] && subj="/O=$org/CN=$cn"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$p/$name.key" -subj "$subj" -out "$p/$name.csr" 2>/dev/null
  { echo "keyUsage=critical,digitalSignature,keyEncipherment"; echo "extendedKeyUsage=serverAuth,clientAuth"
    [ -n "$sans" ] && echo "subjectAltName=$sans"; } > "$p/$name.ext"
  openssl x509 -req -in "$p/$name.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 365 \
    -extfile "$p/$name.ext" -out "$p/$name.crt" 2>/dev/null
}

# kubeconfig NAME CERT: a kubeconfig for the API server on loopback.
kubeconfig() {
  cat > "$DIR/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$DIR/pki/ca.crt"}}]
users: [{name: $1, user: {client-certificate: "$DIR/pki/$2.crt", client-key: "$DIR/pki/$2.key"}}]
contexts: [{name: local, context: {cluster: local, user: $1}}]
current-context: local
EOF
}

configure() {
  mkdir -p "$DIR"/{pki,pids,logs,cni/net.d,containerd} "$KUBELET_DIR"
  local p="$DIR/pki"
  if [ ! -f "$p/ca.crt" ]; then
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$p/ca.key" -subj "/CN=cistern-local-ca" -days 365 -out "$p/ca.crt" 2>/dev/null
    openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
    openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  fi
  cert apiserver kube-apiserver "" "IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin admin system:masters
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  cert proxy system:kube-proxy ""
  cert kubelet "system:node:$NODE" system:nodes "IP:127.0.0.1,IP:$NODE_IP,DNS:$NODE,DNS:localhost"
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler
  kubeconfig proxy proxy
  kubeconfig kubelet kubelet

  echo "nameserver 127.0.0.1" > "$DIR/resolv.conf"   # no DNS query leaves the machine
  cat > "$DIR/cni/net.d/10-cistern.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "cistern-local", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "$POD_CIDR"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
EOF
  cat > "$DIR/containerd.toml" <<EOF
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
[grpc]
  address = "$DIR/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = false
EOF
  cat > "$DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$DIR/pki/ca.crt"}
authorization: {mode: AlwaysAllow}
tlsCertFile: "$DIR/pki/kubelet.crt"
tlsPrivateKeyFile: "$DIR/pki/kubelet.key"
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
resolvConf: "$DIR/resolv.conf"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {"nodefs.available": "1%", "imagefs.available": "1%", "memory.available": "100Mi"}
maxPods: 60
containerRuntimeEndpoint: "unix://$DIR/containerd.sock"
serializeImagePulls: false
EOF
  cat > "$DIR/proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE
clientConnection: {kubeconfig: "$DIR/proxy.kubeconfig"}
conntrack: {maxPerCore: 0, min: 0}
EOF
}

# start NAME CMD...: runs CMD in the background, its PID in pids/NAME.
start() {
  local name=$1; shift
  if [ -f "$DIR/pids/$name" ] && kill -0 "$(cat "$DIR/pids/$name")" 2>/dev/null; then return; fi
  setsid "$@" > "$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/pids/$name"
}

# wait_for WHAT SECONDS CMD...: retries CMD until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  for ((i = 0; i < secs * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$what did not come up in ${secs}s (logs: $DIR/logs)"
}

up() {
  local t0=$SECONDS
  install_packages
  hack/k8s-build.sh cluster
  configure
  # Nothing from a pod is forwarded off this machine: pods reach each
  # other on the bridge and the host's loopback services through it.
  iptables -C FORWARD -s "$POD_CIDR" ! -d "$POD_CIDR" -j DROP 2>/dev/null ||
    iptables -I FORWARD -s "$POD_CIDR" ! -d "$POD_CIDR" -j DROP
  # Mount propagation (Bidirectional and HostToContainer volume mounts)
  # needs shared mounts, as systemd makes them on a real node.
  if [ "$(findmnt -no PROPAGATION /)" != shared ]; then
    findmnt -no PROPAGATION / > "$DIR/root-propagation"   # restored by down
    mount --make-rshared /
  fi
  modprobe br_netfilter 2>/dev/null || true
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/16" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true

  log "starting containerd, etcd, kube-apiserver"
  # Every image comes from `load`: a pull of a missing image goes to a
  # proxy on loopback that does not exist, and fails here, instead of
  # looking up a registry's name and leaving the machine.
  start containerd env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    containerd --config "$DIR/containerd.toml"
  start etcd "$etcd" --name local --data-dir "$DIR/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster local=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
  wait_for etcd 30 curl -sf http://127.0.0.1:2381/health
  start kube-apiserver "$kbin/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port 6443 \
    --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true \
    --client-ca-file "$DIR/pki/ca.crt" --tls-cert-file "$DIR/pki/apiserver.crt" --tls-private-key-file "$DIR/pki/apiserver.key" \
    --kubelet-client-certificate "$DIR/pki/apiserver-kubelet-client.crt" --kubelet-client-key "$DIR/pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-key-file "$DIR/pki/sa.pub" --service-account-signing-key-file "$DIR/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --endpoint-reconciler-type none
  wait_for kube-apiserver 90 kubectl get --raw /readyz
  log "starting kube-controller-manager, kube-scheduler, kube-proxy, kubelet"
  start kube-controller-manager "$kbin/kube-controller-manager" --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$DIR/pki/sa.key" --root-ca-file "$DIR/pki/ca.crt" \
    --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false
  start kube-scheduler "$kbin/kube-scheduler" --kubeconfig "$DIR/scheduler.kubeconfig" --bind-address 127.0.0.1 --leader-elect=false
  # kube-proxy before any pod: without its rules a packet to the API
  # server's service address would leave the machine. The API server
  # listens on loopback only, which a Service may not name: the
  # kubernetes service has no endpoints and kube-proxy rejects its
  # address; pods that call the API server run on the host network with
  # KUBERNETES_SERVICE_HOST=127.0.0.1 (the chart's controller.extraEnv).
  start kube-proxy "$kbin/kube-proxy" --config "$DIR/proxy.yaml"
  wait_for "kube-proxy's rule for the kubernetes service" 60 sh -c "iptables-save | grep -q 'default/kubernetes:https'"
  wait_for containerd 30 ctr --address "$DIR/containerd.sock" version
  load_pause
  start kubelet "$kbin/kubelet" --config "$DIR/kubelet.yaml" --kubeconfig "$DIR/kubelet.kubeconfig" \
    --node-ip "$NODE_IP" --hostname-override "$NODE" --root-dir "$KUBELET_DIR"
  wait_for "node $NODE Ready" 120 sh -c "'$kbin/kubectl' get node '$NODE' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"
  # The e2e suite and our scenarios wait for the default service account.
  wait_for "the default service account" 60 kubectl -n default get serviceaccount default
  log "cluster up in $((SECONDS - t0)) s: export KUBECONFIG=$KUBECONFIG"
}

load_pause() {
  if ! ctr --address "$DIR/containerd.sock" -n k8s.io images ls -q | grep -qx "$PAUSE_IMAGE"; then
    local tar=_output/images/pause.tar
    [ -f "$tar" ] || { mkdir -p _output/bin _output/images; go build -o _output/bin/mkimage ./hack/mkimage
      _output/bin/mkimage -out "$tar" -ref "$PAUSE_IMAGE" -add /pause="$kbin/pause" -entrypoint /pause; }
    load "$tar"
  fi
}

# load TAR...: import image tarballs into the cluster's containerd.
load() {
  local t
  for t in "$@"; do
    ctr --address "$DIR/containerd.sock" -n k8s.io images import --no-unpack=false "$t" >/dev/null
    log "loaded $(basename "$t")"
  done
}

# stop NAME: TERM, then KILL after 20 s, the process `up` started.
stop() {
  local f="$DIR/pids/$1" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { log "$1 ignored SIGTERM; killing it"; kill -KILL "$pid"; sleep 0.2; }
  fi
  rm -f "$f"
}

down() {
  [ -d "$DIR" ] || { log "no cluster at $DIR"; return 0; }
  stop kubelet
  # The pods' containers: their tasks, then the shims of this containerd.
  if [ -S "$DIR/containerd.sock" ]; then
    local c
    for c in $(ctr --address "$DIR/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$DIR/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    done
    sleep 1
    for c in $(ctr --address "$DIR/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$DIR/containerd.sock" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
    done
  fi
  stop kube-proxy
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  stop containerd
  # Shims of this containerd (started by it, with its socket in argv).
  local pid
  for pid in $(pgrep -f "containerd-shim.*$DIR/containerd.sock" || true); do kill -KILL "$pid" 2>/dev/null || true; done
  # Mounts left under the kubelet's (and the kubelet's bind of its own
  # directory), this cluster's and Cistern's state.
  local m
  for m in $(awk -v a="$KUBELET_DIR/" -v b="$DIR/" -v c=/var/lib/cistern/ -v d=/run/netns/cni- \
      'index($2 "/", a) == 1 || index($2, b) == 1 || index($2, c) == 1 || index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
  for m in /run/netns/cni-*; do [ -e "$m" ] && ip netns delete "$(basename "$m")" 2>/dev/null; done
  ip link delete "$BRIDGE" 2>/dev/null || true
  [ -x "$kbin/kube-proxy" ] && "$kbin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  iptables -D FORWARD -s "$POD_CIDR" ! -d "$POD_CIDR" -j DROP 2>/dev/null || true
  if [ -f "$DIR/root-propagation" ]; then
    mount --make-r"$(cat "$DIR/root-propagation")" / && rm -f "$DIR/root-propagation"
  fi
  # The next `up` starts from an empty cluster (built binaries, certificates
  # and imported images are kept).
  rm -rf "$DIR/etcd" "$DIR/containerd/state" "$KUBELET_DIR/pods" "$KUBELET_DIR/plugins" "$KUBELET_DIR/plugins_registry"
  if grep -qE " ($KUBELET_DIR|$DIR/|/var/lib/cistern/)" /proc/mounts; then
    die "mounts remain: $(grep -E " ($KUBELET_DIR|$DIR/|/var/lib/cistern/)" /proc/mounts | awk '{print $2}' | tr '\n' ' ')"
  fi
  log "cluster down; nothing left mounted"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  load) shift; load "$@" ;;
  *) echo "usage: $0 up|down|load TAR..." >&2; exit 2 ;;
esac
