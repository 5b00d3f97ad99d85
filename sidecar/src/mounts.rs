//! The mount table: `/proc/self/mountinfo` read once into values, and the pure
//! questions the supervisor asks of it (what is mounted at a path, which mount
//! holds it, is that mount shared, what was left there by an earlier instance).

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::fast_hash::FastBuild;

/// One line of mountinfo, reduced to what sidemount decides with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: i32,
    pub parent_id: i32,
    /// The filesystem's device number (`major:minor`).
    pub dev: (u32, u32),
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// The peer group when the mount has shared propagation (`shared:N`).
    pub shared: Option<u32>,
    /// The master peer group when it is a slave (`master:N`).
    pub master: Option<u32>,
}

impl Mount {
    /// Any FUSE mount: `fuse`, `fuse.<subtype>` or `fuseblk`.
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type == "fuseblk" || self.fs_type.starts_with("fuse.")
    }
}

/// A snapshot of the mount table, in the kernel's order, indexed by mount
/// point: every question about one path costs the mounts at that path, not
/// the whole table. The mounts are shared: a table made from the one before
/// it (see `mount_watch::Listed`) copies none of them.
#[derive(Debug, Clone, Default)]
pub struct MountTable {
    pub mounts: Vec<Arc<Mount>>,
    /// The index into `mounts` of the first mount at each mount point ...
    by_point: HashMap<Point, usize, FastBuild>,
    /// ... and, for each mount, of the next one at its mount point (or `NONE`).
    next_at_point: Vec<usize>,
}

const NONE: usize = usize::MAX;

/// A mount point as the key of the index: the mount's own path, not a copy of it.
#[derive(Debug, Clone)]
struct Point(Arc<Mount>);

impl std::hash::Hash for Point {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.mount_point.hash(state);
    }
}

impl PartialEq for Point {
    fn eq(&self, other: &Point) -> bool {
        self.0.mount_point == other.0.mount_point
    }
}

impl Eq for Point {}

impl std::borrow::Borrow<Path> for Point {
    fn borrow(&self) -> &Path {
        &self.0.mount_point
    }
}

impl PartialEq for MountTable {
    fn eq(&self, other: &MountTable) -> bool {
        self.mounts == other.mounts
    }
}

impl Eq for MountTable {}

/// A line of mountinfo that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse mountinfo: line {line}: {what}")]
pub struct ParseError {
    pub line: usize,
    pub what: &'static str,
}

impl MountTable {
    pub fn parse<R: BufRead>(mut reader: R) -> Result<MountTable, ParseError> {
        let mut text = Vec::new();
        reader.read_to_end(&mut text).map_err(|_| ParseError { line: 0, what: "cannot be read" })?;
        MountTable::parse_bytes(&text)
    }

