//! Test 8: invalid volume specs are refused with exit 64 and a line naming the field,
//! by `sidemount check` and by `sidemount run` alike. The specs are fixture files in
//! tests/fixtures/specs/{valid,invalid}; each invalid one lists the field(s) it must be
//! refused for in `# expect: <field>` lines.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::spec::{bindfs, spec};
use support::{run_with_timeout, Pod};

struct Fixture {
    path: PathBuf,
    expect: Vec<String>,
}

fn fixtures(kind: &str) -> Vec<Fixture> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/specs").join(kind);
    let mut out: Vec<Fixture> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|path| {
            let text = fs::read_to_string(&path).unwrap();
            let expect =
                text.lines().filter_map(|l| l.strip_prefix("# expect:")).map(|f| f.trim().to_string()).collect();
            Fixture { path, expect }
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// `sidemount check FILE`: (exit code, stdout + stderr).
fn check(path: &Path) -> (i32, String) {
    let mut c = Command::new(support::sidemount_bin());
    c.arg("check").arg(path);
    let out = run_with_timeout(&mut c, None, Duration::from_secs(30)).expect("sidemount check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// What is wrong with one refusal, if anything.
fn judge(what: &str, fx: &Fixture, code: i32, output: &str) -> Option<String> {
    let missing: Vec<&String> = fx.expect.iter().filter(|f| !output.lines().any(|l| l.contains(f.as_str()))).collect();
    if code == 64 && missing.is_empty() {
        return None;
    }
    Some(format!(
        "{what} {}: exit {code} (want 64), fields not named: {missing:?}\n    output: {}",
        name(&fx.path),
        output.trim().replace('\n', "\n            ")
    ))
}

#[test]
fn check_accepts_valid_specs() {
    let mut failures = Vec::new();
    for fx in fixtures("valid") {
        let (code, out) = check(&fx.path);
        if code != 0 {
            failures.push(format!("check {}: exit {code} (want 0): {out}", name(&fx.path)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn check_refuses_invalid_specs_naming_the_field() {
    let mut failures = Vec::new();
    for fx in fixtures("invalid") {
        assert!(!fx.expect.is_empty(), "{} has no `# expect:` line", name(&fx.path));
        let (code, out) = check(&fx.path);
        failures.extend(judge("check", &fx, code, &out));
    }
    assert!(
        failures.is_empty(),
        "{} of the invalid specs were not refused right:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `sidemount run` in a proper sidecar (so nothing but the spec can be wrong) exits 64
/// naming the same fields, and mounts nothing.
#[test]
fn run_refuses_invalid_specs_with_64_naming_the_field() {
    let pod = Pod::new(&["data", "other", "tank"]);
    let mut failures = Vec::new();
    for fx in fixtures("invalid") {
        let mut sup = pod.supervisor().config_path(&fx.path).start();
        // Refusing a spec is instant; 10 s only bounds a binary that hangs instead.
        match sup.wait_exit(Duration::from_secs(10)) {
            Some(st) => failures.extend(judge("run", &fx, st.code().unwrap_or(-1), &sup.output())),
            None => failures.push(format!("run {}: still running after 10 s (want exit 64)", name(&fx.path))),
        }
    }
    assert!(
        pod.all_node_fuse_mounts().is_empty(),
        "an invalid spec mounted something: {:#?}",
        pod.all_node_fuse_mounts()
    );
    assert!(
        failures.is_empty(),
        "{} of the invalid specs were not refused right:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// SIDEMOUNT_VOLUMES is validated like the file, and a name in both is a config error.
#[test]
fn run_refuses_invalid_inline_spec_and_duplicates_across_sources() {
    support::require_tool("bindfs", "bindfs");
    let pod = Pod::new(&["data"]);
    let src = pod.work("src");

    // Inline (the injected form is a bare list, as in the pod annotation).
    let mut sup = pod
        .supervisor()
        .config_path(&pod.path().join("config/absent.yaml"))
        .inline("- name: data\n  type: fuse\n")
        .start();
    let code = sup.expect_exit(Duration::from_secs(20));
    assert_eq!(code, 64, "invalid SIDEMOUNT_VOLUMES\n{}", sup.log_tail(20));
    assert!(sup.output().contains("command"), "refusal does not name `command`:\n{}", sup.output());

    // The same name in the file and inline.
    pod.write_spec(&spec(&[bindfs("data", &src)]));
    let mut sup = pod.supervisor().inline(&spec(&[bindfs("data", &src)])).start();
    let code = sup.expect_exit(Duration::from_secs(20));
    assert_eq!(code, 64, "duplicate name across SIDEMOUNT_CONFIG and SIDEMOUNT_VOLUMES\n{}", sup.log_tail(20));
    assert!(pod.all_node_fuse_mounts().is_empty(), "mounted despite the config error");
}
