#!/usr/bin/env bash
# The test command of README.md: installs what the tests need, then runs every
# test, the privileged ones included (they need root: namespaces, FUSE, loop devices).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

[ "$(id -u)" = 0 ] || { echo "check: run as root (sudo $0): the privileged tests mount in namespaces" >&2; exit 1; }
bash tests/setup.sh
export PATH=$here/.venv/bin:$PATH
bash -n tests/demo.sh
cargo build --workspace --all-targets --locked
# The image and its behaviour in real containers (Docker), and the kind suite's
# scripts and manifests (the suite itself needs a cluster: tests/e2e/kind/run.sh).
bash tests/e2e/kind/validate.sh
if docker info >/dev/null 2>&1; then
  bash tests/container/run.sh
  # The pod runner's unit tests, then the end-to-end cases from the kind suite's
  # manifests, run with the kubelet's semantics on this engine (tests/podrunner).
  PYTHONPATH=$here/tests "$here/.venv/bin/python" -m podrunner.cases
elif [ -n "${CI:-}" ]; then
  echo "check: no Docker engine: the container tests need one (CI machines have it)" >&2
  exit 1
else
  echo "check: container tests and pod runner cases skipped: no Docker engine here (install docker.io and run tests/container/run.sh)" >&2
  PYTHONPATH=$here/tests "$here/.venv/bin/python" -m podrunner.cases --unit-only
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "total: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
