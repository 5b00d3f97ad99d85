//! The two ways the supervisor reads the mount table, listmount(2) with
//! statmount(2) and mountinfo's text, give the same table in a sidecar's
//! namespace: past one page of listmount, with a FUSE mount's subtype, paths
//! and sources mountinfo escapes or that are not UTF-8, shared and slave mounts; and the listmount
//! reader sees a mount moved or made shared in place, which keeps its id.

mod support;

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use sidemount::mount_watch::Listed;
use sidemount::mounts::MountTable;
use sidemount::sys::listmount::LIST_PAGE;
use support::{poll_until, require_privileges, require_tool, Ns, Pod};

/// The kernel from which statmount(2) tells a mount's source and subtype, and
/// the listmount reader must be used; an older one may read mountinfo.
const LISTED_SINCE: (u32, u32) = (6, 13);

fn kernel() -> (u32, u32) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn listmount_reads_the_table_mountinfo_shows_and_sees_changes_in_place() {
    require_privileges();
    require_tool("bindfs", "bindfs");
    let pod = Pod::new(&["data"]);
    let dir = pod.work("table");
    let d = dir.display();
    // A private tmpfs of the test's own, so nothing made here propagates on.
    let mounts = LIST_PAGE + 44;
    let script = format!(
        "set -e; mount -t tmpfs 'a source' '{d}'; mount --make-rprivate '{d}'
         i=0; while [ $i -lt {mounts} ]; do mkdir '{d}'/m$i; mount -t tmpfs \"src $i\" '{d}'/m$i; i=$((i+1)); done
         mkdir '{d}/a b\\c' '{d}'/shared '{d}'/slave '{d}'/moved '{d}'/fuse '{d}'/src
         mount -t tmpfs 'with\\back slash' '{d}/a b\\c'
         bad=$(printf '{d}/not\\377utf8'); mkdir \"$bad\"; mount -t tmpfs \"$(printf 'src\\377')\" \"$bad\"
         mount -t tmpfs s '{d}'/shared; mount --make-shared '{d}'/shared
         mount --bind '{d}'/shared '{d}'/slave; mount --make-slave '{d}'/slave"
    );
    pod.sh(Ns::Sidecar, &script).expect("the mounts");
    pod.spawn_in(Ns::Sidecar, &["bindfs", "-f", "-o", "subtype=bindfs", &format!("{d}/src"), &format!("{d}/fuse")]);
    let fuse = dir.join("fuse");
    let up = poll_until(Duration::from_secs(10), || pod.fuse_mounts(Ns::Sidecar).iter().any(|m| m.mount_point == fuse));
    assert!(up, "bindfs never mounted at {}", fuse.display());

    let report = pod.work("report").join("child");
    let listed_expected = kernel() >= LISTED_SINCE;
    // setns(CLONE_NEWNS) is refused to a multithreaded process: a fork of this one is not.
    let ns = fs::File::open(format!("/proc/{}/ns/mnt", pod.holder_pid(Ns::Sidecar))).unwrap();
    // SAFETY: the child only makes system calls and allocates (glibc's malloc is
    // safe after fork), then leaves with _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let outcome = std::panic::catch_unwind(|| compare_in_namespace(&ns, &dir, listed_expected));
            let text = match outcome {
                Ok(Ok(())) => "ok".to_string(),
                Ok(Err(why)) => why,
                Err(_) => "the comparison panicked".to_string(),
            };
            let _ = fs::write(&report, &text);
            // SAFETY: ends the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(if text == "ok" { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => {
            let status = waitpid(child, None).expect("waitpid");
            let text = fs::read_to_string(&report).unwrap_or_else(|_| "no report".into());
            assert_eq!(status, WaitStatus::Exited(child, 0), "{text}");
            assert_eq!(text, "ok");
        }
    }
}

/// In the namespace of `ns`: the readers agree, and the listmount one keeps
/// agreeing after a move and a propagation change made in place under `dir`.
fn compare_in_namespace(ns: &fs::File, dir: &Path, listed_expected: bool) -> Result<(), String> {
    // SAFETY: setns on an open namespace file; this process has one thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    let mut listed = match Listed::agreeing() {
        Ok(listed) => listed,
        Err(why) if listed_expected => return Err(format!("this kernel has listmount, yet: {why}")),
        Err(_) => return Ok(()),
    };
    // Each read as after a change the kernel reported.
    let same = |listed: &mut Listed, what: &str| -> Result<MountTable, String> {
        let table = listed.read(true).map_err(|e| format!("{what}: listmount: {e}"))?;
        let text = MountTable::read_self().map_err(|e| format!("{what}: mountinfo: {e}"))?;
        if table != text {
            let first = table.mounts.iter().zip(&text.mounts).find(|(a, b)| a != b);
            return Err(format!(
                "{what}: {} mounts listed, {} in mountinfo; first differing: {first:?}",
                table.mounts.len(),
                text.mounts.len()
            ));
        }
        Ok(table)
    };
    let table = same(&mut listed, "at first")?;
    let fuse = table.at(&dir.join("fuse")).next().ok_or("no mount at fuse")?;
    if fuse.fs_type != "fuse.bindfs" {
        return Err(format!("the FUSE mount reads as {}", fuse.fs_type));
    }
    run(&["mount", "--move", &format!("{}/m1", dir.display()), &format!("{}/moved", dir.display())])?;
    let table = same(&mut listed, "after a move")?;
    if table.at(&dir.join("moved")).count() != 1 || table.at(&dir.join("m1")).count() != 0 {
        return Err("the moved mount is not where it was moved to".into());
    }
    run(&["mount", "--make-shared", &format!("{}/m2", dir.display())])?;
    let table = same(&mut listed, "after a propagation change")?;
    if table.at(&dir.join("m2")).next().and_then(|m| m.shared).is_none() {
        return Err("m2 is not read as shared".into());
    }
    Ok(())
}

/// Runs `argv` (in this process's namespace) to success, or says why not.
fn run(argv: &[&str]) -> Result<(), String> {
    let status = std::process::Command::new(argv[0]).args(&argv[1..]).status();
    match status {
        Ok(status) if status.success() => Ok(()),
        other => Err(format!("{argv:?}: {other:?}")),
    }
}
