//! Privileged tests of `sidemount run` with s3fs against a local S3 server (moto): the
//! bytes are checked in the bucket, as a user would. Credentials reach s3fs only through
//! `secretDir` (files AWSACCESSKEYID, AWSSECRETACCESSKEY), so a mounted volume proves
//! they were delivered, and the secret test proves they went nowhere else.
//!
//! Needs root, /dev/fuse, s3fs, and moto_server (PATH or <repo>/.venv/bin).

mod support;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::moto::Moto;
use support::spec::{s3fs, spec};
use support::{pid_alive, poll_until, require_tool, signal, wait_for, Ns, Pod};

const READY: Duration = Duration::from_secs(30);
const REPAIR: Duration = Duration::from_secs(30);
const BUCKET: &str = "pod-data";

struct S3 {
    moto: Moto,
    access_key: String,
    secret_key: String,
}

/// moto with a bucket holding `hello`, and distinctive credentials.
fn s3() -> S3 {
    require_tool("s3fs", "s3fs");
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    moto.put_object(BUCKET, "hello", b"hello from the bucket\n");
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() ^ u128::from(std::process::id());
    S3 {
        moto,
        access_key: format!("AKIDSIDEMOUNT{:X}", nonce % 0xFFFF_FFFF),
        secret_key: format!("sidemount-secret-{nonce:x}-do-not-log"),
    }
}

/// The secretDir for volume `vol`, as the Secret's volume would lay it out.
fn secret_dir(pod: &Pod, s3: &S3, vol: &str) -> PathBuf {
    let dir = pod.work(&format!("secrets/{vol}"));
    fs::write(dir.join("AWSACCESSKEYID"), &s3.access_key).unwrap();
    fs::write(dir.join("AWSSECRETACCESSKEY"), &s3.secret_key).unwrap();
    dir
}

fn s3_spec(pod: &Pod, s3: &S3, vol: &str) -> String {
    spec(&[s3fs(vol, BUCKET, &s3.moto.endpoint(), &secret_dir(pod, s3, vol))])
}

fn repairs(sup: &support::Supervisor, vol: &str) -> f64 {
    sup.metric("sidemount_volume_repairs_total", vol)
        .unwrap_or_else(|| panic!("no sidemount_volume_repairs_total for {vol}:\n{}", sup.metrics()))
}

/// Poll until the bucket holds `key` = `bytes`.
fn wait_bucket(s3: &S3, key: &str, bytes: &[u8], timeout: Duration) {
    let mut last = None;
    let ok = poll_until(timeout, || {
        last = s3.moto.get_object(BUCKET, key);
        last.as_deref() == Some(bytes)
    });
    assert!(
        ok,
        "bucket never held {key} = {:?}; last: {:?}",
        String::from_utf8_lossy(bytes),
        last.map(|b| String::from_utf8_lossy(&b).into_owned())
    );
}

/// Test 1 (s3fs): the app reads the bucket through the mount and its writes land there.
#[test]
fn app_reads_and_writes_bucket_through_s3fs_volume() {
    let s3 = s3();
    let pod = Pod::new(&["data"]);
    let mut sup = pod.supervisor().spec(&s3_spec(&pod, &s3, "data")).start();
    sup.wait_ready(READY);

    pod.wait_app_reads("data", "hello", "hello from the bucket\n", READY);
    pod.app_write("data", "from-app", "written through s3fs\n").unwrap();
    wait_bucket(&s3, "from-app", b"written through s3fs\n", Duration::from_secs(10));
    let m = pod.node_fuse_mounts("data");
    assert_eq!(m.len(), 1, "node's emptyDir: {m:#?}");
    assert_eq!(m[0].fstype, "fuse.s3fs");
    assert_eq!(sup.metric("sidemount_volume_ready", "data"), Some(1.0));
}

/// Test 2 (s3fs): kill -9 of s3fs; repaired, the app reads the bucket again.
#[test]
fn killed_s3fs_daemon_is_repaired() {
    let s3 = s3();
    let pod = Pod::new(&["data"]);
    let mut sup = pod.supervisor().spec(&s3_spec(&pod, &s3, "data")).start();
    sup.wait_ready(READY);
    pod.wait_app_reads("data", "hello", "hello from the bucket\n", READY);
    let before = repairs(&sup, "data");
    let daemon = sup.daemon_pid("data");

    signal(daemon, libc::SIGKILL);
    assert!(poll_until(Duration::from_secs(10), || !pid_alive(daemon)), "s3fs survived SIGKILL");
    pod.wait_app_reads("data", "hello", "hello from the bucket\n", REPAIR);
    wait_for(REPAIR, "repairs_total to go up", || (repairs(&sup, "data") > before).then_some(()));
    // The dead mount stays covered by the new one (see fuse_volumes.rs).
    assert_eq!(pod.node_fuse_mounts("data").len(), 2, "{:#?}", pod.node_fuse_mounts("data"));
}

