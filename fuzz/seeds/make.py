#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/: the test fixtures
(sidecar/tests/fixtures), hand-made hostile inputs, and the inputs the fuzzers
found (fuzz/seeds/found/<target>/). Rerun after changing any of them;
fuzz/run.sh never writes to the corpus."""
import hashlib
import pathlib
import shutil

here = pathlib.Path(__file__).resolve().parent.parent
fixtures = here.parent / "sidecar/tests/fixtures"
corpus = here / "corpus"


def alias_bomb():
    text = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(1, 9):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i-1}"] * 9) + "]\n"
    return text + "volumes: *a8\n"


def wide_alias():
    text = "- {name: a, type: fuse, command: &c [" + ",".join(["x"] * 2000) + ", '{mountpoint}']}\n"
    return text + "".join(f"- name: v{i}\n  type: fuse\n  command: *c\n" for i in range(1200))


# Hostile spec texts: each is a seed for the spec reader, the annotation path of
# injection and the admission handler.
HOSTILE_SPECS = {
    "deep-flow-in-block": "volumes: " + "[" * (60 * 1024),
    "deep-flow-maps": "volumes:\n  " + "{a: " * (12 * 1024),
    "deep-block": "".join(" " * i + "-\n" for i in range(40)),
    "huge": "volumes: []\n#" + "x" * (66 * 1024) + "\n",
    "at-depth-limit": "volumes: " + "[" * 31 + "a, " * 2000 + "]" * 31,
    "brackets-in-strings": "- {name: a, type: fuse, command: [sh, -c, \"echo [[[]]] {{}}\", '{mountpoint}'], env: {A: ']]]}}'}}\n",
    "block-scalar-brackets": "- name: a\n  type: fuse\n  command:\n  - sh\n  - |\n    [[[[ {{{{\n  - '{mountpoint}'\n",
    "alias-bomb": alias_bomb(),
    "wide-alias": wide_alias(),
    "aliases-ok": "- {name: a, type: zfs, dataset: p/a, env: &env {A: b}}\n- {name: b, type: zfs, dataset: p/b, env: *env}\n",
    "bom": "\ufeffvolumes:\n- {name: a, type: zfs, dataset: p/a}\n",
    "bom-document-start": "\ufeff---\nvolumes:\n- {name: a, type: zfs, dataset: p/a}\n",
    "yaml-directive": "%YAML 1.2\n---\n- {name: a, type: zfs, dataset: p/a}\n",
    "tagged": "- {name: !foo a, type: !!str zfs, dataset: p/a}\n",
    "misspelled": "volume:\n- {name: a, type: zfs, dataset: p/a}\n",
    "mistyped": "- {name: 123, type: zfs, dataset: p/a, env: {DEBUG: 1}, format: 'true', create: {q: 1.5}}\n",
    "json": '{"volumes":[{"name":"a","type":"fuse","command":["x","{mountpoint}"],"env":{"A":"1"}}]}',
    "doubled-key": "- {name: a, name: b, type: zfs, dataset: p/a}\n",
    "complex-key": "? [a, b]\n: c\n[d]: e\n",
    "crlf": "volumes:\r\n- name: a\r\n  type: zfs\r\n  dataset: p/a\r\n",
    "multi-document": "- {name: a, type: zfs, dataset: p/a}\n---\n- {name: b, type: zfs, dataset: p/b}\n",
}
NON_UTF8_SPEC = b"volumes:\n- {name: caf\xe9, type: zfs, dataset: p/a}\n"

POD = """apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations:
    sidemount.io/volumes: '- {name: d, type: zfs, dataset: p/d}'
spec:
  containers: [{name: app, image: x, volumeMounts: [{name: d, mountPath: /d}]}]
