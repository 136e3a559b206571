#!/usr/bin/env bash
# Cistern's own scenarios on a real cluster, with real pods and kubectl
# (run by hack/k8s-e2e.sh after `helm install`): each prints PASS or FAIL
# with what it saw, and the script ends with "scenarios: N passed, M failed".
# Needs KUBECONFIG, KUBECTL, and the datasets under $DATA (made here).
set -uo pipefail
KUBECTL=${KUBECTL:-kubectl}
DATA=${DATA:-/var/lib/cistern-e2e/datasets}
NS=${CISTERN_NAMESPACE:-kube-system}
IMG=registry.k8s.io/e2e-test-images/busybox:1.37.0-2
k() { "$KUBECTL" "$@"; }
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "PASS $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1: $2"; }
node=$(k get nodes -o jsonpath='{.items[0].metadata.name}')

# pod NS NAME CLAIM|- CMD [extra spec yaml]: a busybox pod with the claim
# (or the extra volumes yaml) at /data.
pod() {
  local ns=$1 name=$2 claim=$3 cmd=$4 extra=${5:-}
  {
    cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: $ns}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
EOF
    [ -n "$extra" ] && echo "$extra"
    cat <<EOF
  containers:
    - name: c
      image: $IMG
      imagePullPolicy: IfNotPresent
      command: [sh, -c, "$cmd"]
      volumeMounts: [{name: data, mountPath: /data}]
EOF
    if [ "$claim" != - ]; then
      echo "  volumes: [{name: data, persistentVolumeClaim: {claimName: $claim}}]"
    fi
  } | k apply -f - >/dev/null
}

# claim NS NAME CLASS MODE
claim() {
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $2, namespace: $1}
spec:
  accessModes: [$4]
  storageClassName: $3
  resources: {requests: {storage: 1Gi}}
EOF
}

# class NAME DATASET ACCESS SUBPATH [extra parameter lines]
class() {
  k apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $1}
provisioner: cistern.csi.dev
volumeBindingMode: WaitForFirstConsumer
parameters:
  dataset: $2
  source: file://$DATA/$2
  access: $3
  subPath: "$4"
${5:-}
EOF
}

# done_pod NS NAME: waits for the pod to finish; prints its log.
done_pod() {
  k -n "$1" wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$2" --timeout=120s >/dev/null 2>&1 ||
    k -n "$1" wait --for=jsonpath='{.status.phase}'=Failed "pod/$2" --timeout=5s >/dev/null 2>&1
  k -n "$1" logs "$2" 2>&1
}
# why NS POD...: a line for each pod that did not end as it should: its
# phase, its container's state and the last events naming it.
why() {
  local ns=$1 p; shift
  for p in "$@"; do
    echo "  pod $ns/$p: $(k -n "$ns" get pod "$p" -o jsonpath='{.spec.nodeName} {.status.phase} {.status.containerStatuses[0].state}' 2>&1);" \
      "events: $(k -n "$ns" get events --field-selector "involvedObject.name=$p" -o jsonpath='{range .items[*]}{.reason}: {.message}; {end}' 2>&1 | tail -c 800)"
  done
}
# claim_events NS: the last events of the namespace's claims.
claim_events() {
  echo "  claims of $1: $(k -n "$1" get events --field-selector involvedObject.kind=PersistentVolumeClaim --sort-by=.lastTimestamp \
    -o jsonpath='{range .items[*]}{.involvedObject.name} {.reason}: {.message}; {end}' 2>&1 | tail -c 1200)"
}
# daemon_log POD CONTAINER: the last warnings and errors of a Cistern pod.
daemon_log() {
  k -n "$NS" logs "$1" -c "$2" --tail=2000 2>&1 | grep -E '^[EW][0-9]{4} ' | tail -n 15 | sed "s/^/  $2: /"
}
running() { k -n "$1" wait --for=condition=Ready "pod/$2" --timeout="${3:-120}s" >/dev/null 2>&1; }

for ns in team-a team-b; do k create namespace "$ns" >/dev/null 2>&1 || true; done

