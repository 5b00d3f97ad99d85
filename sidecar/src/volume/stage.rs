//! The stage: the private directory where a daemon mounts before its mount is
//! bound onto the mountpoint. Made ready for a new daemon, released at teardown,
//! and the daemon's mount there given the volume's options; and the layers at the
//! mountpoint kept below `MAX_LAYERS` before a bind adds one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use tracing::warn;

use super::policy::{Progress, MAX_LAYERS};
use super::{fuse, Task, UnmountError, VolumeError};
use crate::mounts::MountTable;
use crate::sys::{bounded, Unmount};

impl Task {
    /// Where this volume's daemon mounts: a private directory, bound from there
    /// onto the mountpoint.
    pub(super) fn stage_path(&self) -> PathBuf {
        self.ctx.stage.join(&self.volume.name)
    }

    /// Makes the stage directory ready for a new daemon: created, and with any
    /// mount of an earlier daemon there removed (dead: aborted).
    pub(super) async fn prepare_stage(&self) -> Result<PathBuf, VolumeError> {
        // First the dead mount of an earlier daemon: stat of it fails (ENOTCONN).
        self.release_stage(true).await?;
        let stage = self.stage_path();
        std::fs::create_dir_all(&stage).map_err(|source| VolumeError::CreateStage { stage: stage.clone(), source })?;
        Ok(stage)
    }

    /// Unmounts whatever is mounted at the stage: cleanly, or (`abort`, or busy)
    /// aborted and detached. The stage is private: nothing propagates from it.
    pub(super) async fn release_stage(&self, abort: bool) -> Result<(), VolumeError> {
        let stage = self.stage_path();
        let mut progress = Progress::default();
        loop {
            let table = self.fresh().await?;
            let left = table.at(&stage).count();
            if left == 0 {
                return Ok(());
            }
            if progress.stalled(left) {
                return Err(VolumeError::StageNotCleared { stage });
            }
            let how = if abort { Unmount::Abort } else { Unmount::Clean };
            match self.unmount_at(&stage, how).await {
                Ok(()) => {}
                Err(UnmountError::Refused(Errno::EINVAL | Errno::ENOENT)) => return Ok(()),
                Err(_) => self
                    .unmount_at(&stage, Unmount::Abort)
                    .await
                    .map_err(|source| VolumeError::UnmountStage { stage: stage.clone(), source })?,
            }
            progress.unmounted();
        }
    }

    /// Keeps the layers at the mountpoint below MAX_LAYERS before a bind adds one:
    /// the topmost layers of this volume are detached (lazily: files open on them
    /// stay usable) until there is room. The pod volume's own bind, at the bottom,
    /// is never touched.
    ///
    /// Why the topmost: no container can be shown not to have captured a layer (the
    /// runtime binds whatever is on top when it starts one), and a layer that is
    /// taken away strands whoever captured it. The most recent layer was on top for
    /// the shortest time, while the bottom ones hold the apps started with the pod,
    /// which keep receiving every repair.
    ///
    /// It starts from `table` (read since the daemon's mount appeared) and returns
    /// the table it looked at last.
    pub(super) async fn trim_layers(&self, mut table: Arc<MountTable>) -> Result<Arc<MountTable>, VolumeError> {
        let mut progress = Progress::default();
        loop {
            let stack = table.stack_at(&self.mountpoint);
            let (layers, ours) = (stack.len(), stack.iter().filter(|m| self.matcher.matches(m)).count());
            let top_is_ours = stack.last().is_some_and(|m| self.matcher.matches(m));
            if ours < MAX_LAYERS || layers < 2 || !top_is_ours {
                return Ok(table);
            }
            if progress.stalled(layers) {
                return Err(VolumeError::LayersNotCleared);
            }
            self.unmount(Unmount::Detach).await.map_err(|source| VolumeError::DetachLayer { layers: ours, source })?;
            progress.unmounted();
            warn!(
                layers = ours,
                max = MAX_LAYERS,
                "too many layers at the mountpoint: detached the topmost instead of covering it; an app container that started while it was on top reads ENOTCONN until it restarts"
            );
            table = self.fresh().await?;
        }
    }

    /// Gives the daemon's mount at the stage the flags of `options` (`ro`, `nosuid`,
    /// `noatime` ...). Done there, before the bind: binds copy the flags of what they
    /// bind, and so do the copies propagated to the node and the apps, while a
    /// remount of the bind at the mountpoint would change the sidecar's view only.
    pub(super) async fn apply_options(&self, stage: &Path) -> Result<(), VolumeError> {
        if self.volume.options.is_empty() {
            return Ok(());
        }
        let (sys, stage, options) = (self.ctx.sys.clone(), stage.to_path_buf(), self.volume.options.clone());
        let applied = bounded(self.ctx.check_timeout, move || {
            let current = sys.bind_flags(&stage)?;
            sys.remount_bind(&stage, fuse::bind_flags(current, &options))
        })
        .await;
        match applied {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(VolumeError::ApplyOptions { options: self.volume.options.clone(), source }),
            Err(_) => Err(VolumeError::ApplyOptionsHung),
        }
    }
}
