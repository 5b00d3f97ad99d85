#!/usr/bin/env bash
# Fuzzes every parser of sidemount for a bounded time: the spec reader (spec),
# injection's annotation and stream paths (inject), the AdmissionReview handler
# (admission) and the mountinfo parser (mountinfo). Each target also asserts its
# parser's stated limits (see fuzz/fuzz_targets).
#
#   fuzz/run.sh [SECONDS] [TARGET...]    # SECONDS per target, default 60; every target by default
#
# Installs cargo-fuzz if it is missing (once), builds the targets with
# libFuzzer's coverage instrumentation on the stable toolchain (no sanitizer:
# that needs nightly), and runs each from the committed corpus (fuzz/corpus, left
# as it is: new inputs go to a scratch directory). Fails on the first crash,
# failed assertion, timeout or memory blowup, and prints the input's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(spec inject admission mountinfo)
case $seconds in '' | *[!0-9]*) echo "run.sh: SECONDS must be a whole number, not '$seconds'" >&2; exit 64 ;; esac

cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qF "$cargo_fuzz_version"; then
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi

started=$(date +%s)
cargo fuzz build --sanitizer none
echo "fuzz: built the targets in $(($(date +%s) - started)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target" "artifacts/$target"
  log=$scratch/$target.log
  echo "fuzz: $target for ${seconds} s"
  # -timeout: one input may take 10 s (the targets assert 2 s themselves);
  # -rss_limit_mb: a parse that balloons is a failure too;
  # -max_len: a little over the 64 KiB spec limit, so inputs past it are tried.
  if ! cargo fuzz run --sanitizer none "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=70000 \
    -artifact_prefix="artifacts/$target/" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    input=$(grep -oE "artifacts/$target/[a-z-]+-[0-9a-f]+" "$log" | tail -n 1 || true)
    echo "fuzz: $target FAILED; the input is $here/${input:-artifacts/$target/}" >&2
    echo "fuzz: replay it with: cd $here && cargo fuzz run --sanitizer none $target ${input:-artifacts/$target/...}" >&2
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^stat::new_units_added|^stat::peak_rss_mb" "$log" | sed "s/^/fuzz: $target /"
done
echo "fuzz: every target ran ${seconds} s without a failure ($(($(date +%s) - started)) s in all)"
