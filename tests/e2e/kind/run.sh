#!/usr/bin/env bash
# sidemount's end-to-end suite on a real Kubernetes cluster (kind), for machines with
# Docker and network (GitHub Actions: .github/workflows/e2e-kind.yml).
#
# It creates a kind cluster (tests/e2e/kind/kind-config.yaml), builds both images
# with images/Dockerfile and loads them into the nodes under the names that
# kustomize/webhook uses, deploys the webhook with `kubectl apply -k kustomize/webhook`
# (installing cert-manager first if that kustomization ever needs it), starts an S3
# server (MinIO) in the cluster, and runs each case on its own:
#
#   s3_read_write             an injected pod reads and writes the bucket through s3fs
#   app_starts_after_mount    the app's first look at /data already sees the mount
#   repair_while_app_runs     kill -9 of the FUSE daemon is repaired; the app, still
#                             running, uses /data again
#   delete_leaves_no_mount    deleting the pod is quick and leaves no mount on the node
#   legacy_mode               the same through rclone with sidemount.io/mode: legacy
#   job_completes             a Job's pod completes; the sidecar does not keep it alive
#   kustomize_component       a Deployment built with kustomize/components/sidecar
#                             (sidemount inject as a kustomize plugin), no webhook
#   kustomize_plain_component `kubectl apply -k` with kustomize/components/sidecar-plain
#                             (built-in transformers only); the app runs as 1000
#   invalid_annotation_refused  `kubectl apply` of a bad annotation fails, naming the field
#
# The same manifests run without a cluster on the pod runner (tests/podrunner),
# which emulates the kubelet on the local Docker engine.
#
# Usage: tests/e2e/kind/run.sh [CASE...]
# Needs: docker (with BuildKit), kind, kubectl, jq, curl. Settings (environment):
#   KIND_NODE_IMAGE     node image (Kubernetes version)   [kind's default]
#   CLUSTER_NAME        [sidemount-e2e]
#   KEEP_CLUSTER=1      leave the cluster up at the end (to look, or `kind export logs`)
#   REUSE_CLUSTER=1     use an existing cluster of that name
#   BUILD=0             do not build: use the images sidemount:e2e, sidemount-webhook:e2e
#   MINIO_IMAGE         [quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z] (Docker Hub's
#                       minio/minio refuses anonymous pulls; the same tags are on quay.io)
#   CERT_MANAGER_VERSION [v1.17.2]
# Ends with `kind e2e: N passed, M failed`; exits non-zero when a case failed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
# shellcheck source=tests/lib.sh
. "$repo/tests/lib.sh"
manifests=$here/manifests
CLUSTER_NAME=${CLUSTER_NAME:-sidemount-e2e}
MINIO_IMAGE=${MINIO_IMAGE:-quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.17.2}
SIDECAR=sidemount:e2e          # what the test pods' own containers run (tools: sh, rclone)
WEBHOOK=sidemount-webhook:e2e
NS=sidemount-e2e
kctx=kind-$CLUSTER_NAME

say() { echo "kind e2e: $*" >&2; }
for tool in docker kind kubectl jq curl; do
  command -v "$tool" >/dev/null 2>&1 || { say "needs $tool"; exit 1; }
done
k() { kubectl --context "$kctx" "$@"; }

