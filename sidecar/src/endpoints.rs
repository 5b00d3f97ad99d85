//! The supervisor's HTTP endpoints: `/healthz` (alive), `/readyz` (every
//! volume mounted and answering a bounded statfs, checked on each request),
//! `/metrics` (Prometheus text) and `/status` (JSON).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::sys::Sys;
use crate::volume::{check_many, check_when_needed, SharedStatus};

/// What the endpoints report: the supervisor updates it, requests read it.
pub struct Registry {
    volumes: Mutex<Vec<SharedStatus>>,
    config_error: Mutex<Option<String>>,
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
    /// Connections closed at once because `MAX_CONNECTIONS` were open.
    pub connections_refused: AtomicU64,
    sys: Arc<dyn Sys>,
    check_timeout: Duration,
    /// Where the FUSE connections can be looked at (a fusectl mount), once known.
    fuse_connections: std::sync::OnceLock<Arc<std::fs::File>>,
}

impl Registry {
    pub fn new(sys: Arc<dyn Sys>, check_timeout: Duration) -> Arc<Registry> {
        Arc::new(Registry {
            volumes: Mutex::new(Vec::new()),
            config_error: Mutex::new(None),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            sys,
            check_timeout,
            fuse_connections: std::sync::OnceLock::new(),
        })
    }

    pub fn set_volumes(&self, volumes: Vec<SharedStatus>) {
        *self.volumes.lock().expect("registry lock") = volumes;
    }

    pub fn volumes(&self) -> Vec<SharedStatus> {
        self.volumes.lock().expect("registry lock").clone()
    }

    pub fn set_config_error(&self, error: Option<String>) {
        *self.config_error.lock().expect("registry lock") = error;
    }

    pub fn config_error(&self) -> Option<String> {
        self.config_error.lock().expect("registry lock").clone()
    }

    /// Gives the FUSE control directory, held open, where the connections can be
    /// looked at (see [`check_when_needed`]).
    pub fn set_fuse_connections(&self, control: Arc<std::fs::File>) {
        let _ = self.fuse_connections.set(control);
    }

    /// The periodic check: asks only the volumes that need it (see [`check_when_needed`]).
    pub async fn check_idle(&self) -> bool {
        let connections = self.fuse_connections.get().map(|control| control.as_ref());
        check_when_needed(&self.volumes(), &self.sys, self.check_timeout, connections).await
    }

    /// Checks every volume at once; ready when all are mounted and answering.
    pub async fn check_all(&self) -> bool {
        check_many(&self.volumes(), &self.sys, self.check_timeout).await
    }

    pub fn status(&self) -> StatusBody {
        let volumes: Vec<VolumeBody> = self
            .volumes()
            .iter()
            .map(|s| {
                let s = s.lock().expect("status lock");
                VolumeBody {
                    name: s.name.clone(),
                    kind: s.kind,
                    mountpoint: s.mountpoint.display().to_string(),
                    state: s.state(),
                    pid: s.pid,
                    restarts: s.restarts,
                    repairs: s.repairs,
                    errors: s.errors,
                    last_error: s.last_error.clone(),
                }
            })
            .collect();
        StatusBody { ready: volumes.iter().all(|v| v.state == "ready"), config_error: self.config_error(), volumes }
    }

