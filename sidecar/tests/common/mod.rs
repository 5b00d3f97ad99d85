//! What the test crates share: where the repository and its venv are, the
//! tools found there (`tests/requirements.txt`, installed by `tests/setup.sh`),
//! and the Kubernetes versions injected objects are validated for
//! (`validate_strictly`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `kubernetes-validate --strict -k VERSION` for each: 1.29, the first with
/// native sidecars on by default, and the newest `tests/requirements.txt` asks for.
pub const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

/// The repository's top directory.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// Where `tests/setup.sh` installs the Python tools.
pub fn venv_bin(name: &str) -> PathBuf {
    repo().join(".venv/bin").join(name)
}

/// A tool from `<repo>/.venv/bin`, else from PATH; a missing one fails the test,
/// saying how to install it.
pub fn tool(name: &str) -> PathBuf {
    let venv = venv_bin(name);
    if venv.exists() {
        return venv;
    }
    which::which(name).unwrap_or_else(|_| {
        panic!(
            "{name} is neither at {} nor on PATH: run `bash tests/setup.sh` as root, or \
             `python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt` in the repo root",
            venv.display()
        )
    })
}

/// `kubernetes-validate --strict --quiet -k VERSION FILE` for each of
/// `KUBERNETES_VERSIONS`: a refusal fails the test, naming `what`, the file and
/// the version. Returns what each version still said, as `(version, line)`: the
/// kinds it found no schema for, for the caller to judge.
#[track_caller]
pub fn validate_strictly(file: &Path, what: &str) -> Vec<(&'static str, String)> {
    let tool = tool("kubernetes-validate");
    let mut said = Vec::new();
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(&tool)
            .args(["--strict", "--quiet", "-k", version])
            .arg(file)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", tool.display()));
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "{what}: kubernetes-validate --strict -k {version} refuses {}:\n{report}",
            file.display()
        );
        said.extend(report.lines().filter(|line| !line.trim().is_empty()).map(|line| (version, line.to_string())));
    }
    said
}
