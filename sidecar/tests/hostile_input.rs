//! Hostile input to `sidemount check` and `sidemount inject`, handed over as a
//! user (or an attacker) would: huge, nested deep, misspelled, mistyped, aliased,
//! not UTF-8, opened with a byte order mark or a YAML directive. Each is answered
//! at once, with a line that names the limit or the field, and an exit code that
//! says what failed. A bad setting a command does not use does not fail it.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Far above what any of these inputs costs now; far below what they cost
/// before the limits (a 200 KB spec took 161 s to check).
const PROMPT: Duration = Duration::from_secs(20);

/// Runs `sidemount ARGS` with `stdin` and only the given settings; kills it at
/// `PROMPT` (it is our child) and fails the test then.
fn sidemount(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidemount"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sidemount");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // A refusal may come before the input is all read: a broken pipe is its answer.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > PROMPT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sidemount {args:?} still ran after {PROMPT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = writer.join();
    child.wait_with_output().unwrap()
}

/// Exit code and all the output.
fn answer(out: &Output) -> (i32, String) {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// `sidemount check` on one file holding `bytes`.
fn check(bytes: &[u8], env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("volumes.yaml");
    std::fs::write(&path, bytes).unwrap();
    let (code, text) = answer(&sidemount(&["check", path.to_str().unwrap()], env, b""));
    (code, text, path.display().to_string())
}

fn inject(stdin: &[u8], env: &[(&str, &str)]) -> (i32, String) {
    answer(&sidemount(&["inject"], env, stdin))
}

/// A pod asking for sidemount with `annotations` (YAML flow map entries).
fn pod(annotations: &str, volumes: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {{{annotations}}}\nspec:\n  containers: [{{name: app, image: x}}]\n  volumes: {volumes}\n"
    )
}

const VALID: &str = "volumes:\n- {name: data, type: fuse, command: [bindfs, -f, /src, \"{mountpoint}\"]}\n";

#[test]
fn check_refuses_huge_and_deeply_nested_specs_at_once() {
    for (size, says) in [
        (200 * 1024, "larger than the limit of 65536 bytes"),
        (120 * 1024, "larger than the limit of 65536 bytes"),
        (60 * 1024, "more than 32 levels deep"),
    ] {
        let text = format!("volumes: {}", "[".repeat(size));
        let started = Instant::now();
        let (code, out, file) = check(text.as_bytes(), &[]);
        assert_eq!(code, 64, "{out}");
        assert!(out.contains(&format!("{file}: volumes: the spec")) && out.contains(says), "{size} bytes: {out}");
        assert!(started.elapsed() < Duration::from_secs(5), "{size} bytes took {:?}", started.elapsed());
    }
    let maps = format!("volumes:\n  {}", "{a: ".repeat(12 * 1024));
    let (code, out, _) = check(maps.as_bytes(), &[]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("more than 32 levels deep"), "{out}");
}

#[test]
fn check_refuses_a_misspelled_top_level_key() {
    for (text, line) in [
        (
            "volume:\n- {name: data, type: zfs, dataset: p/d}\n",
            "volume: unknown field `volume` (did you mean `volumes`?)",
        ),
        ("Volumes:\n- {name: data, type: zfs, dataset: p/d}\n", "Volumes: unknown field `Volumes`"),
        ("{}\n", "volumes: required"),
        ("volumes:\n- {name: data, type: zfs, dataset: p/d, Dataset: p/e}\n", "volumes[0].Dataset: unknown field"),
    ] {
        let (code, out, file) = check(text.as_bytes(), &[]);
        assert_eq!(code, 64, "{text:?}: {out}");
        assert!(out.contains(&format!("{file}: {line}")), "{text:?}: {out}");
    }
}

#[test]
fn check_names_the_field_of_a_value_of_the_wrong_kind() {
    let text = "volumes:\n- name: 123\n  type: zfs\n  dataset: p/d\n  env: {DEBUG: 1}\n";
    let (code, out, file) = check(text.as_bytes(), &[]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains(&format!("{file}: volumes[0].name: must be a string, not the number 123: quote it")), "{out}");
    assert!(out.contains(&format!("{file}: volumes[0].env.DEBUG: must be a string, not the number 1")), "{out}");
    assert!(!out.contains("untagged"), "{out}");
}

