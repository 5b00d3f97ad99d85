"""python -m podrunner.cases [CASE ...]: the pod runner's unit tests, then the
end-to-end cases on the local Docker engine. Run as root.

Ends with `pod runner: N passed, M failed`; exits non-zero when anything failed,
including a case listed in known.py that passed."""

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

from .harness import REPO, World, run_scenario
from .known import AWAITING_FIX, KNOWN_DATA_LOSS, KNOWN_NO_RECOVERY
from .scenarios import SCENARIOS

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def say(text):
    print(f"pod runner: {text}", file=sys.stderr, flush=True)


def unit_tests(work):
    """pytest on tests/podrunner/unit: (passed, failed)."""
    report = os.path.join(work, "unit.xml")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                           os.path.join(HERE, "unit")], capture_output=True, text=True, cwd=HERE)
    if not os.path.exists(report):
        say("the unit tests did not run:\n" + proc.stdout[-3000:] + proc.stderr[-2000:])
        return 0, 1
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    failed = failures + errors + skipped  # a skipped privileged test is a test that cannot fail
    if failed:
        say("unit tests failed:\n" + proc.stdout[-4000:])
    say(f"unit tests: {total - failed} passed, {failed} failed")
    return total - failed, failed


def default_sidemount():
    for candidate in (os.path.join(REPO, "target", "debug", "sidemount"),
                      os.path.join(REPO, "target", "release", "sidemount")):
        if os.access(candidate, os.X_OK):
            return candidate
    return "sidemount"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m podrunner.cases", description=__doc__)
    parser.add_argument("cases", nargs="*", help="scenario or case names (default: all)")
    parser.add_argument("--image", default=os.environ.get("SIDECAR_IMAGE", "sidemount:dev"))
    parser.add_argument("--sidemount", default=default_sidemount(), help="the binary for inject and webhook")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("PODRUNNER_CONCURRENCY", "4")))
    parser.add_argument("--no-unit", action="store_true", help="skip the unit tests")
    parser.add_argument("--unit-only", action="store_true", help="only the unit tests (no Docker engine)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("run as root: the runner mounts on the node directory")
        return 1
    work = tempfile.mkdtemp(prefix="podrunner-e2e.")
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    started = time.monotonic()
    passed = failed = 0
    if not args.no_unit:
        passed, failed = unit_tests(work)
    if args.unit_only:
        subprocess.run(["rm", "-rf", "--one-file-system", work])
        print(f"pod runner: {passed} passed, {failed} failed")
        return 1 if failed else 0
    scenarios = [s for s in SCENARIOS if not args.cases or s.__name__ in args.cases
                 or any(c in args.cases for c in getattr(s, "cases", ()))]
    world = World(work, args.image, args.sidemount, args.concurrency)
    results = []
    try:
        world.start()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            futures = {pool.submit(run_scenario, world, s, logs): s for s in scenarios}
            for future in concurrent.futures.as_completed(futures):
                for result in future.result():
                    if args.cases and result.name not in args.cases and futures[future].__name__ not in args.cases:
                        continue
                    results.append(result)
                    report(result)
    except Exception as err:  # noqa: BLE001 - the shared setup failed
        say(f"setup failed: {type(err).__name__}: {err}")
        failed += 1
    finally:
        world.close()
    known, unexpected_pass = [], []
    for result in results:
        expected = known_reason(result.name)
        if expected and result.error is not None:
            known.append(result.name)
        elif expected:
            unexpected_pass.append(result.name)
            failed += 1
        elif result.error is None:
            passed += 1
        else:
            failed += 1
    for name in sorted(known):
        say(f"known failure (known.py): {name}: {known_reason(name)}")
    if unexpected_pass:
        say(f"PASSED but listed as known failures in known.py (remove them from the list): "
            f"{', '.join(sorted(unexpected_pass))}")
    bad = [r.name for r in results if r.error is not None and r.name not in known]
    if bad:
        say(f"failed: {', '.join(sorted(bad))}")
    say(f"took {time.monotonic() - started:.0f}s; logs in {work}" if args.keep or failed else
        f"took {time.monotonic() - started:.0f}s")
    if not (args.keep or failed):
        subprocess.run(["rm", "-rf", "--one-file-system", work])
    print(f"pod runner: {passed} passed, {failed} failed")
    return 1 if failed else 0


def known_reason(name):
    return KNOWN_DATA_LOSS.get(name) or KNOWN_NO_RECOVERY.get(name) or AWAITING_FIX.get(name)


def report(result):
    expected = known_reason(result.name)
    if result.error is None:
        say(f"{'PASS?' if expected else 'ok  '} {result.name} ({result.took:.0f}s)")
    else:
        say(f"{'known' if expected else 'FAIL'} {result.name} ({result.took:.0f}s)")
    for note in result.notes:
        print(f"       -- {note}", file=sys.stderr)
    if result.error is not None:
        for line in str(result.error).splitlines()[:20]:
            print(f"       {line}", file=sys.stderr)
        if not expected:
            with open(result.scenario.log_path, errors="replace") as f:
                tail = f.readlines()[-40:]
            print("       log (last 40 lines):", file=sys.stderr)
            for line in tail:
                print(f"         {line.rstrip()}", file=sys.stderr)
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
