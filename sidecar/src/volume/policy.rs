//! The pure decisions of a volume's life: how long to wait between starts,
//! how a shutdown budget splits into deadlines, when an unmount loop gives up,
//! and which mounts at a mountpoint are the volume's. Nothing here touches the
//! kernel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::mounts::{Mount, MountTable};
use crate::spec::Source;

/// A volume that stayed ready this long starts its backoff over.
pub(super) const STABLE_AFTER: Duration = Duration::from_secs(60);
/// The longest wait between two restarts.
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// The second restart waits this long; each later one twice the one before.
const BACKOFF_BASE: Duration = Duration::from_millis(500);

/// The most layers of a volume at its mountpoint. A repair covers the dead mount
/// with the new one (an app that captured the dead one sees only mounts made on
/// top of it), so each adds a layer; past this many, the topmost dead layer is
/// detached instead of covered.
pub(super) const MAX_LAYERS: usize = 64;
/// Unmount loops end after this many turns that reported success but left the
/// count of mounts where it was.
const STALLS: u32 = 3;

/// After `failures` consecutive failures: the first repair at once, then
/// capped exponential backoff.
pub fn backoff(failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(failures.saturating_sub(2)).unwrap_or(u32::MAX);
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_CAP)
}

/// When a stopping volume must be done: clean unmount until `busy`, then
/// detach and signal the daemon; kill it at `last`.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub busy: Instant,
    pub last: Instant,
    /// Part of the shutdown: the stage goes in one unmount (see [`StageRelease`](super::StageRelease)).
    pub shutdown: bool,
}

impl Deadlines {
    /// Splits a shutdown budget: half for a clean unmount, then detach and
    /// signal, and a margin before the end for the kill.
    pub fn within(budget: Duration) -> Deadlines {
        let now = Instant::now();
        let margin = (budget / 10).min(Duration::from_secs(1));
        Deadlines { busy: now + budget / 2, last: now + budget - margin, shutdown: false }
    }
}

/// Counts the turns of an unmount loop that claimed success and removed nothing.
#[derive(Default)]
pub(super) struct Progress {
    last: Option<usize>,
    claimed: bool,
    stalls: u32,
}

impl Progress {
    /// Called at the top of each turn with the mounts left: true once the loop has
    /// stalled, i.e. the kernel keeps saying yes and nothing goes.
    pub(super) fn stalled(&mut self, left: usize) -> bool {
        match self.last {
            Some(last) if self.claimed && left >= last => self.stalls += 1,
            Some(last) if left < last => self.stalls = 0,
            _ => {}
        }
        self.last = Some(left);
        self.claimed = false;
        self.stalls >= STALLS
    }

    pub(super) fn unmounted(&mut self) {
        self.claimed = true;
    }
}

/// A volume's mountpoint and what of it is the volume's (see [`Handle::owned`](super::Handle::owned)).
#[derive(Debug, Clone)]
pub struct Owned {
    pub name: String,
    pub mountpoint: PathBuf,
    pub matcher: Matcher,
}

/// What the volumes still have mounted at their mountpoints, one line per volume
/// (`data: 2 fuse.bindfs mounts at /sidemount/data`); empty when nothing is left.
pub fn leftovers(table: &MountTable, volumes: &[Owned]) -> Vec<String> {
    volumes
        .iter()
        .filter_map(|v| {
            let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
            for m in table.at(&v.mountpoint).filter(|m| v.matcher.matches(m)) {
                *kinds.entry(m.fs_type.as_str()).or_default() += 1;
            }
            if kinds.is_empty() {
                return None;
            }
            let what: Vec<String> =
                kinds.iter().map(|(fs, n)| format!("{n} {fs} mount{}", if *n == 1 { "" } else { "s" })).collect();
            Some(format!("{}: {} at {}", v.name, what.join(", "), v.mountpoint.display()))
        })
        .collect()
}

/// Which mounts at the mountpoint are this volume's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Any FUSE mount: a daemon names its own subtype.
    Fuse,
    /// A kernel mount of this source: the zfs dataset, or the device's real path.
    Source(String),
}