#[test]
fn check_refuses_an_alias_bomb_quickly_and_says_why() {
    let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 9].join(", ")));
    }
    text.push_str("volumes: *a8\n");
    let started = Instant::now();
    let (code, out, _) = check(text.as_bytes(), &[]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("aliases (*name) that expand to more than"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[test]
fn check_names_a_spec_file_that_is_not_utf8() {
    let (code, out, file) = check(b"volumes:\n- {name: caf\xe9, type: zfs, dataset: p/d}\n", &[]);
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains(&format!("{file}: volumes: the spec file is not UTF-8 text: the byte at offset 21 is not UTF-8")),
        "{out}"
    );
}

#[test]
fn check_and_inject_do_not_fail_on_settings_they_do_not_use() {
    let unused = [("SIDEMOUNT_LISTEN", "nowhere"), ("SIDEMOUNT_CHECK_TIMEOUT", "soon"), ("SIDEMOUNT_ROOT", "")];
    let (code, out, _) = check(VALID.as_bytes(), &unused);
    assert_eq!(code, 0, "{out}");
    let pod = pod("sidemount.io/volumes: '- {name: d, type: zfs, dataset: p/d}'", "[]");
    let (code, out) = inject(pod.as_bytes(), &unused);
    assert_eq!(code, 0, "{out}");
    // A setting inject does use is still checked.
    let (code, out) = inject(pod.as_bytes(), &[("SIDEMOUNT_SHUTDOWN_TIMEOUT", "soon")]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("SIDEMOUNT_SHUTDOWN_TIMEOUT"), "{out}");
    let (code, out, _) = check(VALID.as_bytes(), &[("SIDEMOUNT_SHUTDOWN_TIMEOUT", "soon")]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn inject_reads_a_byte_order_mark_and_a_yaml_directive() {
    let pod = pod("sidemount.io/volumes: '- {name: d, type: zfs, dataset: p/d}'", "[]");
    for input in [format!("\u{feff}{pod}"), format!("\u{feff}---\n{pod}"), format!("%YAML 1.2\n---\n{pod}")] {
        let (code, out) = inject(input.as_bytes(), &[]);
        assert_eq!(code, 0, "{input:?}: {out}");
        assert!(out.contains("sidemount.io/injected"), "{input:?}: {out}");
    }
}

#[test]
fn inject_names_input_that_is_not_utf8_and_where() {
    let mut input = pod("sidemount.io/volumes: '- {name: d, type: zfs, dataset: p/d}'", "[]").into_bytes();
    let at = input.len();
    input.extend_from_slice(b"# caf\xe9\n");
    let (code, out) = inject(&input, &[]);
    assert_eq!(code, 64, "{out}");
    let offset = at + "# caf".len();
    assert!(out.contains(&format!("stdin: not UTF-8 text: the byte at offset {offset} is not UTF-8")), "{out}");
}

#[test]
fn inject_names_the_flexvolume_annotation_and_field_at_fault() {
    let none = pod("sidemount.io/convert-flexvolume: 'true'", "[{name: tmp, emptyDir: {}}]");
    let (code, out) = inject(none.as_bytes(), &[]);
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains(
            "Pod p (document 1): sidemount.io/convert-flexvolume: \"true\", but the pod has no altalang/ofs FlexVolume"
        ),
        "{out}"
    );
    let flex = pod(
        "sidemount.io/convert-flexvolume: 'true'",
        "[{name: d, flexVolume: {driver: altalang/ofs, secretRef: ofs-secret, options: {networkPath: 's3://b'}}}]",
    );
    let (code, out) = inject(flex.as_bytes(), &[]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("spec.volumes[0].flexVolume: secretRef: must be a map naming the Secret"), "{out}");
}

#[test]
fn inject_refuses_a_hostile_annotation_or_document_at_once() {
    let annotation = format!("volumes: {}", "[".repeat(254 * 1024));
    let input = pod(&format!("sidemount.io/volumes: '{annotation}'"), "[]");
    let started = Instant::now();
    let (code, out) = inject(input.as_bytes(), &[]);
    assert_eq!(code, 64, "{}", &out[..out.len().min(400)]);
    let says = format!(
        "sidemount.io/volumes: volumes: the spec is {} bytes, above the limit of 65536 bytes",
        annotation.len()
    );
    assert!(out.contains(&says), "{out}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    let deep = format!("kind: ConfigMap\nmetadata: {{name: c}}\ndata: {}\n", "[".repeat(100 * 1024));
    let started = Instant::now();
    let (code, out) = inject(deep.as_bytes(), &[]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("stdin: document 1 nests lists and maps more than 128 levels deep"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
