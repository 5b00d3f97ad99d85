# shellcheck shell=bash
# Helpers shared by the end-to-end scripts (tests/container/run.sh and
# tests/e2e/kind/run.sh), sourced after `set -euo pipefail`. A case runs in a
# subshell with `set -e`: `fail` ends it.

fail() { echo "FAILED: $*" >&2; exit 1; }
note() { echo "-- $*" >&2; }

# wait_for SECONDS COMMAND...: retry the command every $wait_every seconds (1
# unless the script sets it) until it succeeds, or fail after SECONDS.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep "${wait_every:-1}"
  done
}

# `producer | grep -q` fails under pipefail when grep exits at the first match and the
# producer dies of SIGPIPE (and `! producer | grep -q` then passes wrongly): read all
# of stdin first, then match.
matches() {
  local text
  text=$(cat)
  grep -q "$@" <<<"$text"
}
