//! `sidemount webhook` as the API server meets it: a real TLS round trip on
//! loopback with a certificate from a generated CA, the certificate rotated
//! while it runs (the way a Kubernetes Secret volume swaps its files, then by
//! rewriting the files in place), a bad rotation that must not take it down,
//! and SIGTERM letting an in-flight request finish.

mod webhook_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use sidemount::inject::{self, Config};
use sidemount::settings::Mode;
use sidemount::webhook::admission;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webhook_support::{connect, send, Ca, Serving};

const SHUTDOWN_TIMEOUT: &str = "5s";

fn fixture(name: &str) -> Bytes {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission").join(format!("{name}.json"));
    Bytes::from(std::fs::read(path).unwrap())
}

/// The certificate directory as the kubelet lays out a Secret volume: the
/// files are links through `..data`, which a rotation swaps atomically.
struct SecretVolume {
    dir: tempfile::TempDir,
    generation: u32,
}

impl SecretVolume {
    fn new(serving: &Serving) -> SecretVolume {
        let volume = SecretVolume { dir: tempfile::tempdir().unwrap(), generation: 0 };
        volume.write_generation(serving);
        std::os::unix::fs::symlink(volume.generation_dir(), volume.dir.path().join("..data")).unwrap();
        for file in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{file}"), volume.dir.path().join(file)).unwrap();
        }
        volume
    }

    fn generation_dir(&self) -> String {
        format!("..2026_01_01_00_00_0{}.{}", self.generation, 1000 + self.generation)
    }

    fn write_generation(&self, serving: &Serving) {
        let dir = self.dir.path().join(self.generation_dir());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), &serving.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &serving.key_pem).unwrap();
    }

    /// What the kubelet's atomic writer does: a new directory, a new `..data`
    /// link renamed over the old one, the old directory removed.
    fn rotate(&mut self, serving: &Serving) {
        let old = self.dir.path().join(self.generation_dir());
        self.generation += 1;
        self.write_generation(serving);
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(self.generation_dir(), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
        std::fs::remove_dir_all(old).unwrap();
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }
}

