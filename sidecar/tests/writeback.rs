//! Privileged tests of writes a FUSE daemon acknowledged but had not yet sent on when
//! the sidecar got SIGTERM: rclone with `--vfs-cache-mode writes` over a local
//! directory backend, in the kubelet's mount layout (see tests/support). The app
//! writes and closes its files; what a user checks is the backend directory (the
//! bucket), the supervisor's exit code and its log.
//!
//! Run as root: `cargo test -p sidemount --test writeback`.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::spec::{spec, FuseVolume};
use support::{require_tool, run_with_timeout, signal, Ns, Pod};

const READY: Duration = Duration::from_secs(30);

/// An rclone volume over the local directory `backend`, caching writes, uploading
/// a closed file `write_back` later.
fn rclone(pod: &Pod, backend: &Path, write_back: &str) -> FuseVolume {
    require_tool("rclone", "rclone");
    let cache = pod.work("rclone-cache");
    FuseVolume::new(
        "data",
        &[
            "rclone",
            "mount",
            &backend.display().to_string(),
            "{mountpoint}",
            "--vfs-cache-mode",
            "writes",
            "--vfs-write-back",
            write_back,
            "--cache-dir",
            &cache.display().to_string(),
        ],
    )
    // No rclone.conf of the machine's: the backend is a plain path.
    .env("RCLONE_CONFIG", "/dev/null")
}

/// What the app writes: a line, 256 KiB of bytes that are not text, and a file in a
/// directory.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let binary: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    vec![("one.txt", b"the first result\n".to_vec()), ("two.bin", binary), ("sub/three.txt", b"third\n".to_vec())]
}

/// Writes and closes every file from the app's namespace, as a Job's last step does.
fn app_writes(pod: &Pod) {
    pod.sh(Ns::App, &format!("mkdir -p '{}'", pod.app_dir("data").join("sub").display())).unwrap();
    for (name, bytes) in files() {
        let path = pod.app_dir("data").join(name);
        pod.sh_stdin(Ns::App, &format!("cat > '{}'", path.display()), Some(&bytes))
            .unwrap_or_else(|e| panic!("the app could not write {name}: {e}"));
    }
}

/// Files in `dir` (relative paths), recursively.
fn listing(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// The TCP ports `pid` listens on, from its own sockets and its network namespace's
/// table: `(address, port)`.
fn listening(pid: u32) -> Vec<(Ipv4Addr, u16)> {
    let inodes: BTreeSet<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect();
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (addr, port) = cols.get(1)?.split_once(':')?;
            (cols.get(3) == Some(&"0A") && inodes.contains(*cols.get(9)?)).then(|| {
                let ip = u32::from_str_radix(addr, 16).unwrap();
                (Ipv4Addr::from(ip.to_ne_bytes()), u16::from_str_radix(port, 16).unwrap())
            })
        })
        .collect()
}

