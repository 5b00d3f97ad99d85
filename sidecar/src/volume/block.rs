//! `block` volumes: what the LVM and OCI FlexVolume drivers did, a block device
//! with a filesystem mounted at the volume. A device is formatted only when
//! `blkid` finds nothing at all on it; one that holds anything else is refused.

use std::collections::BTreeMap;
use std::path::Path;

use tracing::info;

use super::{Matcher, Task, VolumeError};

pub const PROBE: &str = "blkid";
pub const MOUNT: &str = "mount";

/// What low-level probing found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No signature of any kind.
    Empty,
    /// A filesystem of this type.
    Filesystem(String),
    /// Something else: a partition table, RAID or LVM member, swap, ambiguous signatures.
    Other(String),
}

/// What to do with the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Mount,
    FormatThenMount,
}

/// `blkid -p -o export <device>`: probes the device itself, not the cache.
pub fn probe_argv(device: &Path) -> Vec<String> {
    vec![PROBE.into(), "-p".into(), "-o".into(), "export".into(), device.display().to_string()]
}

/// Reads `blkid -p -o export` output (KEY=VALUE lines).
pub fn parse_probe(output: &str) -> Probe {
    let field = |key: &str| output.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_string));
    let usage = field("USAGE");
    match (field("TYPE"), field("PTTYPE")) {
        (Some(t), _) if usage.as_deref().map_or(true, |u| u == "filesystem") => Probe::Filesystem(t),
        (Some(t), _) => Probe::Other(format!("a {t} signature ({})", usage.unwrap_or_default())),
        (None, Some(pt)) => Probe::Other(format!("a {pt} partition table")),
        (None, None) if output.trim().is_empty() => Probe::Empty,
        (None, None) => Probe::Other(format!("unrecognised signatures ({})", output.trim().replace('\n', ", "))),
    }
}

/// Decides, never guessing: the wanted filesystem is mounted; an empty device is
/// formatted only with `format: true`; anything else is refused untouched.
pub fn decide(device: &Path, probe: &Probe, fs_type: &str, format: bool) -> Result<Action, VolumeError> {
    let device = device.to_path_buf();
    match probe {
        Probe::Filesystem(found) if found == fs_type => Ok(Action::Mount),
        Probe::Filesystem(found) => {
            Err(VolumeError::OtherFilesystem { device, found: found.clone(), wanted: fs_type.into() })
        }
        Probe::Other(what) => Err(VolumeError::NotAFilesystem { device, what: what.clone() }),
        Probe::Empty if format => Ok(Action::FormatThenMount),
        Probe::Empty => Err(VolumeError::NoFilesystem { device, fs_type: fs_type.into() }),
    }
}

/// `mkfs.<type> -q <device>` without any force flag: mkfs itself refuses a
/// device where it finds a filesystem, a second guard after blkid.
pub fn mkfs_argv(fs_type: &str, device: &Path) -> Vec<String> {
    vec![format!("mkfs.{fs_type}"), "-q".into(), device.display().to_string()]
}

/// `mount -t <type> [-o opts] <device> <mountpoint>`.
pub fn mount_argv(fs_type: &str, options: &[String], device: &Path, target: &Path) -> Vec<String> {
    let mut argv = vec![MOUNT.to_string(), "-t".into(), fs_type.to_string()];
    if !options.is_empty() {
        argv.push("-o".into());
        argv.push(options.join(","));
    }
    argv.push(device.display().to_string());
    argv.push(target.display().to_string());
    argv
}

impl Task {
    /// Probes the device, formats it only if it holds nothing, and mounts it.
    pub(super) async fn mount_block(
        &mut self,
        device: &Path,
        fs_type: &str,
        format: bool,
        env: &BTreeMap<String, String>,
        secrets: &[String],
    ) -> Result<(), VolumeError> {
        if std::fs::metadata(device).is_err() {
            return Err(VolumeError::NoDevice { device: device.into() });
        }
        self.matcher = Matcher::for_volume(&self.volume.source);
        let probe = match self.helper(probe_argv(device), env, secrets).await {
            Ok(output) => parse_probe(&output),
            // blkid -p exits 2 when it finds no signature at all.
            Err(err) if err.code() == Some(2) => Probe::Empty,
            Err(source) => return Err(VolumeError::Probe { device: device.into(), source }),
        };
        if decide(device, &probe, fs_type, format)? == Action::FormatThenMount {
            info!(device = %device.display(), fs_type, "no filesystem on the device: formatting it");
            self.helper(mkfs_argv(fs_type, device), env, secrets)
                .await
                .map_err(|source| VolumeError::Format { device: device.into(), source })?;
        }
        let argv = mount_argv(fs_type, &self.volume.options, device, &self.mountpoint);
        self.helper(argv, env, secrets)
            .await
            .map(|_| ())
            .map_err(|source| VolumeError::MountDevice { device: device.into(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_blkid_export() {
        assert_eq!(parse_probe(""), Probe::Empty);
        assert_eq!(
            parse_probe("DEVNAME=/dev/loop0\nUUID=x\nTYPE=ext4\nUSAGE=filesystem\n"),
            Probe::Filesystem("ext4".into())
        );
        assert_eq!(
            parse_probe("DEVNAME=/dev/loop0\nPTUUID=x\nPTTYPE=gpt\n"),
            Probe::Other("a gpt partition table".into())
        );
        assert_eq!(
            parse_probe("TYPE=LVM2_member\nUSAGE=raid\n"),
            Probe::Other("a LVM2_member signature (raid)".into())
        );
        assert_eq!(parse_probe("TYPE=swap\nUSAGE=other\n"), Probe::Other("a swap signature (other)".into()));
    }

    #[test]
    fn never_formats_a_device_with_data() {
        let dev = Path::new("/dev/loop7");
        assert_eq!(decide(dev, &Probe::Filesystem("xfs".into()), "xfs", true).unwrap(), Action::Mount);
        assert_eq!(decide(dev, &Probe::Empty, "xfs", true).unwrap(), Action::FormatThenMount);
        let err = decide(dev, &Probe::Filesystem("ext4".into()), "xfs", true).unwrap_err().to_string();
        assert!(err.contains("holds a ext4 filesystem"), "{err}");
        assert!(decide(dev, &Probe::Other("a gpt partition table".into()), "ext4", true).is_err());
        assert!(decide(dev, &Probe::Empty, "ext4", false).unwrap_err().to_string().contains("format: true"));
    }

    #[test]
    fn helper_argv() {
        let dev = Path::new("/dev/loop7");
        assert_eq!(mkfs_argv("ext4", dev), ["mkfs.ext4", "-q", "/dev/loop7"]);
        assert_eq!(
            mount_argv("xfs", &["noatime".into()], dev, Path::new("/m")),
            ["mount", "-t", "xfs", "-o", "noatime", "/dev/loop7", "/m"]
        );
    }
}
