//! What can fail in a volume's life, one variant per step. Each message is what
//! the log and `/status` show, and names what to change where a user can.

use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;

use crate::daemon::{HelperError, SpawnError};
use crate::secrets::SecretError;
use crate::sys::TimedOut;

use super::flush::PrepareError;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Secrets(#[from] SecretError),
    #[error(
        "{} missing: put it in the Secret mounted at secretDir (FlexVolume keys `license` and `passphrase` work too)",
        .missing.join(" and ")
    )]
    CredentialsMissing { missing: Vec<&'static str> },
    #[error(transparent)]
    Writeback(#[from] PrepareError),
    /// The mount table could not be read (see `MountWatch::fresh`).
    #[error("{0}")]
    MountTable(String),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("starting the daemon did not return within {timeout:?} (SIDEMOUNT_MOUNT_TIMEOUT)")]
    SpawnHung { timeout: Duration },
    #[error("the last start of {program} has not returned yet, long past SIDEMOUNT_MOUNT_TIMEOUT: check that the filesystem {program} is on answers")]
    SpawnStillHung { program: String },
    #[error("stopped while starting the daemon")]
    SpawnStopped,

    #[error("cannot clear the {fs_type} mount at the mountpoint: {source}; unmount it by hand")]
    ClearMountpoint { fs_type: String, source: UnmountError },
    #[error("a mount at the mountpoint would not go away")]
    MountpointNotCleared,
    #[error("{0}")]
    Statfs(Errno),
    #[error(transparent)]
    StatfsHung(TimedOut),
    /// The periodic check of a mounted volume.
    #[error("statfs of the mountpoint failed: {source}")]
    CheckFailed { source: Errno },
    #[error("the mountpoint did not answer statfs within {timeout:?}; the daemon may be hung")]
    CheckHung { timeout: Duration },

    #[error("cannot create the staging directory {}: {source}", .stage.display())]
    CreateStage { stage: PathBuf, source: std::io::Error },
    #[error("the mounts at the staging directory {} would not go away", .stage.display())]
    StageNotCleared { stage: PathBuf },
    #[error("cannot unmount the staging directory {}: {source}", .stage.display())]
    UnmountStage { stage: PathBuf, source: UnmountError },
    #[error("the layers at the mountpoint would not go away")]
    LayersNotCleared,
    #[error("cannot detach the topmost of {layers} layers at the mountpoint: {source}")]
    DetachLayer { layers: usize, source: UnmountError },
    #[error("cannot apply options {options:?} to the daemon's mount: {source}")]
    ApplyOptions { options: Vec<String>, source: Errno },
    #[error("applying the options to the daemon's mount did not return")]
    ApplyOptionsHung,
    #[error("the daemon's mount is no longer at the staging directory")]
    NotStaged,
    #[error("cannot bind the daemon's mount onto the mountpoint: {source}")]
    Bind { source: Errno },
    #[error("binding the daemon's mount onto the mountpoint did not return")]
    BindHung,
    /// `mounts`: what is at the mountpoint instead, as `id on parent fs_type`.
    #[error("the bound mount is not on top at the mountpoint (mounts there: {})", .mounts.join(", "))]
    NotOnTop { mounts: Vec<String> },

    #[error("dataset {dataset} does not exist; create it on the node's pool, or add `create:` to the spec")]
    NoDataset { dataset: String },
    #[error("cannot create dataset {dataset}: {source}")]
    CreateDataset { dataset: String, source: HelperError },
    #[error("cannot read the mountpoint property of {dataset}: {source}")]
    DatasetMountpoint { dataset: String, source: HelperError },
    #[error("cannot mount {dataset}: {source}")]
    MountDataset { dataset: String, source: HelperError },

    #[error("device {} not found; attach it to the node, or fix `device`", .device.display())]
    NoDevice { device: PathBuf },
    #[error("cannot probe {}: {source}", .device.display())]
    Probe { device: PathBuf, source: HelperError },
    #[error(
        "{} holds a {found} filesystem, not {wanted}; sidemount never formats a device that holds data: set fsType: {found}, or wipe the device yourself",
        .device.display()
    )]
    OtherFilesystem { device: PathBuf, found: String, wanted: String },
    #[error(
        "{} holds {what}; sidemount never formats a device that holds data: name the partition or volume that holds the filesystem",
        .device.display()
    )]
    NotAFilesystem { device: PathBuf, what: String },
    #[error("{} holds no filesystem; set `format: true` to create a {fs_type} filesystem on it", .device.display())]
    NoFilesystem { device: PathBuf, fs_type: String },
    #[error("cannot format {}: {source}", .device.display())]
    Format { device: PathBuf, source: HelperError },
    #[error("cannot mount {}: {source}", .device.display())]
    MountDevice { device: PathBuf, source: HelperError },
}

/// An unmount the kernel refused, or one that never returned.
#[derive(Debug, thiserror::Error)]
pub enum UnmountError {
    #[error("{0}")]
    Refused(Errno),
    #[error("umount did not return; the kernel is waiting on the filesystem")]
    Hung,
}
