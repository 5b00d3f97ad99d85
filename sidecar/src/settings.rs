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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
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
    /// One line per `SIDEMOUNT_*` variable that is not a setting (a misspelling is
    /// otherwise silently ignored), naming the closest one that is.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Why the settings cannot be used; each names the variable and what to write.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid setting {variable}={value:?}: {message} (see the configuration reference in README.md)")]
    Parse { variable: String, value: String, message: String },
    #[error("invalid setting: {0} (see the configuration reference in README.md)")]
    Unattributed(String),
    #[error("invalid setting {variable}={value:?}: out of range; use a duration from {bounds} (see the configuration reference in README.md)")]
    OutOfRange { variable: &'static str, value: String, bounds: Bounds },
}

/// The range a duration setting must fall in. An unbounded duration would
/// overflow the deadlines computed from it (and abort the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: Duration,
    pub max: Duration,
}

impl Bounds {
    pub fn contains(&self, value: Duration) -> bool {
        self.min <= value && value <= self.max
    }
}

impl std::fmt::Display for Bounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (min, max) = (humantime::format_duration(self.min), humantime::format_duration(self.max));
        write!(f, "{min} to {max}")
    }
}

const fn bounds(min: Duration, max: Duration) -> Bounds {
    Bounds { min, max }
}

const HOUR: Duration = Duration::from_secs(3600);
/// `SIDEMOUNT_SHUTDOWN_TIMEOUT`; it also sets the pod's terminationGracePeriodSeconds.
pub const SHUTDOWN_TIMEOUT: Bounds = bounds(Duration::from_secs(1), HOUR);
/// `SIDEMOUNT_CHECK_TIMEOUT`: a first `/readyz` takes up to twice this.
pub const CHECK_TIMEOUT: Bounds = bounds(Duration::from_millis(100), Duration::from_secs(60));
/// `SIDEMOUNT_CHECK_INTERVAL`.
pub const CHECK_INTERVAL: Bounds = bounds(Duration::from_secs(1), HOUR);
/// `SIDEMOUNT_MOUNT_TIMEOUT`.
pub const MOUNT_TIMEOUT: Bounds = bounds(Duration::from_secs(1), HOUR);

const PREFIX: &str = "SIDEMOUNT_";

impl Settings {
    /// Reads the `SIDEMOUNT_*` pairs out of `vars`; other pairs are ignored.
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(vars: I) -> Result<Settings, SettingsError> {
        let ours: Vec<(String, String)> = vars.into_iter().filter(|(k, _)| k.starts_with(PREFIX)).collect();
        let mut settings: Settings = envy::prefixed(PREFIX).from_iter(ours.clone()).map_err(|err| {
            // envy does not say which variable failed to parse: find it by reading each alone.
            let culprit =
                ours.iter().find(|pair| envy::prefixed(PREFIX).from_iter::<_, Settings>([(*pair).clone()]).is_err());
            match culprit {
                Some((key, value)) => {
                    SettingsError::Parse { variable: key.clone(), value: value.clone(), message: err.to_string() }
                }
                None => SettingsError::Unattributed(err.to_string()),
            }
        })?;
        for (variable, value, bounds) in [
            ("SIDEMOUNT_SHUTDOWN_TIMEOUT", settings.shutdown_timeout, SHUTDOWN_TIMEOUT),
            ("SIDEMOUNT_CHECK_TIMEOUT", settings.check_timeout, CHECK_TIMEOUT),
            ("SIDEMOUNT_CHECK_INTERVAL", settings.check_interval, CHECK_INTERVAL),
            ("SIDEMOUNT_MOUNT_TIMEOUT", settings.mount_timeout, MOUNT_TIMEOUT),
        ] {
            if !bounds.contains(value) {
                let value = ours.iter().find(|(k, _)| k == variable).map(|(_, v)| v.clone()).unwrap_or_default();
                return Err(SettingsError::OutOfRange { variable, value, bounds });
            }
        }
        let known = known_variables();
        settings.warnings = ours
            .iter()
            .filter(|(key, _)| !known.contains(key))
            .map(|(key, _)| {
                let closest = known.iter().min_by_key(|k| edit_distance(key, k)).cloned().unwrap_or_default();
                format!("{key} is not a sidemount setting and is ignored; did you mean {closest}?")
            })
            .collect();
        Ok(settings)
    }

