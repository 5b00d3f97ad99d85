//! The supervisor's one reader of the mount table. It reads and parses
//! `/proc/self/mountinfo` once per change the kernel reports (`poll` gives
//! POLLPRI after every mount or unmount in the namespace), and wakes only the
//! volume tasks whose paths that change touched: a mount event costs one parse
//! and a look at each watched path, however many volumes there are, instead of
//! a parse per volume. The table comes from a [`MountSource`]: [`Mountinfo`] in
//! the supervisor, the fake kernel's in unit tests.
//!
//! A task that needs the table as it is after its own mount or unmount asks for
//! a [`MountWatch::fresh`] one: a read begun after the question. Questions asked
//! together share one read.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use nix::errno::Errno;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::mounts::{Mount, MountTable};
use crate::sys;

/// Where the mount table comes from: the kernel's mountinfo ([`Mountinfo`]), or
/// in unit tests the fake kernel's (`sys::fake::FakeSys`). The reader asks
/// it for the table once per change it reports and once per question for a
/// fresh table; it never polls.
pub trait MountSource: Send + 'static {
    /// The table as it is now.
    fn read(&mut self) -> std::io::Result<MountTable>;
    /// The mounts the last read found added, removed or changed since the read
    /// before it, when the source knows them: then only the watchers of their
    /// mount points are woken. None: every watched path is compared.
    fn changes(&mut self) -> Option<Vec<Arc<Mount>>> {
        None
    }
    /// Resolves when the table may have changed since the last call. An error
    /// ends the watch.
    fn changed(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// The kernel's table of this process's mount namespace. `/proc/self/mountinfo`'s
/// `poll` gives POLLPRI after every mount or unmount in the namespace; the table
/// is read with listmount(2) and statmount(2) where the kernel has them and
/// they read it as mountinfo does, and from mountinfo's text otherwise.
pub struct Mountinfo {
    fd: AsyncFd<std::fs::File>,
    listed: Option<Listed>,
    /// The kernel reported a change since the last read (rather than a task
    /// asking for a fresh table).
    reported: bool,
}

impl Mountinfo {
    /// Opens mountinfo, registers it with the current runtime's reactor and
    /// chooses how the table is read.
    pub fn open() -> std::io::Result<Mountinfo> {
        let file = std::fs::File::open("/proc/self/mountinfo")?;
        let listed = match Listed::agreeing() {
            Ok(listed) => {
                info!("reading the mount table with listmount(2) and statmount(2)");
                Some(listed)
            }
            Err(why) => {
                info!(%why, "reading the mount table from /proc/self/mountinfo");
                None
            }
        };
        Ok(Mountinfo { fd: sys::watch_fd(file, Interest::PRIORITY)?, listed, reported: false })
    }
}

impl MountSource for Mountinfo {
    fn read(&mut self) -> std::io::Result<MountTable> {
        let reported = std::mem::take(&mut self.reported);
        if let Some(listed) = &mut self.listed {
            match listed.read(reported) {
                Ok(table) => return Ok(table),
                Err(err) => {
                    warn!(%err, "listmount(2) failed: reading the mount table from /proc/self/mountinfo from now on");
                    self.listed = None;
                }
            }
        }
        MountTable::read_self()
    }

    fn changes(&mut self) -> Option<Vec<Arc<Mount>>> {
        self.listed.as_mut().and_then(|listed| listed.changes.take())
    }

    async fn changed(&mut self) -> std::io::Result<()> {
        self.fd.ready(Interest::PRIORITY).await?.clear_ready();
        self.reported = true;
        Ok(())
    }
}

/// The table from listmount(2) and statmount(2). The mounts already asked
/// about are kept with their unique id, which the kernel never gives again: a
/// change costs one listmount and a statmount per new mount, where mountinfo
/// formats every mount of the namespace on every read, and the new table shares
/// the mounts it has in common with the last one.
///
/// A mount keeps its id when it is moved (`mount --move`) or its propagation is
/// changed: a change the kernel reports that neither adds nor removes a mount is
/// read as such a one, and every mount is asked about again. Such a change made
/// in the same moment as a mount or unmount is seen at the next change of its
/// own kind.
pub struct Listed {
    ids: Vec<u64>,
    /// The mounts of the last table, ascending by unique id.
    known: Vec<(u64, Arc<Mount>)>,
    /// What the last read found added, removed or changed, for one taker.
    changes: Option<Vec<Arc<Mount>>>,
    buf: Vec<u8>,
}

impl Listed {
    /// A reader whose table is the one mountinfo shows, read side by side with
    /// it; or why not. When the two list different mounts, one may have come or
    /// gone between the reads, and they are read again (three times at most);
    /// the same mounts told differently are a disagreement at once (a kernel
    /// whose statmount(2) lacks a field).
    pub fn agreeing() -> Result<Listed, String> {
        let mut listed = Listed { ids: Vec::new(), known: Vec::new(), changes: None, buf: Vec::new() };
        let mut why = String::new();
        for _ in 0..3 {
            let table = listed.read(false).map_err(|err| format!("listmount(2) or statmount(2): {err}"))?;
            let text = MountTable::read_self().map_err(|err| err.to_string())?;
            if table == text {
                listed.changes = None;
                return Ok(listed);
            }
            let first = table.mounts.iter().zip(&text.mounts).find(|(a, b)| a != b);
            why = format!(
                "listmount(2) and mountinfo disagree: {} against {} mounts, first differing {:?}",
                table.mounts.len(),
                text.mounts.len(),
                first
            );
            if table.mounts.iter().map(|m| m.id).eq(text.mounts.iter().map(|m| m.id)) {
                break;
            }
        }
        Err(why)
    }

    /// The table now: one listmount, and a statmount for each mount not seen
    /// before; for every mount when the kernel `reported` a change and none came
    /// or went.
    pub fn read(&mut self, reported: bool) -> Result<MountTable, Errno> {
        sys::listmount::list_mounts(&mut self.ids)?;
        // Ascending as listed since Linux 6.8; the walk below needs it.
        if !self.ids.windows(2).all(|pair| pair[0] <= pair[1]) {
            self.ids.sort_unstable();
        }
        let again = reported && self.ids.iter().eq(self.known.iter().map(|(id, _)| id));
        let mut known = Vec::with_capacity(self.ids.len());
        let mut changes = Vec::new();
        let mut old = std::mem::take(&mut self.known).into_iter().peekable();
        for &id in &self.ids {
            // The mounts gone since the last read.
            while let Some((_, gone)) = old.next_if(|(seen, _)| *seen < id) {
                changes.push(gone);
            }
            let before = old.next_if(|(seen, _)| *seen == id).map(|(_, mount)| mount);
            let mount = match before {
                Some(mount) if !again => mount,
                before => match sys::listmount::stat_mount(id, &mut self.buf) {
                    Ok(now) => match before {
                        Some(mount) if *mount == now => mount,
                        before => {
                            changes.extend(before);
                            let now = Arc::new(now);
                            changes.push(now.clone());
                            now
                        }
                    },
                    // Unmounted since it was listed: as if listed a moment later.
                    Err(Errno::ENOENT) => {
                        changes.extend(before);
                        continue;
                    }
                    Err(err) => return Err(err),
                },
            };
            known.push((id, mount));
        }
        changes.extend(old.map(|(_, gone)| gone));
        let table = MountTable::from_shared(known.iter().map(|(_, mount)| mount.clone()).collect());
        self.known = known;
        self.changes = Some(changes);
        Ok(table)
    }
}

/// The shared reader (cheap to clone).
#[derive(Clone)]
pub struct MountWatch {
    inner: Arc<Inner>,
}

struct Inner {
    latest: Mutex<Arc<MountTable>>,
    /// Reads begun so far.
    started: AtomicU64,
    /// The last read done: its number and, when it failed, why.
    done: watch::Sender<Done>,
    /// A fresh read is wanted.
    wanted: Notify,
    subscribers: Mutex<Subscribers>,
}

/// A subscription's id and its wakeup.
type Waker = (u64, Weak<watch::Sender<u64>>);

#[derive(Default)]
struct Subscribers {
    next_id: u64,
    by_path: HashMap<PathBuf, Vec<Waker>>,
}

#[derive(Debug, Clone, Default)]
struct Done {
    reads: u64,
    failed: Option<Arc<str>>,
}

/// Wakes its holder when the mounts at any of its paths change.
pub struct Subscription {
    watch: MountWatch,
    id: u64,
    paths: Vec<PathBuf>,
    // Kept here so the channel stays open while the subscription lives.
    _tx: Arc<watch::Sender<u64>>,
    rx: watch::Receiver<u64>,
}

impl Subscription {
    /// Marks every change so far as seen: call before looking at the table, so a
    /// change after the look wakes [`Subscription::changed`].
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Resolves once the mounts at a path of this subscription changed since
    /// the last [`Subscription::mark_seen`] (or the last call). Cancel-safe.
    pub async fn changed(&mut self) {
        // The sender lives in `self`: the channel never closes under this call.
        let _ = self.rx.changed().await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subs = self.watch.inner.subscribers.lock().expect("subscribers lock");
        for path in &self.paths {
            if let Some(list) = subs.by_path.get_mut(path) {
                list.retain(|(id, _)| *id != self.id);
                if list.is_empty() {
                    subs.by_path.remove(path);
                }
            }
        }
    }
}

impl MountWatch {
    /// Reads the kernel's table and starts the reader on the current runtime.
    pub fn start() -> std::io::Result<MountWatch> {
        MountWatch::start_with(Mountinfo::open()?)
    }

    /// Reads the table from `source` and starts the reader on the current
    /// runtime: a read after each change `source` reports, and after each
    /// question for a fresh table.
    pub fn start_with<S: MountSource>(mut source: S) -> std::io::Result<MountWatch> {
        let watch = MountWatch::with_table(source.read()?);
        let inner = watch.inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = source.changed() => if let Err(err) = changed {
                        error!(%err, "the mount-table watch failed");
                        return;
                    },
                    _ = inner.wanted.notified() => {}
                }
                // Nobody holds the watch any more: only this task.
                if Arc::strong_count(&inner) == 1 {
                    return;
                }
                let reads = inner.started.fetch_add(1, Ordering::SeqCst) + 1;
                let failed = match source.read() {
                    Ok(table) => {
                        inner.publish(table, source.changes());
                        None
                    }
                    Err(err) => {
                        warn!(%err, "cannot read the mount table");
                        Some(Arc::from(format!("cannot read the mount table: {err}")))
                    }
                };
                inner.done.send_replace(Done { reads, failed });
            }
        });
        Ok(watch)
    }

    /// A watch of this table that no reader updates: for tests.
    pub fn with_table(table: MountTable) -> MountWatch {
        MountWatch {
            inner: Arc::new(Inner {
                latest: Mutex::new(Arc::new(table)),
                started: AtomicU64::new(0),
                done: watch::Sender::new(Done::default()),
                wanted: Notify::new(),
                subscribers: Mutex::default(),
            }),
        }
    }

    /// The table as last read.
    pub fn latest(&self) -> Arc<MountTable> {
        self.inner.latest.lock().expect("table lock").clone()
    }

    /// The table as read after this call began (shared with every other caller
    /// waiting at the time).
    pub async fn fresh(&self) -> Result<Arc<MountTable>, String> {
        let need = self.inner.started.load(Ordering::SeqCst) + 1;
        let mut done = self.inner.done.subscribe();
        self.inner.wanted.notify_one();
        let read = match done.wait_for(|d| d.reads >= need).await {
            Ok(read) => read.clone(),
            Err(_) => return Err("the mount-table reader is gone".into()),
        };
        match read.failed {
            Some(message) => Err(message.to_string()),
            None => Ok(self.latest()),
        }
    }

    /// Wakes the subscription whenever the mounts at any of `paths` change.
    pub fn subscribe(&self, paths: &[&Path]) -> Subscription {
        let (tx, rx) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let mut subs = self.inner.subscribers.lock().expect("subscribers lock");
        subs.next_id += 1;
        let id = subs.next_id;
        let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
        for path in &paths {
            subs.by_path.entry(path.clone()).or_default().push((id, Arc::downgrade(&tx)));
        }
        drop(subs);
        Subscription { watch: self.clone(), id, paths, _tx: tx, rx }
    }

    /// Publishes a new table as if read from the kernel: for tests.
    pub fn publish(&self, table: MountTable) {
        self.inner.publish(table, None);
    }
}

