//! Self-tests of the test harness (tests/support), independent of the supervisor: the
//! kubelet's propagation really works between the pod's namespaces, teardown leaves
//! nothing behind, and the S3 server answers. When one of these fails, fix the
//! machine or the harness before reading anything into the supervisor's tests.

mod support;

use std::fs;
use std::time::Duration;

use support::{mountinfo, pid_alive, pids_in_namespaces, poll_until, require_tool, Ns, Pod, Propagation};

/// A bindfs mounted by hand at ROOT/data in the sidecar reaches the node's emptyDir and
/// the app; a hand-made umount in the sidecar is seen the same way.
#[test]
fn hand_mounted_bindfs_propagates_sidecar_to_node_to_app() {
    require_tool("bindfs", "bindfs");
    let pod = Pod::new(&["data"]);
    let src = pod.work("src");
    fs::write(src.join("hello"), "from the bucket\n").unwrap();
    let mp = pod.mountpoint("data").display().to_string();

    pod.spawn_in(Ns::Sidecar, &["bindfs", "-f", &src.display().to_string(), &mp]);
    let ok = poll_until(Duration::from_secs(10), || pod.node_fuse_mounts("data").len() == 1);
    assert!(ok, "node never saw the sidecar's fuse mount: {:#?}", pod.mounts(Ns::Node));
    pod.wait_app_reads("data", "hello", "from the bucket\n", Duration::from_secs(10));
    pod.app_write("data", "back", "from the app").unwrap();
    assert_eq!(fs::read_to_string(src.join("back")).unwrap(), "from the app");
    assert!(mountinfo::under(&mountinfo::host(), pod.path()).is_empty(), "host namespace got a mount");

    pod.run_in(Ns::Sidecar, &["umount", &mp]).unwrap();
    let ok = poll_until(Duration::from_secs(10), || pod.node_fuse_mounts("data").is_empty());
    assert!(ok, "umount in the sidecar did not reach the node");
    assert!(pod.app_read("data", "hello").is_err(), "app still sees the unmounted volume");
}

/// Without Bidirectional the sidecar's mount stays its own.
#[test]
fn private_sidecar_bind_does_not_propagate() {
    require_tool("bindfs", "bindfs");
    let pod = Pod::with_propagation(&[("data", Propagation::Private)]);
    let src = pod.work("src");
    fs::write(src.join("hello"), "x").unwrap();
    let mp = pod.mountpoint("data").display().to_string();
    pod.spawn_in(Ns::Sidecar, &["bindfs", "-f", &src.display().to_string(), &mp]);
    let ok = poll_until(Duration::from_secs(10), || !pod.fuse_mounts(Ns::Sidecar).is_empty());
    assert!(ok, "bindfs did not mount in the sidecar");
    std::thread::sleep(Duration::from_millis(300));
    assert!(pod.all_node_fuse_mounts().is_empty(), "private bind propagated to the node");
    assert!(pod.app_read("data", "hello").is_err(), "private bind propagated to the app");
}

/// Drop kills everything in the namespaces, including orphans and stopped processes,
/// and the namespaces vanish.
#[test]
fn teardown_leaves_no_process_and_no_mount() {
    require_tool("bindfs", "bindfs");
    let (namespaces, pids, path);
    {
        let pod = Pod::new(&["data"]);
        let src = pod.work("src");
        let mp = pod.mountpoint("data").display().to_string();
        // A daemonised bindfs (no -f): an orphan the harness never had as a child.
        pod.run_in(Ns::Sidecar, &["bindfs", &src.display().to_string(), &mp]).unwrap();
        let stopped = pod.spawn_in(Ns::App, &["sleep", "1000"]);
        support::signal(stopped, libc::SIGSTOP);
        pod.spawn_in(Ns::App, &["sh", "-c", &format!("exec 3<{}; sleep 1000", pod.app_dir("data").display())]);
        assert!(poll_until(Duration::from_secs(10), || pod.processes().len() >= 3), "{:?}", pod.processes());
        namespaces = pod.namespaces();
        pids = pod.processes();
        path = pod.path().to_path_buf();
    }
    assert!(pids_in_namespaces(&namespaces).is_empty(), "left in the pod's namespaces");
    for p in pids {
        assert!(!pid_alive(p), "pid {p} survived teardown");
    }
    assert!(!path.exists(), "pod directory not removed");
    assert!(mountinfo::under(&mountinfo::host(), &path).is_empty());
}

/// moto starts, takes a bucket and an object, and is gone after Drop.
#[test]
fn moto_serves_s3_and_stops() {
    let (pid, addr);
    {
        let moto = support::moto::Moto::start();
        moto.create_bucket("harness");
        moto.put_object("harness", "k", b"bytes\n");
        assert_eq!(moto.get_object("harness", "k").as_deref(), Some(&b"bytes\n"[..]));
        assert_eq!(moto.get_object("harness", "missing"), None);
        assert_eq!(moto.keys("harness"), vec!["k".to_string()]);
        pid = moto.pid();
        addr = moto.addr();
    }
    assert!(!pid_alive(pid), "moto_server survived Drop");
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "port still open");
}

#[test]
fn mountinfo_parser_reads_escapes_and_propagation() {
    let m = mountinfo::parse("113 65 0:40 / /t/node/a\\040b rw shared:3 master:2 - fuse.s3fs s3fs rw\n");
    assert_eq!(m[0].mount_point, std::path::PathBuf::from("/t/node/a b"));
    assert!(m[0].is_fuse() && m[0].is_shared() && m[0].is_slave());
    assert_eq!(m[0].source, "s3fs");
}

#[test]
fn metric_parser_finds_volume_series() {
    let text = "# HELP x\nsidemount_volume_ready{volume=\"data\"} 1\nsidemount_volume_ready{volume=\"other\"} 0\n\
                sidemount_volume_repairs_total{volume=\"data\",kind=\"fuse\"} 3 1700000000\n";
    let v = |m, vol| support::supervisor::metric_value(text, m, vol);
    assert_eq!(v("sidemount_volume_ready", "data"), Some(1.0));
    assert_eq!(v("sidemount_volume_ready", "other"), Some(0.0));
    assert_eq!(v("sidemount_volume_repairs_total", "data"), Some(3.0));
    assert_eq!(v("sidemount_volume_mounted", "data"), None);
}