    pub fn metrics(&self) -> String {
        let status = self.status();
        let mut out = String::new();
        let families: [Family; 6] = [
            ("sidemount_volume_mounted", "gauge", "1 when the volume is mounted at its mountpoint", |v| {
                u64::from(matches!(v.state, "ready" | "unready"))
            }),
            ("sidemount_volume_ready", "gauge", "1 when the volume is mounted and answers a bounded statfs", |v| {
                u64::from(v.state == "ready")
            }),
            ("sidemount_volume_failed", "gauge", "1 while the volume's last start failed", |v| {
                u64::from(v.state == "failed")
            }),
            (
                "sidemount_volume_repairs_total",
                "counter",
                "repairs after the daemon exited or the mount disappeared",
                |v| v.repairs,
            ),
            ("sidemount_volume_restarts_total", "counter", "daemon starts after the first", |v| v.restarts),
            ("sidemount_volume_errors_total", "counter", "failed starts and checks", |v| v.errors),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for v in &status.volumes {
                let _ = writeln!(out, "{name}{{volume=\"{}\",type=\"{}\"}} {}", v.name, v.kind, value(v));
            }
        }
        let _ = writeln!(out, "# HELP sidemount_ready 1 when every volume is ready\n# TYPE sidemount_ready gauge");
        let _ = writeln!(out, "sidemount_ready {}", u64::from(status.ready));
        let _ = writeln!(out, "# HELP sidemount_config_error 1 while the latest spec change was refused\n# TYPE sidemount_config_error gauge");
        let _ = writeln!(out, "sidemount_config_error {}", u64::from(status.config_error.is_some()));
        let _ = writeln!(
            out,
            "# HELP sidemount_config_reloads_total spec changes applied\n# TYPE sidemount_config_reloads_total counter"
        );
        let _ = writeln!(out, "sidemount_config_reloads_total {}", self.reloads.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP sidemount_config_reload_errors_total spec changes refused\n# TYPE sidemount_config_reload_errors_total counter");
        let _ = writeln!(out, "sidemount_config_reload_errors_total {}", self.reload_errors.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP sidemount_http_connections_refused_total connections closed at once because the endpoints' connection limit was reached\n# TYPE sidemount_http_connections_refused_total counter");
        let _ = writeln!(
            out,
            "sidemount_http_connections_refused_total {}",
            self.connections_refused.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP sidemount_context_switches_total wakeups of every thread of the supervisor\n# TYPE sidemount_context_switches_total counter");
        let _ = writeln!(out, "sidemount_context_switches_total {}", crate::sys::context_switches());
        if let Some(bytes) = crate::sys::heap_in_use() {
            let _ = writeln!(out, "# HELP sidemount_heap_in_use_bytes memory the supervisor's allocator has handed out and not had back\n# TYPE sidemount_heap_in_use_bytes gauge");
            let _ = writeln!(out, "sidemount_heap_in_use_bytes {bytes}");
        }
        out
    }
}

/// A per-volume metric family: name, type, help, and its value for a volume.
type Family = (&'static str, &'static str, &'static str, fn(&VolumeBody) -> u64);

#[derive(Debug, Serialize)]
pub struct StatusBody {
    pub ready: bool,
    pub config_error: Option<String>,
    pub volumes: Vec<VolumeBody>,
}

#[derive(Debug, Serialize)]
pub struct VolumeBody {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub mountpoint: String,
    pub state: &'static str,
    pub pid: Option<i32>,
    pub restarts: u64,
    pub repairs: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Answers one request.
pub async fn route(registry: &Registry, method: &Method, path: &str) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into());
    }
    match path {
        "/healthz" => (StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => {
            if registry.check_all().await {
                (StatusCode::OK, TEXT, "ready\n".into())
            } else {
                let mut body = String::from("not ready\n");
                for v in registry.status().volumes.iter().filter(|v| v.state != "ready") {
                    let _ = writeln!(
                        body,
                        "{}: {}{}",
                        v.name,
                        v.state,
                        v.last_error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
                    );
                }
                (StatusCode::SERVICE_UNAVAILABLE, TEXT, body)
            }
        }
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", registry.metrics()),
        "/status" => {
            let body =
                serde_json::to_string_pretty(&registry.status()).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            (StatusCode::OK, "application/json", body + "\n")
        }
        _ => (StatusCode::NOT_FOUND, TEXT, "not found: try /healthz, /readyz, /metrics or /status\n".into()),
    }
}

/// How many connections the endpoints serve at once; one more is closed as soon
/// as it is accepted. Probes and scrapes need a few; each open one costs a
/// descriptor that a repair may need.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may wait before its request is complete (and between
/// requests on a kept-alive one) before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoints allow each client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: usize,
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { connections: MAX_CONNECTIONS, idle: IDLE_TIMEOUT }
    }
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, limits: Limits) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            registry.connections_refused.fetch_add(1, Ordering::Relaxed);
            // Once a minute at most: the flood itself must not flood the log.
            if last_warning.map_or(true, |at| at.elapsed() >= Duration::from_secs(60)) {
                last_warning = Some(tokio::time::Instant::now());
                tracing::warn!(limit = limits.connections, "too many connections to the endpoints: closing new ones");
            }
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move {
                    let (code, content_type, body) = route(&registry, req.method(), req.uri().path()).await;
                    let response = Response::builder()
                        .status(code)
                        .header("content-type", content_type)
                        .body(Full::new(Bytes::from(body)))
                        .expect("valid response");
                    Ok::<_, Infallible>(response)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(limits.idle)
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(io, service)
                .await;
        });
    }
}

