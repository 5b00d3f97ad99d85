#!/usr/bin/env bash
# What can be checked of the kind suite without a cluster, run by CI here:
#
#   - shellcheck on the suite's scripts, the container e2e and the image build script;
#   - every manifest the suite applies (manifests/*.yaml), with kubernetes-validate
#     --strict against both Kubernetes versions of the workflow's matrix;
#   - the same pods and Job after `sidemount inject` (what the webhook makes of them),
#     and the invalid pod refused by it, naming the field the suite expects;
#   - the kustomizations it applies, rendered with `kubectl kustomize` (the
#     component's exec plugin, `sidemount inject`, enabled): kustomize/webhook and
#     manifests/component, each object validated
#     (custom resources, which have no schema there, pass with a warning);
#   - the plain sidecar component as `kubectl apply -k` and Flux build it: plain
#     `kubectl kustomize`, no flag, no sidemount on PATH (manifests/component-plain,
#     kustomize/examples/no-webhook), each object validated;
#   - kind-config.yaml's shape, and both workflows (this suite's and the release)
#     against GitHub's workflow schema, with every `run:` step shellchecked;
#   - the release's scripts run with the registry left out: scripts/pin-digests.sh
#     --dry-run pins the kustomize manifests to made-up digests, and what it renders
#     is validated;
#   - MinIO's image: run.sh's default is the manifest's, and not Docker Hub's; each
#     row of the workflow's matrix runs a kubectl within one minor version of its cluster.
#
# Usage: tests/e2e/kind/validate.sh      Ends with `kind manifests: N passed, M failed`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
cd "$repo"
venv=$repo/.venv
versions=(1.30.0 1.33.0) # the workflow's matrix

say() { echo "kind manifests: $*" >&2; }

# ---------------------------------------------------------------- tools
if ! command -v shellcheck >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { say "needs shellcheck (apt-get install shellcheck)"; exit 1; }
  say "installing shellcheck"
  { apt-get install -y -qq --no-install-recommends shellcheck || { apt-get update -qq && apt-get install -y -qq --no-install-recommends shellcheck; }; } >/dev/null
fi
command -v kubectl >/dev/null 2>&1 || { say "needs kubectl (its kustomize renders the kustomizations)"; exit 1; }
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
for tool in kubernetes-validate check-jsonschema; do
  if [ ! -x "$venv/bin/$tool" ]; then
    say "installing $tool into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$tool"
  fi
done
cargo build -q --locked -p sidemount
sidemount=$(cargo metadata -q --format-version 1 --no-deps | jq -r .target_directory)/debug/sidemount

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0 failed=0 failures=()
check() { # NAME COMMAND...: one counted check; its output is shown when it fails
  local name=$1
  shift
  if "$@" >"$work/out" 2>&1; then
    passed=$((passed + 1))
    echo "ok   $name" >&2
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "FAIL $name" >&2
    sed 's/^/       /' "$work/out" | tail -n 30 >&2
  fi
}

# kubernetes-validate --strict for each version; CRD kinds (no schema) are listed.
validate() {
  local file=$1 version out status=0
  for version in "${versions[@]}"; do
    out=$("$venv/bin/kubernetes-validate" --strict -k "$version" "$file" 2>&1) || status=1
    grep -v '^INFO ' <<<"$out" || true
  done
  return "$status"
}
render_and_validate() { # DIR: with the component's plugin (sidemount inject) enabled
  # TMPDIR: kustomize leaves a failed exec plugin's config file there.
  PATH=$(dirname "$sidemount"):$PATH KUSTOMIZE_PLUGIN_HOME=$repo/kustomize/plugin TMPDIR=$work \
    kubectl kustomize --enable-alpha-plugins "$1" >"$work/rendered.yaml" || return 1
  [ -s "$work/rendered.yaml" ] || { echo "renders to nothing"; return 1; }
  validate "$work/rendered.yaml"
}

# ---------------------------------------------------------------- the checks
scripts=(tests/e2e/kind/run.sh tests/e2e/kind/validate.sh tests/container/run.sh tests/lib.sh images/build-local.sh
  scripts/pin-digests.sh images/sidecar-rootfs.sh images/build-binary.sh)
for script in "${scripts[@]}"; do
  check "shellcheck $script" shellcheck -x "$script"
done