/// A running `sidemount webhook` on an ephemeral loopback port.
struct Webhook {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Webhook {
    fn start(cert: &Path, key: &Path) -> Webhook {
        let mut child = spawn(cert, key);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("webhook listening on https://").nth(1) {
                    let _ = tx.send(addr.trim_end_matches("/mutate").parse::<SocketAddr>().unwrap());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("the webhook did not say where it listens:\n{}", log.lock().unwrap().join("\n"))
            }
        };
        assert!(addr.ip().is_loopback(), "{addr}");
        Webhook { child, addr, log }
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|line| line.contains(needle))
    }

    async fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.logged(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.logged(needle)
    }

    fn terminate(&self) {
        // SAFETY: kill(2) on the pid of the child this test started.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "cannot signal the webhook");
    }

    /// Waits for the exit; the status code.
    fn wait(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                panic!("the webhook did not exit within {within:?}:\n{}", self.log.lock().unwrap().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(cert: &Path, key: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sidemount"))
        .arg("webhook")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SIDEMOUNT_WEBHOOK_LISTEN", "127.0.0.1:0")
        .env("SIDEMOUNT_TLS_CERT", cert)
        .env("SIDEMOUNT_TLS_KEY", key)
        .env("SIDEMOUNT_LOG", "info")
        .env("SIDEMOUNT_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sidemount webhook")
}

/// Connects until the webhook serves a certificate `ca` trusts, for at most `within`.
async fn until_trusted(addr: SocketAddr, ca: &Ca, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        match connect(addr, ca.client()).await {
            Ok(mut sender) => return send(&mut sender, "GET", "/healthz", Bytes::new()).await.map(|_| ()),
            Err(err) if Instant::now() > deadline => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn bounded<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), work).await.unwrap_or_else(|_| panic!("{what} took over 20 s"))
}

#[tokio::test]
async fn serves_admission_over_tls_and_follows_certificate_rotation() {
    let ca1 = Ca::new("sidemount test CA 1");
    let mut volume = SecretVolume::new(&ca1.issue());
    let mut webhook = Webhook::start(&volume.cert(), &volume.key());

    let mut early =
        bounded("connect", connect(webhook.addr, ca1.client())).await.expect("a client trusting CA 1 connects");
    let (status, body) = bounded("healthz", send(&mut early, "GET", "/healthz", Bytes::new())).await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"ok\n"[..]));

    // The answer over TLS is, byte for byte, the one the pure review gives.
    let review = fixture("plain-pod");
    let (status, body) = bounded("mutate", send(&mut early, "POST", "/mutate", review.clone())).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let config = Config {
        image: inject::DEFAULT_IMAGE.into(),
        mode: Mode::Native,
        shutdown_timeout: humantime::parse_duration(SHUTDOWN_TIMEOUT).unwrap(),
    };
    let expected = admission::review(&review, &config).unwrap();
    assert_eq!(body, expected.body);
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");

    let (status, body) =
        bounded("denial", send(&mut early, "POST", "/mutate", fixture("invalid-annotation"))).await.unwrap();
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    assert!(answer["response"]["status"]["message"].as_str().unwrap().contains("volumes[0].filesystem"), "{answer}");

    let (status, _) = bounded("not json", send(&mut early, "POST", "/mutate", Bytes::from_static(b"{"))).await.unwrap();
    assert_eq!(status, 400);
    let (status, _) = bounded("unknown path", send(&mut early, "GET", "/validate", Bytes::new())).await.unwrap();
    assert_eq!(status, 404);
    let (status, _) = bounded("wrong method", send(&mut early, "GET", "/mutate", Bytes::new())).await.unwrap();
    assert_eq!(status, 405);

    // Rotation as a Secret volume does it: ..data swapped to a new directory.
    let ca2 = Ca::new("sidemount test CA 2");
    volume.rotate(&ca2.issue());
    bounded("rotation", until_trusted(webhook.addr, &ca2, Duration::from_secs(10)))
        .await
        .expect("the rotated certificate is served");
    assert!(webhook.wait_for_log("serving the new certificate", Duration::from_secs(2)).await);
    let old = bounded("old CA", connect(webhook.addr, ca1.client())).await;
    assert!(old.is_err(), "a client trusting only the old CA still connects");
    // A connection made before the rotation keeps working.
    let (status, _) = bounded("early connection", send(&mut early, "GET", "/healthz", Bytes::new())).await.unwrap();
    assert_eq!(status, 200);

    // Rotation by rewriting the files in place, key first: the half-done pair
    // in between must not be served, the finished one must.
    let ca3 = Ca::new("sidemount test CA 3");
    let third = ca3.issue();
    std::fs::write(volume.key(), &third.key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(volume.cert(), &third.cert_pem).unwrap();
    bounded("rewrite", until_trusted(webhook.addr, &ca3, Duration::from_secs(10)))
        .await
        .expect("the rewritten certificate is served");

    // A broken certificate file: the last good certificate stays.
    std::fs::write(volume.cert(), "not a certificate\n").unwrap();
    assert!(webhook.wait_for_log("keeping the certificate served so far", Duration::from_secs(5)).await);
    bounded("after a bad rotation", until_trusted(webhook.addr, &ca3, Duration::from_secs(1)))
        .await
        .expect("still serving");
    let mut sender = bounded("connect", connect(webhook.addr, ca3.client())).await.unwrap();
    let (status, _) = bounded("mutate", send(&mut sender, "POST", "/mutate", fixture("flexvolume"))).await.unwrap();
    assert_eq!(status, 200);
    drop(sender);
    drop(early);

    webhook.terminate();
    assert_eq!(webhook.wait(Duration::from_secs(10)), Some(0), "{}", webhook.log.lock().unwrap().join("\n"));
    assert!(webhook.logged("SIGTERM: draining open connections"));
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let ca = Ca::new("sidemount test CA");
    let volume = SecretVolume::new(&ca.issue());
    let mut webhook = Webhook::start(&volume.cert(), &volume.key());

    let tcp = tokio::net::TcpStream::connect(webhook.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(webhook.addr.ip().into());
    let mut tls = bounded("handshake", tokio_rustls::TlsConnector::from(ca.client()).connect(name, tcp)).await.unwrap();
    let body = fixture("workload-template");
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: sidemount-webhook\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let half = body.len() / 2;
    tls.write_all(&body[..half]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    webhook.terminate();
    assert!(webhook.wait_for_log("SIGTERM: draining open connections", Duration::from_secs(5)).await);
    // No new connection is taken once draining.
    let refused = tokio::net::TcpStream::connect(webhook.addr).await;
    assert!(refused.is_err(), "the listener is still open while draining");

    tls.write_all(&body[half..]).await.unwrap();
    tls.flush().await.unwrap();
    let mut response = Vec::new();
    bounded("response", tls.read_to_end(&mut response)).await.ok();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""allowed":true"#), "{response}");
    assert_eq!(webhook.wait(Duration::from_secs(10)), Some(0), "{}", webhook.log.lock().unwrap().join("\n"));
}

#[test]
fn refuses_to_start_without_a_usable_certificate() {
    let ca = Ca::new("sidemount test CA");
    let (one, other) = (ca.issue(), ca.issue());
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cert = file("tls.crt", &one.cert_pem);
    let other_key = file("other.key", &other.key_pem);
    let cases = [
        (dir.path().join("missing.crt"), other_key.clone(), "SIDEMOUNT_TLS_CERT"),
        (cert.clone(), other_key.clone(), "does not belong to the certificate"),
        (file("empty.crt", ""), other_key.clone(), "holds no PEM certificate"),
        (cert.clone(), file("junk.key", "junk"), "holds no PEM private key"),
    ];
    for (cert, key, says) in cases {
        let out = spawn(&cert, &key).wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(stderr.contains(says), "expected {says:?} in:\n{stderr}");
    }
}

/// The injecting fixture with its annotation nested as deep as a spec may be and
/// filled with the tokens libyaml pays for at each level (the costliest annotation
/// known), as long as a spec may be or as fits in a body of `at_most` bytes, and
/// `mounts` more `volumeMounts` in the app container (the webhook reads them; what
/// it skips, such as `env`, costs it little). Still an answer, not a refusal.
fn nested_annotation_review(mounts: usize, at_most: Option<usize>) -> Bytes {
    let mut review: serde_json::Value = serde_json::from_slice(&fixture("plain-pod")).unwrap();
    let object = &mut review["request"]["object"];
    let mounts: Vec<serde_json::Value> = (0..mounts)
        .map(|i| serde_json::json!({ "name": format!("v{i}"), "mountPath": format!("/{}", "x".repeat(40)) }))
        .collect();
    object["spec"]["containers"][0]["volumeMounts"].as_array_mut().unwrap().extend(mounts);
    object["metadata"]["annotations"]["sidemount.io/volumes"] = "".into();
    let depth = sidemount::spec::MAX_SPEC_DEPTH - 2;
    let (head, tail) = (format!("volumes: {}", "[".repeat(depth)), "]".repeat(depth));
    let room = match at_most {
        Some(bytes) => bytes - serde_json::to_vec(&review).unwrap().len(),
        None => sidemount::spec::MAX_SPEC_BYTES,
    };
    let annotation = format!("{head}{}{tail}", "a,".repeat((room - head.len() - tail.len()) / 2));
    review["request"]["object"]["metadata"]["annotations"]["sidemount.io/volumes"] = annotation.into();
    Bytes::from(serde_json::to_vec(&review).unwrap())
}

/// One review sent alone on a new connection: how long its answer took, and
/// that it was a denial (the annotation is no spec).
async fn denied_alone(webhook: &Webhook, ca: &Ca, review: &Bytes) -> Duration {
    let mut sender = bounded("connect", connect(webhook.addr, ca.client())).await.unwrap();
    let started = Instant::now();
    let (status, body) = bounded("review", send(&mut sender, "POST", "/mutate", review.clone())).await.unwrap();
    let alone = started.elapsed();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false, "the annotation nests as deep as allowed and is no spec");
    alone
}

/// Floods the webhook with `review` from more clients than there are review slots
/// and workers, each sending its next as soon as the last is answered; after
/// `settle`, a new client connects and asks `/healthz` ten times, 100 ms apart.
/// Returns the slowest of those (handshake and answer), and every status the
/// flood got.
async fn healthz_during_a_flood(webhook: &Webhook, ca: &Ca, review: &Bytes, settle: Duration) -> (Duration, Vec<u16>) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders = 2 * sidemount::webhook::review_slots() + 2;
    let mut flood = Vec::new();
    for _ in 0..senders {
        let (addr, client, review, stop) = (webhook.addr, ca.client(), review.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            let mut sender = connect(addr, client).await.unwrap();
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match send(&mut sender, "POST", "/mutate", review.clone()).await {
                    Ok((status, _)) => statuses.push(status),
                    // Cut off: recorded as 0, and this client is done.
                    Err(_) => return [statuses, vec![0]].concat(),
                }
            }
            statuses
        }));
    }
    tokio::time::sleep(settle).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let mut probe = bounded("connect during the flood", connect(webhook.addr, ca.client())).await.unwrap();
        let (status, _) =
            bounded("healthz during the flood", send(&mut probe, "GET", "/healthz", Bytes::new())).await.unwrap();
        assert_eq!(status, 200);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statuses = Vec::new();
    for sender in flood {
        statuses.extend(bounded("the flood to end", sender).await.unwrap());
    }
    // Each review is answered, or turned away (503) when no slot frees in time:
    // never cut off (0).
    assert!(statuses.len() >= senders, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    (slowest, statuses)
}

