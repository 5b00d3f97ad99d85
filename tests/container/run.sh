#!/usr/bin/env bash
# shellcheck disable=SC2016,SC2317
# (SC2016: single-quoted commands run inside containers; SC2317: helpers are
# called through wait_for.)
# Container-level end-to-end tests of sidemount's images, with a real Docker engine
# and real containers, started by hand-written `docker run` commands: what the
# images themselves must do (contents, PID 1, exit codes, the webhook image, the
# ObjectiveFS package), and two orders the pod runner's cases do not reach (a
# repair after the app's bind was made before the mount; SIGTERM with a file held
# open in the sidecar itself). Pods as injection
# makes them (reads and writes through s3fs and rclone, repair, block volumes,
# deletion) run on the pod runner: tests/podrunner.
#
#   node:     a host folder D on a tmpfs with shared propagation (the kubelet's
#             pod directory sits on a shared mount the same way)
#   sidecar:  the sidecar image, privileged, D/<case>/data bound `rshared` at
#             /sidemount/data (mountPropagation: Bidirectional)
#   app:      the same image with `--entrypoint sh`, D/<case>/data bound `rslave`
#             at /data (mountPropagation: HostToContainer)
#
# It builds the images first with images/build-local.sh (the debootstrapped base
# image is reused when the engine has it). Every case cleans up after itself, and
# the exit trap removes whatever is left: the containers carrying this run's label,
# mounts under D, D itself, processes it started, temporary folders.
#
# Usage: sudo tests/container/run.sh [CASE...]     (no CASE: every case)
# Settings (environment):
#   SIDEMOUNT_E2E_BUILD=0     use the images that are there, do not build
#   SIDEMOUNT_E2E_SKIP="a b"  skip these cases (reported as skipped)
#   SIDECAR_IMAGE, WEBHOOK_IMAGE   [sidemount:dev, sidemount-webhook:dev]
# Ends with the line `container e2e: N passed, M failed` (and `, K skipped`), and
# exits non-zero when a case failed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
export SIDECAR_IMAGE=${SIDECAR_IMAGE:-sidemount:dev}
export WEBHOOK_IMAGE=${WEBHOOK_IMAGE:-sidemount-webhook:dev}
run_id=sidemount-e2e-$$
started=$SECONDS

say() { echo "container e2e: $*" >&2; }
# shellcheck source=tests/lib.sh
. "$repo/tests/lib.sh"
wait_every=0.2
[ "$(id -u)" = 0 ] || { say "run as root (sudo $0): it makes mounts"; exit 1; }
docker info >/dev/null 2>&1 || { say "no Docker engine answers (docker info failed)"; exit 1; }

# ---------------------------------------------------------------- host tools
need=()
for tool in curl:curl jq:jq openssl:openssl findmnt:util-linux nsenter:util-linux dpkg-deb:dpkg \
  debootstrap:debootstrap; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ---------------------------------------------------------------- state, cleanup
work=$(mktemp -d /tmp/sidemount-e2e.XXXXXX)
node=$work/node          # D: the tmpfs with shared propagation
logs=$work/logs
mkdir -p "$node" "$logs"
: >"$work/pids"

unmount_under() { # every mount below $1 (not $1 itself), innermost first
  local m
  findmnt -rn -o TARGET | awk -v p="$1/" 'index($0, p) == 1' | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}
remove_containers() {
  local ids
  ids=$(docker ps -aq --filter "label=$run_id=$1")
  [ -z "$ids" ] || echo "$ids" | xargs docker rm -f >/dev/null 2>&1 || true
}
stop_case_containers() {
  local ids
  ids=$(docker ps -q --filter "label=$run_id=$1")
  [ -z "$ids" ] || echo "$ids" | xargs docker stop -t 20 >/dev/null 2>&1 || true
}
# alive PID: the process runs (a zombie, already ended, does not).
alive() {
  local state
  state=$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null)
  [ -n "$state" ] && [ "$state" != Z ]
}
ended() { ! alive "$1"; }
# Ends the processes the cases started on the host (moto; their pids in
# $work/pids), by pid: SIGTERM, then SIGKILL for any still running after 10 s.
end_processes() {
  local pid running=()
  [ -s "$work/pids" ] || return 0
  while read -r pid; do
    alive "$pid" && kill "$pid" 2>/dev/null && running+=("$pid")
  done <"$work/pids"
  : >"$work/pids"
  for pid in "${running[@]}"; do
    wait_for 10 ended "$pid" || kill -KILL "$pid" 2>/dev/null || true
    # Reaped by the shell that started it (the case's), if this is that shell.
    wait "$pid" 2>/dev/null || true
  done
}
cleanup() {
  set +e
  end_processes
  docker ps -aq --filter "label=$run_id" | xargs -r docker rm -f >/dev/null 2>&1
  docker image rm -f "$run_id-ofs:dev" >/dev/null 2>&1
  unmount_under "$node"
  umount -l "$node" 2>/dev/null
  unmount_under "$work"
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount -t tmpfs -o size=256m,mode=0755 "$run_id" "$node"
mount --make-shared "$node"

# ---------------------------------------------------------------- images
if [ "${SIDEMOUNT_E2E_BUILD:-1}" != 0 ]; then
  say "building the images (images/build-local.sh)"
  build_started=$SECONDS
  if ! "$repo/images/build-local.sh" >"$logs/build.log" 2>&1; then
    tail -n 40 "$logs/build.log" >&2
    say "building the images failed"
    echo "container e2e: 0 passed, 1 failed"
    exit 1
  fi
  grep '^build-local: .*MB' "$logs/build.log" >&2 || true
  say "images built in $((SECONDS - build_started))s"
fi
for image in "$SIDECAR_IMAGE" "$WEBHOOK_IMAGE"; do
  docker image inspect "$image" >/dev/null 2>&1 || { say "no image $image"; exit 1; }
done

# The sidecar runs --privileged, as in a pod. An engine whose own capability
# bounding set lacks a capability cannot start any --privileged container (runc:
# "unable to apply caps"); there the sidecar gets what privileged gives that this
# engine can grant: every other capability, no seccomp or AppArmor profile, an
# unmasked /proc and /sys, /dev/fuse.
caps=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE
  NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT
  SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE
  AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ
  PERFMON BPF CHECKPOINT_RESTORE)
