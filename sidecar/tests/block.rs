//! `block` volumes on real loop devices with real ext4 and xfs: formatting only an
//! empty device, mounting it where the app sees it, keeping its data across a
//! restart, refusing a device that holds another filesystem, and the kernel-mount
//! guards of a pod's deletion (unmounted first, detached when busy, a leftover of a
//! killed supervisor cleared).
//!
//! Run as root: `cargo test -p sidemount --test block`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::disk::Loop;
use support::spec::{bindfs, spec};
use support::{require_tool, wait_for, Ns, Pod};

const READY: Duration = Duration::from_secs(60);

fn block_spec(name: &str, device: &Path, fs_type: &str, format: bool) -> String {
    format!(
        "volumes:\n- name: {name}\n  type: block\n  device: {}\n  fsType: {fs_type}\n  format: {format}\n",
        device.display()
    )
}

/// Kernel mounts of `device` at the node's emptyDir of `vol`.
fn node_mounts_of(pod: &Pod, vol: &str, device: &Path) -> usize {
    let dir = pod.empty_dir(vol);
    let source = device.display().to_string();
    pod.mounts(Ns::Node).iter().filter(|m| m.mount_point == dir && m.source == source).count()
}

fn format_mount_and_keep_data(fs_type: &str) {
    require_tool(&format!("mkfs.{fs_type}"), if fs_type == "xfs" { "xfsprogs" } else { "e2fsprogs" });
    // xfs wants at least 300 MiB.
    let disk = Loop::new(320);
    assert_eq!(disk.fs_type(), "", "a fresh loop device is empty");
    let pod = Pod::new(&["disk"]);
    let yaml = block_spec("disk", disk.path(), fs_type, true);

    let mut sup = pod.supervisor().spec(&yaml).start();
    sup.wait_ready(READY);
    assert!(sup.log().contains("no filesystem on the device: formatting it"), "{}", sup.log());
    assert_eq!(disk.fs_type(), fs_type);
    assert_eq!(node_mounts_of(&pod, "disk", disk.path()), 1, "mounted on the node's emptyDir");
    pod.app_write("disk", "kept", &format!("on {fs_type}")).unwrap();
    let (code, _) = sup.terminate();
    assert_eq!(code, 0, "{}", sup.log());
    assert_eq!(node_mounts_of(&pod, "disk", disk.path()), 0, "nothing left for the kubelet to delete");

    // Mounted again, the data is there and nothing was formatted.
    let mut again = pod.supervisor().spec(&yaml).start();
    again.wait_ready(READY);
    assert!(!again.log().contains("formatting"), "{}", again.log());
    assert_eq!(pod.app_read("disk", "kept").unwrap(), format!("on {fs_type}"));
    assert_eq!(again.terminate().0, 0);
}

#[test]
fn ext4_is_formatted_once_mounted_and_keeps_its_data() {
    format_mount_and_keep_data("ext4");
}

#[test]
fn xfs_is_formatted_once_mounted_and_keeps_its_data() {
    format_mount_and_keep_data("xfs");
}