    /// Parses mountinfo text: `id parent major:minor root mount_point options
    /// [optional fields...] - fstype source superoptions` per line. Blank lines
    /// are skipped; any other line missing a field is an error.
    pub fn parse_bytes(text: &[u8]) -> Result<MountTable, ParseError> {
        let mut mounts = Vec::with_capacity(text.iter().filter(|&&b| b == b'\n').count() + 1);
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            mounts.push(parse_line(line).map_err(|what| ParseError { line: n + 1, what })?);
        }
        Ok(MountTable::from_mounts(mounts))
    }

    /// A table of these mounts, in this order.
    pub fn from_mounts(mounts: Vec<Mount>) -> MountTable {
        MountTable::from_shared(mounts.into_iter().map(Arc::new).collect())
    }

    /// A table of these mounts, in this order, sharing them.
    pub fn from_shared(mounts: Vec<Arc<Mount>>) -> MountTable {
        let mut by_point = HashMap::with_capacity_and_hasher(mounts.len(), FastBuild::default());
        let mut next_at_point = vec![NONE; mounts.len()];
        // From the last mount back: each one found at its point is the next after
        // the one now first there.
        for (i, m) in mounts.iter().enumerate().rev() {
            if let Some(next) = by_point.insert(Point(m.clone()), i) {
                next_at_point[i] = next;
            }
        }
        MountTable { mounts, by_point, next_at_point }
    }

    pub fn read_self() -> Result<MountTable, std::io::Error> {
        // mountinfo's size reads as 0: sized by that, the read would start at 32
        // bytes and double, one system call each (nine for a table of 30 mounts).
        let mut text = Vec::with_capacity(16 * 1024);
        std::io::Read::read_to_end(&mut std::fs::File::open("/proc/self/mountinfo")?, &mut text)?;
        MountTable::parse_bytes(&text).map_err(std::io::Error::other)
    }

    /// Every mount made at `path`, in the kernel's order.
    pub fn at<'a>(&'a self, path: &Path) -> impl Iterator<Item = &'a Mount> + 'a {
        let first = self.by_point.get(path).copied().unwrap_or(NONE);
        std::iter::successors(Some(first).filter(|&i| i != NONE), |&i| {
            Some(self.next_at_point[i]).filter(|&next| next != NONE)
        })
        .map(|i| &*self.mounts[i])
    }

    /// The mounts made exactly at `path`, bottom first.
    pub fn stack_at(&self, path: &Path) -> Vec<&Mount> {
        let here: Vec<&Mount> = self.at(path).collect();
        let ids: HashSet<i32> = here.iter().map(|m| m.id).collect();
        // The bottom of the stack is the one whose parent is not at the same path;
        // each mount above has the one below it as parent.
        let mut stack: Vec<&Mount> = Vec::with_capacity(here.len());
        let mut current = here.iter().find(|m| !ids.contains(&m.parent_id) || m.parent_id == m.id).copied();
        // A table read while mounts come and go may repeat an id (ids are reused):
        // a mount already in the stack ends the walk, which could loop otherwise.
        while let Some(m) = current.filter(|m| !stack.iter().any(|seen| std::ptr::eq(*seen, *m))) {
            stack.push(m);
            current = here.iter().find(|c| c.parent_id == m.id && c.id != m.id).copied();
        }
        stack
    }

    /// The mount whose propagation decides whether a mount made at `path` reaches
    /// the node: the bottom of the stack at `path` itself (the pod volume's bind as
    /// the runtime made it, whatever it shows: after a sidecar restart, a bind of a
    /// dead FUSE mount), or else the mount holding the parent directory.
    pub fn holder_of(&self, path: &Path) -> Option<&Mount> {
        if let Some(bottom) = self.stack_at(path).first() {
            return Some(bottom);
        }
        path.ancestors().skip(1).find_map(|dir| self.stack_at(dir).last().copied())
    }

    /// What sits above the base at `path`: mounts an earlier instance left behind,
    /// or the live volume. Top first, the order to unmount them in.
    pub fn above_base(&self, path: &Path, is_volume: impl Fn(&Mount) -> bool) -> Vec<&Mount> {
        let stack = self.stack_at(path);
        let base_len = stack.iter().take_while(|m| !is_volume(m)).count();
        if base_len == stack.len() {
            return Vec::new();
        }
        stack[base_len..].iter().rev().copied().collect()
    }

    /// The volume's mount, if the top of the stack at `path` is one.
    pub fn volume_at(&self, path: &Path, is_volume: impl Fn(&Mount) -> bool) -> Option<&Mount> {
        self.stack_at(path).last().copied().filter(|m| is_volume(m))
    }

    /// True when `path` is the mount point of anything.
    pub fn is_mount_point(&self, path: &Path) -> bool {
        self.by_point.contains_key(path)
    }
}

