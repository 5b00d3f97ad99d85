//! `zfs` volumes: what the zfs-provisioner did from a host service, done from
//! the sidecar. The dataset must exist or is created (never touching one that
//! exists, never destroying one); it is mounted with `mount.zfs`, the helper
//! `mount -t zfs` runs, with `zfsutil` unless its mountpoint is `legacy`.

use std::collections::BTreeMap;
use std::path::Path;

use tracing::{debug, info, warn};

use super::{Task, VolumeError};

pub const PROGRAM: &str = "zfs";
pub const MOUNT_HELPER: &str = "mount.zfs";
/// The zfs kernel module's control device: absent, no pool can be reached.
pub const DEVICE: &str = "/dev/zfs";

/// `zfs list -H -o name <dataset>`: succeeds iff it exists.
pub fn list_argv(dataset: &str) -> Vec<String> {
    ["zfs", "list", "-H", "-o", "name", dataset].map(String::from).to_vec()
}

/// `zfs create -o k=v ... <dataset>`: the provisioner's `refquota` and
/// `refreservation`, and any other property.
pub fn create_argv(dataset: &str, properties: &BTreeMap<String, String>) -> Vec<String> {
    let mut argv = vec!["zfs".to_string(), "create".to_string()];
    for (key, value) in properties {
        argv.push("-o".into());
        argv.push(format!("{key}={value}"));
    }
    argv.push(dataset.to_string());
    argv
}

/// `zfs get -H -o value mountpoint <dataset>`.
pub fn mountpoint_argv(dataset: &str) -> Vec<String> {
    ["zfs", "get", "-H", "-o", "value", "mountpoint", dataset].map(String::from).to_vec()
}

/// `mount.zfs [-o opts] <dataset> <mountpoint>`. A dataset whose own mountpoint
/// property is not `legacy` needs `zfsutil`, or mount.zfs refuses to mount it
/// elsewhere.
pub fn mount_argv(dataset: &str, zfs_mountpoint: &str, options: &[String], target: &Path) -> Vec<String> {
    let mut opts: Vec<String> = Vec::new();
    if zfs_mountpoint.trim() != "legacy" {
        opts.push("zfsutil".into());
    }
    opts.extend(options.iter().cloned());
    let mut argv = vec![MOUNT_HELPER.to_string()];
    if !opts.is_empty() {
        argv.push("-o".into());
        argv.push(opts.join(","));
    }
    argv.push(dataset.to_string());
    argv.push(target.display().to_string());
    argv
}

/// From `zfs version` output (`zfs-2.1.11-1` and `zfs-kmod-2.1.11-1`), the
/// userland and kernel module versions when they differ.
pub fn version_mismatch(output: &str) -> Option<(String, String)> {
    let mut user = None;
    let mut kmod = None;
    for line in output.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("zfs-kmod-") {
            kmod = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("zfs-") {
            user = Some(v.to_string());
        }
    }
    match (user, kmod) {
        (Some(u), Some(k)) if u != k => Some((u, k)),
        _ => None,
    }
}

impl Task {
    /// Creates the dataset if it is missing and the spec says how, and mounts it.
    pub(super) async fn mount_zfs(
        &mut self,
        dataset: &str,
        create: Option<&BTreeMap<String, String>>,
        env: &BTreeMap<String, String>,
        secrets: &[String],
    ) -> Result<(), VolumeError> {
        if self.helper(list_argv(dataset), env, secrets).await.is_err() {
            let Some(properties) = create else {
                return Err(VolumeError::NoDataset { dataset: dataset.into() });
            };
            match self.helper(create_argv(dataset, properties), env, secrets).await {
                Ok(_) => info!(dataset, "created the dataset"),
                // Another pod may have created it meanwhile: what exists is never touched.
                Err(err) if self.helper(list_argv(dataset), env, secrets).await.is_ok() => {
                    info!(dataset, %err, "the dataset appeared meanwhile; using it as it is");
                }
                Err(source) => return Err(VolumeError::CreateDataset { dataset: dataset.into(), source }),
            }
        }
        let zfs_mountpoint = self
            .helper(mountpoint_argv(dataset), env, secrets)
            .await
            .map_err(|source| VolumeError::DatasetMountpoint { dataset: dataset.into(), source })?;
        let argv = mount_argv(dataset, &zfs_mountpoint, &self.volume.options, &self.mountpoint);
        self.helper(argv, env, secrets)
            .await
            .map(|_| ())
            .map_err(|source| VolumeError::MountDataset { dataset: dataset.into(), source })
    }

    /// Warns when the image's zfs tools and the node's module differ.
    pub(super) async fn warn_on_zfs_version_mismatch(&mut self) {
        let env = self.volume.env.clone();
        match self.helper(vec![PROGRAM.into(), "version".into()], &env, &[]).await {
            Ok(output) => {
                if let Some((user, kmod)) = version_mismatch(&output) {
                    warn!(userland = %user, kernel_module = %kmod, "the image's zfs tools and the node's zfs module differ; use an image built for the node's OpenZFS version");
                }
            }
            Err(err) => debug!(%err, "cannot read the zfs versions"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_with_properties() {
        let props = BTreeMap::from([
            ("refquota".to_string(), "10G".to_string()),
            ("refreservation".to_string(), "10G".to_string()),
        ]);
        assert_eq!(
            create_argv("tank/k8s/a", &props),
            ["zfs", "create", "-o", "refquota=10G", "-o", "refreservation=10G", "tank/k8s/a"]
        );
    }

    #[test]
    fn zfsutil_unless_legacy() {
        let target = Path::new("/sidemount/tank");
        assert_eq!(
            mount_argv("tank/a", "/tank/a", &[], target),
            ["mount.zfs", "-o", "zfsutil", "tank/a", "/sidemount/tank"]
        );
        assert_eq!(
            mount_argv("tank/a", "legacy\n", &["noatime".into()], target),
            ["mount.zfs", "-o", "noatime", "tank/a", "/sidemount/tank"]
        );
        assert_eq!(mount_argv("tank/a", "legacy", &[], target), ["mount.zfs", "tank/a", "/sidemount/tank"]);
    }

    #[test]
    fn notices_a_version_mismatch() {
        assert_eq!(version_mismatch("zfs-2.1.11-1\nzfs-kmod-2.1.11-1\n"), None);
        assert_eq!(
            version_mismatch("zfs-2.2.2-0ubuntu9\nzfs-kmod-2.1.5-1ubuntu6\n"),
            Some(("2.2.2-0ubuntu9".into(), "2.1.5-1ubuntu6".into()))
        );
        assert_eq!(version_mismatch("garbage"), None);
    }
}
