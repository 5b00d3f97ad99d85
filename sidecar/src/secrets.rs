//! Secrets from a `secretDir`: a Kubernetes Secret volume, where every file
//! NAME holds one value. They reach a daemon as environment only: never argv,
//! never a log line, never `/status`. What a Secret may set is limited: in size,
//! and in names (none that changes which program runs or what it loads).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// The largest value one secret file may hold. Linux takes at most 128 KiB per
/// environment variable (MAX_ARG_STRLEN); a bigger value could only fail at exec.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The most one secretDir may hold in all: what a Kubernetes Secret holds at most,
/// and half of what execve takes for argv and environment together.
pub const MAX_TOTAL_BYTES: usize = 1024 * 1024;

/// Variables a Secret may not set: they change which program runs or what it
/// loads (the dynamic loader, glibc, shells, interpreters, OpenSSL's engines),
/// so a key named PATH or LD_PRELOAD in a Secret would run code of its writer's
/// choosing as the (root) daemon. glibc ignores the same list for setuid programs
/// (its unsecvars.h), TMPDIR and the resolver's files included. The spec's own
/// `env` may set them: whoever writes the spec already chooses the command.
pub const REFUSED_NAMES: &[&str] = &[
    "PATH",
    "IFS",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "CDPATH",
    "GLOBIGNORE",
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TMPDIR",
    "TZDIR",
    "NODE_OPTIONS",
    "NODE_PATH",
    "PERLLIB",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "OPENSSL_CONF",
    "OPENSSL_ENGINES",
    "OPENSSL_MODULES",
];
/// Prefixes of refused names: the loader's LD_*, glibc's MALLOC_*, and the
/// interpreters' PYTHON*, PERL5*, RUBY*, LUA_*.
pub const REFUSED_PREFIXES: &[&str] = &["LD_", "MALLOC_", "PYTHON", "PERL5", "RUBY", "LUA_"];

/// Whether a Secret may not set `name` (see [`REFUSED_NAMES`]).
pub fn is_refused(name: &str) -> bool {
    REFUSED_NAMES.contains(&name) || REFUSED_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secretDir {dir}: {source}; mount the Secret there or remove secretDir")]
    ReadDir { dir: PathBuf, source: std::io::Error },
    #[error("secretDir {dir} did not answer within {timeout:?} (SIDEMOUNT_CHECK_TIMEOUT): the filesystem under it hangs; fix what serves it, or remove secretDir")]
    Hung { dir: PathBuf, timeout: Duration },
    #[error("cannot read secret file {file}: {source}")]
    ReadFile { file: PathBuf, source: std::io::Error },
    #[error("secret file {file} is not valid UTF-8 text; environment variables hold text")]
    NotText { file: PathBuf },
    #[error("secret file {file} would set {name}, which changes what the daemon runs or loads; remove the key from the Secret (a spec's `env` may set it)")]
    Refused { file: PathBuf, name: String },
    #[error("secret file {file} is larger than {} KiB, the limit for one value (an environment variable holds at most 128 KiB); make it smaller", MAX_VALUE_BYTES / 1024)]
    TooBig { file: PathBuf },
    #[error("secretDir {dir} holds more than {} MiB of values, the limit for one volume (as for a Kubernetes Secret); remove keys the daemon does not need", MAX_TOTAL_BYTES >> 20)]
    TooMuch { dir: PathBuf },
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
    /// is dropped: `echo value > file` is how most people write one. Refused
    /// names and values over the limits fail the read, naming the file.
    pub fn read_dir(dir: &Path) -> Result<Secrets, SecretError> {
        let entries =
            std::fs::read_dir(dir).map_err(|source| SecretError::ReadDir { dir: dir.to_path_buf(), source })?;
        let mut vars = BTreeMap::new();
        let mut total = 0;
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
            if is_refused(&name) {
                return Err(SecretError::Refused { file: path, name });
            }
            let mut value = read_value(&path)?;
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            if value.contains('\0') {
                return Err(SecretError::NotText { file: path });
            }
            total += name.len() + value.len() + 2;
            if total > MAX_TOTAL_BYTES {
                return Err(SecretError::TooMuch { dir: dir.to_path_buf() });
            }
            vars.insert(name, value);
        }
        Ok(Secrets { vars })
    }

    /// [`Secrets::read_dir`] on a thread of its own, given up after `timeout`: a
    /// secretDir on a hung filesystem fails this read, not the caller. `in_flight`
    /// is the caller's: while an earlier read of it is still stuck, the next one
    /// fails at once instead of leaving one more thread behind.
    pub async fn read_dir_bounded(
        dir: &Path,
        timeout: Duration,
        in_flight: &Arc<AtomicBool>,
    ) -> Result<Secrets, SecretError> {
        let hung = || SecretError::Hung { dir: dir.to_path_buf(), timeout };
        let under_way = crate::sys::InFlight::claim(in_flight).ok_or_else(hung)?;
        let owned = dir.to_path_buf();
        let read = crate::sys::bounded(timeout, move || {
            let read = Secrets::read_dir(&owned);
            drop(under_way);
            read
        });
        read.await.unwrap_or_else(|_| Err(hung()))
    }
}