/// While every review slot is busy with slow reviews, a new client still gets its
/// TLS handshake and `/healthz` answered: large reviews run off the async workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_reviews_hold_up_no_other_client() {
    let ca = Ca::new("sidemount test CA");
    let volume = SecretVolume::new(&ca.issue());
    let webhook = Webhook::start(&volume.cert(), &volume.key());
    // A pod of some megabytes in the fields the webhook reads, with an annotation
    // as costly as the limits allow: what a client behind it would wait, were it
    // on a worker.
    let review = nested_annotation_review(100_000, None);
    assert!(review.len() > sidemount::webhook::INLINE_REVIEW_BYTES);
    let alone = denied_alone(&webhook, &ca, &review).await;
    assert!(alone > Duration::from_millis(300), "the review took {alone:?}: too fast to show anything");

    let (slowest, _) = healthz_during_a_flood(&webhook, &ca, &review, alone).await;
    eprintln!(
        "one slow review: {alone:?}; a new client's handshake and /healthz during the flood: at most {slowest:?}"
    );
    assert!(
        slowest < alone / 3,
        "a new client waited {slowest:?} for its handshake and /healthz, with slow reviews ({alone:?} each) running"
    );
}

/// The costliest review known of a body that runs on the worker that read it
/// costs milliseconds of CPU: measured on this thread's own CPU clock, which a
/// loaded machine does not stretch.
#[test]
fn the_costliest_inline_review_costs_milliseconds() {
    let review = nested_annotation_review(0, Some(sidemount::webhook::INLINE_REVIEW_BYTES));
    let limit = sidemount::webhook::INLINE_REVIEW_BYTES;
    assert!(review.len() <= limit && review.len() > limit - 8, "{}", review.len());
    let config =
        Config { image: inject::DEFAULT_IMAGE.into(), mode: Mode::Native, shutdown_timeout: Duration::from_secs(20) };
    let cpu = || -> Duration {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("a thread's CPU clock").into()
    };
    let started = cpu();
    let reviewed = admission::review(&review, &config).unwrap();
    let took = cpu() - started;
    assert!(matches!(reviewed.verdict, admission::Verdict::Denied(_)), "{:?}", reviewed.verdict);
    // Measured: 7 ms in a release build, 23 ms in a debug build. Raising the
    // inline limit fourfold fails either build (100 ms and 18 ms).
    let bound = if cfg!(debug_assertions) { Duration::from_millis(80) } else { Duration::from_millis(12) };
    assert!(took < bound, "the costliest inline review took {took:?} of CPU, over {bound:?}");
    eprintln!("the costliest inline review: {took:?} of CPU");
}

