//! inotify on directories, for the files sidemount reads again when they
//! change: the spec (`SIDEMOUNT_CONFIG`, in the supervisor) and the webhook's
//! certificate (`webhook/tls.rs`).
//!
//! Directories are watched, not files: an editor replaces a file by renaming
//! over it, and the kubelet updates a ConfigMap or Secret volume by renaming a
//! new `..data` symlink over the old one, which a watch on the file itself
//! would not survive.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::sys;

/// Writers touch a file several times in a burst (both files of a certificate,
/// a write then a rename): wait this long for it to end before reading.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Which changes in a watched directory wake the watch, beyond the ones that
/// always do: a file written and closed, created, deleted, or renamed into it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// A file renamed out of the directory (an editor moving the old one away).
    pub renamed_away: bool,
    /// The directory itself deleted or renamed.
    pub directory_gone: bool,
    /// A file's metadata (mode, owner, times) changed.
    pub metadata: bool,
}

impl Events {
    fn mask(self) -> AddWatchFlags {
        let mut mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE;
        if self.renamed_away {
            mask |= AddWatchFlags::IN_MOVED_FROM;
        }
        if self.directory_gone {
            mask |= AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF;
        }
        if self.metadata {
            mask |= AddWatchFlags::IN_ATTRIB;
        }
        mask
    }
}

/// Why a watch gives no more events.
#[derive(Debug, thiserror::Error)]
pub enum Broken {
    /// The runtime no longer polls the descriptor (it is shutting down).
    #[error("the runtime stopped polling the watch: {0}")]
    Runtime(std::io::Error),
    /// Reading the events failed.
    #[error("{0}")]
    Read(std::io::Error),
}

/// One inotify instance watching directories for `Events`.
pub struct DirWatch {
    fd: AsyncFd<InotifyFd>,
    mask: AddWatchFlags,
}

