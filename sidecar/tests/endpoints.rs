//! Privileged tests of the supervisor's endpoints under hostile clients and hung
//! volumes: a flood of idle connections must leave descriptors for repairs, and
//! the first `/readyz` with several hung volumes must answer inside the probe's
//! timeout.
//!
//! Run as root: `cargo test -p sidemount --test endpoints`.

mod support;

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::spec::{bindfs, spec};
use support::{pid_alive, poll_until, require_tool, signal, wait_for, Pod};

const READY: Duration = Duration::from_secs(30);
/// The endpoints' connection limit (`endpoints::MAX_CONNECTIONS`), stated in README.md.
const MAX_CONNECTIONS: usize = 64;

/// The soft "Max open files" of a process.
fn open_files_limit(pid: u32) -> u64 {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files in limits");
    line.split_whitespace().nth(3).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

/// True when the server closed `stream` within `within`.
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// With a low open-files limit, far more idle connections than the limit allows
/// must not starve a repair: the endpoints keep at most MAX_CONNECTIONS, close the
/// rest at once, close idle ones after a while, and the killed daemon is back
/// within seconds. The supervisor also raises its soft limit to the hard one.
#[test]
fn a_flood_of_idle_connections_leaves_descriptors_for_a_repair() {
    require_tool("bindfs", "bindfs");
    let pod = Pod::new(&["data"]);
    let src = pod.work("src");
    fs::write(src.join("hello"), "repaired\n").unwrap();
    let mut sup = pod.supervisor().spec(&spec(&[bindfs("data", &src)])).nofile(128, 256).start();
    sup.wait_ready(READY);
    assert_eq!(open_files_limit(sup.pid()), 256, "the soft limit was not raised to the hard one");
    let daemon = sup.daemon_pid("data");

    // 400 idle connections: more than every descriptor the supervisor may have.
    let mut flood: Vec<TcpStream> = (0..400)
        .map(|i| {
            TcpStream::connect_timeout(&sup.addr(), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut closed = 0;
    for stream in &mut flood {
        closed += usize::from(closed_by_server(stream, Duration::from_millis(50)));
    }
    assert!(
        closed >= 400 - MAX_CONNECTIONS,
        "only {closed} of 400 idle connections were closed at once; the limit is {MAX_CONNECTIONS}"
    );

    let killed = Instant::now();
    signal(daemon, libc::SIGKILL);
    assert!(poll_until(Duration::from_secs(10), || !pid_alive(daemon)), "daemon {daemon} survived SIGKILL");
    // Well before the idle timeout frees the connections' descriptors.
    pod.wait_app_reads("data", "hello", "repaired\n", Duration::from_secs(5));
    eprintln!("repaired {:?} after the kill, with the flood open", killed.elapsed());
    assert!(!sup.log().contains("Too many open files"), "{}", sup.log_tail(40));

    // Idle connections are closed after the idle timeout: the endpoints answer again.
    let all_closed = poll_until(Duration::from_secs(20), || {
        flood.iter_mut().all(|s| closed_by_server(s, Duration::from_millis(10)))
    });
    assert!(all_closed, "idle connections were kept open past the idle timeout");
    drop(flood);
    sup.wait_ready(READY);
    assert!(sup.metric("sidemount_volume_repairs_total", "data").is_some_and(|r| r >= 1.0));
    let refused = sup.metrics();
    assert!(
        refused.lines().any(|l| l.starts_with("sidemount_http_connections_refused_total ") && !l.ends_with(" 0")),
        "{refused}"
    );
    assert_eq!(sup.terminate().0, 0);
    assert!(pod.node_fuse_mounts("data").is_empty());
}

/// Four hung volumes: the first `/readyz` (what `sidemount probe`, the startup
/// probe, asks with a 5 s timeout) answers 503 naming them within about twice
/// SIDEMOUNT_CHECK_TIMEOUT, not four times it.
#[test]
fn the_first_readyz_with_four_hung_volumes_answers_within_two_check_timeouts() {
    require_tool("bindfs", "bindfs");
    let names = ["v0", "v1", "v2", "v3"];
    let pod = Pod::new(&names);
    let src = pod.work("src");
    fs::write(src.join("hello"), "x\n").unwrap();
    let volumes: Vec<_> = names.iter().map(|n| bindfs(n, &src)).collect();
    let mut sup = pod.supervisor().spec(&spec(&volumes)).shutdown_timeout(Duration::from_secs(5)).start();
    sup.wait_ready(READY);
    let daemons: Vec<u32> = names.iter().map(|n| sup.daemon_pid(n)).collect();
    struct Resume(Vec<u32>);
    impl Drop for Resume {
        fn drop(&mut self) {
            self.0.iter().for_each(|&p| signal(p, libc::SIGCONT));
        }
    }
    let _resume = Resume(daemons.clone());
    for &daemon in &daemons {
        signal(daemon, libc::SIGSTOP);
    }

    let asked = Instant::now();
    let (code, out) = sup.exec(&["probe"]);
    let took = asked.elapsed();
    eprintln!("first probe with 4 hung volumes: {took:?}: {out}");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not ready") && names.iter().all(|n| out.contains(&format!("{n}: unready"))), "{out}");
    // Twice the 2 s check timeout, plus the probe's own start in the sidecar.
    assert!(took < Duration::from_millis(4800), "took {took:?}");
    // The hung checks are not repeated: the next answer is quick.
    let asked = Instant::now();
    assert_eq!(sup.readyz(), Some(503));
    assert!(asked.elapsed() < Duration::from_secs(1), "{:?}", asked.elapsed());
    wait_for(Duration::from_secs(1), "/healthz", || (sup.healthz() == Some(200)).then_some(()));

    drop(_resume);
    sup.wait_ready(READY);
    assert_eq!(sup.terminate().0, 0);
    assert!(pod.all_node_fuse_mounts().is_empty());
}