impl Matcher {
    pub fn for_volume(source: &Source) -> Matcher {
        match source {
            Source::Fuse { .. } | Source::ObjectiveFs { .. } => Matcher::Fuse,
            // The source of a zfs mount is its dataset, whatever the mount helper.
            Source::Zfs { dataset, .. } => Matcher::Source(dataset.clone()),
            // mountinfo names the device by its real path, not a /dev/disk/by-id link.
            Source::Block { device, .. } => {
                Matcher::Source(std::fs::canonicalize(device).unwrap_or_else(|_| device.clone()).display().to_string())
            }
        }
    }

    pub fn matches(&self, mount: &Mount) -> bool {
        match self {
            Matcher::Fuse => mount.is_fuse(),
            Matcher::Source(source) => mount.source == *source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn backoff_starts_at_once_and_is_capped() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(2));
        assert_eq!(backoff(10), BACKOFF_CAP);
        assert_eq!(backoff(200), BACKOFF_CAP);
    }

    #[test]
    fn leftovers_name_each_volume_with_mounts_of_its_own() {
        let text = "1400 1390 0:120 / / rw master:1 - overlay overlay rw\n\
                    1501 1400 0:140 / /sidemount/data rw shared:430 - tmpfs tmpfs rw\n\
                    1601 1501 0:141 / /sidemount/data rw shared:431 - fuse.bindfs bindfs rw\n\
                    1602 1601 0:142 / /sidemount/data rw shared:432 - fuse.bindfs bindfs rw\n\
                    1502 1400 0:143 / /sidemount/disk rw shared:433 - tmpfs tmpfs rw\n\
                    1603 1502 7:3 / /sidemount/disk rw shared:434 - ext4 /dev/loop3 rw\n\
                    1504 1400 0:144 / /sidemount/clean rw shared:435 - tmpfs tmpfs rw\n";
        let table = MountTable::parse(text.as_bytes()).unwrap();
        let owned = |name: &str, matcher: Matcher| Owned {
            name: name.into(),
            mountpoint: Path::new("/sidemount").join(name),
            matcher,
        };
        let volumes = [
            owned("data", Matcher::Fuse),
            owned("disk", Matcher::Source("/dev/loop3".into())),
            owned("clean", Matcher::Fuse),
        ];
        assert_eq!(
            leftovers(&table, &volumes),
            [
                "data: 2 fuse.bindfs mounts at /sidemount/data".to_string(),
                "disk: 1 ext4 mount at /sidemount/disk".to_string(),
            ]
        );
        // The pod volume's own bind is not the volume's: nothing left.
        assert!(leftovers(&table, &[owned("disk", Matcher::Source("/dev/loop9".into()))]).is_empty());
    }

    #[test]
    fn unmount_loops_end_when_nothing_goes() {
        let mut p = Progress::default();
        // Each claimed unmount takes one away: never stalled, however many there are.
        for left in (1..=500).rev() {
            assert!(!p.stalled(left));
            p.unmounted();
        }
        // Busy turns (nothing claimed) are not stalls: the deadline bounds them.
        let mut p = Progress::default();
        for _ in 0..100 {
            assert!(!p.stalled(7));
        }
        // Claimed, and the count stays: STALLS such turns, and the next check ends the loop.
        let turns = (0..10)
            .take_while(|_| {
                let stalled = p.stalled(7);
                p.unmounted();
                !stalled
            })
            .count();
        assert_eq!(turns, STALLS as usize);
    }

    #[test]
    fn deadlines_fit_the_budget() {
        // Half the budget for a clean unmount; the kill a tenth before the end, at
        // most a second: each deadline lies between its value from just before and
        // just after the call, so a split off either way fails.
        for (budget, busy, last) in [
            (Duration::from_secs(20), Duration::from_secs(10), Duration::from_secs(19)),
            (Duration::from_secs(2), Duration::from_secs(1), Duration::from_millis(1800)),
        ] {
            let before = Instant::now();
            let d = Deadlines::within(budget);
            let after = Instant::now();
            assert!(before + busy <= d.busy && d.busy <= after + busy, "{budget:?}: busy {:?}", d.busy - before);
            assert!(before + last <= d.last && d.last <= after + last, "{budget:?}: last {:?}", d.last - before);
        }
    }
}