echo "== the research dataset in two namespaces"
mkdir -p "$DATA/research/team-a" "$DATA/research/team-b"
echo "a-prices" > "$DATA/research/team-a/prices.csv"
echo "b-signals" > "$DATA/research/team-b/signals.csv"
class research research read-only '${pvc.namespace}'
for ns in team-a team-b; do
  claim "$ns" research research ReadOnlyMany
  pod "$ns" reader research 'ls /data; cat /data/*.csv; cat /data/../team-b/signals.csv /data/../team-a/prices.csv 2>/dev/null; touch /data/x 2>&1 | grep -q Read-only && echo EROFS'
done
out_a=$(done_pod team-a reader) out_b=$(done_pod team-b reader)
if [ "$out_a" = "$(printf 'prices.csv\na-prices\nEROFS')" ] && [ "$out_b" = "$(printf 'signals.csv\nb-signals\nEROFS')" ]; then
  ok "each namespace sees only its tree, read-only"
else
  bad "each namespace sees only its tree" "team-a saw [$out_a], team-b saw [$out_b]"
fi

echo "== a read-write features claim shared by two pods"
mkdir -p "$DATA/features"
class features features read-write '${pvc.namespace}/${pvc.name}' "  onDelete: delete"
claim team-a features features ReadWriteMany
pod team-a writer features 'echo f1 > /data/features.parquet && sleep 300'
pod team-a reader2 features 'for i in $(seq 60); do [ -f /data/features.parquet ] && cat /data/features.parquet && exit 0; sleep 1; done; echo none'
out=$(done_pod team-a reader2)
[ "$out" = f1 ] && ok "a second pod reads what the first wrote" || bad "shared read-write claim" "reader saw [$out]"

echo "== a non-root pod with an fsGroup writes a file"
pod team-a nonroot features 'id; echo x > /data/by-1000 && stat -c %u:%g /data/by-1000' \
  "  securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000}"
out=$(done_pod team-a nonroot)
case $out in *"1000:2000"*) ok "non-root writer with fsGroup (file owned 1000:2000)" ;;
  *) bad "non-root writer with fsGroup" "saw [$out]" ;; esac

echo "== an inline volume of a shared public dataset"
mkdir -p "$DATA/public/market-reference"
echo "ref" > "$DATA/public/market-reference/calendar.csv"
pod team-b inline - 'cat /data/calendar.csv; touch /data/y 2>&1 | grep -q Read-only && echo EROFS' "  volumes:
    - name: data
      csi:
        driver: cistern.csi.dev
        readOnly: true
        volumeAttributes: {dataset: market-reference, source: file://$DATA/public/market-reference, shared: \"true\"}"
out=$(done_pod team-b inline)
[ "$out" = "$(printf 'ref\nEROFS')" ] && ok "inline shared dataset, read-only" || bad "inline shared dataset" "saw [$out]"

echo "== cistern stats through kubectl exec"
nodepod=$(k -n "$NS" get pods -l app.kubernetes.io/component=node -o jsonpath='{.items[0].metadata.name}')
out=$(k -n "$NS" exec "$nodepod" -c cistern-cache -- cistern stats --socket /var/lib/cistern/cache.sock 2>&1)
case $out in *research*features*|*features*research*) ok "cistern stats lists the mounted datasets" ;;
  *) bad "cistern stats" "saw [$(echo "$out" | head -5)]" ;; esac

echo "== the node plugin restarts while pods read"
pod team-a steady research 'n=0; e=0; while [ $n -lt 200 ]; do cat /data/prices.csv >/dev/null 2>&1 || e=$((e+1)); n=$((n+1)); sleep 0.1; done; echo errors=$e'
running team-a steady
k -n "$NS" exec "$nodepod" -c cistern-csi -- kill 1 >/dev/null 2>&1
out=$(done_pod team-a steady)
restarts=$(k -n "$NS" get pod "$nodepod" -o jsonpath='{.status.containerStatuses[?(@.name=="cistern-csi")].restartCount}')
[ "$out" = errors=0 ] && [ "${restarts:-0}" -ge 1 ] && ok "reads go on while cistern-csi restarts ($restarts restart)" ||
  bad "reads during a node plugin restart" "reader saw [$out], cistern-csi restarts ${restarts:-?}"

