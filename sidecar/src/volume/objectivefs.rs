//! `objectivefs` volumes: `mount.objectivefs mount` (its foreground form) as a
//! supervised child, so a crash is repaired like any FUSE daemon's. What the
//! `altalang/ofs` FlexVolume driver did on every node, done from the sidecar.

use std::collections::BTreeMap;
use std::path::Path;

use tracing::{info, warn};

use crate::secrets::Secrets;
use crate::spec::Volume;

use super::VolumeError;

pub const PROGRAM: &str = "mount.objectivefs";

/// The FlexVolume driver's Secret keys and the variables ObjectiveFS reads.
const FLEXVOLUME_KEYS: [(&str, &str); 4] = [
    ("accesskey", "AWS_ACCESS_KEY_ID"),
    ("secretkey", "AWS_SECRET_ACCESS_KEY"),
    ("license", "OBJECTIVEFS_LICENSE"),
    ("passphrase", "OBJECTIVEFS_PASSPHRASE"),
];

/// Without these ObjectiveFS asks on a terminal that is not there.
pub const REQUIRED: [&str; 2] = ["OBJECTIVEFS_LICENSE", "OBJECTIVEFS_PASSPHRASE"];

/// Share of the container's memory limit given to the caches of all objectivefs
/// volumes together; the rest is for the daemons' own memory and the supervisor.
const CACHE_SHARE_PERCENT: u64 = 30;
const CACHE_MIN_MIB: u64 = 64;

/// `mount.objectivefs mount [-o opts] <filesystem> <mountpoint>`: nothing secret.
/// With the app's `uid` or `gid`, the FUSE options a non-root app needs come too.
pub fn argv(
    filesystem: &str,
    options: &[String],
    mountpoint: &Path,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Vec<String> {
    let options = with_owner(options, uid, gid);
    let mut argv = vec![PROGRAM.to_string(), "mount".to_string()];
    if !options.is_empty() {
        argv.push("-o".into());
        argv.push(options.join(","));
    }
    argv.push(filesystem.to_string());
    argv.push(mountpoint.display().to_string());
    argv
}

/// The options for an app that runs as `uid`/`gid`: a FUSE mount made by root is
/// closed to every other user unless mounted `allow_other`, and `uid=`/`gid=`
/// make the app the owner of what it sees. An option the spec gives itself wins.
pub fn with_owner(options: &[String], uid: Option<u32>, gid: Option<u32>) -> Vec<String> {
    let mut options = options.to_vec();
    if uid.is_none() && gid.is_none() {
        return options;
    }
    let given = |options: &[String], key: &str| options.iter().any(|o| o == key || o.starts_with(&format!("{key}=")));
    if !given(&options, "allow_other") {
        options.push("allow_other".into());
    }
    for (key, id) in [("uid", uid), ("gid", gid)] {
        if let Some(id) = id.filter(|_| !given(&options, key)) {
            options.push(format!("{key}={id}"));
        }
    }
    options
}

/// Renames the FlexVolume Secret keys to ObjectiveFS's variables, so a Secret
/// made for `altalang/ofs` works as it is. A variable given under its own name wins.
pub fn map_flexvolume_keys(secrets: &mut Secrets) {
    for (key, variable) in FLEXVOLUME_KEYS {
        if let Some(value) = secrets.remove(key) {
            if !secrets.contains(variable) {
                secrets.insert(variable.to_string(), value);
            }
        }
    }
}

/// Maps the FlexVolume keys of an objectivefs volume's Secret (as read from its
/// secretDir) and checks that the license and passphrase are there (in the
/// Secret, the spec's `env` or the supervisor's own environment).
pub fn credentials(volume: &Volume, mut secrets: Secrets) -> Result<Secrets, VolumeError> {
    map_flexvolume_keys(&mut secrets);
    let missing = missing(&secrets, &volume.env, |k| std::env::var_os(k).is_some());
    if !missing.is_empty() {
        return Err(VolumeError::CredentialsMissing { missing });
    }
    Ok(secrets)
}

/// The required variables found nowhere: not in the Secret, the spec's `env`,
/// nor the supervisor's own environment.
pub fn missing(
    secrets: &Secrets,
    env: &BTreeMap<String, String>,
    inherited: impl Fn(&str) -> bool,
) -> Vec<&'static str> {
    REQUIRED.into_iter().filter(|key| !secrets.contains(key) && !env.contains_key(*key) && !inherited(key)).collect()
}

/// Sets `CACHESIZE` in the daemon's environment when neither the spec nor the
/// container sets it: from the container's memory limit, shared by `sharing`
/// objectivefs volumes, not from the node's memory, which ObjectiveFS would use.
pub fn size_cache(env: &mut BTreeMap<String, String>, sharing: usize) {
    if env.contains_key("CACHESIZE") || std::env::var_os("CACHESIZE").is_some() {
        return;
    }
    let limit = container_memory_limit();
    match cache_size_mib(limit, sharing) {
        Some(mib) => {
            info!(cachesize = %format!("{mib}M"), limit = ?limit, sharing, "CACHESIZE not set: sized from the container's memory limit, not the node's memory");
            env.insert("CACHESIZE".into(), format!("{mib}M"));
        }
        None => warn!("CACHESIZE not set and the container has no memory limit: ObjectiveFS sizes its cache from the node's memory; set CACHESIZE or a memory limit"),
    }
}