    /// Where volume `name` is mounted.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// The `SIDEMOUNT_*` names `Settings` reads, taken from its own serde
/// description so the list cannot drift from the struct.
pub fn known_variables() -> Vec<String> {
    use serde::de::{self, Visitor};

    struct FieldNames<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for FieldNames<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only a struct tells its fields"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = Settings::deserialize(FieldNames(&mut fields));
    fields.iter().map(|f| format!("{PREFIX}{}", f.to_ascii_uppercase())).collect()
}

/// Levenshtein distance: how many one-character edits turn `a` into `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
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
        // Next to a valid one, so the name cannot come from envy's own message by luck.
        let err = Settings::from_pairs(pairs(&[("SIDEMOUNT_ROOT", "/r"), ("SIDEMOUNT_SHUTDOWN_TIMEOUT", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SIDEMOUNT_SHUTDOWN_TIMEOUT=\"soon\""), "{err}");
        assert!(!err.contains("SIDEMOUNT_ROOT"), "{err}");
        let err = Settings::from_pairs(pairs(&[("SIDEMOUNT_SHUTDOWN_TIMEOUT", "0s")])).unwrap_err().to_string();
        assert!(err.contains("SIDEMOUNT_SHUTDOWN_TIMEOUT"), "{err}");
        let err = Settings::from_pairs(pairs(&[("SIDEMOUNT_LISTEN", "nowhere")])).unwrap_err().to_string();
        assert!(err.contains("SIDEMOUNT_LISTEN=\"nowhere\""), "{err}");
    }

    #[test]
    fn durations_are_bounded_and_the_error_names_variable_and_range() {
        let cases = [
            ("SIDEMOUNT_SHUTDOWN_TIMEOUT", "18446744073709551615s", "1s to 1h"),
            ("SIDEMOUNT_SHUTDOWN_TIMEOUT", "999ms", "1s to 1h"),
            ("SIDEMOUNT_SHUTDOWN_TIMEOUT", "1h 1s", "1s to 1h"),
            ("SIDEMOUNT_CHECK_TIMEOUT", "99ms", "100ms to 1m"),
            ("SIDEMOUNT_CHECK_TIMEOUT", "61s", "100ms to 1m"),
            ("SIDEMOUNT_CHECK_INTERVAL", "0s", "1s to 1h"),
            ("SIDEMOUNT_CHECK_INTERVAL", "100years", "1s to 1h"),
            ("SIDEMOUNT_MOUNT_TIMEOUT", "500ms", "1s to 1h"),
            ("SIDEMOUNT_MOUNT_TIMEOUT", "2h", "1s to 1h"),
        ];
        for (variable, value, range) in cases {
            let err = Settings::from_pairs(pairs(&[(variable, value)])).unwrap_err();
            assert!(matches!(err, SettingsError::OutOfRange { .. }), "{variable}={value}: {err}");
            let text = err.to_string();
            assert!(text.contains(&format!("{variable}={value:?}")) && text.contains(range), "{text}");
        }
        // The ends of each range are accepted.
        let s = Settings::from_pairs(pairs(&[
            ("SIDEMOUNT_SHUTDOWN_TIMEOUT", "1h"),
            ("SIDEMOUNT_CHECK_TIMEOUT", "100ms"),
            ("SIDEMOUNT_CHECK_INTERVAL", "1s"),
            ("SIDEMOUNT_MOUNT_TIMEOUT", "1h"),
        ]))
        .unwrap();
        assert_eq!(s.shutdown_timeout, HOUR);
        Settings::from_pairs(pairs(&[("SIDEMOUNT_SHUTDOWN_TIMEOUT", "1s"), ("SIDEMOUNT_CHECK_TIMEOUT", "60s")]))
            .unwrap();
    }

    #[test]
    fn unknown_variables_are_named_with_the_closest_known_one() {
        let s = Settings::from_pairs(pairs(&[
            ("SIDEMOUNT_SHUTDOWN_TIMOUT", "5s"),
            ("SIDEMOUNT_CONFG", "/x"),
            ("SIDEMOUNT_ROOT", "/r"),
            ("OTHER_SHUTDOWN_TIMOUT", "1s"),
        ]))
        .unwrap();
        assert_eq!(s.shutdown_timeout, Duration::from_secs(20), "the misspelled variable must not be read");
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(
            s.warnings[0].starts_with("SIDEMOUNT_SHUTDOWN_TIMOUT ")
                && s.warnings[0].ends_with("did you mean SIDEMOUNT_SHUTDOWN_TIMEOUT?"),
            "{:?}",
            s.warnings
        );
        assert!(s.warnings[1].ends_with("did you mean SIDEMOUNT_CONFIG?"), "{:?}", s.warnings);
    }

    #[test]
    fn every_setting_is_a_known_variable() {
        let known = known_variables();
        for name in [
            "SIDEMOUNT_ROOT",
            "SIDEMOUNT_STAGE",
            "SIDEMOUNT_LOG_FORMAT",
            "SIDEMOUNT_WEBHOOK_LISTEN",
            "SIDEMOUNT_TLS_KEY",
            "SIDEMOUNT_MODE",
        ] {
            assert!(known.iter().any(|k| k == name), "{name} missing from {known:?}");
        }
        assert!(!known.iter().any(|k| k == "SIDEMOUNT_WARNINGS"), "{known:?}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}