"""
HOSTILE_STREAMS = {
    "bom": "\ufeff" + POD,
    "bom-separator": POD + "---\n\ufeff" + POD,
    "directives": "# made by a tool\n%YAML 1.2\n%TAG !k! tag:k8s.io,2024:\n---\n" + POD,
    "deep-document": "kind: ConfigMap\nmetadata: {name: c}\ndata: " + "[" * 4096 + "\n",
    "aliases": "kind: Pod\nmetadata: &m {name: p, annotations: {sidemount.io/volumes: '- {name: d, type: zfs, dataset: p/d}'}}\nspec: {containers: [&c {name: app, image: x}]}\n---\nkind: Pod\nmetadata: *m\nspec: {containers: [*c]}\n",
    "flexvolume": "kind: Pod\nmetadata: {name: f, annotations: {sidemount.io/convert-flexvolume: 'true'}}\nspec:\n  containers: [{name: app, image: x}]\n  volumes: [{name: d, flexVolume: {driver: altalang/ofs, secretRef: ofs-secret, options: {networkPath: 's3://b'}}}]\n",
    "list": '{"kind":"List","items":[{"kind":"ConfigMap"},' + '{"kind":"Pod","metadata":{"name":"p","annotations":{"sidemount.io/volumes":"- {name: d, type: zfs, dataset: p/d}"}},"spec":{"containers":[]}}]}',
    # The layout of one root emptyDir: every shape of a mount of a served volume,
    # and what is refused.
    "layout-mounts": "kind: Pod\nmetadata: {name: m, annotations: {sidemount.io/volumes: \"- {name: d, type: fuse, command: [x, '{mountpoint}']}\\n- {name: sidemount, type: zfs, dataset: p/s}\"}}\nspec:\n  initContainers:\n  - {name: istio-proxy, image: i, restartPolicy: Always}\n  - {name: init, image: x, volumeMounts: [{name: d, mountPath: /i}]}\n  containers:\n  - name: app\n    image: x\n    volumeMounts:\n    - {name: d, mountPath: /a}\n    - {name: d, mountPath: /b, readOnly: true, mountPropagation: None}\n    - {name: d, mountPath: /c, subPath: 'c/'}\n    - {name: d, mountPath: /e, subPathExpr: '$(POD)', subPath: ''}\n    - {name: sidemount, mountPath: /s, mountPropagation: Bidirectional}\n  volumes: [{name: d, emptyDir: {}}, {name: sidemount, emptyDir: {medium: Memory}}]\n",
    "layout-root-name-taken": POD.replace("spec:\n", "spec:\n  volumes: [{name: sidemount, emptyDir: {}}]\n"),
    "layout-subpath-absolute": POD.replace("mountPath: /d}", "mountPath: /d, subPath: /etc}"),
    "layout-subpath-backstep": POD.replace("mountPath: /d}", "mountPath: /d, subPathExpr: '$(A)/..'}"),
    "layout-subpath-both": POD.replace("mountPath: /d}", "mountPath: /d, subPath: a, subPathExpr: b}"),
    "layout-recursive-read-only": POD.replace("mountPath: /d}", "mountPath: /d, readOnly: true, recursiveReadOnly: Enabled}"),
    "layout-native-sidecar-subpath": POD.replace("spec:\n", "spec:\n  initContainers: [{name: s, image: x, restartPolicy: Always, volumeMounts: [{name: d, mountPath: /d, subPath: logs}]}, {name: istio-proxy, image: i, restartPolicy: Always}]\n"),
    "layout-legacy-subpath": POD.replace("  annotations:\n", "  annotations:\n    sidemount.io/mode: legacy\n").replace("mountPath: /d}", "mountPath: /d, subPath: s}"),
    "layout-volume-device": POD.replace("volumeMounts: [{name: d, mountPath: /d}]", "volumeDevices: [{name: d, devicePath: /dev/x}]"),
    "layout-init-before-sidecar": POD.replace("spec:\n", "spec:\n  initContainers: [{name: i, image: x, volumeMounts: [{name: d, mountPath: /d}]}, {name: istio-proxy, image: i, restartPolicy: Always}]\n"),
    "layout-legacy-init": POD.replace("  annotations:\n", "  annotations:\n    sidemount.io/mode: legacy\n").replace("spec:\n", "spec:\n  initContainers: [{name: i, image: x, volumeMounts: [{name: d, mountPath: /d}]}]\n"),
    "flexvolume-label-only": "kind: Pod\nmetadata: {name: f, labels: {sidemount.io/inject: 'true'}}\nspec:\n  containers: [{name: app, image: x, volumeMounts: [{name: d, mountPath: /d}]}]\n  volumes: [{name: d, flexVolume: {driver: altalang/ofs, options: {networkPath: 's3://b'}}}]\n",
    "old-layout-injected": "kind: Pod\nmetadata: {name: o, annotations: {sidemount.io/injected: 0.0.9, sidemount.io/volumes: '- {name: d, type: zfs, dataset: p/d}'}}\nspec:\n  initContainers: [{name: sidemount, image: s, restartPolicy: Always, volumeMounts: [{name: d, mountPath: /sidemount/d, mountPropagation: Bidirectional}]}]\n  containers: [{name: app, image: x, volumeMounts: [{name: d, mountPath: /d, mountPropagation: HostToContainer}]}]\n  volumes: [{name: d, emptyDir: {}}]\n",
    "resource-list": "apiVersion: config.kubernetes.io/v1\nkind: ResourceList\nitems:\n- " + POD.replace("\n", "\n  ").rstrip() + "\nfunctionConfig: {apiVersion: sidemount.io/v1alpha1, kind: SidemountInjector, spec: {mode: legacy}}\n",
}

MOUNTINFO = {
    "duplicate-ids": "1 0 0:1 / / rw - ext4 /dev/a rw\n5 1 0:2 / /m rw - fuse.x x rw\n6 5 0:3 / /m rw - fuse.x x rw\n5 6 0:4 / /m rw - fuse.x x rw\n",
    "self-parent": "7 7 0:1 / /m rw shared:1 - fuse f rw\n",
    "escapes": "1 0 0:1 / /a\\040b\\134c\\011 rw master:2 shared:3 propagate_from:4 unbindable - fuse.s3fs s3\\040fs rw\n",
    "missing-fields": "1 0 0:1 /\n2 1\n\n3 2 0:1 / /x rw -\n",
    "bad-numbers": "x y 0:1 / / rw - ext4 a rw\n-1 99999999999 0:1 / /n rw shared:x - ext4 a rw\n",
}


def write(target, name, data):
    directory = corpus / target
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (directory / name).write_bytes(data)


def main():
    shutil.rmtree(corpus, ignore_errors=True)
    spec_files = sorted((fixtures / "specs").glob("*/*.yaml"))
    for path in spec_files:
        name = f"fixture-{path.parent.name}-{path.stem}"
        write("spec", name, path.read_bytes())
        write("inject", name, b"\x00" + path.read_bytes())
    for name, text in HOSTILE_SPECS.items():
        write("spec", name, text)
        # The big ones once: the spec reader is where their cost was.
        if len(text) <= 8192:
            write("inject", "annotation-" + name, b"\x00" + text.encode())
            write("admission", "annotation-" + name, text.lstrip("{").encode() or b"-")
    deep = "volumes: " + "[" * 4096
    write("inject", "annotation-deep-flow-in-block", b"\x00" + deep.encode())
    write("admission", "annotation-deep-flow-in-block", deep.encode())
    write("spec", "non-utf8", NON_UTF8_SPEC)
    write("inject", "annotation-non-utf8", b"\x00" + NON_UTF8_SPEC)
    write("admission", "annotation-non-utf8", NON_UTF8_SPEC)
    for path in sorted((fixtures / "inject").glob("*.yaml")) + sorted((fixtures / "kustomize").glob("*/*.yaml")):
        write("inject", f"fixture-stream-{path.parent.name}-{path.stem}", b"\x01" + path.read_bytes())
    for name, text in HOSTILE_STREAMS.items():
        write("inject", "stream-" + name, b"\x01" + text.encode())
    write("inject", "stream-non-utf8", b"\x01" + POD.encode() + b"# caf\xe9\n")
    for path in sorted((fixtures / "admission").glob("*.json")):
        write("admission", "fixture-" + path.stem, path.read_bytes())
    write("admission", "not-json", b"{")
    write("admission", "deep-json", b"{" + b'"a":[' * 200)
    for path in sorted((fixtures / "mountinfo").iterdir()):
        write("mountinfo", "fixture-" + path.name, path.read_bytes())
    for name, text in MOUNTINFO.items():
        write("mountinfo", name, text)
    write("mountinfo", "non-utf8", b"1 0 0:1 / /caf\xe9 rw - ext4 /dev/\xff rw\n")
    # What the fuzzers found, each now a regression test too.
    for path in sorted((here / "seeds/found").glob("*/*")):
        write(path.parent.name, "found-" + path.name, path.read_bytes())
    total = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file())
    print(f"{sum(1 for p in corpus.rglob('*') if p.is_file())} seeds, {total} bytes")


if __name__ == "__main__":
    main()