impl Inner {
    /// Makes `table` the latest and wakes the subscribers of each path where
    /// it differs from the one before: of the mount points of `changes` when the
    /// source told them, or else of each watched path where the two tables differ
    /// (a look at each, not at every mount).
    fn publish(&self, table: MountTable, changes: Option<Vec<Arc<Mount>>>) {
        let table = Arc::new(table);
        let old = std::mem::replace(&mut *self.latest.lock().expect("table lock"), table.clone());
        let subs = self.subscribers.lock().expect("subscribers lock");
        let wake = |list: &Vec<Waker>| {
            for tx in list.iter().filter_map(|(_, tx)| tx.upgrade()) {
                tx.send_modify(|n| *n += 1);
            }
        };
        match changes {
            Some(changes) => {
                for mount in &changes {
                    subs.by_path.get(&mount.mount_point).into_iter().for_each(wake);
                }
            }
            None => {
                for (path, list) in &subs.by_path {
                    if differ(old.at(path), table.at(path)) {
                        wake(list);
                    }
                }
            }
        }
    }
}

/// Whether two lists of mounts differ. A mount both tables share is the same
/// without a look at its fields.
fn differ<'a>(mut a: impl Iterator<Item = &'a Mount>, mut b: impl Iterator<Item = &'a Mount>) -> bool {
    loop {
        match (a.next(), b.next()) {
            (None, None) => return false,
            (Some(x), Some(y)) if std::ptr::eq(x, y) || x == y => {}
            _ => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(lines: &[&str]) -> MountTable {
        MountTable::parse_bytes(lines.join("\n").as_bytes()).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn wakes_only_the_subscribers_of_a_path_that_changed() {
        let root = "1 0 0:1 / / rw - ext4 /dev/a rw";
        let watch = MountWatch::with_table(table(&[root]));
        let mut a = watch.subscribe(&[Path::new("/a"), Path::new("/stage/a")]);
        let mut b = watch.subscribe(&[Path::new("/b")]);
        a.mark_seen();
        b.mark_seen();
        watch.publish(table(&[root, "2 1 0:2 / /stage/a rw - fuse.x x rw"]));
        tokio::time::timeout(std::time::Duration::from_secs(1), a.changed()).await.expect("a woken");
        let woken = tokio::time::timeout(std::time::Duration::from_millis(50), b.changed()).await;
        assert!(woken.is_err(), "b's path did not change");
        // A change after the look wakes at once: nothing is lost between look and wait.
        a.mark_seen();
        watch.publish(table(&[root, "2 1 0:2 / /stage/a rw - fuse.x x rw", "3 1 0:3 / /b rw - fuse.x x rw"]));
        tokio::time::timeout(std::time::Duration::from_millis(50), b.changed()).await.expect("b woken");
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), a.changed()).await.is_err());
        // A dropped subscription leaves nothing behind.
        drop(a);
        drop(b);
        assert!(watch.inner.subscribers.lock().unwrap().by_path.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn changes_a_source_tells_wake_only_the_subscribers_of_their_mount_points() {
        let root = "1 0 0:1 / / rw - ext4 /dev/a rw";
        let watch = MountWatch::with_table(table(&[root, "3 1 0:3 / /b rw - fuse.x x rw"]));
        let mut a = watch.subscribe(&[Path::new("/a")]);
        let mut b = watch.subscribe(&[Path::new("/b")]);
        a.mark_seen();
        b.mark_seen();
        // /b's mount went and /a's came, but the source told of /a's alone: only
        // the told mount points are looked at.
        let new = table(&[root, "2 1 0:2 / /a rw - fuse.x x rw"]);
        let told = vec![new.mounts[1].clone()];
        watch.inner.publish(new, Some(told));
        tokio::time::timeout(std::time::Duration::from_secs(1), a.changed()).await.expect("a woken");
        let woken = tokio::time::timeout(std::time::Duration::from_millis(50), b.changed()).await;
        assert!(woken.is_err(), "b's mount point was not told");
        assert!(watch.latest().is_mount_point(Path::new("/a")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_reader_reads_its_source_once_per_change_it_reports() {
        let sys = Arc::new(crate::sys::fake::FakeSys::new().mounted(&["1 0 0:1 / / rw - ext4 /dev/a rw"]));
        let watch = MountWatch::start_with(sys.clone()).unwrap();
        let mut sub = watch.subscribe(&[Path::new("/pod/v")]);
        sub.mark_seen();
        let start = tokio::time::Instant::now();
        // A change is heard by event, at once; no change, no read.
        let id = sys.mount("9 1 0:40 / /pod/v rw - tmpfs tmpfs rw");
        tokio::time::timeout(std::time::Duration::from_secs(1), sub.changed()).await.expect("heard at once");
        assert_eq!(start.elapsed(), std::time::Duration::ZERO);
        assert_eq!(watch.latest().volume_at(Path::new("/pod/v"), |_| true).map(|m| m.id), Some(id));
        let reads = watch.inner.started.load(Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert_eq!(watch.inner.started.load(Ordering::SeqCst), reads);
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(3600));
        // A fresh table is one read after the question.
        sys.unmount_top(Path::new("/pod/v"));
        assert!(!watch.fresh().await.unwrap().is_mount_point(Path::new("/pod/v")));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_fresh_table_is_read_after_the_question() {
        let watch = MountWatch::start().unwrap();
        let before = watch.inner.started.load(Ordering::SeqCst);
        // Questions asked together share reads.
        let (x, y, z) = tokio::join!(watch.fresh(), watch.fresh(), watch.fresh());
        let (x, y, z) = (x.unwrap(), y.unwrap(), z.unwrap());
        assert!(
            x.is_mount_point(Path::new("/")) && y.is_mount_point(Path::new("/")) && z.is_mount_point(Path::new("/"))
        );
        let reads = watch.inner.started.load(Ordering::SeqCst) - before;
        assert!((1..=2).contains(&reads), "{reads} reads for three questions");
    }
}