work=$(mktemp -d)
cleanup() {
  set +e
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    say "cluster $CLUSTER_NAME kept (kind delete cluster --name $CLUSTER_NAME)"
  else
    kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------- cluster
if [ "${REUSE_CLUSTER:-0}" = 1 ] && grep -qx "$CLUSTER_NAME" <<<"$(kind get clusters 2>/dev/null)"; then
  say "using the existing cluster $CLUSTER_NAME"
else
  [ -e /dev/fuse ] || { say "no /dev/fuse on this machine (modprobe fuse)"; exit 1; }
  say "creating the cluster $CLUSTER_NAME ${KIND_NODE_IMAGE:+($KIND_NODE_IMAGE)}"
  kind create cluster --name "$CLUSTER_NAME" --config "$here/kind-config.yaml" --wait 180s \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi
k version -o json | jq -r '"server " + .serverVersion.gitVersion' >&2

# ---------------------------------------------------------------- the webhook
rendered=$work/webhook.yaml
kubectl kustomize "$repo/kustomize/webhook" >"$rendered"
if grep -q 'cert-manager.io' "$rendered"; then
  say "installing cert-manager $CERT_MANAGER_VERSION (kustomize/webhook uses it)"
  k apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml" >/dev/null
  k -n cert-manager wait deploy --all --for=condition=Available --timeout=300s >/dev/null
fi
# The objects as JSON (a client-side dry run: no change to the cluster).
k apply --dry-run=client -o json -f "$rendered" >"$work/webhook.json"
objects() { jq -c 'if .kind == "List" then .items[] else . end' "$work/webhook.json"; }

# The webhook's kustomization names the images it runs and injects: the builds are
# tagged with those names too, so `kubectl apply -k kustomize/webhook` runs as it is.
version=$(sed -n '/^version = "/{s/^version = "\(.*\)"/\1/p;q}' "$repo/sidecar/Cargo.toml")
injected=$(objects | jq -r 'select(.kind == "Deployment") | .spec.template.spec.containers[].env[]?
  | select(.name == "SIDEMOUNT_IMAGE") | .value' | head -n 1)
injected=${injected:-ghcr.io/sidemount/sidemount:$version}
mapfile -t webhook_images < <(objects | jq -r 'select(.kind == "Deployment") | .spec.template.spec.containers[].image' | sort -u)
[ ${#webhook_images[@]} -gt 0 ] || { say "kustomize/webhook has no Deployment"; exit 1; }

if [ "${BUILD:-1}" != 0 ]; then
  say "building the images (images/Dockerfile)"
  DOCKER_BUILDKIT=1 docker build -f "$repo/images/Dockerfile" --target sidecar -t "$SIDECAR" "$repo"
  DOCKER_BUILDKIT=1 docker build -f "$repo/images/Dockerfile" --target webhook -t "$WEBHOOK" "$repo"
fi
docker tag "$SIDECAR" "$injected"
load=("$SIDECAR" "$injected")
for image in "${webhook_images[@]}"; do
  if [ "$image" != "$injected" ]; then
    docker tag "$WEBHOOK" "$image"
    load+=("$image")
  fi
done
say "loading ${load[*]} into the nodes"
kind load docker-image --name "$CLUSTER_NAME" "${load[@]}"

say "kubectl apply -k kustomize/webhook"
# cert-manager's own webhook may need a moment after its rollout: retry the apply.
for attempt in 1 2 3 4 5 6; do
  if k apply -k "$repo/kustomize/webhook" >"$work/apply.log" 2>&1; then break; fi
  [ "$attempt" -lt 6 ] || { cat "$work/apply.log" >&2; exit 1; }
  sleep 10
done
objects | jq -r 'select(.kind == "Deployment") | "\(.metadata.namespace // "default") \(.metadata.name)"' |
  while read -r ns name; do
    k -n "$ns" rollout status "deploy/$name" --timeout=300s >&2
  done
# The API server can call the webhook once its configuration has a CA bundle.
for config in $(objects | jq -r 'select(.kind == "MutatingWebhookConfiguration") | .metadata.name'); do
  wait_bundle() { [ -n "$(k get mutatingwebhookconfiguration "$1" -o jsonpath='{.webhooks[*].clientConfig.caBundle}')" ]; }
  for _ in $(seq 120); do wait_bundle "$config" && break; sleep 1; done
  wait_bundle "$config" || { say "$config has no caBundle after 120s"; exit 1; }
done

# ---------------------------------------------------------------- the S3 server
# minio_manifest IMAGE: manifests/s3.yaml with MinIO's image set to IMAGE, whatever
# registry its own line names; fails unless exactly one image line was set, so an
# override is never silently ignored. (No sed: IMAGE is not a pattern.)
minio_manifest() {
  local line replaced=0 out=
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ $line =~ ^([[:space:]]*image:[[:space:]]*)[^[:space:]]*minio/minio:[^[:space:]]*$ ]]; then
      line=${BASH_REMATCH[1]}$1
      replaced=$((replaced + 1))
    fi
    out+=$line$'\n'
  done <"$manifests/s3.yaml"
  [ "$replaced" = 1 ] || { say "manifests/s3.yaml: $replaced MinIO image lines, expected 1"; return 1; }
  printf '%s' "$out"
}
say "starting MinIO ($MINIO_IMAGE)"
minio_manifest "$MINIO_IMAGE" >"$work/s3.yaml"
k apply -f "$work/s3.yaml" >/dev/null
k -n "$NS" rollout status deploy/minio --timeout=300s >&2

# s3 ARGS...: rclone against the bucket from a one-off pod (the sidecar image has rclone).
s3() {
  k -n "$NS" run "s3-$RANDOM$RANDOM" --rm -i --quiet --restart=Never --image="$SIDECAR" \
    --image-pull-policy=IfNotPresent \
    --env=RCLONE_S3_PROVIDER=Minio --env=RCLONE_S3_ENDPOINT=http://minio:9000 \
    --env=RCLONE_S3_ACCESS_KEY_ID=e2e-access-key --env=RCLONE_S3_SECRET_ACCESS_KEY=e2e-secret-key-0123456789 \
    --command -- rclone "$@"
}
s3 mkdir :s3:e2e-bucket

# ---------------------------------------------------------------- helpers
# fail, note and wait_for (every second) come from tests/lib.sh.
in_pod() { k -n "$NS" exec "$1" -c "$2" -- sh -c "$3"; }
bucket_has() { [ "$(s3 cat ":s3:e2e-bucket/$1" 2>/dev/null)" = "$2" ]; }
# bucket_holds KEY CONTENT: the object is there now. A few tries, not a wait: the
# output of `kubectl run --rm -i` is sometimes lost, an object is never late here.
bucket_holds() {
  local try
  for try in 1 2 3 4; do
    bucket_has "$1" "$2" && return 0
    [ "$try" = 4 ] || sleep 2
  done
  return 1
}
# pod_dir_gone NODE UID: the kubelet removed the pod's directory (its housekeeping
# does, some seconds after the API object is gone).
pod_dir_gone() { docker exec "$1" test ! -e "/var/lib/kubelet/pods/$2"; }
repaired() { status "$1" | jq -e '.volumes[0] | .state == "ready" and .repairs >= 1' >/dev/null; }
app_reads() { [ "$(in_pod "$1" app "cat $2" 2>/dev/null)" = "$3" ]; }
# status POD: the supervisor's /status, read over its loopback listener with bash.
status() {
  k -n "$NS" exec "$1" -c sidemount -- bash -c 'exec 3<>/dev/tcp/127.0.0.1/9810
    printf "GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n" >&3
    sed "1,/^\r*$/d" <&3' | tr -d '\r'
}
node_of() { k -n "$NS" get pod "$1" -o jsonpath='{.spec.nodeName}'; }
uid_of() { k -n "$NS" get pod "$1" -o jsonpath='{.metadata.uid}'; }
# node_mounts NODE UID: the mounts under the pod's directory on the node.
node_mounts() { docker exec "$1" sh -c "grep -F '/var/lib/kubelet/pods/$2/' /proc/self/mountinfo || true"; }
diagnose() {
  k -n "$NS" get pods -o wide >&2 || true
  k -n "$NS" describe pod "$1" 2>&1 | tail -n 30 >&2 || true
  k -n "$NS" logs "$1" -c sidemount --tail=30 >&2 || true
}

start_s3_app() {
  if ! k -n "$NS" get pod s3-app >/dev/null 2>&1; then
    k apply -f "$manifests/pod-s3fs.yaml" >&2
  fi
  k -n "$NS" wait pod/s3-app --for=condition=Ready --timeout=180s >&2 || { diagnose s3-app; fail "s3-app not Ready"; }
}

# ---------------------------------------------------------------- cases
case_s3_read_write() {
  start_s3_app
  [ "$(k -n "$NS" get pod s3-app -o jsonpath='{.metadata.annotations.sidemount\.io/injected}')" != "" ] \
    || fail "the pod was not injected"
  in_pod s3-app app 'echo "written by the app" > /data/from-app.txt'
  bucket_holds from-app.txt "written by the app" || fail "the bucket does not hold the app's bytes"
  echo "put in the bucket" | s3 rcat :s3:e2e-bucket/from-bucket.txt
  wait_for 30 app_reads s3-app /data/from-bucket.txt "put in the bucket" || fail "the app does not read an object put in the bucket"
}

case_app_starts_after_mount() {
  start_s3_app
  [ "$(in_pod s3-app app 'cat /tmp/fstype-at-start')" = fuse.s3fs ] \
    || fail "when the app started, /data was '$(in_pod s3-app app 'cat /tmp/fstype-at-start')', not the s3fs mount"
  [ "$(k -n "$NS" get pod s3-app -o jsonpath='{.spec.initContainers[0].name} {.spec.initContainers[0].restartPolicy}')" = "sidemount Always" ] \
    || fail "the sidecar is not the first init container with restartPolicy: Always"
  [ "$(k -n "$NS" get pod s3-app -o jsonpath='{.status.containerStatuses[0].restartCount}')" = 0 ] \
    || fail "the app restarted"
}

case_repair_while_app_runs() {
  local before after
  start_s3_app
  before=$(status s3-app | jq -r '.volumes[0].pid')
  [[ $before =~ ^[0-9]+$ ]] || fail "no daemon pid in /status: $(status s3-app)"
  in_pod s3-app sidemount "kill -9 $before"
  note "killed s3fs (pid $before)"
  wait_for 60 repaired s3-app || fail "not repaired in 60s: $(status s3-app)"
  after=$(status s3-app | jq -r '.volumes[0].pid')
  [ "$after" != "$before" ] || fail "the same daemon after the repair"
  wait_for 30 in_pod s3-app app 'echo "after the repair" > /data/after-repair.txt' \
    || fail "the app cannot write /data after the repair: $(in_pod s3-app app 'ls /data 2>&1; cat /proc/mounts | grep /data' 2>&1)"
  bucket_holds after-repair.txt "after the repair" || fail "the bucket does not hold the write made after the repair"
  [ "$(k -n "$NS" get pod s3-app -o jsonpath='{.status.containerStatuses[0].restartCount}')" = 0 ] \
    || fail "the app was restarted: the repair must reach the running app"
}

case_delete_leaves_no_mount() {
  local node uid took
  start_s3_app
  node=$(node_of s3-app)
  uid=$(uid_of s3-app)
  [ -n "$(node_mounts "$node" "$uid")" ] || fail "no mount under the pod's directory on $node before the deletion"
  took=$SECONDS
  timeout 90 kubectl --context "$kctx" -n "$NS" delete pod s3-app --wait=true >&2 || fail "the pod is still Terminating after 90s"
  took=$((SECONDS - took))
  [ "$took" -lt 45 ] || fail "deleting the pod took ${took}s"
  [ -z "$(node_mounts "$node" "$uid")" ] || fail "mounts left on $node: $(node_mounts "$node" "$uid")"
  wait_for 60 pod_dir_gone "$node" "$uid" || fail "the kubelet did not remove the pod's directory in 60s"
  note "deleted in ${took}s, nothing left on $node"
}

case_legacy_mode() {
  local node uid
  k apply -f "$manifests/pod-legacy.yaml" >&2
  k -n "$NS" wait pod/legacy-app --for=condition=Ready --timeout=180s >&2 || { diagnose legacy-app; fail "legacy-app not Ready"; }
  [ "$(k -n "$NS" get pod legacy-app -o jsonpath='{.spec.containers[0].name}')" = sidemount ] \
    || fail "legacy mode: the sidecar is not the first container"
  wait_for 60 in_pod legacy-app app 'grep -q " /data fuse" /proc/mounts' || fail "the app never saw the mount"
  in_pod legacy-app app 'echo "legacy" > /data/legacy.txt'
  wait_for 60 bucket_has legacy/legacy.txt legacy \
    || fail "the bucket does not hold legacy/legacy.txt"
  node=$(node_of legacy-app)
  uid=$(uid_of legacy-app)
  timeout 90 kubectl --context "$kctx" -n "$NS" delete pod legacy-app --wait=true >&2 || fail "legacy-app is still Terminating after 90s"
  [ -z "$(node_mounts "$node" "$uid")" ] || fail "mounts left on $node: $(node_mounts "$node" "$uid")"
}

case_job_completes() {
  k apply -f "$manifests/job.yaml" >&2
  k -n "$NS" wait job/writer --for=condition=complete --timeout=240s >&2 \
    || { diagnose "$(k -n "$NS" get pods -l job-name=writer -o name | head -n 1 | cut -d/ -f2)"; fail "the Job did not complete"; }
  # Written through rclone's write cache and closed as the Job's container exited: the
  # sidecar waits for rclone's upload queue before it exits, and the pod (so the Job)
  # completes only after the sidecar has. No waiting here: the object is there now.
  bucket_holds job/result.txt "written by the job" || fail "the bucket does not hold the Job's result"
  k -n "$NS" delete job writer --wait=true >&2
}

case_kustomize_component() {
  local pod
  # The component runs `sidemount inject` as a kustomize exec plugin, which
  # `kubectl apply -k` cannot run: build with the plugins enabled, then apply. The
  # binary comes out of the sidecar image.
  if [ ! -x "$work/bin/sidemount" ]; then
    mkdir -p "$work/bin"
    docker run --rm --entrypoint cat "$SIDECAR" /usr/local/bin/sidemount >"$work/bin/sidemount"
    chmod +x "$work/bin/sidemount"
  fi
  PATH=$work/bin:$PATH KUSTOMIZE_PLUGIN_HOME=$repo/kustomize/plugin TMPDIR=$work \
    kubectl kustomize --enable-alpha-plugins "$manifests/component" >"$work/component.yaml"
  grep -q 'mountPropagation: Bidirectional' "$work/component.yaml" || fail "the component did not add the sidecar"
  k apply -f "$work/component.yaml" >&2
  k -n "$NS" rollout status deploy/component-app --timeout=180s >&2 \
    || { diagnose "$(k -n "$NS" get pods -l app=component-app -o name | head -n 1 | cut -d/ -f2)"; fail "component-app not available"; }
  pod=$(k -n "$NS" get pods -l app=component-app -o jsonpath='{.items[0].metadata.name}')
  in_pod "$pod" app 'grep -q " /data fuse" /proc/mounts' || fail "/data is not a FUSE mount in the app"
  in_pod "$pod" app 'echo "via the component" > /data/component.txt'
  wait_for 60 bucket_has component/component.txt "via the component" || fail "the bucket does not hold component/component.txt"
  k delete -f "$work/component.yaml" --wait=true >&2
}

case_kustomize_plain_component() {
  local pod
  # Built as it comes: `kubectl apply -k`, no flag, no plugin, no binary.
  k apply -k "$manifests/component-plain" >&2
  k -n "$NS" rollout status deploy/plain-app --timeout=180s >&2 \
    || { diagnose "$(k -n "$NS" get pods -l app=plain-app -o name | head -n 1 | cut -d/ -f2)"; fail "plain-app not available"; }
  pod=$(k -n "$NS" get pods -l app=plain-app -o jsonpath='{.items[0].metadata.name}')
  [ "$(k -n "$NS" get pod "$pod" -o jsonpath='{.spec.initContainers[0].name}')" = sidemount ] \
    || fail "the sidecar is not the first init container"
  in_pod "$pod" app 'grep -q " /data fuse" /proc/mounts' || fail "/data (a subPath of the shared volume) is not a FUSE mount"
  in_pod "$pod" app 'grep -q " /sidemount/data fuse" /proc/mounts' || fail "/sidemount/data is not a FUSE mount in the app"
  [ "$(in_pod "$pod" app 'id -u')" = 1000 ] || fail "the app does not run as 1000"
  in_pod "$pod" app 'echo "via the plain component, as 1000" > /data/plain.txt' || fail "the app (uid 1000) cannot write /data"
  wait_for 60 bucket_has plain/plain.txt "via the plain component, as 1000" || fail "the bucket does not hold plain/plain.txt"
  k delete -k "$manifests/component-plain" --wait=true >&2
}

case_invalid_annotation_refused() {
  local out
  if out=$(k apply -f "$manifests/pod-invalid.yaml" 2>&1); then
    k -n "$NS" delete pod invalid-app --wait=false >/dev/null 2>&1 || true
    fail "kubectl apply accepted the pod: $out"
  fi
  grep -q 'sidemount.io/volumes:.*volumes\[0\].filesystem' <<<"$out" \
    || fail "the refusal does not name the annotation and the field: $out"
  ! k -n "$NS" get pod invalid-app >/dev/null 2>&1 || fail "the pod exists"
  note "$(tail -n 1 <<<"$out")"
}

all_cases=(s3_read_write app_starts_after_mount repair_while_app_runs delete_leaves_no_mount kustomize_plain_component
  legacy_mode job_completes kustomize_component invalid_annotation_refused)

# ---------------------------------------------------------------- runner
selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=("${all_cases[@]}")
passed=0 failed=0 failures=()
for case in "${selected[@]}"; do
  declare -F "case_$case" >/dev/null || { say "no case $case (cases: ${all_cases[*]})"; exit 64; }
  case_started=$SECONDS
  set +e
  (set -e; "case_$case") 2>&1 | sed 's/^/       /' >"$work/$case.log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    say "ok   $case ($((SECONDS - case_started))s)"
    grep '^       -- ' "$work/$case.log" >&2 || true
  else
    failed=$((failed + 1))
    failures+=("$case")
    say "FAIL $case ($((SECONDS - case_started))s)"
    tail -n 40 "$work/$case.log" >&2
  fi
done
[ ${#failures[@]} = 0 ] || say "failed: ${failures[*]}"
echo "kind e2e: $passed passed, $failed failed"
[ "$failed" = 0 ]
