//! `fuse` volumes: a user-given FOREGROUND daemon that mounts itself at
//! `{mountpoint}` and serves it until it exits. Their `options` are the per-mount
//! flags (`ro`, `nosuid`, `noatime` ...) given to the bind that brings the
//! daemon's mount to the pod; anything else belongs in the daemon's `command`.

use std::collections::BTreeMap;
use std::path::Path;

use nix::mount::MsFlags;

use crate::secrets::Secrets;
use crate::spec::{GID_PLACEHOLDER, MOUNTPOINT_PLACEHOLDER, UID_PLACEHOLDER};

/// How one option changes a bind's flags.
enum Change {
    Set(MsFlags),
    Clear(MsFlags),
    Atime(MsFlags),
}

/// The options a bind can apply, as mount(8) spells them.
const BIND_OPTIONS: [(&str, Change); 16] = [
    ("ro", Change::Set(MsFlags::MS_RDONLY)),
    ("rw", Change::Clear(MsFlags::MS_RDONLY)),
    ("nosuid", Change::Set(MsFlags::MS_NOSUID)),
    ("suid", Change::Clear(MsFlags::MS_NOSUID)),
    ("nodev", Change::Set(MsFlags::MS_NODEV)),
    ("dev", Change::Clear(MsFlags::MS_NODEV)),
    ("noexec", Change::Set(MsFlags::MS_NOEXEC)),
    ("exec", Change::Clear(MsFlags::MS_NOEXEC)),
    ("nodiratime", Change::Set(MsFlags::MS_NODIRATIME)),
    ("diratime", Change::Clear(MsFlags::MS_NODIRATIME)),
    ("noatime", Change::Atime(MsFlags::MS_NOATIME)),
    // `atime` and `nostrictatime` mean the kernel's default, relatime.
    ("atime", Change::Atime(MsFlags::MS_RELATIME)),
    ("relatime", Change::Atime(MsFlags::MS_RELATIME)),
    ("nostrictatime", Change::Atime(MsFlags::MS_RELATIME)),
    ("strictatime", Change::Atime(MsFlags::MS_STRICTATIME)),
    ("norelatime", Change::Atime(MsFlags::MS_STRICTATIME)),
];

/// The options a bind cannot apply, as `(index, problem)`: they would be silently
/// ignored, so they are refused.
pub fn unbindable_options(options: &[String]) -> Vec<(usize, String)> {
    options
        .iter()
        .enumerate()
        .filter(|(_, o)| !BIND_OPTIONS.iter().any(|(name, _)| name == o))
        .map(|(i, o)| {
            let known: Vec<&str> = BIND_OPTIONS.iter().map(|(name, _)| *name).collect();
            (
                i,
                format!(
                    "{o:?} cannot be applied to a fuse volume: sidemount binds the daemon's mount, and a bind takes only {}; pass daemon options in `command` instead (e.g. -o {o})",
                    known.join(", ")
                ),
            )
        })
        .collect()
}

/// The flags for the bind: `current` (as [`crate::sys::Sys::bind_flags`] reads them)
/// changed by each option in turn, as mount(8) applies them.
pub fn bind_flags(current: MsFlags, options: &[String]) -> MsFlags {
    let atime = MsFlags::MS_NOATIME | MsFlags::MS_RELATIME | MsFlags::MS_STRICTATIME;
    options.iter().filter_map(|o| BIND_OPTIONS.iter().find(|(name, _)| name == o)).fold(
        current,
        |flags, (_, change)| match change {
            Change::Set(f) => flags | *f,
            Change::Clear(f) => flags - *f,
            Change::Atime(f) => (flags - atime) | *f,
        },
    )
}

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
    fn options_become_the_binds_flags_in_order() {
        let fuse_default = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RELATIME;
        let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(bind_flags(fuse_default, &[]), fuse_default, "no options: the daemon's flags stay");
        assert_eq!(
            bind_flags(fuse_default, &opts(&["ro", "noatime"])),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME
        );
        // The last word wins, as with mount(8).
        assert_eq!(bind_flags(fuse_default, &opts(&["ro", "rw"])), fuse_default);
        assert_eq!(
            bind_flags(fuse_default, &opts(&["noatime", "strictatime", "noexec"])),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME | MsFlags::MS_NOEXEC
        );
        assert_eq!(bind_flags(fuse_default, &opts(&["suid", "dev"])), MsFlags::MS_RELATIME);
    }

    #[test]
    fn options_a_bind_cannot_apply_are_named() {
        let opts: Vec<String> =
            ["ro", "allow_other", "noatime", "uid=1000", "defaults", "RO"].map(String::from).to_vec();
        let refused: Vec<usize> = unbindable_options(&opts).into_iter().map(|(i, _)| i).collect();
        assert_eq!(refused, [1, 3, 4, 5]);
        let (_, message) = &unbindable_options(&opts)[0];
        assert!(message.contains("command") && message.contains("-o allow_other"), "{message}");
        assert!(unbindable_options(&[]).is_empty());
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
