//! The mount table without mountinfo's text: listmount(2) names every mount
//! by its id, and statmount(2) tells one mount's fields. A reader that keeps
//! the mounts it has already asked about costs one listmount per change and a
//! statmount per new mount, where a read of mountinfo formats every mount of
//! the namespace again.
//!
//! Both calls came with Linux 6.8; a mount's source and its filesystem's
//! subtype (`fuse.bindfs`) with 6.13. Callers fall back to mountinfo where
//! they fail or disagree with it (see `mount_watch`).

use std::path::PathBuf;

use nix::errno::Errno;

use crate::mounts::Mount;

/// The calls' numbers: one for every architecture that gives new calls the common
/// number (all that sidemount is built for; alpha and mips add an offset).
const SYS_STATMOUNT: libc::c_long = 457;
const SYS_LISTMOUNT: libc::c_long = 458;

/// listmount's id for the caller's root: every mount below it.
const LSMT_ROOT: u64 = u64::MAX;
/// Ids asked for per listmount call; more are asked for from the last one on.
pub const LIST_PAGE: usize = 256;

const STATMOUNT_SB_BASIC: u64 = 0x1;
const STATMOUNT_MNT_BASIC: u64 = 0x2;
const STATMOUNT_MNT_POINT: u64 = 0x10;
const STATMOUNT_FS_TYPE: u64 = 0x20;
const STATMOUNT_FS_SUBTYPE: u64 = 0x100;
const STATMOUNT_SB_SOURCE: u64 = 0x200;
/// What a [`Mount`] is made of.
const WANTED: u64 = STATMOUNT_SB_BASIC
    | STATMOUNT_MNT_BASIC
    | STATMOUNT_MNT_POINT
    | STATMOUNT_FS_TYPE
    | STATMOUNT_FS_SUBTYPE
    | STATMOUNT_SB_SOURCE;
/// Without these a [`Mount`] cannot be made: the kernel is older than the reader.
const REQUIRED: u64 = STATMOUNT_SB_BASIC | STATMOUNT_MNT_BASIC | STATMOUNT_MNT_POINT | STATMOUNT_FS_TYPE;

/// The fixed part of `struct statmount`; its strings follow, at the offsets it gives.
const HEADER: usize = 512;
/// A statmount answer larger than this is refused rather than grown into.
const MOST: usize = 1 << 20;

const MS_SHARED: u64 = 1 << 20;
const MS_SLAVE: u64 = 1 << 19;

/// `struct mnt_id_req` as first published (24 bytes), which every kernel with
/// the calls takes.
#[repr(C)]
struct MntIdReq {
    size: u32,
    spare: u32,
    mnt_id: u64,
    param: u64,
}

impl MntIdReq {
    fn new(mnt_id: u64, param: u64) -> MntIdReq {
        MntIdReq { size: std::mem::size_of::<MntIdReq>() as u32, spare: 0, mnt_id, param }
    }
}

/// The ids of every mount below the caller's root, ascending, into `ids`.
pub fn list_mounts(ids: &mut Vec<u64>) -> Result<(), Errno> {
    ids.clear();
    let mut after = 0;
    loop {
        ids.reserve(LIST_PAGE);
        let req = MntIdReq::new(LSMT_ROOT, after);
        // SAFETY: `req` is a valid mnt_id_req of the size it states, and the kernel
        // writes at most LIST_PAGE ids into the spare capacity reserved above.
        let n = unsafe { libc::syscall(SYS_LISTMOUNT, &req, ids.as_mut_ptr().add(ids.len()), LIST_PAGE, 0u32) };
        if n < 0 {
            return Err(Errno::last());
        }
        let n = n as usize;
        // SAFETY: the kernel wrote `n` ids, at most LIST_PAGE, after the old length.
        unsafe { ids.set_len(ids.len() + n.min(LIST_PAGE)) };
        match ids.last() {
            Some(&last) if n == LIST_PAGE => after = last,
            _ => return Ok(()),
        }
    }
}

/// The mount with unique id `id`, as mountinfo would show it; `buf` is kept
/// between calls. ENOENT: it was unmounted since it was listed.
pub fn stat_mount(id: u64, buf: &mut Vec<u8>) -> Result<Mount, Errno> {
    if buf.len() < 4096 {
        buf.resize(4096, 0);
    }
    loop {
        let req = MntIdReq::new(id, WANTED);
        // SAFETY: `req` is a valid mnt_id_req of the size it states, and the kernel
        // writes at most `buf.len()` bytes into `buf`.
        let r = unsafe { libc::syscall(SYS_STATMOUNT, &req, buf.as_mut_ptr(), buf.len(), 0u32) };
        if r == 0 {
            return decode(buf).ok_or(Errno::ENOTSUP);
        }
        match Errno::last() {
            Errno::EOVERFLOW if buf.len() < MOST => buf.resize(buf.len() * 2, 0),
            err => return Err(err),
        }
    }
}