impl DirWatch {
    /// A watch on no directory yet. Must be called inside a tokio runtime.
    pub fn new(events: Events) -> std::io::Result<DirWatch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let fd = sys::watch_fd(InotifyFd(inotify), Interest::READABLE)?;
        Ok(DirWatch { fd, mask: events.mask() })
    }

    /// Watches `dir`. Watching a directory again only renews its watch.
    pub fn add(&self, dir: &Path) -> std::io::Result<()> {
        self.fd.get_ref().0.add_watch(dir, self.mask)?;
        Ok(())
    }

    /// Watches the directory of each file as named and, when it is a link (a
    /// Secret volume's `tls.crt -> ..data/tls.crt`), the directory it resolves
    /// to now, so a file rewritten in place is noticed too. A file named with
    /// no directory is in `.`. Call it again after each change: a rotation
    /// moves the links to a new directory. Only the directories as named must
    /// be there.
    pub fn add_dirs_of(&self, files: &[&Path]) -> std::io::Result<()> {
        let parent =
            |path: &Path| path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        for file in files {
            self.add(&parent(file))?;
            if let Ok(resolved) = std::fs::canonicalize(file) {
                let _ = self.add(&parent(&resolved));
            }
        }
        Ok(())
    }

    /// Waits for events and reads them all.
    pub async fn changed(&self) -> Result<(), Broken> {
        loop {
            let mut guard = self.fd.readable().await.map_err(Broken::Runtime)?;
            match guard.try_io(|inner| inner.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(_events)) => return Ok(()),
                Ok(Err(err)) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(Err(err)) => return Err(Broken::Read(err)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Drops the events read so far: they are news of a change already seen.
    pub fn drain(&self) {
        let _ = self.fd.get_ref().0.read_events();
    }

    /// Waits `SETTLE` for a burst of writes to end, then drops its events, so
    /// that the burst is one change.
    pub async fn settle(&self) {
        tokio::time::sleep(SETTLE).await;
        self.drain();
    }
}

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl sys::OwnsFd for InotifyFd {}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    /// Whether a change is seen within a moment.
    async fn woken(watch: &DirWatch) -> bool {
        let seen = tokio::time::timeout(Duration::from_millis(300), watch.changed()).await;
        if let Ok(result) = &seen {
            assert!(result.is_ok(), "{result:?}");
            watch.settle().await;
        }
        seen.is_ok()
    }

    fn watching(dir: &Path, events: Events) -> DirWatch {
        let watch = DirWatch::new(events).unwrap();
        watch.add(dir).unwrap();
        watch
    }

    #[tokio::test]
    async fn a_file_written_created_deleted_or_renamed_in_wakes_it() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let watch = watching(dir.path(), Events::default());
        let file = dir.path().join("volumes.yaml");
        assert!(!woken(&watch).await, "woken with nothing changed");
        fs::write(&file, "a").unwrap();
        assert!(woken(&watch).await, "created");
        fs::write(&file, "b").unwrap();
        assert!(woken(&watch).await, "written");
        fs::remove_file(&file).unwrap();
        assert!(woken(&watch).await, "deleted");
        fs::write(other.path().join("new"), "c").unwrap();
        fs::rename(other.path().join("new"), &file).unwrap();
        assert!(woken(&watch).await, "renamed in");
        // Read-only opens and changes elsewhere are no news.
        fs::read(&file).unwrap();
        fs::write(other.path().join("elsewhere"), "d").unwrap();
        assert!(!woken(&watch).await, "woken by a read or another directory");
    }

    #[tokio::test]
    async fn the_optional_events_wake_it_only_when_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let away = tempfile::tempdir().unwrap();
        let file = dir.path().join("volumes.yaml");
        fs::write(&file, "a").unwrap();
        let plain = watching(dir.path(), Events::default());
        let renames = watching(dir.path(), Events { renamed_away: true, ..Default::default() });
        let attributes = watching(dir.path(), Events { metadata: true, ..Default::default() });

        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(woken(&attributes).await, "metadata");
        assert!(!woken(&plain).await, "woken by metadata");
        assert!(!woken(&renames).await, "woken by metadata");

        fs::rename(&file, away.path().join("volumes.yaml~")).unwrap();
        assert!(woken(&renames).await, "renamed away");
        assert!(!woken(&plain).await, "woken by a rename away");
        assert!(!woken(&attributes).await, "woken by a rename away");

        let gone = watching(dir.path(), Events { directory_gone: true, ..Default::default() });
        let moved = away.path().join("moved");
        fs::rename(dir.path(), &moved).unwrap();
        assert!(woken(&gone).await, "the directory renamed");
        fs::rename(&moved, dir.path()).unwrap();
    }

    /// A Secret volume: the names link through `..data` to the current version's
    /// directory, which the kubelet swaps by renaming a new `..data` over it.
    #[tokio::test]
    async fn follows_links_into_the_directory_they_resolve_to() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("..v1")).unwrap();
        fs::write(dir.path().join("..v1/tls.crt"), "one").unwrap();
        symlink("..v1", dir.path().join("..data")).unwrap();
        symlink("..data/tls.crt", dir.path().join("tls.crt")).unwrap();
        let cert = dir.path().join("tls.crt");

        let named_only = watching(dir.path(), Events::default());
        let watch = DirWatch::new(Events::default()).unwrap();
        watch.add_dirs_of(&[&cert]).unwrap();

        // Rewritten in place, behind the links.
        fs::write(dir.path().join("..v1/tls.crt"), "two").unwrap();
        assert!(woken(&watch).await, "the file rewritten where it resolves");
        assert!(!woken(&named_only).await, "the named directory saw a write behind a link");

        // The swap.
        fs::create_dir(dir.path().join("..v2")).unwrap();
        fs::write(dir.path().join("..v2/tls.crt"), "three").unwrap();
        symlink("..v2", dir.path().join("..data_tmp")).unwrap();
        fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        fs::remove_dir_all(dir.path().join("..v1")).unwrap();
        assert!(woken(&watch).await, "the ..data swap");
        assert!(woken(&named_only).await, "the ..data swap");

        // Watched again after the change, it follows the links to the new version.
        watch.add_dirs_of(&[&cert]).unwrap();
        fs::write(dir.path().join("..v2/tls.crt"), "four").unwrap();
        assert!(woken(&watch).await, "the new version rewritten in place");
    }

    #[tokio::test]
    async fn a_burst_is_one_change_after_settling() {
        let dir = tempfile::tempdir().unwrap();
        let watch = watching(dir.path(), Events::default());
        // A writer still at work after the first event was read.
        let path = dir.path().to_path_buf();
        let writer = tokio::spawn(async move {
            for n in 0..5 {
                fs::write(path.join(format!("f{n}")), "x").unwrap();
                tokio::time::sleep(SETTLE / 10).await;
            }
        });
        watch.changed().await.unwrap();
        watch.settle().await;
        writer.await.unwrap();
        assert!(!woken(&watch).await, "woken again by the same burst");
    }

    #[tokio::test]
    async fn a_missing_directory_is_an_error_and_a_missing_link_target_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DirWatch::new(Events::default()).unwrap();
        let err = watch.add(&dir.path().join("absent")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let err = watch.add_dirs_of(&[&dir.path().join("absent/tls.crt")]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        symlink("nowhere/tls.crt", dir.path().join("tls.crt")).unwrap();
        watch.add_dirs_of(&[&dir.path().join("tls.crt")]).unwrap();
    }
}