/// The most of an answer the probe reads: `/readyz` says a line per volume.
const PROBE_ANSWER_LIMIT: usize = 1 << 20;

/// `sidemount probe`: asks the local supervisor and says yes or no, within
/// `timeout` in all, whatever answers at `addr` (endless, or a byte at a time).
pub fn probe(addr: std::net::SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + timeout;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("supervisor not reachable at {addr}: {e}"))?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    // One write: `write!` on the socket itself sends each piece as a packet of its own.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("request failed: {e}"))?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    let late = || format!("no whole answer from {addr} within {timeout:?}");
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if response.len() + n > PROBE_ANSWER_LIMIT => {
                return Err(format!("the answer from {addr} is over {PROBE_ANSWER_LIMIT} bytes: not the supervisor's"))
            }
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // The read's timeout is what was left of the probe's.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(late())
            }
            Err(e) => return Err(format!("no answer from {addr}: {e}")),
        }
    }
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let ok = head.lines().next().is_some_and(|line| line.split_whitespace().nth(1) == Some("200"));
    if ok {
        Ok(body.to_string())
    } else {
        Err(body.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Volume;
    use crate::sys::fake::{self, Answer, FakeSys};
    use crate::volume::{Phase, Status};

    /// The heap in use that /metrics reports follows what is allocated: 4 MiB
    /// more while a buffer of that size is held.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn metrics_report_the_heap_in_use() {
        let registry = registry_with(Phase::Ready);
        let heap = |text: String| -> u64 {
            text.lines().find_map(|l| l.strip_prefix("sidemount_heap_in_use_bytes ")?.parse().ok()).expect("the heap")
        };
        let before = heap(registry.metrics());
        let held = std::hint::black_box(vec![1u8; 4 << 20]);
        let during = heap(registry.metrics());
        drop(held);
        // Other tests allocate beside this one: a margin of 1 MiB either way.
        assert!(during >= before + (3 << 20), "{before} bytes before, {during} with 4 MiB held");
    }

    /// A kernel whose statfs fails: every mount is dead.
    fn dead_mounts() -> Arc<FakeSys> {
        Arc::new(FakeSys::new().answer(fake::Method::Statfs, Answer::Err(nix::errno::Errno::ENOTCONN)))
    }

    fn registry_with(phase: Phase) -> Arc<Registry> {
        let registry = Registry::new(dead_mounts(), Duration::from_millis(200));
        let volume = Volume::fuse_for_tests("data");
        let mut status = Status::new(&volume, "/sidemount/data".as_ref());
        status.phase = phase;
        status.repairs = 3;
        registry.set_volumes(vec![Arc::new(std::sync::Mutex::new(status))]);
        registry
    }

    /// A server at the probe's address that reads the request, answers with
    /// `answer` and closes.
    fn answering(answer: impl FnOnce(&mut std::net::TcpStream) + Send + 'static) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                // The whole request first: a socket closed with some of it unread is reset.
                let (mut request, mut chunk) = (Vec::new(), [0u8; 1024]);
                while !request.ends_with(b"\r\n\r\n") {
                    match std::io::Read::read(&mut stream, &mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                answer(&mut stream);
            }
        });
        addr
    }

    #[test]
    fn the_probe_reads_a_bounded_answer_within_its_timeout() {
        use std::io::Write;
        let ok = answering(|s| drop(s.write_all(b"HTTP/1.1 200 OK\r\n\r\nok\n")));
        assert_eq!(probe(ok, "/healthz", Duration::from_secs(2)).as_deref(), Ok("ok\n"));
        let unready = answering(|s| drop(s.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\ndata: unready\n")));
        assert_eq!(probe(unready, "/readyz", Duration::from_secs(2)), Err("data: unready".to_string()));
        // Endless: refused once past the limit, not read into memory.
        let endless = answering(|s| {
            let chunk = vec![b'x'; 64 * 1024];
            while s.write_all(&chunk).is_ok() {}
        });
        let err = probe(endless, "/healthz", Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("over 1048576 bytes"), "{err}");
        // A byte at a time, each before the read timeout: the whole probe still ends at its timeout.
        let trickle = answering(|s| {
            for _ in 0..100 {
                if s.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let started = std::time::Instant::now();
        let err = probe(trickle, "/healthz", Duration::from_millis(500)).unwrap_err();
        assert!(err.contains("within 500ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        // Silent: the read's own timeout ends it, and the message is the same.
        let silent = answering(|_| std::thread::sleep(Duration::from_secs(2)));
        let err = probe(silent, "/healthz", Duration::from_millis(300)).unwrap_err();
        assert_eq!(err, format!("no whole answer from {silent} within 300ms"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn routes_without_sockets() {
        let registry = registry_with(Phase::Ready);
        assert_eq!(route(&registry, &Method::GET, "/healthz").await.0, StatusCode::OK);
        // statfs fails (ENOTCONN): a dead mount is not ready, and says why.
        let (code, _, body) = route(&registry, &Method::GET, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("data: unready"), "{body}");
        let (_, _, metrics) = route(&registry, &Method::GET, "/metrics").await;
        assert!(metrics.contains("sidemount_volume_repairs_total{volume=\"data\",type=\"fuse\"} 3"), "{metrics}");
        assert!(metrics.contains("sidemount_volume_ready{volume=\"data\",type=\"fuse\"} 0"), "{metrics}");
        let (_, _, status) = route(&registry, &Method::GET, "/status").await;
        let json: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(json["volumes"][0]["state"], "unready");
        assert_eq!(json["ready"], false);
        assert_eq!(route(&registry, &Method::GET, "/nope").await.0, StatusCode::NOT_FOUND);
        assert_eq!(route(&registry, &Method::POST, "/healthz").await.0, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_volumes_is_ready() {
        let registry = Registry::new(dead_mounts(), Duration::from_millis(200));
        assert_eq!(route(&registry, &Method::GET, "/readyz").await.0, StatusCode::OK);
    }

    /// Connects, then waits for the server to close: true when it did within `within`.
    async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(within, stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connections_are_capped_and_idle_ones_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registry = Registry::new(dead_mounts(), Duration::from_millis(200));
        let limits = Limits { connections: 4, idle: Duration::from_millis(700) };
        let server = tokio::spawn(serve(listener, registry.clone(), limits));

        // Four idle connections take every slot ...
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ... so a fifth is closed at once, and counted.
        let mut fifth = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed_by_server(&mut fifth, Duration::from_millis(300)).await, "the fifth connection stayed open");
        assert_eq!(registry.connections_refused.load(Ordering::Relaxed), 1);
        assert!(registry.metrics().contains("sidemount_http_connections_refused_total 1"));
        // The idle ones are closed after the idle timeout, which frees the slots.
        for stream in &mut idle {
            assert!(closed_by_server(stream, Duration::from_secs(3)).await, "an idle connection was never closed");
        }
        let answer = tokio::task::spawn_blocking(move || probe(addr, "/healthz", Duration::from_secs(2)));
        assert_eq!(answer.await.unwrap().as_deref(), Ok("ok\n"));
        server.abort();
    }
}
