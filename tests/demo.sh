#!/usr/bin/env bash
# sidemount's main job on a built-in default, on one Linux machine, as root.
#
# It lays out what the kubelet and the container runtime do for a pod, with real
# mount namespaces: a "node" namespace holding the pod's emptyDir on a shared
# mount, a "sidecar" namespace with a Bidirectional (rshared) bind of it, and an
# "app" namespace with a HostToContainer (rslave) bind. Then the supervisor mounts
# a bindfs volume in the sidecar, the app reads and writes through it, the daemon
# is killed and repaired, and SIGTERM leaves nothing mounted.
#
# Needs: root, /dev/fuse, util-linux, bindfs (installed with apt-get if missing),
# cargo (unless SIDEMOUNT_BIN names a built binary).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: mount namespaces and FUSE mounts need it (sudo $0)"
[ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse)"
for tool in unshare nsenter mount findmnt; do
  command -v "$tool" >/dev/null || die "$tool is missing: install util-linux"
done
if ! command -v bindfs >/dev/null; then
  command -v apt-get >/dev/null || die "bindfs is missing: install it with your package manager"
  say "installing bindfs"
  apt-get install -y -qq bindfs fuse3 >/dev/null || { apt-get update -qq && apt-get install -y -qq bindfs fuse3 >/dev/null; }
fi

bin=${SIDEMOUNT_BIN:-}
if [ -z "$bin" ]; then
  say "building sidemount"
  (cd "$here" && cargo build --release -q)
  bin=$here/target/release/sidemount
fi

port=${DEMO_PORT:-19810}
listen=127.0.0.1:$port
tmp=$(mktemp -d /tmp/sidemount-demo.XXXXXX)
holders=()
supervisor=""
cleanup() {
  set +e
  [ -n "$supervisor" ] && kill -9 "$supervisor" 2>/dev/null
  # The namespaces, and every mount in them, vanish with their last process.
  for pid in "${holders[@]}"; do kill -9 "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# Starts `sh -c SCRIPT` in a new mount namespace made by `unshare ARGS`, run inside
# namespace $1 (or the host's with -), waits until SCRIPT has set it up, and leaves
# the holder's pid in $held.
holder() {
  local parent=$1 args=$2 script=$3 enter=()
  [ "$parent" = - ] || enter=(nsenter -t "$parent" -m --)
  # shellcheck disable=SC2086
  "${enter[@]}" unshare -m $args sh -c "$script && touch $tmp/ready.\$\$ && exec sleep infinity" </dev/null >/dev/null &
  local pid=$!
  holders+=("$pid")
  for _ in $(seq 100); do [ -e "$tmp/ready.$pid" ] && break; sleep 0.05; done
  [ -e "$tmp/ready.$pid" ] || die "namespace setup failed"
  held=$pid
}
in_ns() { local pid=$1; shift; nsenter -t "$pid" -m -- "$@"; }
status() { python3 -c "import urllib.request;print(urllib.request.urlopen('http://$listen/status').read().decode())"; }
daemon_pid() { status | sed -n '/"pid": [0-9]/{s/.*"pid": \([0-9]*\).*/\1/p;q}'; }
wait_ready() {
  for _ in $(seq 200); do
    kill -0 "$supervisor" 2>/dev/null || { cat "$tmp/supervisor.log"; die "the supervisor exited"; }
    SIDEMOUNT_LISTEN=$listen "$bin" probe >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  die "the volume did not become ready; see $tmp/supervisor.log"
}

empty_dir=$tmp/node/pods/demo/volumes/kubernetes.io~empty-dir/data
mkdir -p "$tmp/node" "$tmp/sidecar/data" "$tmp/app/data" "$tmp/source"
echo "hello from the volume's source" > "$tmp/source/hello.txt"

say "kubelet layout: node namespace with the pod's emptyDir on a shared mount"
holder - "--propagation private" "mount -t tmpfs node $tmp/node && mount --make-shared $tmp/node && mkdir -p '$empty_dir'"
node=$held
say "sidecar namespace: the emptyDir bound at $tmp/sidecar/data, mountPropagation: Bidirectional"
holder "$node" "--propagation unchanged" "mount --bind '$empty_dir' $tmp/sidecar/data && mount --make-rshared $tmp/sidecar/data"
sidecar=$held
say "app namespace: the emptyDir bound at $tmp/app/data, mountPropagation: HostToContainer"
holder "$node" "--propagation unchanged" "mount --bind '$empty_dir' $tmp/app/data && mount --make-rslave $tmp/app/data"
app=$held

cat > "$tmp/volumes.yaml" <<EOF
volumes:
- name: data
  type: fuse
  command: [bindfs, -f, $tmp/source, "{mountpoint}"]
EOF
say "the spec ($tmp/volumes.yaml)"
cat "$tmp/volumes.yaml"

say "sidemount run, in the sidecar namespace"
# nsenter and env exec: $! is the supervisor's own pid.
nsenter -t "$sidecar" -m -- env SIDEMOUNT_ROOT="$tmp/sidecar" SIDEMOUNT_CONFIG="$tmp/volumes.yaml" SIDEMOUNT_STAGE="$tmp/stage" \
  SIDEMOUNT_LISTEN="$listen" SIDEMOUNT_SHUTDOWN_TIMEOUT=10s "$bin" run 2> "$tmp/supervisor.log" &
supervisor=$!
export SIDEMOUNT_LISTEN=$listen
wait_ready
echo "sidemount probe: ready"

say "the app reads and writes through the volume"
echo "\$ cat $tmp/app/data/hello.txt"
in_ns "$app" cat "$tmp/app/data/hello.txt"
in_ns "$app" sh -c "echo 'written by the app' > $tmp/app/data/from-app.txt"
echo "the source now holds: $(cat "$tmp/source/from-app.txt")"
say "the node's view of the emptyDir"
in_ns "$node" findmnt -R -o TARGET,FSTYPE,PROPAGATION "$tmp/node"

pid=$(daemon_pid)
say "kill -9 of the FUSE daemon (pid $pid)"
kill -9 "$pid"
start=$(date +%s%N)
until in_ns "$app" cat "$tmp/app/data/hello.txt" >/dev/null 2>&1 && [ "$(daemon_pid)" != "$pid" ] && [ -n "$(daemon_pid)" ]; do
  [ $(( ($(date +%s%N) - start) / 1000000 )) -lt 10000 ] || die "not repaired within 10 s; see $tmp/supervisor.log"
  sleep 0.01
done
echo "repaired: the app reads again after $(( ($(date +%s%N) - start) / 1000000 )) ms, new daemon pid $(daemon_pid)"
python3 -c "import urllib.request;print(urllib.request.urlopen('http://$listen/metrics').read().decode())" | grep '^sidemount_volume_repairs_total' || true

say "SIGTERM to the supervisor"
start=$(date +%s%N)
kill -TERM "$supervisor"
code=0; wait "$supervisor" || code=$?
supervisor=""
echo "exit status $code after $(( ($(date +%s%N) - start) / 1000000 )) ms"
left=$(in_ns "$node" findmnt -R -n -o TARGET,FSTYPE "$tmp/node" | grep -c fuse || true)
echo "fuse mounts left on the node: $left"
say "the supervisor's log"
cat "$tmp/supervisor.log"
if [ "$code" != 0 ] || [ "$left" != 0 ]; then die "shutdown was not clean"; fi
say "done: nothing is left mounted"