/// A secret file's content, refused past [`MAX_VALUE_BYTES`] before it is read whole.
fn read_value(path: &Path) -> Result<String, SecretError> {
    let read_error = |source| SecretError::ReadFile { file: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    // One byte more than the limit tells a file at the limit from a bigger one.
    file.take(MAX_VALUE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(SecretError::TooBig { file: path.to_path_buf() });
    }
    String::from_utf8(bytes).map_err(|_| SecretError::NotText { file: path.to_path_buf() })
}

fn is_env_name(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

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

    #[test]
    fn names_that_change_what_runs_are_refused() {
        let refused = "PATH LD_PRELOAD LD_LIBRARY_PATH GCONV_PATH MALLOC_CHECK_ BASH_ENV IFS PYTHONPATH PERL5OPT RUBYOPT NODE_OPTIONS OPENSSL_CONF TMPDIR";
        for name in refused.split(' ') {
            assert!(is_refused(name), "{name}");
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("TOKEN"), "fine").unwrap();
            std::fs::write(dir.path().join(name), "/evil").unwrap();
            let err = Secrets::read_dir(dir.path()).unwrap_err();
            assert!(matches!(err, SecretError::Refused { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name) && !err.to_string().contains("/evil"), "{err}");
        }
        for name in ["AWS_SECRET_ACCESS_KEY", "OBJECTIVEFS_LICENSE", "path", "MYPATH", "RCLONE_CONFIG_PASS"] {
            assert!(!is_refused(name), "{name}");
        }
    }

    #[test]
    fn values_over_the_limits_are_refused_without_their_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("AT_LIMIT"), "a".repeat(MAX_VALUE_BYTES)).unwrap();
        assert_eq!(Secrets::read_dir(dir.path()).unwrap().vars()["AT_LIMIT"].len(), MAX_VALUE_BYTES);
        std::fs::write(dir.path().join("BIG"), "secret-content".repeat(MAX_VALUE_BYTES / 14 + 1)).unwrap();
        let err = Secrets::read_dir(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, SecretError::TooBig { .. }), "{message}");
        assert!(
            message.contains("BIG") && message.contains("64 KiB") && !message.contains("secret-content"),
            "{message}"
        );

        let dir = tempfile::tempdir().unwrap();
        for i in 0..(MAX_TOTAL_BYTES / MAX_VALUE_BYTES) {
            std::fs::write(dir.path().join(format!("K{i}")), "b".repeat(MAX_VALUE_BYTES)).unwrap();
        }
        let err = Secrets::read_dir(dir.path()).unwrap_err();
        assert!(matches!(err, SecretError::TooMuch { .. }), "{err}");
        assert!(err.to_string().contains("1 MiB"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_bounded_read_reads_and_clears_its_flag() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("A"), "1\n").unwrap();
        let flag = Arc::new(AtomicBool::new(false));
        let secrets = Secrets::read_dir_bounded(dir.path(), Duration::from_secs(5), &flag).await.unwrap();
        assert_eq!(secrets.vars()["A"], "1");
        assert!(!flag.load(Ordering::SeqCst));
        // A read still stuck from before: the next one fails at once, naming the directory.
        flag.store(true, Ordering::SeqCst);
        let err = Secrets::read_dir_bounded(dir.path(), Duration::from_secs(5), &flag).await.unwrap_err();
        assert!(matches!(err, SecretError::Hung { .. }), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
    }
}