/// Test 3 (s3fs): an unmount by hand in the sidecar is repaired.
#[test]
fn hand_unmounted_s3fs_volume_is_repaired() {
    let s3 = s3();
    let pod = Pod::new(&["data"]);
    let mut sup = pod.supervisor().spec(&s3_spec(&pod, &s3, "data")).start();
    sup.wait_ready(READY);
    pod.wait_app_reads("data", "hello", "hello from the bucket\n", READY);
    let before = repairs(&sup, "data");

    let mp = pod.mountpoint("data").display().to_string();
    let out = pod.run_in(Ns::Sidecar, &["umount", &mp]).unwrap();
    assert!(out.status.success(), "umount: {}", String::from_utf8_lossy(&out.stderr));
    pod.wait_app_reads("data", "hello", "hello from the bucket\n", REPAIR);
    wait_for(REPAIR, "repairs_total to go up", || (repairs(&sup, "data") > before).then_some(()));
    // Bound again from the daemon's own mount: one layer, as before.
    assert_eq!(pod.node_fuse_mounts("data").len(), 1, "{:#?}", pod.node_fuse_mounts("data"));
}

/// Test 4 (s3fs): what the app wrote and closed before SIGTERM is in the bucket; exit 0
/// in time; no mount left on the node; s3fs gone.
#[test]
fn sigterm_keeps_acknowledged_writes_and_unmounts_s3fs() {
    let s3 = s3();
    let pod = Pod::new(&["data"]);
    let mut sup = pod.supervisor().spec(&s3_spec(&pod, &s3, "data")).shutdown_timeout(Duration::from_secs(10)).start();
    sup.wait_ready(READY);
    pod.wait_app_reads("data", "hello", "hello from the bucket\n", READY);
    let big: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    pod.app_write("data", "last-words", &big).unwrap();
    let daemon = sup.daemon_pid("data");

    let (code, took) = sup.terminate();
    assert_eq!(code, 0, "exit code after SIGTERM (took {took:?})");
    assert!(pod.all_node_fuse_mounts().is_empty(), "left on the node: {:#?}", pod.all_node_fuse_mounts());
    assert!(poll_until(Duration::from_secs(2), || !pid_alive(daemon)), "s3fs {daemon} still alive");
    assert_eq!(
        s3.moto.get_object(BUCKET, "last-words").map(|b| b.len()),
        Some(big.len()),
        "the app's closed write is not (whole) in the bucket"
    );
    assert_eq!(s3.moto.get_object(BUCKET, "last-words").unwrap(), big.as_bytes());
}

/// Test 10: the credentials from secretDir appear in no log line, no /status or /metrics
/// body and no process's argv — while running, across a repair, and after shutdown.
#[test]
fn secrets_never_leave_the_daemons_environment() {
    let s3 = s3();
    let pod = Pod::new(&["data"]);
    let mut sup = pod.supervisor().spec(&s3_spec(&pod, &s3, "data")).shutdown_timeout(Duration::from_secs(10)).start();
    sup.wait_ready(READY);
    // Mounted and answering: s3fs had no other way to get credentials.
    pod.wait_app_reads("data", "hello", "hello from the bucket\n", READY);
    let secrets = [s3.access_key.as_str(), s3.secret_key.as_str()];
    // Delivered where it belongs: the daemon's environment.
    let environ = fs::read(format!("/proc/{}/environ", sup.daemon_pid("data"))).unwrap();
    let want = format!("AWSSECRETACCESSKEY={}", s3.secret_key);
    assert!(environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes()), "secretDir did not reach s3fs's environment");

    let check = |when: &str, sup: &support::Supervisor, running: bool| {
        for secret in secrets {
            assert!(!sup.output().contains(secret), "{when}: a secret is in the supervisor's log");
            if running {
                assert!(!sup.status_body().contains(secret), "{when}: a secret is in /status");
                assert!(!sup.metrics().contains(secret), "{when}: a secret is in /metrics");
            }
            let leaking: Vec<String> = support::all_pids()
                .into_iter()
                .filter(|p| fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| contains(&c, secret.as_bytes())))
                .map(|p| format!("{p}: {}", support::comm(p)))
                .collect();
            assert!(leaking.is_empty(), "{when}: a secret is in the argv of {leaking:?}");
        }
    };
    check("running", &sup, true);

    // A repair re-reads the secretDir and restarts the daemon: the usual place to log argv and env.
    let before = repairs(&sup, "data");
    signal(sup.daemon_pid("data"), libc::SIGKILL);
    wait_for(REPAIR, "repairs_total to go up", || (repairs(&sup, "data") > before).then_some(()));
    pod.wait_app_reads("data", "hello", "hello from the bucket\n", REPAIR);
    check("after a repair", &sup, true);

    let (code, _) = sup.terminate();
    assert_eq!(code, 0);
    check("after shutdown", &sup, false);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