#[test]
fn a_device_holding_another_filesystem_is_refused_and_left_intact() {
    require_tool("mkfs.ext4", "e2fsprogs");
    let disk = Loop::new(64);
    let out = Command::new("mkfs.ext4").args(["-q", &disk.device]).output().unwrap();
    assert!(out.status.success());
    let pod = Pod::new(&["disk"]);
    // Data on it, written in the sidecar's namespace by hand.
    let scratch = pod.work("scratch");
    let put =
        format!("mount {dev} {m} && echo precious > {m}/data && umount {m}", dev = disk.device, m = scratch.display());
    pod.sh(Ns::Sidecar, &put).unwrap();

    let mut sup = pod.supervisor().spec(&block_spec("disk", disk.path(), "xfs", true)).start();
    let v = sup.wait_state("disk", "failed", READY);
    let error = v["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("holds a ext4 filesystem") && error.contains("never formats"), "{error}");
    assert!(!sup.log().contains("formatting"), "{}", sup.log());
    assert_eq!(sup.terminate().0, 0);

    assert_eq!(disk.fs_type(), "ext4", "the device still holds its filesystem");
    let get = format!("mount -o ro {dev} {m} && cat {m}/data; umount {m}", dev = disk.device, m = scratch.display());
    assert_eq!(pod.sh(Ns::Sidecar, &get).unwrap().trim(), "precious");
}

#[test]
fn a_busy_kernel_mount_is_detached_first_at_sigterm() {
    require_tool("mkfs.ext4", "e2fsprogs");
    require_tool("bindfs", "bindfs");
    let disk = Loop::new(64);
    let pod = Pod::new(&["disk", "data"]);
    let src = pod.work("src");
    let fuse = spec(&[bindfs("data", &src)]);
    let yaml = format!("{}{}", block_spec("disk", disk.path(), "ext4", true), fuse.trim_start_matches("volumes:\n"));
    let mut sup = pod.supervisor().spec(&yaml).shutdown_timeout(Duration::from_secs(6)).start();
    sup.wait_ready(READY);
    pod.app_write("disk", "open", "held").unwrap();
    // The app holds a file open on the block volume: a clean unmount is refused (EBUSY).
    let file = pod.app_dir("disk").join("open");
    pod.hold_open(Ns::App, &file);

    let (code, took) = sup.terminate();
    assert_eq!(code, 0, "{}", sup.log());
    // A kernel mount does not wait for the half of the budget a daemon gets.
    assert!(took < Duration::from_secs(3), "took {took:?} of a 6 s budget:\n{}", sup.log());
    assert_eq!(node_mounts_of(&pod, "disk", disk.path()), 0, "the busy kernel mount is off the node's emptyDir");
    assert!(pod.node_fuse_mounts("data").is_empty());
    let log = sup.log();
    let line = |volume: &str, what: &str| {
        log.lines()
            .position(|l| l.contains(&format!("volume={volume}")) && l.contains(what))
            .unwrap_or_else(|| panic!("no `{what}` line for {volume}:\n{log}"))
    };
    assert!(line("disk", "detached") < line("data", "unmounted"), "kernel mounts go first:\n{log}");
}

#[test]
fn a_kernel_mount_left_by_a_killed_supervisor_is_cleared_and_mounted_again() {
    require_tool("mkfs.ext4", "e2fsprogs");
    let disk = Loop::new(64);
    let pod = Pod::new(&["disk"]);
    let yaml = block_spec("disk", disk.path(), "ext4", true);
    let mut sup = pod.supervisor().spec(&yaml).start();
    sup.wait_ready(READY);
    pod.app_write("disk", "survives", "yes").unwrap();
    sup.kill9();
    assert_eq!(node_mounts_of(&pod, "disk", disk.path()), 1, "SIGKILL leaves the kernel mount behind");

    let mut again = pod.supervisor().spec(&yaml).start();
    again.wait_ready(READY);
    assert!(again.log().contains("cleared a leftover mount"), "{}", again.log());
    assert_eq!(node_mounts_of(&pod, "disk", disk.path()), 1, "one mount: the leftover was replaced, not stacked");
    assert_eq!(pod.app_read("disk", "survives").unwrap(), "yes");

    // Unmounted by hand, it is mounted again.
    pod.sh(Ns::Sidecar, &format!("umount {}", pod.mountpoint("disk").display())).unwrap();
    wait_for(READY, "mounted again", || {
        (again.metric("sidemount_volume_repairs_total", "disk") == Some(1.0)
            && again.volume("disk")?["state"] == "ready")
            .then_some(())
    });
    assert_eq!(pod.app_read("disk", "survives").unwrap(), "yes");
    assert_eq!(again.terminate().0, 0);
    assert_eq!(node_mounts_of(&pod, "disk", disk.path()), 0);
}