/// A review small enough to run on the async worker that read it costs a few
/// milliseconds at most: a flood of the costliest holds up a new client's
/// handshake and `/healthz` for a moment only, within the 1 s a kubelet's probe
/// waits by default. Measured on a 2-core VM: at most 20 ms in a release build
/// (4 ms a review), 330 ms in a debug build (25 to 40 ms a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_the_costliest_inline_reviews_holds_up_no_other_client_for_long() {
    let ca = Ca::new("sidemount test CA");
    let volume = SecretVolume::new(&ca.issue());
    let webhook = Webhook::start(&volume.cert(), &volume.key());
    let review = nested_annotation_review(0, Some(sidemount::webhook::INLINE_REVIEW_BYTES));
    assert!(review.len() <= sidemount::webhook::INLINE_REVIEW_BYTES, "{}", review.len());
    let alone = denied_alone(&webhook, &ca, &review).await;

    let (slowest, statuses) = healthz_during_a_flood(&webhook, &ca, &review, Duration::from_millis(500)).await;
    eprintln!(
        "one costliest inline review: {alone:?}; {} answered in the flood; a new client's handshake and /healthz during it: at most {slowest:?}",
        statuses.len()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a new client waited {slowest:?} for its handshake and /healthz, with inline reviews ({alone:?} each) running"
    );
}