/// A CACHESIZE (MiB) for one of `volumes` objectivefs volumes under a container
/// memory `limit`; None when there is no limit to size from.
pub fn cache_size_mib(limit: Option<u64>, volumes: usize) -> Option<u64> {
    let limit = limit?;
    let share = limit / 100 * CACHE_SHARE_PERCENT / volumes.max(1) as u64;
    Some((share >> 20).max(CACHE_MIN_MIB))
}

/// The memory limit of this process's cgroup and its ancestors (v2, then v1).
pub fn container_memory_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut limits = Vec::new();
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (base, file) = match controllers {
            "" => ("/sys/fs/cgroup".to_string(), "memory.max"),
            c if c.split(',').any(|c| c == "memory") => ("/sys/fs/cgroup/memory".to_string(), "memory.limit_in_bytes"),
            _ => continue,
        };
        // Every level up to the root: the smallest limit is the one that bites.
        let mut dir = Path::new(&base).join(path.trim_start_matches('/'));
        loop {
            if let Some(limit) = read_limit(&dir.join(file)) {
                limits.push(limit);
            }
            if dir == Path::new(&base) || !dir.pop() {
                break;
            }
        }
    }
    limits.into_iter().min()
}

fn read_limit(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let value: u64 = text.trim().parse().ok()?;
    // cgroup v1 writes "no limit" as a huge page-aligned number.
    (value < 1 << 60).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_the_foreground_form_without_secrets() {
        let argv = argv("s3://my-bucket", &["mt".into(), "noatime".into()], Path::new("/sidemount/ofs"), None, None);
        assert_eq!(argv, ["mount.objectivefs", "mount", "-o", "mt,noatime", "s3://my-bucket", "/sidemount/ofs"]);
        assert_eq!(
            super::argv("s3://b", &[], Path::new("/m"), None, None),
            ["mount.objectivefs", "mount", "s3://b", "/m"]
        );
    }

    #[test]
    fn a_non_root_app_gets_allow_other_and_its_ids() {
        let argv = argv("s3://b", &["mt".into()], Path::new("/m"), Some(1000), Some(2000));
        assert_eq!(argv, ["mount.objectivefs", "mount", "-o", "mt,allow_other,uid=1000,gid=2000", "s3://b", "/m"]);
        assert_eq!(with_owner(&[], None, Some(5)), ["allow_other", "gid=5"]);
        // The spec's own options win over the defaults, and nothing is doubled.
        let own: Vec<String> = ["allow_other", "uid=0"].map(String::from).to_vec();
        assert_eq!(with_owner(&own, Some(1000), Some(1000)), ["allow_other", "uid=0", "gid=1000"]);
        assert_eq!(with_owner(&["mt".into()], None, None), ["mt"]);
    }

    #[test]
    fn flexvolume_keys_become_objectivefs_variables() {
        let mut s = Secrets::default();
        s.insert("accesskey".into(), "AK".into());
        s.insert("secretkey".into(), "SK".into());
        s.insert("license".into(), "L".into());
        s.insert("passphrase".into(), "P".into());
        s.insert("OBJECTIVEFS_PASSPHRASE".into(), "own".into());
        map_flexvolume_keys(&mut s);
        assert_eq!(s.vars()["AWS_ACCESS_KEY_ID"], "AK");
        assert_eq!(s.vars()["AWS_SECRET_ACCESS_KEY"], "SK");
        assert_eq!(s.vars()["OBJECTIVEFS_LICENSE"], "L");
        assert_eq!(s.vars()["OBJECTIVEFS_PASSPHRASE"], "own");
        assert!(!s.contains("license"));
    }

    #[test]
    fn names_missing_license_and_passphrase() {
        let mut s = Secrets::default();
        assert_eq!(missing(&s, &BTreeMap::new(), |_| false), REQUIRED);
        s.insert("OBJECTIVEFS_LICENSE".into(), "L".into());
        let env = BTreeMap::from([("OBJECTIVEFS_PASSPHRASE".to_string(), "p".to_string())]);
        assert!(missing(&s, &env, |_| false).is_empty());
        assert!(missing(&Secrets::default(), &BTreeMap::new(), |_| true).is_empty());
    }

    #[test]
    fn cache_follows_the_container_limit() {
        assert_eq!(cache_size_mib(None, 1), None);
        assert_eq!(cache_size_mib(Some(2 << 30), 1), Some(614));
        assert_eq!(cache_size_mib(Some(2 << 30), 2), Some(307));
        assert_eq!(cache_size_mib(Some(128 << 20), 1), Some(CACHE_MIN_MIB));
    }
}