for file in tests/e2e/kind/manifests/*.yaml; do
  check "kubernetes-validate --strict $file" validate "$file"
done

for file in tests/e2e/kind/manifests/pod-s3fs.yaml tests/e2e/kind/manifests/pod-legacy.yaml tests/e2e/kind/manifests/job.yaml \
  tests/e2e/kind/manifests/safety-fuse.yaml tests/e2e/kind/manifests/safety-block.yaml; do
  injected_ok() {
    "$sidemount" inject --image sidemount:e2e -f "$1" >"$work/injected.yaml" || return 1
    grep -q 'mountPropagation: Bidirectional' "$work/injected.yaml" || { echo "no sidecar injected"; return 1; }
    validate "$work/injected.yaml"
  }
  check "sidemount inject $file, validated" injected_ok "$file"
done
refused_ok() {
  local out
  if out=$("$sidemount" inject -f tests/e2e/kind/manifests/pod-invalid.yaml 2>&1); then
    echo "sidemount inject accepted pod-invalid.yaml"
    return 1
  fi
  # The kind suite looks for this in kubectl's refusal.
  grep -q 'sidemount.io/volumes:.*volumes\[0\].filesystem' <<<"$out" || { echo "$out"; return 1; }
}
check "sidemount inject refuses pod-invalid.yaml, naming the field" refused_ok

check "kubectl kustomize kustomize/webhook, validated" render_and_validate kustomize/webhook
component_ok() {
  render_and_validate tests/e2e/kind/manifests/component || return 1
  grep -q 'mountPropagation: Bidirectional' "$work/rendered.yaml" || { echo "the component added no sidecar"; return 1; }
}
check "kubectl kustomize tests/e2e/kind/manifests/component (the sidecar component), validated" component_ok
plain_ok() { # DIR: built as `kubectl apply -k` and Flux build it: no flag, no plugin, no sidemount on PATH
  local path
  path=$(tr ':' '\n' <<<"$PATH" | while read -r dir; do [ -x "$dir/sidemount" ] || echo "$dir"; done | paste -sd:)
  env -i HOME="$work" PATH="$path" TMPDIR="$work" kubectl kustomize "$1" >"$work/rendered.yaml" || return 1
  grep -q 'mountPropagation: Bidirectional' "$work/rendered.yaml" || { echo "no sidecar added"; return 1; }
  grep -q "fieldPath: metadata.annotations\['sidemount.io/volumes'\]" "$work/rendered.yaml" \
    || { echo "no downward-API spec"; return 1; }
  validate "$work/rendered.yaml"
}
check "kubectl kustomize tests/e2e/kind/manifests/component-plain (no flag), validated" plain_ok tests/e2e/kind/manifests/component-plain
check "kubectl kustomize kustomize/examples/no-webhook (no flag), validated" plain_ok kustomize/examples/no-webhook

release_ok() { # the release's manifests, pinned to made-up digests with no registry
  scripts/pin-digests.sh --dry-run --out "$work/release" || return 1
  local file
  for file in "$work"/release/sidemount-webhook-*.yaml; do
    validate "$file" || return 1
  done
  tar -tzf "$work"/release/sidemount-kustomize-*.tar.gz >"$work/listing"
  grep -qx 'kustomize/components/sidecar-plain/kustomization.yaml' "$work/listing"
}
check "scripts/pin-digests.sh --dry-run: manifests pinned by digest, validated" release_ok

kind_config_ok() {
  "$venv/bin/python" - tests/e2e/kind/kind-config.yaml <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["kind"] == "Cluster" and doc["apiVersion"] == "kind.x-k8s.io/v1alpha4", doc
roles = [n["role"] for n in doc["nodes"]]
assert roles.count("control-plane") == 1 and set(roles) <= {"control-plane", "worker"}, roles
for node in doc["nodes"]:
    assert set(node) <= {"role", "image", "extraMounts", "extraPortMappings", "labels", "kubeadmConfigPatches"}, node
    for m in node.get("extraMounts", []):
        assert set(m) <= {"hostPath", "containerPath", "readOnly", "selinuxRelabel", "propagation"}, m
EOF
}
check "tests/e2e/kind/kind-config.yaml" kind_config_ok
minio_image_ok() { # run.sh's default is the manifest's image, and not Docker Hub's
  local line default='' manifest=''
  while IFS= read -r line; do
    if [[ $line =~ ^MINIO_IMAGE=\$\{MINIO_IMAGE:-(.*)\}$ ]]; then default=${BASH_REMATCH[1]}; fi
  done <tests/e2e/kind/run.sh
  while IFS= read -r line; do
    if [[ $line =~ ^[[:space:]]*image:[[:space:]]*([^[:space:]]*minio/minio:[^[:space:]]*)$ ]]; then manifest=${BASH_REMATCH[1]}; fi
  done <tests/e2e/kind/manifests/s3.yaml
  if [ -z "$default" ] || [ "$default" != "$manifest" ]; then
    echo "run.sh's MINIO_IMAGE default ($default) is not manifests/s3.yaml's image ($manifest)"
    return 1
  fi
  case $default in
  minio/* | docker.io/*) echo "$default: Docker Hub's minio/minio refuses anonymous pulls"; return 1 ;;
  esac
}
check "MinIO's image: run.sh's default is manifests/s3.yaml's, not Docker Hub's" minio_image_ok
kubectl_skew_ok() {
  "$venv/bin/python" - .github/workflows/e2e-kind.yml <<'EOF'
import sys, yaml
rows = yaml.safe_load(open(sys.argv[1]))["jobs"]["kind"]["strategy"]["matrix"]["include"]
for row in rows:
    server = [int(x) for x in str(row["kubernetes"]).split(".")[:2]]
    client = [int(x) for x in str(row["kubectl"]).lstrip("v").split(".")[:2]]
    assert server[0] == client[0] and abs(server[1] - client[1]) <= 1, \
        f"kubectl {row['kubectl']} against Kubernetes {row['kubernetes']}: outside kubectl's skew of one minor version"
    assert row["node_image"].startswith(f"kindest/node:v{server[0]}.{server[1]}."), row
EOF
}
check "each row of the workflow's matrix has a kubectl of its Kubernetes version" kubectl_skew_ok
# Each `run:` step of a workflow, as GitHub runs it (bash -e -o pipefail), through
# the shellcheck tool; a `${{ }}` expression, which GitHub pastes in before bash sees it,
# stands in as a variable.
workflow_runs_ok() {
  local file=$1 dir=$work/runs status=0 step
  rm -rf "$dir" && mkdir -p "$dir"
  "$venv/bin/python" - "$file" "$dir" <<'EOF' || return 1
import re, sys, yaml
workflow = yaml.safe_load(open(sys.argv[1]))
count = 0
for job_name, job in workflow["jobs"].items():
    for i, step in enumerate(job.get("steps", [])):
        if "run" not in step:
            continue
        if step.get("shell", "bash") != "bash":
            sys.exit(f"{job_name} step {i}: shell {step['shell']} is not checked here")
        body = re.sub(r"\$\{\{[^}]*\}\}", "${GITHUB_EXPRESSION}", step["run"])
        with open(f"{sys.argv[2]}/{job_name}-{i}.sh", "w") as out:
            out.write("#!/usr/bin/env bash\nset -eo pipefail\nGITHUB_EXPRESSION=${GITHUB_EXPRESSION:-}\n" + body)
        count += 1
if count == 0:
    sys.exit("no run: step found")
EOF
  for step in "$dir"/*.sh; do
    shellcheck -s bash "$step" || { echo "in $(basename "$step" .sh) of $file"; status=1; }
  done
  return "$status"
}
for workflow in .github/workflows/e2e-kind.yml .github/workflows/release.yml; do
  check "check-jsonschema $workflow" "$venv/bin/check-jsonschema" --builtin-schema vendor.github-workflows "$workflow"
  check "shellcheck of every run: step of $workflow" workflow_runs_ok "$workflow"
done
no_expressions_in_release_runs() { # untrusted values reach release steps as environment only
  "$venv/bin/python" - <<'EOF'
import sys, yaml
workflow = yaml.safe_load(open(".github/workflows/release.yml"))
bad = [f"{name}: {step.get('name', step['run'][:40])}" for name, job in workflow["jobs"].items()
       for step in job["steps"] if "${{" in step.get("run", "")]
if bad:
    sys.exit("${{ }} inside run: (pass it through env:): " + "; ".join(bad))
EOF
}
check "release.yml: no \${{ }} expression inside a run: step" no_expressions_in_release_runs

[ ${#failures[@]} = 0 ] || say "failed: ${failures[*]}"
echo "kind manifests: $passed passed, $failed failed"
[ "$failed" = 0 ]