echo "== the cache daemon restarts while pods read"
pod team-a steady2 research 'n=0; e=0; while [ $n -lt 200 ]; do cat /data/prices.csv >/dev/null 2>&1 || e=$((e+1)); ls /data >/dev/null 2>&1 || e=$((e+1)); n=$((n+1)); sleep 0.1; done; echo errors=$e'
running team-a steady2
k -n "$NS" exec "$nodepod" -c cistern-cache -- kill 1 >/dev/null 2>&1
out=$(done_pod team-a steady2)
restarts=$(k -n "$NS" get pod "$nodepod" -o jsonpath='{.status.containerStatuses[?(@.name=="cistern-cache")].restartCount}')
[ "$out" = errors=0 ] && [ "${restarts:-0}" -ge 1 ] && ok "reads go on while cistern-cache restarts ($restarts restart)" ||
  bad "reads during a cache daemon restart" "reader saw [$out], cistern-cache restarts ${restarts:-?}"

echo "== the node pod is deleted while pods read"
pod team-a steady3 research 'n=0; e=0; while [ $n -lt 300 ]; do cat /data/prices.csv >/dev/null 2>&1 || e=$((e+1)); ls /data >/dev/null 2>&1 || e=$((e+1)); n=$((n+1)); sleep 0.1; done; echo errors=$e'
running team-a steady3
k -n "$NS" delete pod "$nodepod" --wait=true >/dev/null 2>&1
k -n "$NS" rollout status daemonset/cistern-node --timeout=120s >/dev/null 2>&1
out=$(done_pod team-a steady3)
newpod=$(k -n "$NS" get pods -l app.kubernetes.io/component=node -o jsonpath='{.items[0].metadata.name}')
[ "$out" = errors=0 ] && [ -n "$newpod" ] && [ "$newpod" != "$nodepod" ] && ok "reads go on while the node pod is replaced (the keeper held the connections)" ||
  bad "reads during a node pod replacement" "reader saw [$out], node pod $nodepod -> ${newpod:-none}"
nodepod=$newpod

echo "== a class whose cache group the node does not serve"
class pooled research read-only '${pvc.namespace}' "  cacheGroup: research-groups"
claim team-a pooled pooled ReadOnlyMany
pod team-a pooled pooled 'cat /data/prices.csv'
sleep 15
phase=$(k -n team-a get pod pooled -o jsonpath='{.status.phase}')
events=$(k -n team-a get events -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' | grep -c research-groups)
if [ "$phase" = Pending ] && [ "$events" -ge 1 ]; then ok "pending with an event naming the group"; else
  bad "pending outside the group" "phase $phase, $events events name research-groups"; fi
k label node "$node" cistern.csi.dev/cache-group=research-groups --overwrite >/dev/null
out=$(k -n team-a wait --for=jsonpath='{.status.phase}'=Succeeded pod/pooled --timeout=180s >/dev/null 2>&1 && k -n team-a logs pooled)
[ "$out" = a-prices ] && ok "labelling the node lets it run" || bad "labelled node" "pod $(k -n team-a get pod pooled -o jsonpath='{.status.phase}'), log [$out]"
k -n team-a delete pod pooled --wait=true >/dev/null 2>&1
k -n team-a delete pvc pooled --wait=true >/dev/null 2>&1
k label node "$node" cistern.csi.dev/cache-group- >/dev/null
k -n "$NS" rollout status daemonset/cistern-node --timeout=120s >/dev/null 2>&1

echo "== a shared cache group: the node's daemon and a cache-only member"
# A file written to an S3 dataset through a read-write volume, then read
# through a read-only class whose cacheGroup is the shared group: the
# node's daemon takes the blocks the cache-only member owns from it (which
# fetched them from the store), and the bytes are the file's.
s3class() { # s3class NAME ACCESS [extra parameter lines]
  k apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $1}
provisioner: cistern.csi.dev
volumeBindingMode: WaitForFirstConsumer
parameters:
  dataset: shared-s3
  source: s3://cistern-e2e/group
  endpoint: http://127.0.0.1:7480
  addressing: path
  access: $2
  fileMode: "0666"
  dirMode: "0777"
  csi.storage.k8s.io/provisioner-secret-name: cistern-e2e-s3
  csi.storage.k8s.io/provisioner-secret-namespace: kube-system
  csi.storage.k8s.io/node-stage-secret-name: cistern-e2e-s3
  csi.storage.k8s.io/node-stage-secret-namespace: kube-system
${3:-}
EOF
}
k create namespace team-g >/dev/null 2>&1
s3class group-rw read-write
s3class group-ro read-only '  shared: "true"
  cacheGroup: shared-pool'
