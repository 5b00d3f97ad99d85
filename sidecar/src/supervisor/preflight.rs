//! Preflight: whether every volume can work in this container (privileges,
//! /dev/fuse, a shared mountpoint, its programs, its credentials), read from the
//! environment once and decided by a pure function, before anything is mounted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::RunError;
use crate::mounts::MountTable;
use crate::spec::{Source, Volume};
use crate::sys::Sys;
use crate::volume::{self, block, objectivefs, zfs};

/// What the environment looks like to preflight: read once, decided purely.
pub struct Environment<'a> {
    pub table: &'a MountTable,
    pub has_cap_sys_admin: bool,
    pub fuse_device: bool,
    pub zfs_device: bool,
    /// For a mountpoint, or a block volume's device.
    pub path_exists: &'a dyn Fn(&Path) -> bool,
    pub find_program: &'a dyn Fn(&str) -> bool,
    /// Whether a volume's secretDir can be read and holds only what a Secret may
    /// set, and an objectivefs volume's credentials are all there.
    pub credentials: &'a dyn Fn(&Volume) -> Result<(), String>,
}

/// Checks that every volume can work here, before anything is mounted.
pub fn preflight(volumes: &[Volume], root: &Path, env: &Environment<'_>) -> Result<(), RunError> {
    if volumes.is_empty() {
        return Ok(());
    }
    if !env.has_cap_sys_admin {
        return Err(RunError::NoCapSysAdmin);
    }
    for volume in volumes {
        let mountpoint = root.join(&volume.name);
        if !env.table.is_mount_point(&mountpoint) && !(env.path_exists)(&mountpoint) {
            return Err(RunError::NoMountpoint { volume: volume.name.clone(), mountpoint });
        }
        match env.table.holder_of(&mountpoint) {
            Some(base) if base.shared.is_some() => {}
            base => {
                let holder = base
                    .map(|m| {
                        let how = if m.master.is_some() { "slave" } else { "private" };
                        format!("{} {} mount at {}", how, m.fs_type, m.mount_point.display())
                    })
                    .unwrap_or_else(|| "no mount found".into());
                return Err(RunError::NotShared { volume: volume.name.clone(), mountpoint, holder });
            }
        }
        if volume.source.needs_fuse() && !env.fuse_device {
            return Err(RunError::NoFuseDevice { volume: volume.name.clone() });
        }
        let programs: Vec<(String, bool)> = match &volume.source {
            Source::Fuse { command } => vec![(command[0].clone(), true)],
            Source::ObjectiveFs { .. } => vec![(objectivefs::PROGRAM.into(), false)],
            Source::Zfs { .. } => {
                if !env.zfs_device {
                    return Err(RunError::NoZfsModule { volume: volume.name.clone() });
                }
                vec![(zfs::PROGRAM.into(), false), (zfs::MOUNT_HELPER.into(), false)]
            }
            Source::Block { device, fs_type, format } => {
                if !(env.path_exists)(device) {
                    return Err(RunError::NoDevice { volume: volume.name.clone(), device: device.clone() });
                }
                let mut programs = vec![(block::PROBE.to_string(), false), (block::MOUNT.to_string(), false)];
                if *format {
                    programs.push((format!("mkfs.{fs_type}"), false));
                }
                programs
            }
        };
        for (program, from_command) in programs {
            if !(env.find_program)(&program) {
                return Err(RunError::MissingProgram { volume: volume.name.clone(), program, from_command });
            }
        }
        // A secretName the supervisor resolved itself: no injection mounted it.
        if let (Some(secret), Some(dir)) = (&volume.secret_name, &volume.secret_dir) {
            if !(env.path_exists)(dir) {
                let (volume, secret, dir) = (volume.name.clone(), secret.clone(), dir.clone());
                return Err(RunError::SecretNotMounted { volume, secret, dir });
            }
        }
        if volume.secret_dir.is_some() || matches!(volume.source, Source::ObjectiveFs { .. }) {
            (env.credentials)(volume)
                .map_err(|message| RunError::Credentials { volume: volume.name.clone(), message })?;
        }
    }
    Ok(())
}

/// The mountpoints to create: with one Bidirectional mount at the root (the
/// kustomize component's layout, one shared emptyDir), a volume's directory
/// under it does not exist until the supervisor makes it.
pub fn missing_mountpoints(
    volumes: &[Volume],
    root: &Path,
    table: &MountTable,
    exists: &dyn Fn(&Path) -> bool,
) -> Vec<PathBuf> {
    if !table.is_mount_point(root) || table.holder_of(root).and_then(|m| m.shared).is_none() {
        return Vec::new();
    }
    volumes.iter().map(|v| root.join(&v.name)).filter(|mp| !table.is_mount_point(mp) && !exists(mp)).collect()
}