/// One line of mountinfo, or what is wrong with it.
fn parse_line(line: &[u8]) -> Result<Mount, &'static str> {
    // Single spaces apart: an empty field (a mount without a source) is a field.
    let mut fields = line.split(|&b| b == b' ');
    let mut next = |what: &'static str| fields.next().ok_or(what);
    let id = number(next("no mount id")?).ok_or("the mount id is not a number")?;
    let parent_id = number(next("no parent id")?).ok_or("the parent id is not a number")?;
    let dev = next("no device number")?;
    let dev = dev
        .iter()
        .position(|&b| b == b':')
        .and_then(|colon| Some((number(&dev[..colon])?, number(&dev[colon + 1..])?)))
        .ok_or("the device number is not major:minor")?;
    let _root = next("no root")?;
    let mount_point = PathBuf::from(unescape(&String::from_utf8_lossy(next("no mount point")?)));
    let _options = next("no mount options")?;
    let (mut shared, mut master) = (None, None);
    loop {
        let field = next("no `-` ending the optional fields")?;
        if field == b"-" {
            break;
        }
        if let Some(group) = field.strip_prefix(b"shared:") {
            shared = number(group);
        } else if let Some(group) = field.strip_prefix(b"master:") {
            master = number(group);
        }
    }
    let fs_type = String::from_utf8_lossy(next("no filesystem type")?).into_owned();
    let source = String::from_utf8_lossy(next("no mount source")?).into_owned();
    Ok(Mount { id, parent_id, dev, mount_point, fs_type, source, shared, master })
}

