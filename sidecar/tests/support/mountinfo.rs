//! `/proc/PID/mountinfo` as the tests read it: what is mounted where, with which
//! propagation, in some other process's mount namespace. Read by the test process
//! directly (no setns needed: procfs shows each process's own view).

use std::fs;
use std::path::{Path, PathBuf};

/// One line of mountinfo (proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    pub parent: u64,
    /// Path inside the filesystem that is the root of this mount.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// The optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
}

impl Mount {
    /// FUSE mounts show as `fuse`, `fuse.<subtype>` (s3fs: `fuse.s3fs`) or `fuseblk`.
    pub fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype == "fuseblk" || self.fstype.starts_with("fuse.")
    }

    pub fn is_shared(&self) -> bool {
        self.optional.iter().any(|f| f.starts_with("shared:"))
    }

    pub fn is_slave(&self) -> bool {
        self.optional.iter().any(|f| f.starts_with("master:"))
    }
}

/// Parse mountinfo text. Panics on a malformed line: that is a harness bug.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (left, right) =
                line.split_once(" - ").unwrap_or_else(|| panic!("mountinfo line without separator: {line}"));
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            assert!(l.len() >= 6 && r.len() >= 2, "short mountinfo line: {line}");
            Mount {
                id: l[0].parse().expect("mount id"),
                parent: l[1].parse().expect("parent id"),
                root: PathBuf::from(unescape(l[3])),
                mount_point: PathBuf::from(unescape(l[4])),
                optional: l[6..].iter().map(|s| s.to_string()).collect(),
                fstype: r[0].to_string(),
                source: unescape(r[1]),
            }
        })
        .collect()
}

/// Mounts as seen by process `pid`, or an empty list if it is gone. A path that
/// is not UTF-8 is read lossily: the table is never taken for an empty one.
pub fn of_pid(pid: u32) -> Vec<Mount> {
    match fs::read(format!("/proc/{pid}/mountinfo")) {
        Ok(text) => parse(&String::from_utf8_lossy(&text)),
        Err(_) => Vec::new(),
    }
}

/// Mounts of the test process itself: the host's namespace.
pub fn host() -> Vec<Mount> {
    parse(&String::from_utf8_lossy(&fs::read("/proc/self/mountinfo").expect("read /proc/self/mountinfo")))
}

/// Mounts whose mount point is `dir` or below it.
pub fn under<'a>(mounts: &'a [Mount], dir: &Path) -> Vec<&'a Mount> {
    mounts.iter().filter(|m| m.mount_point.starts_with(dir)).collect()
}

/// The kernel escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
