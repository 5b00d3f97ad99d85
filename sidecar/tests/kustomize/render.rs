//! How the tests run kustomize and `sidemount inject`: `kubectl kustomize` with
//! or without the plugin, throwaway overlays, and the PATH the plugin sees.

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};

use crate::common;
use crate::inject_support::run_inject;
use crate::kustomize_dir;

/// PATH for kustomize's plugins: the `sidemount` under test first.
pub fn search_path(with_sidemount: bool) -> String {
    let mut dirs = Vec::new();
    if with_sidemount {
        dirs.push(Path::new(env!("CARGO_BIN_EXE_sidemount")).parent().unwrap().to_path_buf());
    }
    dirs.push(common::repo().join(".venv/bin"));
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    dirs.extend(std::env::split_paths(&inherited).filter(|dir| !dir.join("sidemount").exists()));
    std::env::join_paths(dirs).unwrap().into_string().unwrap()
}

/// How `kubectl kustomize` is run.
#[derive(Clone, Copy)]
pub struct Render {
    /// `--enable-alpha-plugins` and the plugin home `kustomize/plugin`.
    pub plugins: bool,
    /// The `sidemount` under test on PATH.
    pub sidemount: bool,
}

pub const PLAIN: Render = Render { plugins: false, sidemount: false };
pub const WITH_PLUGINS: Render = Render { plugins: true, sidemount: true };

pub fn kubectl_kustomize(dir: &Path, how: Render) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(common::tool("kubectl"));
    // kustomize hands an exec plugin its config in a temporary file and leaves it
    // behind when the plugin fails: TMPDIR keeps those inside the directory removed here.
    command
        .env_clear()
        .env("HOME", home.path())
        .env("TMPDIR", home.path())
        .env("PATH", search_path(how.sidemount))
        .arg("kustomize");
    if how.plugins {
        command.arg("--enable-alpha-plugins").env("KUSTOMIZE_PLUGIN_HOME", kustomize_dir().join("plugin"));
    }
    command.arg(dir).output().expect("run kubectl kustomize")
}

pub fn render(dir: &Path, how: Render) -> String {
    let out = kubectl_kustomize(dir, how);
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed ({}):\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `sidemount inject ARGS` with no `SIDEMOUNT_*` settings.
pub fn sidemount_inject(args: &[&str], stdin: &str) -> Output {
    run_inject(search_path(false).as_ref(), &[], args, stdin.as_bytes())
}

pub fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `to` relative to the directory `from`: kustomize refuses absolute paths.
pub fn relative(from: &Path, to: &Path) -> PathBuf {
    let from = from.canonicalize().unwrap();
    let to = to.canonicalize().unwrap();
    let ups = from.components().filter(|c| matches!(c, Component::Normal(_))).count();
    let mut path: PathBuf = std::iter::repeat("..").take(ups).collect();
    path.extend(to.components().filter(|c| matches!(c, Component::Normal(_))));
    path
}

/// A throwaway overlay: `resources` and `components` (directories), plus extra lines.
pub fn overlay(resources: &[PathBuf], components: &[PathBuf], extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let list = |paths: &[PathBuf]| {
        paths.iter().map(|p| format!("- {}\n", relative(dir.path(), p).display())).collect::<String>()
    };
    let text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{}components:\n{}{extra}",
        list(resources),
        list(components)
    );
    std::fs::write(dir.path().join("kustomization.yaml"), text).unwrap();
    dir
}

pub fn component_overlay(base: &str) -> tempfile::TempDir {
    overlay(&[kustomize_dir().join(base)], &[kustomize_dir().join("components/sidecar")], "")
}