pub(super) async fn check_environment(
    volumes: &[Volume],
    root: &Path,
    sys: &dyn Sys,
    check_timeout: Duration,
    table: &MountTable,
) -> Result<(), RunError> {
    let exists = |p: &Path| p.exists();
    for mountpoint in missing_mountpoints(volumes, root, table, &exists) {
        std::fs::create_dir(&mountpoint)
            .or_else(|e| if e.kind() == std::io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
            .map_err(|source| RunError::Setup { what: "a mountpoint under the shared SIDEMOUNT_ROOT", source })?;
    }
    let find = |program: &str| which::which(program).is_ok();
    // Read first, each under the check timeout: a secretDir on a hung filesystem
    // is refused, it does not hang the supervisor.
    let mut secrets = BTreeMap::new();
    for volume in volumes.iter().filter(|v| v.secret_dir.is_some() || matches!(v.source, Source::ObjectiveFs { .. })) {
        let read = volume::secrets_of(volume, check_timeout, &Default::default()).await;
        secrets.insert(volume.name.clone(), read.map(|_| ()).map_err(|e| e.to_string()));
    }
    let credentials = |volume: &Volume| secrets.get(&volume.name).cloned().unwrap_or(Ok(()));
    let env = Environment {
        table,
        has_cap_sys_admin: sys.has_cap_sys_admin(),
        fuse_device: Path::new("/dev/fuse").exists(),
        zfs_device: Path::new(zfs::DEVICE).exists(),
        path_exists: &exists,
        find_program: &find,
        credentials: &credentials,
    };
    preflight(volumes, root, &env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;
    use crate::supervisor::plan::resolve_secret_name;

    fn table(name: &str) -> MountTable {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mountinfo").join(name);
        MountTable::parse(std::io::BufReader::new(std::fs::File::open(path).unwrap())).unwrap()
    }

    fn fuse(name: &str) -> Volume {
        spec::validate(&spec::RawVolume {
            name: Some(name.into()),
            kind: Some("fuse".into()),
            command: Some(vec!["bindfs".into(), "-f".into(), "/src".into(), "{mountpoint}".into()]),
            ..Default::default()
        })
        .unwrap()
    }

    fn env<'a>(
        table: &'a MountTable,
        yes: &'a dyn Fn(&Path) -> bool,
        find: &'a dyn Fn(&str) -> bool,
    ) -> Environment<'a> {
        Environment {
            table,
            has_cap_sys_admin: true,
            fuse_device: true,
            zfs_device: true,
            path_exists: yes,
            find_program: find,
            credentials: &|_| Ok(()),
        }
    }

    #[test]
    fn accepts_a_volume_on_its_shared_bind() {
        let t = table("sidecar-with-volume");
        let (yes, found) = (|_: &Path| true, |_: &str| true);
        preflight(&[fuse("data")], Path::new("/sidemount"), &env(&t, &yes, &found)).unwrap();
    }

    #[test]
    fn refuses_a_private_mountpoint_naming_the_fix() {
        let t = table("sidecar-leftovers");
        let (yes, found) = (|_: &Path| true, |_: &str| true);
        let err = preflight(&[fuse("private")], Path::new("/sidemount"), &env(&t, &yes, &found)).unwrap_err();
        assert_eq!(err.exit_code(), 78);
        assert!(err.to_string().contains("mountPropagation: Bidirectional"), "{err}");
        // Not its own bind: it lives on the container's root, which is a slave.
        let err = preflight(&[fuse("other")], Path::new("/sidemount"), &env(&t, &yes, &found)).unwrap_err();
        assert!(err.to_string().contains("slave overlay mount at /"), "{err}");
    }

    #[test]
    fn one_shared_mount_at_the_root_serves_every_volume() {
        // The kustomize component's layout: one shared emptyDir at /sidemount.
        let t = table("sidecar-shared-root");
        let (yes, found) = (|_: &Path| true, |_: &str| true);
        preflight(&[fuse("data"), fuse("new")], Path::new("/sidemount"), &env(&t, &yes, &found)).unwrap();
        // A volume's directory is made when it is missing, and only under a shared root mount.
        let absent = |p: &Path| p != Path::new("/sidemount/new");
        let volumes = [fuse("data"), fuse("new")];
        assert_eq!(
            missing_mountpoints(&volumes, Path::new("/sidemount"), &t, &absent),
            [PathBuf::from("/sidemount/new")]
        );
        let nothing = |_: &Path| false;
        assert!(missing_mountpoints(&volumes, Path::new("/etc/sidemount/pod"), &t, &nothing).is_empty(), "not shared");
        let per_volume = table("sidecar-with-volume");
        assert!(missing_mountpoints(&volumes, Path::new("/sidemount"), &per_volume, &nothing).is_empty());
    }

    #[test]
    fn a_secret_name_resolves_to_where_injection_mounts_it() {
        let mut volume = spec::validate(&spec::RawVolume {
            name: Some("bucket".into()),
            kind: Some("fuse".into()),
            command: Some(vec!["s3fs".into(), "{mountpoint}".into()]),
            secret_name: Some("s3-credentials".into()),
            ..Default::default()
        })
        .unwrap();
        resolve_secret_name(&mut volume);
        assert_eq!(volume.secret_dir.as_deref(), Some(Path::new("/etc/sidemount/secrets/bucket")));
        let t = table("sidecar-shared-root");
        let found = |_: &str| true;
        let no_secret = |p: &Path| !p.starts_with("/etc/sidemount/secrets");
        let err = preflight(std::slice::from_ref(&volume), Path::new("/sidemount"), &env(&t, &no_secret, &found))
            .unwrap_err();
        assert_eq!(err.exit_code(), 78);
        let text = err.to_string();
        assert!(text.contains("\"s3-credentials\"") && text.contains("/etc/sidemount/secrets/bucket"), "{text}");
        let yes = |_: &Path| true;
        preflight(std::slice::from_ref(&volume), Path::new("/sidemount"), &env(&t, &yes, &found)).unwrap();

        // A secretDir given with it wins; a spec made by injection has no secretName left.
        let mut both = volume.clone();
        both.secret_dir = Some("/own".into());
        resolve_secret_name(&mut both);
        assert_eq!(both.secret_dir.as_deref(), Some(Path::new("/own")));
        let mut plain = fuse("data");
        resolve_secret_name(&mut plain);
        assert_eq!(plain.secret_dir, None);
        preflight(&[plain], Path::new("/sidemount"), &env(&t, &no_secret, &found)).unwrap();
    }

    #[test]
    fn refuses_what_is_missing() {
        let t = table("sidecar-with-volume");
        let (yes, no) = (|_: &Path| true, |_: &str| false);
        let err = preflight(&[fuse("data")], Path::new("/sidemount"), &env(&t, &yes, &no)).unwrap_err();
        assert!(matches!(err, RunError::MissingProgram { .. }), "{err}");
        let found = |_: &str| true;
        let mut e = env(&t, &yes, &found);
        e.fuse_device = false;
        assert!(matches!(preflight(&[fuse("data")], Path::new("/sidemount"), &e), Err(RunError::NoFuseDevice { .. })));
        e.fuse_device = true;
        e.has_cap_sys_admin = false;
        assert!(matches!(preflight(&[fuse("data")], Path::new("/sidemount"), &e), Err(RunError::NoCapSysAdmin)));
        let nothing = |_: &Path| false;
        let e = env(&t, &nothing, &found);
        assert!(matches!(preflight(&[fuse("gone")], Path::new("/sidemount"), &e), Err(RunError::NoMountpoint { .. })));
        // A secretDir that cannot be read (or holds what a Secret may not set) is refused.
        let mut with_secret = fuse("data");
        with_secret.secret_dir = Some("/etc/sidemount/secrets/data".into());
        let mut e = env(&t, &yes, &found);
        let unreadable = |_: &Volume| Err("cannot read secretDir /etc/sidemount/secrets/data".to_string());
        e.credentials = &unreadable;
        let err = preflight(&[with_secret.clone()], Path::new("/sidemount"), &e).unwrap_err();
        assert!(matches!(err, RunError::Credentials { .. }) && err.exit_code() == 78, "{err}");
        preflight(&[fuse("data")], Path::new("/sidemount"), &e).expect("no secretDir, nothing to read");
        // No volumes: nothing to check, even without privileges.
        let mut e = env(&t, &nothing, &found);
        e.has_cap_sys_admin = false;
        preflight(&[], Path::new("/sidemount"), &e).unwrap();
    }
}
