//! `fuse` volumes: a user-given FOREGROUND daemon that mounts itself at
//! `{mountpoint}` and serves it until it exits.

use std::collections::BTreeMap;
use std::path::Path;

use crate::secrets::Secrets;
use crate::spec::MOUNTPOINT_PLACEHOLDER;

/// The daemon's argv with `{mountpoint}` substituted. Secrets are never
/// substituted into argv: `/proc/PID/cmdline` is world-readable.
pub fn argv(command: &[String], mountpoint: &Path) -> Vec<String> {
    let mp = mountpoint.to_string_lossy();
    command.iter().map(|arg| arg.replace(MOUNTPOINT_PLACEHOLDER, &mp)).collect()
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
            argv(&cmd, Path::new("/sidemount/data")),
            ["s3fs", "b", "/sidemount/data", "-o", "x=/sidemount/data/c"]
        );
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