/// A `struct statmount` answer as a [`Mount`]; None when it lacks a field a
/// Mount needs.
fn decode(buf: &[u8]) -> Option<Mount> {
    let u32_at = |at: usize| Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_ne_bytes(buf.get(at..at + 8)?.try_into().ok()?));
    let size = (u32_at(0)? as usize).min(buf.len());
    let mask = u64_at(8)?;
    if mask & REQUIRED != REQUIRED || size < HEADER {
        return None;
    }
    let strings = &buf[HEADER..size];
    let text = |offset: u32| -> Option<String> {
        let rest = strings.get(offset as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let mut fs_type = text(u32_at(36)?)?;
    if mask & STATMOUNT_FS_SUBTYPE != 0 {
        let subtype = text(u32_at(120)?)?;
        if !subtype.is_empty() {
            fs_type = format!("{fs_type}.{subtype}");
        }
    }
    // mountinfo writes "none" for a mount made without a source, and escapes
    // the characters that would break its lines.
    let source = match mask & STATMOUNT_SB_SOURCE {
        0 => "none".to_string(),
        _ => escape(&text(u32_at(124)?)?),
    };
    let propagation = u64_at(72)?;
    Some(Mount {
        id: u32_at(56)? as i32,
        parent_id: u32_at(60)? as i32,
        dev: (u32_at(16)?, u32_at(20)?),
        mount_point: PathBuf::from(text(u32_at(108)?)?),
        fs_type,
        source,
        shared: (propagation & MS_SHARED != 0).then(|| u64_at(80).map(|g| g as u32)).flatten(),
        master: (propagation & MS_SLAVE != 0).then(|| u64_at(88).map(|g| g as u32)).flatten(),
    })
}

/// A source as mountinfo writes it: space, tab, newline and backslash in octal.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statmount answer with these fields, laid out as the kernel writes it.
    fn answer(mask: u64, propagation: u64, strings: &[&str]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER];
        let mut text = Vec::new();
        let mut offsets = Vec::new();
        for s in strings {
            offsets.push(text.len() as u32);
            text.extend_from_slice(s.as_bytes());
            text.push(0);
        }
        let put32 = |buf: &mut Vec<u8>, at: usize, v: u32| buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        let put64 = |buf: &mut Vec<u8>, at: usize, v: u64| buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        put32(&mut buf, 0, (HEADER + text.len()) as u32);
        put64(&mut buf, 8, mask);
        put32(&mut buf, 16, 0);
        put32(&mut buf, 20, 51);
        put32(&mut buf, 36, offsets[0]);
        put32(&mut buf, 56, 1620);
        put32(&mut buf, 60, 1501);
        put64(&mut buf, 72, propagation);
        put64(&mut buf, 80, 430);
        put64(&mut buf, 88, 12);
        put32(&mut buf, 108, offsets[1]);
        put32(&mut buf, 120, offsets[2]);
        put32(&mut buf, 124, offsets[3]);
        buf.extend_from_slice(&text);
        buf
    }

    #[test]
    fn decodes_an_answer_as_mountinfo_shows_the_mount() {
        let buf = answer(WANTED, MS_SHARED | MS_SLAVE, &["fuse", "/sidemount/with space", "bindfs", r"/src a\b"]);
        let m = decode(&buf).unwrap();
        assert_eq!((m.id, m.parent_id, m.dev), (1620, 1501, (0, 51)));
        assert_eq!(m.mount_point, PathBuf::from("/sidemount/with space"));
        assert_eq!(m.fs_type, "fuse.bindfs");
        assert_eq!(m.source, r"/src\040a\134b");
        assert_eq!((m.shared, m.master), (Some(430), Some(12)));
    }

    #[test]
    fn a_missing_subtype_or_source_reads_as_mountinfo_writes_it() {
        let private = 1 << 18;
        let buf = answer(REQUIRED, private, &["tmpfs", "/x", "", ""]);
        let m = decode(&buf).unwrap();
        assert_eq!((m.fs_type.as_str(), m.source.as_str()), ("tmpfs", "none"));
        assert_eq!((m.shared, m.master), (None, None));
    }

    #[test]
    fn an_answer_short_of_a_field_is_no_mount() {
        let buf = answer(REQUIRED & !STATMOUNT_MNT_POINT, 0, &["tmpfs", "/x", "", ""]);
        assert!(decode(&buf).is_none());
        // A string offset past the answer, and an answer cut short.
        let mut buf = answer(WANTED, 0, &["tmpfs", "/x", "", ""]);
        buf[108..112].copy_from_slice(&9999u32.to_ne_bytes());
        assert!(decode(&buf).is_none());
        assert!(decode(&answer(WANTED, 0, &["tmpfs", "/x", "", ""])[..HEADER - 1]).is_none());
    }
}