if docker run --rm --privileged --label "$run_id=probe" --entrypoint true "$SIDECAR_IMAGE" >/dev/null 2>&1; then
  privileged=(--privileged)
else
  engine_pid=$(cat /var/run/docker.pid 2>/dev/null || echo self)
  bounding=$((16#$(awk '/^CapBnd:/ {print $2}' "/proc/$engine_pid/status")))
  privileged=(--cap-add ALL --security-opt seccomp=unconfined --security-opt apparmor=unconfined
    --security-opt systempaths=unconfined --device /dev/fuse)
  missing=()
  for bit in "${!caps[@]}"; do
    if ((((bounding >> bit) & 1) == 0)); then
      privileged+=(--cap-drop "${caps[$bit]}")
      missing+=("${caps[$bit]}")
    fi
  done
  say "this engine cannot start --privileged containers (its bounding set lacks ${missing[*]:-?});" \
    "the sidecar runs with every other capability, unconfined, with /dev/fuse"
fi
remove_containers probe

# ---------------------------------------------------------------- helpers
# A case runs in a subshell with `set -e`; $case names it, $dir is its node folder.
# fail, note, wait_for and matches come from tests/lib.sh.

# sidecar VOLUMES_JSON [docker run arguments...]: start a sidecar for $dir/data.
sidecar() {
  local volumes=$1
  shift
  docker run -d --label "$run_id=$case" "${privileged[@]}" \
    -v "$dir/data:/sidemount/data:rshared" -e SIDEMOUNT_VOLUMES="$volumes" \
    -e SIDEMOUNT_SHUTDOWN_TIMEOUT=15s -e SIDEMOUNT_LOG="${SIDEMOUNT_E2E_LOG:-info}" "$@" "$SIDECAR_IMAGE"
}
# app: an app container that sees $dir/data at /data.
app() {
  docker run -d --label "$run_id=$case" -v "$dir/data:/data:rslave" \
    --entrypoint sh "$SIDECAR_IMAGE" -c 'trap "exit 0" TERM; while :; do sleep 1; done'
}
pid_of() { docker inspect -f '{{.State.Pid}}' "$1"; }
# http ID PATH: GET from the supervisor's loopback-only listener, in its netns.
http() { nsenter -t "$(pid_of "$1")" -n curl -fsS --max-time 5 "http://127.0.0.1:9810$2"; }
ready() { docker exec "$1" sidemount probe; }
# What the node sees: mounts below the case's folder, one "TARGET FSTYPE" a line.
node_mounts() { findmnt -rn -o TARGET,FSTYPE | awk -v p="$dir/" 'index($1, p) == 1'; }
exit_code() { docker inspect -f '{{.State.ExitCode}}' "$1"; }
running() { [ "$(docker inspect -f '{{.State.Running}}' "$1")" = true ]; }
stopped() { ! running "$1"; }
in_app() { docker exec "$1" sh -c "$2"; }

# The design's own example, as is: the daemon mounts in the supervisor's private stage
# (an empty directory), so rclone needs no --allow-non-empty.
rclone_memory='[{"name":"data","type":"fuse","command":["rclone","mount",":memory:","{mountpoint}"]}]'

repaired() { http "$1" /status | jq -e '.volumes[0] | .state == "ready" and .repairs >= 1' >/dev/null; }
# kill_and_repair ID APP: kill -9 the FUSE daemon; the app must see the volume again.
kill_and_repair() {
  local sc=$1 app=$2 before after
  before=$(http "$sc" /status | jq -r '.volumes[0].pid')
  [[ $before =~ ^[0-9]+$ ]] || fail "no daemon pid in /status"
  docker exec "$sc" sh -c "kill -9 $before"
  note "killed the daemon (pid $before in the sidecar)"
  wait_for 30 repaired "$sc" || fail "not repaired in 30s: $(http "$sc" /status)"
  after=$(http "$sc" /status | jq -r '.volumes[0].pid')
  [ "$after" != "$before" ] || fail "same daemon pid after the repair"
  http "$sc" /metrics | grep -E '^sidemount_volume_repairs_total\{[^}]*volume="data"[^}]*\} 1$' >/dev/null \
    || fail "the repair is not counted in /metrics"
  ready "$sc" || fail "sidemount probe: not ready after the repair"
  node_mounts | matches " fuse.rclone$" || fail "the node has no FUSE mount after the repair"
  wait_for 10 in_app "$app" 'echo after-repair > /data/after && [ "$(cat /data/after)" = after-repair ]' \
    || fail "the app cannot use /data after the repair: $(in_app "$app" 'ls /data 2>&1; findmnt -T /data' 2>&1)"
  [ "$(docker exec "$sc" cat /sidemount/data/after)" = after-repair ] || fail "the sidecar does not see the app's write"
  note "repaired: daemon pid $after, the app reads and writes /data again"
}

# ---------------------------------------------------------------- cases
case_image_contents() {
  local tool
  for tool in sidemount mount umount blkid findmnt losetup mkfs.ext4 mkfs.xfs mkfs.btrfs zfs zpool mount.zfs \
    rclone s3fs fusermount3; do
    docker run --rm --label "$run_id=$case" --entrypoint sh "$SIDECAR_IMAGE" -c "command -v $tool" >/dev/null \
      || fail "the sidecar image has no $tool"
  done
  docker run --rm --label "$run_id=$case" --entrypoint sh "$SIDECAR_IMAGE" -c \
    'test -s /etc/ssl/certs/ca-certificates.crt && ! command -v mount.objectivefs && ! ls /var/lib/dkms /lib/modules 2>/dev/null | grep -q .' \
    || fail "expected CA certificates, no ObjectiveFS and no kernel modules or DKMS in the default image"
  [ "$(docker image inspect -f '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$SIDECAR_IMAGE")" = '["/usr/local/bin/sidemount"] ["run"]' ] \
    || fail "sidecar entrypoint/cmd: $(docker image inspect -f '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$SIDECAR_IMAGE")"
  [ "$(docker image inspect -f '{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$WEBHOOK_IMAGE")" = '65532:65532 ["/usr/local/bin/sidemount"] ["webhook"]' ] \
    || fail "webhook user/entrypoint/cmd: $(docker image inspect -f '{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$WEBHOOK_IMAGE")"
  [ "$(docker run --rm --label "$run_id=$case" "$WEBHOOK_IMAGE" --version)" = "$(docker run --rm --label "$run_id=$case" "$SIDECAR_IMAGE" --version)" ] \
    || fail "the two images carry different binaries"
  note "sidecar $(docker image inspect -f '{{.Size}}' "$SIDECAR_IMAGE" | awk '{printf "%.1f MB", $1/1e6}'), webhook $(docker image inspect -f '{{.Size}}' "$WEBHOOK_IMAGE" | awk '{printf "%.1f MB", $1/1e6}')"
}

case_pid1_no_volumes() {
  local sc started_at
  sc=$(docker run -d --label "$run_id=$case" "${privileged[@]}" "$SIDECAR_IMAGE")
  wait_for 10 ready "$sc" || fail "a sidecar with no volumes is not ready: $(docker logs "$sc" 2>&1)"
  [ "$(docker exec "$sc" cat /proc/1/comm)" = sidemount ] || fail "PID 1 is $(docker exec "$sc" cat /proc/1/comm)"
  [ "$(docker exec "$sc" cat /proc/1/cmdline | tr '\0' ' ')" = "/usr/local/bin/sidemount run " ] \
    || fail "PID 1 runs $(docker exec "$sc" cat /proc/1/cmdline | tr '\0' ' ')"
  http "$sc" /healthz >/dev/null || fail "/healthz does not answer"
  started_at=$SECONDS
  docker stop -t 20 "$sc" >/dev/null
  [ "$(exit_code "$sc")" = 0 ] || fail "exit code $(exit_code "$sc") after docker stop"
  [ $((SECONDS - started_at)) -lt 5 ] || fail "docker stop took $((SECONDS - started_at))s with nothing to unmount"
}

case_repair_app_started_first() {
  local sc app
  # Legacy (classic sidecar) order: the app's bind is made before the volume is mounted.
  app=$(app)
  sc=$(sidecar "$rclone_memory")
  wait_for 30 ready "$sc" || fail "not ready in 30s: $(docker logs "$sc" 2>&1 | tail -5)"
  in_app "$app" 'echo one > /data/one && [ "$(cat /data/one)" = one ]' || fail "the app cannot write /data"
  kill_and_repair "$sc" "$app"
}

case_stop_unmounts_everything() {
  local sc app took code
  app=$(app)
  sc=$(sidecar "$rclone_memory")
  wait_for 30 ready "$sc" || fail "not ready in 30s: $(docker logs "$sc" 2>&1 | tail -5)"
  in_app "$app" 'echo kept > /data/f'
  # A file held open in the sidecar: the unmount must still finish.
  docker exec -d "$sc" sh -c 'exec 3</sidemount/data/f; sleep 600'
  sleep 0.5
  took=$SECONDS
  docker stop -t 20 "$sc" >/dev/null
  took=$((SECONDS - took))
  code=$(exit_code "$sc")
  [ "$code" = 0 ] || fail "exit code $code after docker stop: $(docker logs "$sc" 2>&1 | tail -5)"
  [ "$took" -lt 20 ] || fail "docker stop took ${took}s: the sidecar was killed at the timeout"
  [ -z "$(node_mounts)" ] || fail "mounts left on the node: $(node_mounts); the sidecar's log: $(docker logs "$sc" 2>&1 | grep -v "trying again" | tail -40)"
  in_app "$app" 'ls -A /data >/dev/null && [ "$(findmnt -n -o FSTYPE -T /data)" = tmpfs ]' \
    || fail "the app's /data is not the plain pod volume again: $(in_app "$app" 'ls /data 2>&1; findmnt -T /data' 2>&1)"
  docker logs "$sc" 2>&1 | matches 'every volume is down' || fail "no 'every volume is down' in the log"
  note "docker stop: exit 0 in ${took}s, nothing left mounted"
}

case_not_shared_exits_78() {
  local sc
  sc=$(docker run -d --label "$run_id=$case" "${privileged[@]}" -v "$dir/data:/sidemount/data" \
    -e SIDEMOUNT_VOLUMES="$rclone_memory" "$SIDECAR_IMAGE")
  wait_for 20 stopped "$sc" || fail "still running after 20s"
  [ "$(exit_code "$sc")" = 78 ] || fail "exit code $(exit_code "$sc"), not 78"
  docker logs "$sc" 2>&1 | matches 'mountPropagation: Bidirectional' \
    || fail "the log does not name the fix: $(docker logs "$sc" 2>&1)"
  [ -z "$(node_mounts)" ] || fail "mounts left on the node: $(node_mounts)"
  note "$(docker logs "$sc" 2>&1 | tail -n 1)"
}

case_no_dev_fuse_exits_78() {
  local sc
  sc=$(docker run -d --label "$run_id=$case" --cap-add SYS_ADMIN --security-opt seccomp=unconfined \
    -v "$dir/data:/sidemount/data:rshared" -e SIDEMOUNT_VOLUMES="$rclone_memory" "$SIDECAR_IMAGE")
  wait_for 20 stopped "$sc" || fail "still running after 20s"
  [ "$(exit_code "$sc")" = 78 ] || fail "exit code $(exit_code "$sc"), not 78"
  docker logs "$sc" 2>&1 | matches '/dev/fuse' || fail "the log does not say /dev/fuse: $(docker logs "$sc" 2>&1)"
  [ -z "$(node_mounts)" ] || fail "mounts left on the node: $(node_mounts)"
}

case_webhook_serves_tls() {
  local wh tls=$dir/tls review answer patch
  mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=sidemount-webhook" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$tls/tls.key" -out "$tls/tls.crt" 2>/dev/null
  chmod 0644 "$tls/tls.key"
  wh=$(docker run -d --label "$run_id=$case" -v "$tls:/etc/sidemount/tls:ro" -e SIDEMOUNT_IMAGE="$SIDECAR_IMAGE" "$WEBHOOK_IMAGE")
  wh_curl() { nsenter -t "$(pid_of "$wh")" -n curl -fsS --max-time 5 --cacert "$tls/tls.crt" "$@"; }
  wait_for 20 wh_curl https://localhost:8443/healthz || fail "no /healthz over TLS: $(docker logs "$wh" 2>&1 | tail -5)"
  [ "$(awk '/^Uid:/ {print $2}' "/proc/$(pid_of "$wh")/status")" = 65532 ] || fail "the webhook does not run as 65532"
  review=$(jq -cn '{apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
    request: {uid: "e2e-1", kind: {group: "", version: "v1", kind: "Pod"}, resource: {group: "", version: "v1", resource: "pods"},
      operation: "CREATE", namespace: "default", userInfo: {username: "e2e"},
      object: {apiVersion: "v1", kind: "Pod",
        metadata: {name: "p", namespace: "default", labels: {"sidemount.io/inject": "true"},
          annotations: {"sidemount.io/volumes": "- name: data\n  type: fuse\n  command: [rclone, mount, \":memory:\", \"{mountpoint}\"]\n"}},
        spec: {containers: [{name: "app", image: "app", volumeMounts: [{name: "data", mountPath: "/data"}]}],
          volumes: [{name: "data", emptyDir: {}}]}}}}')
  answer=$(wh_curl -H 'Content-Type: application/json' --data "$review" https://localhost:8443/mutate)
  [ "$(jq -r '.response.uid + " " + (.response.allowed | tostring)' <<<"$answer")" = "e2e-1 true" ] || fail "answer: $answer"
  patch=$(jq -r '.response.patch' <<<"$answer" | base64 -d)
  grep -q "$SIDECAR_IMAGE" <<<"$patch" || fail "the patch does not inject $SIDECAR_IMAGE: $patch"
  docker stop -t 10 "$wh" >/dev/null
  [ "$(exit_code "$wh")" = 0 ] || fail "the webhook exited $(exit_code "$wh") on SIGTERM"
}

case_objectivefs_deb_installed() {
  local pkg=$dir/pkg drop=$dir/drop tag=$run_id-ofs:dev
  # A stand-in package named objectivefs (ObjectiveFS itself is licensed and is
  # not downloaded here): checks that a .deb in images/objectivefs/ is installed
  # with its dependencies (attr, not in the image otherwise).
  mkdir -p "$pkg/DEBIAN" "$pkg/sbin" "$drop"
  cat >"$pkg/DEBIAN/control" <<'EOF'
Package: objectivefs
Version: 0.0-e2e-standin
Architecture: all
Maintainer: sidemount e2e <e2e@invalid>
Depends: attr
Description: stand-in for the ObjectiveFS package (sidemount's container e2e)
EOF
  printf '#!/bin/sh\necho "mount.objectivefs stand-in"\n' >"$pkg/sbin/mount.objectivefs"
  chmod 0755 "$pkg/sbin/mount.objectivefs"
  dpkg-deb --root-owner-group --build "$pkg" "$drop/objectivefs_0.0_all.deb" >/dev/null
  OBJECTIVEFS_DIR=$drop SIDECAR_IMAGE=$tag "$repo/images/build-local.sh" --sidecar-only >"$dir/build.log" 2>&1 \
    || { tail -20 "$dir/build.log" >&2; fail "building with the package failed"; }
  [ "$(docker run --rm --label "$run_id=$case" --entrypoint mount.objectivefs "$tag")" = "mount.objectivefs stand-in" ] \
    || fail "mount.objectivefs is not installed"
  docker run --rm --label "$run_id=$case" --entrypoint sh "$tag" -c 'command -v getfattr && ! ls /tmp/objectivefs 2>/dev/null' >/dev/null \
    || fail "the package's dependency is missing, or the drop-in folder was left in the image"
  docker image rm -f "$tag" >/dev/null
}

# ---------------------------------------------------------------- the plain layout, non-root apps
# An S3 server for a case: moto (from the host's venv) in a placeholder
# container's network namespace, which the sidecar then joins (loopback only), with
# the bucket e2e-bucket; credentials in $dir/secrets as a Secret volume has them.
moto=$repo/.venv/bin/moto_server
moto_up() {
  [ -x "$moto" ] || fail "no $moto: install tests/requirements.txt into $repo/.venv (tests/setup.sh)"
  s3_port=9000
  secrets=$dir/secrets
  mkdir -p "$secrets"
  printf AKIAE2EEXAMPLE >"$secrets/AWSACCESSKEYID"
  printf 'e2e-secret-key-0123456789' >"$secrets/AWSSECRETACCESSKEY"
  pause=$(docker run -d --label "$run_id=$case" --entrypoint sh "$SIDECAR_IMAGE" -c 'trap "exit 0" TERM; while :; do sleep 1; done')
  nsenter -t "$(pid_of "$pause")" -n "$moto" -H 127.0.0.1 -p "$s3_port" >"$dir/moto.log" 2>&1 &
  echo $! >>"$work/pids"
  # Ended, and reaped, when the case's subshell exits.
  trap end_processes EXIT
  wait_for 30 s3 "http://127.0.0.1:$s3_port/" || fail "moto did not start: $(tail -5 "$dir/moto.log")"
  s3 -X PUT "http://127.0.0.1:$s3_port/e2e-bucket" >/dev/null
}
s3() {
  nsenter -t "$(pid_of "$pause")" -n curl -fsS --max-time 5 --aws-sigv4 aws:amz:us-east-1:s3 \
    --user "$(cat "$secrets/AWSACCESSKEYID"):$(cat "$secrets/AWSSECRETACCESSKEY")" "$@"
}
in_bucket() { [ "$(s3 "http://127.0.0.1:$s3_port/e2e-bucket/$1")" = "$2" ]; }
# app_as USER: an app container running as USER (uid:gid) that sees $dir/data at /data.
app_as() {
  docker run -d --label "$run_id=$case" --user "$1" -v "$dir/data:/data:rslave" \
    --entrypoint sh "$SIDECAR_IMAGE" -c 'trap "exit 0" TERM; while :; do sleep 1; done'
}
# injected_spec POD_YAML: SIDEMOUNT_VOLUMES as `sidemount inject` (the image's) writes it for the pod.
injected_spec() {
  docker run --rm -i --label "$run_id=$case" --entrypoint sidemount "$SIDECAR_IMAGE" inject <<<"$1" \
    | "$repo/.venv/bin/python" -c 'import sys, yaml
pod = yaml.safe_load(sys.stdin)
env = pod["spec"]["initContainers"][0]["env"]
print(next(e["value"] for e in env if e["name"] == "SIDEMOUNT_VOLUMES"))'
}
# A pod whose app runs as 1000:1000, with COMMAND (a JSON list) as its volume's daemon.
pod_as_1000() {
  jq -n --argjson command "$1" '{apiVersion: "v1", kind: "Pod",
    metadata: {name: "app", labels: {"sidemount.io/inject": "true"},
      annotations: {"sidemount.io/volumes": ([{name: "data", type: "fuse", command: $command,
        secretName: "s3-credentials"}] | tojson)}},
    spec: {securityContext: {runAsUser: 1000, runAsGroup: 1000},
      containers: [{name: "app", image: "app", volumeMounts: [{name: "data", mountPath: "/data"}]}]}}'
}
# nonroot_reads_and_writes SPEC: the sidecar serves SPEC; an app running as 1000
# writes and reads /data, the bytes land in the bucket, and an object put there is read.
nonroot_reads_and_writes() {
  local sc app
  sc=$(sidecar "$1" --network "container:$pause" -v "$secrets:/etc/sidemount/secrets/data:ro")
  wait_for 60 ready "$sc" || fail "not ready in 60s: $(docker logs "$sc" 2>&1 | tail -5)"
  app=$(app_as 1000:1000)
  [ "$(in_app "$app" 'id -u')" = 1000 ] || fail "the app does not run as 1000"
  in_app "$app" 'echo "written as 1000" > /data/nonroot.txt && cat /data/nonroot.txt' | matches -x 'written as 1000' \
    || fail "the app (uid 1000) cannot write and read /data: $(in_app "$app" 'ls -ln /data; touch /data/x' 2>&1)"
  in_app "$app" 'mkdir -p /data/dir && echo nested > /data/dir/f && [ "$(cat /data/dir/f)" = nested ]' \
    || fail "the app (uid 1000) cannot make a directory"
  wait_for 20 in_bucket nonroot.txt 'written as 1000' || fail "the bucket does not hold the app's bytes"
  # (A form content type, curl's default, makes moto keep an empty body.)
  s3 -X PUT -H 'Content-Type: text/plain' --data-binary 'from the bucket' "http://127.0.0.1:$s3_port/e2e-bucket/put.txt" >/dev/null
  wait_for 20 in_app "$app" '[ "$(cat /data/put.txt)" = "from the bucket" ]' \
    || fail "the app does not read an object put in the bucket: $(in_app "$app" 'ls -ln /data; cat /data/put.txt' 2>&1; s3 "http://127.0.0.1:$s3_port/e2e-bucket" 2>&1 | head -c 600)"
  docker stop -t 20 "$sc" >/dev/null
  [ "$(exit_code "$sc")" = 0 ] || fail "exit code $(exit_code "$sc") after docker stop"
  docker rm -f "$app" >/dev/null
}

case_nonroot_app_s3fs() {
  local spec denied sc app
  moto_up
  # The annotation names no user: injection reads runAsUser/runAsGroup and the
  # supervisor puts them where the command says {uid} and {gid}.
  spec=$(injected_spec "$(pod_as_1000 "$(jq -cn --arg url "http://127.0.0.1:$s3_port" '["s3fs", "e2e-bucket", "{mountpoint}", "-f",
    "-o", ("url=" + $url), "-o", "use_path_request_style", "-o", "allow_other,uid={uid},gid={gid},umask=0022"]')")")
  jq -e '.[0].uid == 1000 and .[0].gid == 1000' <<<"$spec" >/dev/null || fail "injection did not fill uid and gid: $spec"
  nonroot_reads_and_writes "$spec"
  # The same without the user: root owns the files, and the app cannot write.
  denied=$(jq -c '.[0] |= del(.uid, .gid)' <<<"$spec")
  sc=$(sidecar "$denied" --network "container:$pause" -v "$secrets:/etc/sidemount/secrets/data:ro")
  wait_for 60 ready "$sc" || fail "not ready in 60s: $(docker logs "$sc" 2>&1 | tail -5)"
  app=$(app_as 1000:1000)
  ! in_app "$app" 'echo x > /data/denied.txt' 2>/dev/null || fail "without uid the app could write: the check above proves nothing"
  note "without uid/gid the app (uid 1000) cannot write; with them, injected from runAsUser, it can"
}

case_nonroot_app_rclone() {
  local spec
  moto_up
  # rclone's S3 backend from the environment, credentials from the secret folder.
  printf 'Other' >"$secrets/RCLONE_S3_PROVIDER"
  printf 'http://127.0.0.1:%s' "$s3_port" >"$secrets/RCLONE_S3_ENDPOINT"
  cp "$secrets/AWSACCESSKEYID" "$secrets/RCLONE_S3_ACCESS_KEY_ID"
  cp "$secrets/AWSSECRETACCESSKEY" "$secrets/RCLONE_S3_SECRET_ACCESS_KEY"
  spec=$(injected_spec "$(pod_as_1000 '["rclone", "mount", ":s3:e2e-bucket", "{mountpoint}", "--vfs-cache-mode", "writes",
    "--allow-other", "--uid", "{uid}", "--gid", "{gid}", "--dir-cache-time", "1s"]')")
  jq -e '.[0].uid == 1000 and .[0].gid == 1000' <<<"$spec" >/dev/null || fail "injection did not fill uid and gid: $spec"
  nonroot_reads_and_writes "$spec"
}

case_plain_layout_downward_api() {
  local sc app spec=$dir/spec shared=$dir/shared
  # The kustomize plain component's layout: one shared emptyDir bound Bidirectional
  # at /sidemount, the spec in a downward-API volume (the pod's annotation as
  # volumes.yaml, behind the kubelet's ..data link), no SIDEMOUNT_VOLUMES.
  mkdir -p "$shared" "$spec/..2026_01_01_a"
  cat >"$spec/..2026_01_01_a/volumes.yaml" <<'EOF'
- name: data
  type: fuse
  command: [rclone, mount, ":memory:", "{mountpoint}", --allow-other, --uid, "{uid}", --gid, "{gid}"]
  uid: 1000
  gid: 1000
EOF
  ln -s ..2026_01_01_a "$spec/..data"
  ln -s ..data/volumes.yaml "$spec/volumes.yaml"
  sc=$(docker run -d --label "$run_id=$case" "${privileged[@]}" -v "$shared:/sidemount:rshared" \
    -v "$spec:/etc/sidemount/pod:ro" -e SIDEMOUNT_CONFIG=/etc/sidemount/pod \
    -e SIDEMOUNT_SHUTDOWN_TIMEOUT=15s "$SIDECAR_IMAGE")
  wait_for 30 ready "$sc" || fail "not ready in 30s: $(docker logs "$sc" 2>&1 | tail -5)"
  node_mounts | matches "^$shared/data fuse.rclone$" || fail "the node does not see $shared/data mounted: $(node_mounts)"
  # The app: the whole shared volume at /sidemount (what the component gives every
  # container), and the volume's directory at /data (a subPath mount), as uid 1000.
  app=$(docker run -d --label "$run_id=$case" --user 1000:1000 -v "$shared:/sidemount:rslave" \
    -v "$shared/data:/data:rslave" --entrypoint sh "$SIDECAR_IMAGE" -c 'trap "exit 0" TERM; while :; do sleep 1; done')
  in_app "$app" 'echo via-subpath > /data/a && echo via-shared > /sidemount/data/b' \
    || fail "the app (uid 1000) cannot write: $(in_app "$app" 'ls -ln /data /sidemount' 2>&1)"
  [ "$(in_app "$app" 'cat /sidemount/data/a /data/b | tr "\n" " "')" = "via-subpath via-shared " ] \
    || fail "the two paths do not show the same volume"
  [ "$(in_app "$app" 'stat -c %u /data/a')" = 1000 ] || fail "the app's file is not owned by 1000"
  # A repair reaches the app through both paths (the subPath bind captured the FUSE mount itself).
  dir=$shared kill_and_repair "$sc" "$app"
  in_app "$app" 'echo again > /sidemount/data/c && [ "$(cat /data/c)" = again ]' || fail "the paths differ after the repair"
  # The kubelet rewrites the annotation's file by swapping ..data: a second volume appears.
  mkdir "$spec/..2026_01_01_b"
  cat "$spec/..2026_01_01_a/volumes.yaml" - >"$spec/..2026_01_01_b/volumes.yaml" <<'EOF'
- name: second
  type: fuse
  command: [rclone, mount, ":memory:", "{mountpoint}", --allow-other, --uid, "{uid}"]
  uid: 1000
EOF
  ln -s ..2026_01_01_b "$spec/..data_tmp"
  mv -T "$spec/..data_tmp" "$spec/..data"
  rm -rf "$spec/..2026_01_01_a"
  second_ready() { http "$sc" /status | jq -e '[.volumes[] | select(.state == "ready")] | length == 2' >/dev/null; }
  wait_for 30 second_ready || fail "the second volume was not mounted: $(http "$sc" /status)"
  in_app "$app" 'echo two > /sidemount/second/f && [ "$(cat /sidemount/second/f)" = two ]' \
    || fail "the app cannot use the volume added by the annotation"
  docker stop -t 20 "$sc" >/dev/null
  [ "$(exit_code "$sc")" = 0 ] || fail "exit code $(exit_code "$sc") after docker stop"
  [ -z "$(node_mounts)" ] || fail "mounts left on the node: $(node_mounts)"
}

case_plain_layout_secret_name() {
  local sc spec=$dir/spec shared=$dir/shared
  # secretName in the annotation, with no Secret mounted: the sidecar refuses,
  # naming the Secret and the path (exit 78), and mounts nothing.
  mkdir -p "$shared" "$spec"
  printf -- '- {name: bucket, type: fuse, command: [rclone, mount, ":memory:", "{mountpoint}"], secretName: s3-credentials}\n' \
    >"$spec/volumes.yaml"
  sc=$(docker run -d --label "$run_id=$case" "${privileged[@]}" -v "$shared:/sidemount:rshared" \
    -v "$spec:/etc/sidemount/pod:ro" -e SIDEMOUNT_CONFIG=/etc/sidemount/pod "$SIDECAR_IMAGE")
  wait_for 20 stopped "$sc" || fail "still running after 20s"
  [ "$(exit_code "$sc")" = 78 ] || fail "exit code $(exit_code "$sc"), not 78: $(docker logs "$sc" 2>&1)"
  docker logs "$sc" 2>&1 | matches '"s3-credentials" is not mounted at /etc/sidemount/secrets/bucket' \
    || fail "the log does not name the Secret and the path: $(docker logs "$sc" 2>&1)"
  # Mounted where the supervisor looks, it is used.
  mkdir -p "$dir/secret"
  printf 'from-the-secret' >"$dir/secret/E2E_UNUSED_SECRET"
  sc=$(docker run -d --label "$run_id=$case" "${privileged[@]}" -v "$shared:/sidemount:rshared" \
    -v "$spec:/etc/sidemount/pod:ro" -v "$dir/secret:/etc/sidemount/secrets/bucket:ro" \
    -e SIDEMOUNT_CONFIG=/etc/sidemount/pod "$SIDECAR_IMAGE")
  wait_for 30 ready "$sc" || fail "not ready with the Secret mounted: $(docker logs "$sc" 2>&1 | tail -5)"
  docker stop -t 20 "$sc" >/dev/null
}

all_cases=(image_contents pid1_no_volumes repair_app_started_first stop_unmounts_everything
  not_shared_exits_78 no_dev_fuse_exits_78 webhook_serves_tls objectivefs_deb_installed
  nonroot_app_s3fs nonroot_app_rclone plain_layout_downward_api plain_layout_secret_name)

# ---------------------------------------------------------------- runner
selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=("${all_cases[@]}")
passed=0 failed=0 skipped=0 failures=()
for case in "${selected[@]}"; do
  declare -F "case_$case" >/dev/null || { say "no case $case (cases: ${all_cases[*]})"; exit 64; }
  if [[ " ${SIDEMOUNT_E2E_SKIP:-} " == *" $case "* ]]; then
    say "skip $case (SIDEMOUNT_E2E_SKIP)"
    skipped=$((skipped + 1))
    continue
  fi
  dir=$node/$case
  mkdir -p "$dir/data"
  case_started=$SECONDS
  set +e
  (set -e; "case_$case") >"$logs/$case.log" 2>&1
  rc=$?
  set -e
  # Stopped as the kubelet would (SIGTERM, then the grace period): whatever a case
  # leaves running must come down cleanly too, and leave the node clean.
  stop_case_containers "$case"
  remove_containers "$case"
  left=$(while read -r pid; do ! alive "$pid" || echo "$pid"; done <"$work/pids" | xargs)
  if [ -n "$left" ]; then
    echo "FAILED: processes the case started were left running: $left" >>"$logs/$case.log"
    rc=1
  fi
  end_processes
  leftover=$(node_mounts)
  if [ -n "$leftover" ]; then
    echo "FAILED: mounts left on the node after the case: $leftover" >>"$logs/$case.log"
    unmount_under "$dir"
    rc=1
  fi
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    say "ok   $case ($((SECONDS - case_started))s)"
    sed 's/^/       /' "$logs/$case.log" | grep '^       -- ' >&2 || true
  else
    failed=$((failed + 1))
    failures+=("$case")
    say "FAIL $case ($((SECONDS - case_started))s)"
    sed 's/^/       /' "$logs/$case.log" | tail -n 25 >&2
  fi
done

say "took $((SECONDS - started))s${failures[*]:+; failed: ${failures[*]}}"
line="container e2e: $passed passed, $failed failed"
[ "$skipped" = 0 ] || line="$line, $skipped skipped"
echo "$line"
[ "$failed" = 0 ]
