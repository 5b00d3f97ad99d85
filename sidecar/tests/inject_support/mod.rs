//! `sidemount inject` run as a user runs it, for the tests that feed it YAML.

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `sidemount inject ARGS` with `stdin`, with `PATH` and only the given
/// environment (no `SIDEMOUNT_*` setting leaks in from the test's own).
pub fn run_inject(path: &OsStr, env: &[(&str, &str)], args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidemount"))
        .env_clear()
        .env("PATH", path)
        .envs(env.iter().copied())
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sidemount inject");
    // A refused command line exits before reading: a broken pipe is its answer, not an error here.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}
