//! `fuse` volumes: a user-given FOREGROUND daemon that mounts itself at
//! `{mountpoint}` and serves it until it exits.

use std::collections::BTreeMap;
use std::path::Path;

use crate::secrets::Secrets;
use crate::spec::{GID_PLACEHOLDER, MOUNTPOINT_PLACEHOLDER, UID_PLACEHOLDER};

/// The daemon's argv with `{mountpoint}`, `{uid}` and `{gid}` substituted (the
/// ids default to 0, root, which is what the daemon runs as). Secrets are never
/// substituted into argv: `/proc/PID/cmdline` is world-readable.
pub fn argv(command: &[String], mountpoint: &Path, uid: Option<u32>, gid: Option<u32>) -> Vec<String> {
    let mp = mountpoint.to_string_lossy();
    let (uid, gid) = (uid.unwrap_or(0).to_string(), gid.unwrap_or(0).to_string());
    let values = [(MOUNTPOINT_PLACEHOLDER, &*mp), (UID_PLACEHOLDER, &uid), (GID_PLACEHOLDER, &gid)];
    command.iter().map(|arg| substitute(arg, &values)).collect()
}

/// One pass over `arg`: a value put in is never searched for placeholders again.
fn substitute(arg: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match values.iter().find(|(placeholder, _)| rest.starts_with(placeholder)) {
            Some((placeholder, value)) => {
                out.push_str(value);
                rest = &rest[placeholder.len()..];
            }
            None => {
                out.push('{');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The daemon's extra environment: the spec's `env`, then the secrets (a secret
/// wins over a plain value of the same name). A Secret cannot set names that
/// change what runs (refused when it is read, see `secrets::REFUSED_NAMES`); the
/// spec's `env` can: whoever writes the spec chooses the command too.
pub fn env(spec_env: &BTreeMap<String, String>, secrets: &Secrets) -> BTreeMap<String, String> {
    let mut env = spec_env.clone();
    env.extend(secrets.vars().iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_the_mountpoint_everywhere() {
        let cmd = vec!["s3fs".to_string(), "b".into(), "{mountpoint}".into(), "-o".into(), "x={mountpoint}/c".into()];
        assert_eq!(
            argv(&cmd, Path::new("/sidemount/data"), None, None),
            ["s3fs", "b", "/sidemount/data", "-o", "x=/sidemount/data/c"]
        );
    }

    #[test]
    fn substitutes_the_apps_ids_or_root() {
        let cmd: Vec<String> =
            ["rclone", "mount", "{mountpoint}", "--uid", "{uid}", "--gid", "{gid}", "-o", "uid={uid},gid={gid}"]
                .map(String::from)
                .to_vec();
        assert_eq!(
            argv(&cmd, Path::new("/m"), Some(1000), Some(3000)),
            ["rclone", "mount", "/m", "--uid", "1000", "--gid", "3000", "-o", "uid=1000,gid=3000"]
        );
        assert_eq!(argv(&cmd, Path::new("/m"), None, Some(5))[3..7], ["--uid", "0", "--gid", "5"]);
        // A mountpoint that spells a placeholder is not substituted again.
        let odd = vec!["d".to_string(), "{mountpoint}".into()];
        assert_eq!(argv(&odd, Path::new("/x/{uid}"), Some(7), None), ["d", "/x/{uid}"]);
        let braces = vec!["{{mountpoint}}".to_string(), "{gid".into(), "{}".into()];
        assert_eq!(argv(&braces, Path::new("/m"), None, None), ["{/m}", "{gid", "{}"]);
    }

    #[test]
    fn secrets_win_over_plain_env() {
        let mut secrets = Secrets::default();
        secrets.insert("A".into(), "secret".into());
        let plain = BTreeMap::from([("A".to_string(), "plain".to_string()), ("B".to_string(), "b".to_string())]);
        let env = env(&plain, &secrets);
        assert_eq!(env["A"], "secret");
        assert_eq!(env["B"], "b");
    }

    #[test]
    fn the_spec_may_set_what_a_secret_may_not() {
        let plain = BTreeMap::from([("PATH".to_string(), "/opt/fuse/bin:/usr/bin".to_string())]);
        assert_eq!(env(&plain, &Secrets::default())["PATH"], "/opt/fuse/bin:/usr/bin");
    }
}
