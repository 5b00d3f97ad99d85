#!/usr/bin/env python3
"""Applies an admission response's JSON Patch to the reviewed object with an
implementation independent of sidemount's (python-jsonpatch), and compares the
result with what `sidemount inject` wrote for the same pod.

usage: apply_patch.py REVIEW.json RESPONSE.json INJECT_OUTPUT.yaml PATCHED_OUT.json

Exit 0 when they are equal (PATCHED_OUT.json then holds the patched pod),
1 with a diff when they differ, 2 when a tool is missing.
"""
import base64
import difflib
import json
import sys

try:
    import jsonpatch
    import yaml
except ImportError as err:  # the Rust test turns this into a failure naming the fix
    print(f"missing Python module: {err}; install tests/requirements.txt into .venv (bash tests/setup.sh)", file=sys.stderr)
    sys.exit(2)


def main(review_path, response_path, inject_path, out_path):
    with open(review_path) as f:
        pod = json.load(f)["request"]["object"]
    with open(response_path) as f:
        response = json.load(f)["response"]
    if not response.get("allowed"):
        print(f"the response denies the pod: {response.get('status')}", file=sys.stderr)
        return 1
    if "patch" in response:
        if response.get("patchType") != "JSONPatch":
            print(f"patchType is {response.get('patchType')!r}, not JSONPatch", file=sys.stderr)
            return 1
        patch = json.loads(base64.b64decode(response["patch"]))
        patched = jsonpatch.JsonPatch(patch).apply(pod)
    else:
        patched = pod
    with open(inject_path) as f:
        injected = yaml.safe_load(f)
    with open(out_path, "w") as f:
        json.dump(patched, f, indent=2)
    if patched != injected:
        a = json.dumps(patched, indent=2, sort_keys=True).splitlines()
        b = json.dumps(injected, indent=2, sort_keys=True).splitlines()
        print("the patched pod differs from `sidemount inject`'s output:", file=sys.stderr)
        for line in difflib.unified_diff(a, b, "webhook patch applied", "sidemount inject", lineterm=""):
            print(line, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