/// One HTTP/1.0 request to `addr`; the status code and the body.
fn request(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = auth.map(|a| format!("Authorization: Basic {a}\r\n")).unwrap_or_default();
    // One write: a server that answers early and closes would reset the rest.
    let request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Length: 2\r\n\r\n{{}}");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A Job's ending: the app writes its results and exits; SIGTERM reaches the sidecar a
/// second later, long before rclone's 5 s write-back. Every file is in the backend
/// when the supervisor has exited 0, inside its budget.
#[test]
fn sigterm_waits_for_the_uploads_rclone_has_queued() {
    let pod = Pod::new(&["data"]);
    let backend = pod.work("backend");
    let mut sup = pod.supervisor().spec(&spec(&[rclone(&pod, &backend, "5s")])).start();
    sup.wait_ready(READY);

    app_writes(&pod);
    assert!(listing(&backend).is_empty(), "rclone uploaded at once: the test would prove nothing");
    std::thread::sleep(Duration::from_secs(1));
    let (code, took) = sup.terminate();

    assert_eq!(code, 0, "exit code (after {took:?})\n{}", sup.log_tail(40));
    let want: BTreeSet<String> = files().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(listing(&backend), want, "the backend after shutdown\n{}", sup.log_tail(40));
    for (name, bytes) in files() {
        assert!(
            fs::read(backend.join(name)).unwrap() == bytes,
            "{name} in the backend differs from what the app wrote"
        );
    }
    assert!(took < sup.shutdown_timeout(), "took {took:?}, over the budget");
    assert!(pod.node_fuse_mounts("data").is_empty(), "left on the node: {:#?}", pod.node_fuse_mounts("data"));
}

/// A budget shorter than the write-back: the supervisor cannot save the files, and says
/// so: a non-zero exit and a log line naming every file that was not uploaded.
#[test]
fn a_budget_too_short_for_the_write_back_fails_loudly_naming_the_files() {
    let pod = Pod::new(&["data"]);
    let backend = pod.work("backend");
    let mut sup =
        pod.supervisor().spec(&spec(&[rclone(&pod, &backend, "30s")])).shutdown_timeout(Duration::from_secs(3)).start();
    sup.wait_ready(READY);
    app_writes(&pod);
    std::thread::sleep(Duration::from_secs(1));
    let (code, took) = sup.terminate();

    assert_ne!(code, 0, "exited 0 with three uploads dropped (after {took:?})\n{}", sup.log_tail(40));
    assert!(listing(&backend).is_empty(), "uploaded after all: the test would prove nothing");
    let log = sup.log();
    let lost = log.lines().find(|l| l.contains("ERROR") && l.contains("three.txt")).unwrap_or_else(|| {
        panic!("no error line names the pending uploads\n{}", sup.log_tail(40));
    });
    for (name, _) in files() {
        assert!(lost.contains(name), "{name} is not named: {lost}");
    }
    assert!(lost.contains("SIDEMOUNT_SHUTDOWN_TIMEOUT"), "the line does not name the fix: {lost}");
    assert!(pod.node_fuse_mounts("data").is_empty(), "left on the node: {:#?}", pod.node_fuse_mounts("data"));
}

/// A second SIGTERM stops the wait at once, and the files it gives up on are named.
#[test]
fn a_second_sigterm_stops_the_wait_and_says_what_is_lost() {
    let pod = Pod::new(&["data"]);
    let backend = pod.work("backend");
    let mut sup = pod
        .supervisor()
        .spec(&spec(&[rclone(&pod, &backend, "60s")]))
        .shutdown_timeout(Duration::from_secs(40))
        .start();
    sup.wait_ready(READY);
    app_writes(&pod);
    let started = Instant::now();
    sup.sigterm();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(sup.is_running(), "the first SIGTERM did not wait for the queued uploads\n{}", sup.log_tail(30));
    sup.sigterm();
    let status = sup.wait_exit(Duration::from_secs(10)).expect("still running 10 s after the second SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(12), "took {:?}", started.elapsed());
    assert_ne!(status.code(), Some(0), "exited 0 with uploads dropped\n{}", sup.log_tail(40));
    let log = sup.log();
    assert!(log.lines().any(|l| l.contains("ERROR") && l.contains("one.txt")), "{}", sup.log_tail(40));
    assert!(pod.node_fuse_mounts("data").is_empty(), "left on the node: {:#?}", pod.node_fuse_mounts("data"));
}

/// A hung daemon (SIGSTOP) answers no question: the wait is bounded by the budget, the
/// supervisor says it cannot tell whether the files are in the backend and does not
/// exit 0, and nothing is left on the node.
#[test]
fn a_hung_daemon_costs_the_budget_only_and_is_not_called_flushed() {
    let pod = Pod::new(&["data"]);
    let backend = pod.work("backend");
    let mut sup =
        pod.supervisor().spec(&spec(&[rclone(&pod, &backend, "30s")])).shutdown_timeout(Duration::from_secs(6)).start();
    sup.wait_ready(READY);
    app_writes(&pod);
    let daemon = sup.daemon_pid("data");
    signal(daemon, libc::SIGSTOP);
    struct Resume(u32);
    impl Drop for Resume {
        fn drop(&mut self) {
            signal(self.0, libc::SIGCONT);
        }
    }
    let _resume = Resume(daemon);
    let (code, took) = sup.terminate();
    assert_ne!(code, 0, "exited 0 although the daemon never answered (after {took:?})\n{}", sup.log_tail(40));
    assert!(sup.log().contains("never answered"), "{}", sup.log_tail(40));
    assert!(pod.node_fuse_mounts("data").is_empty(), "left on the node: {:#?}", pod.node_fuse_mounts("data"));
}

/// A file the app has written into and still holds open (an app that did not exit, in
/// legacy mode) is dirty in rclone's cache but not in its upload queue, which reads
/// empty: it is reported as not sent on, by name, not called flushed.
#[test]
fn a_file_written_and_still_open_is_not_called_flushed() {
    let pod = Pod::new(&["data"]);
    let backend = pod.work("backend");
    let mut sup =
        pod.supervisor().spec(&spec(&[rclone(&pod, &backend, "5s")])).shutdown_timeout(Duration::from_secs(4)).start();
    sup.wait_ready(READY);
    let path = pod.app_dir("data").join("open.txt");
    let writer = pod.spawn_in(
        Ns::App,
        &["sh", "-c", &format!("exec 3>'{}'; echo 'not closed' >&3; exec sleep 1000", path.display())],
    );
    support::wait_for(Duration::from_secs(10), "the app to write and hold its file", || {
        (support::comm(writer) == "sleep").then_some(())
    });
    let (code, took) = sup.terminate();
    assert_ne!(code, 0, "exited 0 with a written file never uploaded (after {took:?})\n{}", sup.log_tail(40));
    let log = sup.log();
    let lost = log.lines().find(|l| l.contains("ERROR") && l.contains("open.txt"));
    assert!(lost.is_some_and(|l| l.contains("1 written but not queued yet")), "{}", sup.log_tail(40));
    assert!(pod.node_fuse_mounts("data").is_empty(), "left on the node: {:#?}", pod.node_fuse_mounts("data"));
}

/// Two volumes that cache writes are waited for side by side: the shutdown takes one
/// write-back, not two, and both backends hold their files.
#[test]
fn two_caching_volumes_are_waited_for_side_by_side() {
    let pod = Pod::new(&["a", "b"]);
    let (backend_a, backend_b) = (pod.work("backend-a"), pod.work("backend-b"));
    let volume = |name: &str, backend: &Path| {
        let mut v = rclone(&pod, backend, "5s");
        v.name = name.into();
        let cache = pod.work(&format!("cache-{name}")).display().to_string();
        let at = v.command.iter().position(|a| a == "--cache-dir").unwrap();
        v.command[at + 1] = cache;
        v
    };
    let mut sup = pod.supervisor().spec(&spec(&[volume("a", &backend_a), volume("b", &backend_b)])).start();
    sup.wait_ready(READY);
    for vol in ["a", "b"] {
        pod.app_write(vol, "result.txt", &format!("from {vol}\n")).unwrap();
    }
    let (code, took) = sup.terminate();
    assert_eq!(code, 0, "{}", sup.log_tail(40));
    assert_eq!(fs::read_to_string(backend_a.join("result.txt")).unwrap(), "from a\n");
    assert_eq!(fs::read_to_string(backend_b.join("result.txt")).unwrap(), "from b\n");
    // One write-back (5 s) and the uploads; two in a row would be over 10 s.
    assert!(took < Duration::from_secs(10), "took {took:?}: the volumes were waited for one after the other");
}

/// A volume removed from the spec while the supervisor runs is taken down the same way:
/// its queued uploads reach the backend before its daemon stops.
#[test]
fn a_volume_removed_from_the_spec_sends_its_queue_first() {
    let pod = Pod::new(&["data"]);
    let backend = pod.work("backend");
    let mut sup = pod.supervisor().spec(&spec(&[rclone(&pod, &backend, "5s").env("RCLONE_VERBOSE", "2")])).start();
    sup.wait_ready(READY);
    let daemon = sup.daemon_pid("data");
    pod.app_write("data", "kept.txt", "written before the removal\n").unwrap();
    pod.write_spec("volumes: []\n");
    support::wait_for(Duration::from_secs(30), "the daemon to stop after the removal", || {
        (!support::pid_alive(daemon)).then_some(())
    });
    assert_eq!(
        fs::read_to_string(backend.join("kept.txt")).ok().as_deref(),
        Some("written before the removal\n"),
        "{}",
        sup.log_tail(30)
    );
    let (code, _) = sup.terminate();
    assert_eq!(code, 0, "{}", sup.log_tail(30));
}

/// The pod's containers share the sidecar's network namespace: rclone's remote control,
/// which can read its remotes' credentials, must answer nobody but the supervisor. It
/// listens on loopback only; without its credentials, or with wrong ones, every call is
/// refused; the credentials are in no argv and not in the log. (With them it answers:
/// the refusals are the real server's.)
#[test]
fn the_remote_control_refuses_the_app() {
    let pod = Pod::new(&["data"]);
    let backend = pod.work("backend");
    let mut sup = pod.supervisor().spec(&spec(&[rclone(&pod, &backend, "5s")])).start();
    sup.wait_ready(READY);
    let daemon = sup.daemon_pid("data");
    let ports = listening(daemon);
    assert_eq!(ports.len(), 1, "rclone should listen on one port, its remote control: {ports:?}");
    let (ip, port) = ports[0];
    assert_eq!(ip, Ipv4Addr::LOCALHOST, "the remote control listens beyond loopback");
    let addr = SocketAddr::from((ip, port));

    let environ = fs::read(format!("/proc/{daemon}/environ")).unwrap();
    let var = |name: &str| -> String {
        let prefix = format!("{name}=");
        environ
            .split(|b| *b == 0)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .find_map(|v| v.strip_prefix(&prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("{name} is not in the daemon's environment"))
    };
    let (user, password) = (var("RCLONE_RC_USER"), var("RCLONE_RC_PASS"));
    assert!(password.len() >= 32, "a guessable password: {} characters", password.len());

    for (method, path) in [("POST", "/config/dump"), ("POST", "/vfs/stats"), ("POST", "/core/version"), ("GET", "/")] {
        let (status, body) = request(addr, method, path, None);
        assert_eq!(status, 401, "{method} {path} without credentials answered {status}: {body}");
        let (status, body) = request(addr, method, path, Some(&base64(&format!("{user}:wrong"))));
        assert_eq!(status, 401, "{method} {path} with a wrong password answered {status}: {body}");
    }
    let (status, body) = request(addr, "POST", "/vfs/stats", Some(&base64(&format!("{user}:{password}"))));
    assert_eq!(status, 200, "vfs/stats with the credentials: {body}");

    // The app's namespace reaches the port (one network namespace), and is refused too.
    let curl = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'POST /config/dump HTTP/1.0\\r\\n\\r\\n' >&3; head -n 1 <&3"
    );
    let mut bash = pod.command_in(Ns::App, "bash");
    bash.args(["-c", &curl]);
    let out = run_with_timeout(&mut bash, None, Duration::from_secs(10)).unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains(" 401 "), "from the app's namespace: {line:?}");

    let cmdline = fs::read(format!("/proc/{daemon}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&password), "the password is in the daemon's argv");
    assert!(!sup.log().contains(&password), "the password is in the supervisor's log");
    assert!(!sup.status_body().contains(&password), "the password is in /status");
    let (code, _) = sup.terminate();
    assert_eq!(code, 0, "{}", sup.log_tail(30));
    assert!(!sup.log().contains(&password), "the password is in the supervisor's log");
}

/// `sidemount check` refuses a spec that caches writes and configures rclone's remote
/// control itself: sidemount's own would not be started, and the queue not waited for.
#[test]
fn check_refuses_an_own_remote_control_with_a_write_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("volumes.yaml");
    fs::write(
        &path,
        r#"
volumes:
- name: data
  type: fuse
  command: [rclone, mount, "remote:", "{mountpoint}", --vfs-cache-mode, writes, --rc, --rc-addr, ":5572"]
- name: other
  type: fuse
  command: [rclone, mount, "remote:", "{mountpoint}"]
  env: {RCLONE_VFS_CACHE_MODE: full, RCLONE_RC_ADDR: "127.0.0.1:5572"}
- name: fine
  type: fuse
  command: [rclone, mount, "remote:", "{mountpoint}", --rc, --vfs-cache-mode, "off"]
"#,
    )
    .unwrap();
    let out = run_with_timeout(
        std::process::Command::new(support::sidemount_bin()).arg("check").arg(&path),
        None,
        Duration::from_secs(20),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(64), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "one line per refused volume: {text}");
    assert!(lines[0].contains("volumes[0].command") && lines[0].contains("--rc"), "{text}");
    assert!(lines[1].contains("volumes[1].command") && lines[1].contains("RCLONE_RC_ADDR"), "{text}");
}
