//! The mount table: `/proc/self/mountinfo` read once into values, and the pure
//! questions the supervisor asks of it (what is mounted at a path, which mount
//! holds it, is that mount shared, what was left there by an earlier instance).

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use procfs::FromBufRead;

/// One line of mountinfo, reduced to what sidemount decides with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: i32,
    pub parent_id: i32,
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

/// A snapshot of the mount table, in the kernel's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountTable {
    pub mounts: Vec<Mount>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot parse mountinfo: {0}")]
pub struct ParseError(#[from] procfs::ProcError);

impl MountTable {
    pub fn parse<R: BufRead>(reader: R) -> Result<MountTable, ParseError> {
        let infos = procfs::process::MountInfos::from_buf_read(reader)?;
        let mounts = infos
            .into_iter()
            .map(|m| {
                let mut shared = None;
                let mut master = None;
                for field in &m.opt_fields {
                    match field {
                        procfs::process::MountOptFields::Shared(id) => shared = Some(*id),
                        procfs::process::MountOptFields::Master(id) => master = Some(*id),
                        _ => {}
                    }
                }
                Mount {
                    id: m.mnt_id,
                    // procfs calls the parent id `pid`.
                    parent_id: m.pid,
                    mount_point: PathBuf::from(unescape(&m.mount_point.to_string_lossy())),
                    fs_type: m.fs_type,
                    source: m.mount_source.unwrap_or_default(),
                    shared,
                    master,
                }
            })
            .collect();
        Ok(MountTable { mounts })
    }

    pub fn read_self() -> Result<MountTable, std::io::Error> {
        let file = std::fs::File::open("/proc/self/mountinfo")?;
        MountTable::parse(std::io::BufReader::new(file)).map_err(std::io::Error::other)
    }

    /// The mounts made exactly at `path`, bottom first.
    pub fn stack_at(&self, path: &Path) -> Vec<&Mount> {
        let here: Vec<&Mount> = self.mounts.iter().filter(|m| m.mount_point == path).collect();
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
        self.mounts.iter().any(|m| m.mount_point == path)
    }
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
    fn unescapes_octal() {
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
        // Past a byte: `\400` would overflow (found by fuzzing).
        assert_eq!(unescape(r"/a\400\377"), "/a\\400\u{FFFD}");
        assert_eq!(unescape(r"/a\4001\b4c\011"), "/a\\4001\\b4c\t");
    }
}