/// A decimal number of mountinfo (ids are non-negative).
fn number<T: std::str::FromStr>(field: &[u8]) -> Option<T> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`). An
/// octal past `\377` is no byte, so it is left as written.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && (b'0'..=b'3').contains(&bytes[i + 1])
            && bytes[i + 2..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> MountTable {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mountinfo").join(name);
        MountTable::parse(std::io::BufReader::new(std::fs::File::open(path).unwrap())).unwrap()
    }

    #[test]
    fn parses_propagation_and_escapes() {
        let t = table("sidecar-with-volume");
        let root = t.mounts.iter().find(|m| m.mount_point == Path::new("/")).unwrap();
        assert_eq!(root.fs_type, "overlay");
        assert_eq!(root.shared, None);
        let bind = t.stack_at(Path::new("/sidemount/data"))[0];
        assert_eq!(bind.shared, Some(412));
        assert!(t.mounts.iter().any(|m| m.mount_point == Path::new("/sidemount/with space")));
    }

    #[test]
    fn finds_the_volume_above_the_pod_bind() {
        let t = table("sidecar-with-volume");
        let path = Path::new("/sidemount/data");
        let stack = t.stack_at(path);
        assert_eq!(stack.iter().map(|m| m.id).collect::<Vec<_>>(), [1501, 1620]);
        let holder = t.holder_of(path).unwrap();
        assert_eq!(holder.id, 1501);
        assert_eq!(holder.shared, Some(412));
        assert_eq!(t.volume_at(path, Mount::is_fuse).unwrap().fs_type, "fuse.bindfs");
        assert_eq!(t.above_base(path, Mount::is_fuse).iter().map(|m| m.id).collect::<Vec<_>>(), [1620]);
    }

    #[test]
    fn a_volume_without_its_own_bind_lives_on_the_root_mount() {
        let t = table("sidecar-with-volume");
        let path = Path::new("/sidemount/other");
        assert!(t.stack_at(path).is_empty());
        assert_eq!(t.holder_of(path).unwrap().mount_point, Path::new("/"));
        assert!(t.volume_at(path, Mount::is_fuse).is_none());
    }

    #[test]
    fn leftovers_of_an_earlier_instance_are_listed_top_first() {
        let t = table("sidecar-leftovers");
        let path = Path::new("/sidemount/data");
        assert_eq!(t.holder_of(path).unwrap().id, 1501);
        assert_eq!(t.above_base(path, Mount::is_fuse).iter().map(|m| m.id).collect::<Vec<_>>(), [1700, 1620]);
        // A private bind is found as the base, and it is not shared.
        let private = Path::new("/sidemount/private");
        assert_eq!(t.holder_of(private).unwrap().shared, None);
    }

    #[test]
    fn a_restarted_sidecar_may_hold_a_bind_of_a_dead_fuse_mount() {
        // The runtime bound the emptyDir's path, whose top was the dead FUSE mount of the
        // sidecar's previous container: that bind is the pod volume's, and it is shared.
        let text = "1400 1390 0:120 / / rw master:1 - overlay overlay rw\n\
                    1501 1400 0:140 / /sidemount/data rw shared:430 - fuse.bindfs bindfs rw\n";
        let t = MountTable::parse(text.as_bytes()).unwrap();
        let holder = t.holder_of(Path::new("/sidemount/data")).unwrap();
        assert_eq!((holder.id, holder.shared), (1501, Some(430)));
    }

    #[test]
    fn a_repeated_mount_id_ends_the_walk_up_a_stack() {
        // Ids 5 and 6 each parent the other: the walk up from the bottom must stop.
        let text = "1 0 0:1 / / rw - ext4 /dev/a rw\n\
                    5 1 0:2 / /m rw - fuse.x x rw\n\
                    6 5 0:3 / /m rw - fuse.x x rw\n\
                    5 6 0:4 / /m rw - fuse.x x rw\n";
        let t = MountTable::parse(text.as_bytes()).unwrap();
        let ids: Vec<i32> = t.stack_at(Path::new("/m")).iter().map(|m| m.id).collect();
        assert_eq!(ids, [5, 6, 5]);
        assert_eq!(t.above_base(Path::new("/m"), Mount::is_fuse).len(), 3);
    }

    #[test]
    fn parses_each_field_and_refuses_a_line_short_of_one() {
        let text = "1 0 0:1 / / rw - ext4 /dev/a rw\n\n\
                    7 1 259:3 / /with\\040space rw,nosuid shared:4 master:2 unbindable - fuse.bindfs  rw\n";
        let t = MountTable::parse_bytes(text.as_bytes()).unwrap();
        assert_eq!(t.mounts.len(), 2);
        let m = &t.mounts[1];
        assert_eq!((m.id, m.parent_id, m.dev), (7, 1, (259, 3)));
        assert_eq!(m.mount_point, Path::new("/with space"));
        assert_eq!((m.shared, m.master), (Some(4), Some(2)));
        assert_eq!((m.fs_type.as_str(), m.source.as_str()), ("fuse.bindfs", ""), "an empty source is a field");
        assert_eq!(t.at(Path::new("/with space")).count(), 1);
        assert!(t.is_mount_point(Path::new("/")) && !t.is_mount_point(Path::new("/with")));
        for (bad, what) in [
            ("x 0 0:1 / / rw - ext4 a rw", "the mount id is not a number"),
            ("1 -2 0:1 / / rw - ext4 a rw", "the parent id is not a number"),
            ("1 0 01 / / rw - ext4 a rw", "the device number is not major:minor"),
            ("1 0 0:1 / / rw shared:1 ext4 a rw", "no `-` ending the optional fields"),
            ("1 0 0:1 / / rw -", "no filesystem type"),
            ("1 0 0:1 /", "no mount point"),
        ] {
            let text = format!("1 0 0:1 / / rw - ext4 a rw\n{bad}\n");
            assert_eq!(MountTable::parse_bytes(text.as_bytes()), Err(ParseError { line: 2, what }), "{bad}");
        }
    }

    #[test]
    fn the_index_answers_like_a_scan_of_the_table() {
        let t = table("sidecar-leftovers");
        for m in &t.mounts {
            let scanned: Vec<&Mount> =
                t.mounts.iter().filter(|o| o.mount_point == m.mount_point).map(|o| &**o).collect();
            assert_eq!(t.at(&m.mount_point).collect::<Vec<_>>(), scanned);
        }
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
        // Past a byte: `\400` would overflow (found by fuzzing).
        assert_eq!(unescape(r"/a\400\377"), "/a\\400\u{FFFD}");
        assert_eq!(unescape(r"/a\4001\b4c\011"), "/a\\4001\\b4c\t");
    }
}