claim team-g w group-rw ReadWriteMany
pod team-g writer w 'dd if=/dev/urandom of=/data/big.bin bs=1M count=24 2>/dev/null && md5sum /data/big.bin | cut -c1-32'
sum_w=$(done_pod team-g writer)
[ -n "$sum_w" ] || wdiag=$(why team-g writer; claim_events team-g
  for p in $(k -n "$NS" get pods -l app.kubernetes.io/component=node -o jsonpath='{.items[*].metadata.name}'); do
    daemon_log "$p" cistern-cache; daemon_log "$p" cistern-csi
  done)
k -n team-g delete pod writer --wait=true >/dev/null 2>&1 # unpublished by the node plugin that published it
k label node "$node" cistern.csi.dev/cache-group=shared-pool --overwrite >/dev/null
k -n "$NS" rollout status daemonset/cistern-node-shared-pool --timeout=120s >/dev/null 2>&1
claim team-g r group-ro ReadOnlyMany
pod team-g reader r 'md5sum /data/team-g/w/big.bin | cut -c1-32'
sum_r=$(done_pod team-g reader)
gpod=$(k -n "$NS" get pods -l app.kubernetes.io/component=node,cistern.csi.dev/pool=shared-pool -o jsonpath='{.items[0].metadata.name}')
cpod=$(k -n "$NS" get pods -l app.kubernetes.io/component=group-cache -o jsonpath='{.items[0].metadata.name}')
gstats=$(k -n "$NS" exec "$gpod" -c cistern-cache -- cistern stats 2>&1 | grep '^cache group shared-pool')
cstats=$(k -n "$NS" exec "$cpod" -- cistern stats 2>&1 | grep '^cache group shared-pool')
from=$(echo "$gstats" | sed -n 's/.*from peers \([^,]*\),.*/\1/p')
sent=$(echo "$cstats" | sed -n 's/.* in \([0-9]*\) blocks.*/\1/p')
if [ -n "$sum_w" ] && [ "$sum_w" = "$sum_r" ] && [ -n "$from" ] && [ "$from" != "0 B" ] && [ "${sent:-0}" -gt 0 ]; then
  ok "the node's first read of a file took the cache-only member's blocks from it ($from from peers; the member sent $sent blocks)"
else
  bad "shared cache group" "written [$sum_w], read [$sum_r]; node member: [$gstats]; cache-only member: [$cstats]"
  [ -n "${wdiag:-}" ] && echo "$wdiag"
  why team-g reader
  claim_events team-g
  for p in $(k -n "$NS" get pods -l app.kubernetes.io/component=node -o jsonpath='{.items[*].metadata.name}'); do
    daemon_log "$p" cistern-cache; daemon_log "$p" cistern-csi
  done
  [ -n "$cpod" ] && daemon_log "$cpod" cistern-cache
fi
k -n team-g delete pod reader --wait=true >/dev/null 2>&1
k -n team-g delete pvc w r --wait=true >/dev/null 2>&1
k label node "$node" cistern.csi.dev/cache-group- >/dev/null
k -n "$NS" rollout status daemonset/cistern-node --timeout=120s >/dev/null 2>&1
k delete namespace team-g --wait=true >/dev/null 2>&1
k delete storageclass group-rw group-ro >/dev/null 2>&1

echo "== the delete guard after the controller's pod moves"
# A read-write volume that deletes its directory, a read-only volume of the
# same dataset inside it, and a static PV inside it; the controller's pod
# is replaced (its state directory is gone): deleting the outer claim must
# keep the tree, and the read-only volume's record (a ConfigMap) must still
# let it expand.
mkdir -p "$DATA/nest"
class nest-rw nest read-write '${pvc.namespace}/${pvc.name}' "  onDelete: delete"
k apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: nest-ro}
provisioner: cistern.csi.dev
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
parameters: {dataset: nest, source: "file://$DATA/nest", access: read-only, subPath: "\${pvc.namespace}/outer/inner"}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: cistern-e2e-nest-static}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  csi:
    driver: cistern.csi.dev
    volumeHandle: nest-static
    volumeAttributes: {dataset: nest, source: "file://$DATA/nest", access: read-only, subPath: team-b/outer/static}
