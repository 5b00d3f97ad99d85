//! Secrets from a `secretDir`: a Kubernetes Secret volume, where every file
//! NAME holds one value. They reach a daemon as environment only: never argv,
//! never a log line, never `/status`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secretDir {dir}: {source}; mount the Secret there or remove secretDir")]
    ReadDir { dir: PathBuf, source: std::io::Error },
    #[error("cannot read secret file {file}: {source}")]
    ReadFile { file: PathBuf, source: std::io::Error },
    #[error("secret file {file} is not valid UTF-8 text; environment variables hold text")]
    NotText { file: PathBuf },
}

/// Values read from a secret directory. `Debug` never shows a value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    vars: BTreeMap<String, String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

impl Secrets {
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    pub fn values(&self) -> Vec<String> {
        self.vars.values().cloned().collect()
    }

    pub fn insert(&mut self, key: String, value: String) {
        self.vars.insert(key, value);
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.vars.remove(key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.vars.contains_key(key)
    }

    /// Reads every regular file (or link to one) in `dir` whose name is a valid
    /// environment variable name. Names starting with `.` are the Secret
    /// volume's own bookkeeping (`..data`) and are skipped. One trailing newline
    /// is dropped: `echo value > file` is how most people write one.
    pub fn read_dir(dir: &Path) -> Result<Secrets, SecretError> {
        let entries =
            std::fs::read_dir(dir).map_err(|source| SecretError::ReadDir { dir: dir.to_path_buf(), source })?;
        let mut vars = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|source| SecretError::ReadDir { dir: dir.to_path_buf(), source })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') || !path.is_file() {
                continue;
            }
            if !is_env_name(&name) {
                tracing::warn!(file = %path.display(), "secret file name is not an environment variable name; skipped");
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| SecretError::ReadFile { file: path.clone(), source })?;
            let mut value = String::from_utf8(bytes).map_err(|_| SecretError::NotText { file: path.clone() })?;
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            if value.contains('\0') {
                return Err(SecretError::NotText { file: path });
            }
            vars.insert(name, value);
        }
        Ok(Secrets { vars })
    }
}

fn is_env_name(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_secret_volume_layout() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("..2026_01_01");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("AWS_SECRET_ACCESS_KEY"), "hunter2\n").unwrap();
        std::os::unix::fs::symlink("..2026_01_01", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/AWS_SECRET_ACCESS_KEY", dir.path().join("AWS_SECRET_ACCESS_KEY")).unwrap();
        std::fs::write(dir.path().join("bad-name"), "x").unwrap();
        let secrets = Secrets::read_dir(dir.path()).unwrap();
        assert_eq!(secrets.vars().len(), 1);
        assert_eq!(secrets.vars()["AWS_SECRET_ACCESS_KEY"], "hunter2");
        assert!(!format!("{secrets:?}").contains("hunter2"));
    }

    #[test]
    fn a_missing_dir_says_what_to_do() {
        let err = Secrets::read_dir(Path::new("/nonexistent/secret")).unwrap_err();
        assert!(err.to_string().contains("mount the Secret"), "{err}");
    }
}
