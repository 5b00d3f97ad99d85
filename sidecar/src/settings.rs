//! Settings: one serde struct read from `SIDEMOUNT_*` environment pairs.
//!
//! `main` passes `std::env::vars()`; tests pass literal pairs, so nothing ever
//! needs `set_var`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Native,
    Legacy,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(default = "default_root")]
    pub root: PathBuf,
    #[serde(default = "default_config")]
    pub config: PathBuf,
    /// A private place where FUSE daemons mount before the mount is bound at the
    /// volume's mountpoint (see `volume`). It must not be under a shared mount.
    #[serde(default = "default_stage")]
    pub stage: PathBuf,
    #[serde(default)]
    pub volumes: Option<String>,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_log")]
    pub log: String,
    #[serde(default = "default_log_format")]
    pub log_format: LogFormat,
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How often every ready volume is checked when nobody asks (`/readyz` checks at once).
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub check_interval: Duration,
    /// The deadline of one filesystem call on a mountpoint.
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub check_timeout: Duration,
    /// How long a daemon may take to mount before it is restarted.
    #[serde(default = "default_mount_timeout", with = "humantime_serde")]
    pub mount_timeout: Duration,
    #[serde(default = "default_webhook_listen")]
    pub webhook_listen: SocketAddr,
    #[serde(default = "default_tls_cert")]
    pub tls_cert: PathBuf,
    #[serde(default = "default_tls_key")]
    pub tls_key: PathBuf,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub mode: Option<Mode>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid setting: {0} (see the configuration reference in README.md)")]
pub struct SettingsError(String);

impl Settings {
    /// Reads the `SIDEMOUNT_*` pairs out of `vars`; other pairs are ignored.
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(vars: I) -> Result<Settings, SettingsError> {
        let ours: Vec<(String, String)> = vars.into_iter().filter(|(k, _)| k.starts_with("SIDEMOUNT_")).collect();
        let settings: Settings = envy::prefixed("SIDEMOUNT_").from_iter(ours.clone()).map_err(|err| {
            // envy does not say which variable failed to parse: find it by reading each alone.
            let culprit = ours
                .iter()
                .find(|pair| envy::prefixed("SIDEMOUNT_").from_iter::<_, Settings>([(*pair).clone()]).is_err());
            match culprit {
                Some((key, value)) => SettingsError(format!("{key}={value:?}: {err}")),
                None => SettingsError(err.to_string()),
            }
        })?;
        if settings.shutdown_timeout < Duration::from_secs(1) {
            return Err(SettingsError("SIDEMOUNT_SHUTDOWN_TIMEOUT must be at least 1s".into()));
        }
        if settings.check_timeout.is_zero() || settings.check_interval.is_zero() || settings.mount_timeout.is_zero() {
            return Err(SettingsError(
                "SIDEMOUNT_CHECK_TIMEOUT, SIDEMOUNT_CHECK_INTERVAL and SIDEMOUNT_MOUNT_TIMEOUT must be above zero"
                    .into(),
            ));
        }
        Ok(settings)
    }

    /// Where volume `name` is mounted.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

fn default_root() -> PathBuf {
    "/sidemount".into()
}
fn default_stage() -> PathBuf {
    "/run/sidemount".into()
}
fn default_config() -> PathBuf {
    "/etc/sidemount/volumes.yaml".into()
}
fn default_listen() -> SocketAddr {
    "127.0.0.1:9810".parse().expect("valid default address")
}
fn default_log() -> String {
    "info".into()
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_check_interval() -> Duration {
    // Each check of a FUSE volume is a round trip to its daemon: two wakeups.
    // Every 30 s keeps ten idle volumes under one wakeup a second; `/readyz`
    // checks at once whenever it is asked.
    Duration::from_secs(30)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_mount_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_webhook_listen() -> SocketAddr {
    "0.0.0.0:8443".parse().expect("valid default address")
}
fn default_tls_cert() -> PathBuf {
    "/etc/sidemount/tls/tls.crt".into()
}
fn default_tls_key() -> PathBuf {
    "/etc/sidemount/tls/tls.key".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::from_pairs(pairs(&[("PATH", "/bin")])).unwrap();
        assert_eq!(s.root, PathBuf::from("/sidemount"));
        assert_eq!(s.config, PathBuf::from("/etc/sidemount/volumes.yaml"));
        assert_eq!(s.listen.to_string(), "127.0.0.1:9810");
        assert_eq!(s.shutdown_timeout, Duration::from_secs(20));
        assert_eq!(s.log_format, LogFormat::Text);
        assert!(s.volumes.is_none());
        assert_eq!(s.mountpoint("data"), PathBuf::from("/sidemount/data"));
    }

    #[test]
    fn reads_the_prefixed_variables() {
        let s = Settings::from_pairs(pairs(&[
            ("SIDEMOUNT_ROOT", "/tmp/r"),
            ("SIDEMOUNT_SHUTDOWN_TIMEOUT", "1m 5s"),
            ("SIDEMOUNT_LOG_FORMAT", "json"),
            ("SIDEMOUNT_VOLUMES", "[]"),
        ]))
        .unwrap();
        assert_eq!(s.root, PathBuf::from("/tmp/r"));
        assert_eq!(s.shutdown_timeout, Duration::from_secs(65));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.volumes.as_deref(), Some("[]"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Settings::from_pairs(pairs(&[("SIDEMOUNT_SHUTDOWN_TIMEOUT", "soon")])).unwrap_err();
        assert!(err.to_string().contains("soon") || err.to_string().contains("SHUTDOWN"), "{err}");
        let err = Settings::from_pairs(pairs(&[("SIDEMOUNT_SHUTDOWN_TIMEOUT", "0s")])).unwrap_err();
        assert!(err.to_string().contains("SIDEMOUNT_SHUTDOWN_TIMEOUT"), "{err}");
        assert!(Settings::from_pairs(pairs(&[("SIDEMOUNT_LISTEN", "nowhere")])).is_err());
    }
}