EOF
claim team-b outer nest-rw ReadWriteMany
pod team-b outer outer 'mkdir -p /data/inner /data/static && echo kept > /data/inner/f && echo kept > /data/static/f && echo written'
out_w=$(done_pod team-b outer)
claim team-b inner nest-ro ReadOnlyMany
pod team-b inner inner 'cat /data/f; sleep 600'
running team-b inner
old=$(k -n "$NS" get pods -l app.kubernetes.io/component=controller -o jsonpath='{.items[0].metadata.name}')
k -n "$NS" delete pod "$old" --wait=true >/dev/null 2>&1
k -n "$NS" rollout status deployment/cistern-controller --timeout=120s >/dev/null 2>&1
new=$(k -n "$NS" get pods -l app.kubernetes.io/component=controller --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}')
records=$(k -n "$NS" get configmaps -l cistern.csi.dev/source -o name | wc -l)
k -n team-b patch pvc inner -p '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}' >/dev/null
k -n team-b wait --for=jsonpath='{.status.capacity.storage}'=2Gi pvc/inner --timeout=90s >/dev/null 2>&1
size=$(k -n team-b get pvc inner -o jsonpath='{.status.capacity.storage}')
pv=$(k -n team-b get pvc outer -o jsonpath='{.spec.volumeName}')
k -n team-b delete pod outer --wait=true >/dev/null 2>&1
k -n team-b delete pvc outer --wait=true >/dev/null 2>&1
k wait --for=delete "pv/$pv" --timeout=90s >/dev/null 2>&1
if [ "$out_w" = written ] && [ -n "$new" ] && [ "$new" != "$old" ] && [ "$records" -ge 1 ] && [ "$size" = 2Gi ] &&
  [ -f "$DATA/nest/team-b/outer/inner/f" ] && [ -f "$DATA/nest/team-b/outer/static/f" ] && ! k get pv "$pv" >/dev/null 2>&1; then
  ok "a new controller pod kept the tree of a read-only volume and a static PV, and expanded the read-only claim"
else
  bad "the delete guard after a controller move" "writer [$out_w], controller $old -> $new, $records record ConfigMaps, read-only claim ${size:-?}, PV ${pv:-none}, tree after delete: $(ls -R "$DATA/nest/team-b" 2>&1 | tr '\n' ' ')"
fi
inner_pv=$(k -n team-b get pvc inner -o jsonpath='{.spec.volumeName}')
records_of() { k -n "$NS" get configmaps -l cistern.csi.dev/source -o jsonpath='{range .items[*]}{.data.record}{"\n"}{end}' | grep -c "\"name\":\"$1\""; }
before=$(records_of "$inner_pv")
k -n team-b delete pod inner --wait=true >/dev/null 2>&1
k -n team-b delete pvc inner --wait=true >/dev/null 2>&1
k wait --for=delete "pv/$inner_pv" --timeout=90s >/dev/null 2>&1
k delete pv cistern-e2e-nest-static >/dev/null 2>&1
after=$(records_of "$inner_pv")
[ -n "$inner_pv" ] && [ "$before" = 1 ] && [ "$after" = 0 ] && ok "the read-only claim's record is a ConfigMap until the claim is deleted" ||
  bad "read-only record" "PV ${inner_pv:-none}: $before record(s) before the delete, $after after"

echo "== claim deletion honours onDelete"
dir=$(ls -d "$DATA"/features/team-a/features 2>/dev/null)
k -n team-a delete pod writer reader2 nonroot steady steady2 steady3 --wait=true >/dev/null 2>&1
k -n team-a delete pvc features --wait=true >/dev/null 2>&1
for _ in $(seq 30); do [ -d "$DATA/features/team-a/features" ] || break; sleep 1; done
if [ -n "$dir" ] && [ ! -d "$DATA/features/team-a/features" ] && [ -d "$DATA/research/team-a" ]; then
  ok "onDelete=delete removed the claim's directory; the read-only dataset kept its data"
else bad "onDelete" "directory ${dir:-never made}; after delete: $(ls "$DATA/features/team-a" 2>&1)"; fi

k delete namespace team-a team-b --wait=true >/dev/null 2>&1
k delete storageclass research features pooled nest-rw nest-ro >/dev/null 2>&1
echo "scenarios: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
