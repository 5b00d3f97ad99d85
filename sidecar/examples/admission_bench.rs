//! Admission requests per second and latency of the webhook over TLS on
//! loopback, with many keep-alive connections each sending one AdmissionReview
//! after another (as API servers do), for a bounded number of requests.
//!
//! ```text
//! cargo run --release -p sidemount --example admission_bench -- \
//!     [--connections 64] [--requests 100000] [--warmup 5000] [--fixture plain-pod] \
//!     [--server-threads N] [--client-threads 1] [--max-seconds 120] [--rate R]
//! ```
//!
//! Without `--rate`, each connection sends its next request as soon as the
//! previous answer is in (closed loop): the rate is the webhook's capacity and
//! the latency is mostly queueing, which Little's law fixes at connections ÷ rate.
//! With `--rate R`, the connections together send R requests per second on a
//! fixed schedule (open loop), which measures the latency at that load.
//!
//! The webhook is the library's `Webhook` on a runtime of its own (a worker per
//! core, as `sidemount webhook` runs), with a certificate from a generated CA;
//! the client runs on its own runtime in the same process, so both share the
//! machine's cores. It prints req/s and p50/p90/p99/p99.9/max latency.
//! Only 127.0.0.1 is ever contacted.

#[path = "../tests/webhook_support/mod.rs"]
mod webhook_support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use sidemount::inject::{self, Config};
use sidemount::settings::Mode;
use sidemount::webhook::{tls, Options, Webhook};
use webhook_support::{connect, send, Ca};

struct Args {
    connections: usize,
    requests: usize,
    warmup: usize,
    fixture: String,
    server_threads: usize,
    client_threads: usize,
    max_seconds: u64,
    rate: Option<f64>,
}

fn args() -> Args {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut args = Args {
        connections: 64,
        requests: 100_000,
        warmup: 5_000,
        fixture: "plain-pod".into(),
        server_threads: cores,
        client_threads: 1,
        max_seconds: 120,
        rate: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--connections" => args.connections = value().parse().expect("--connections N"),
            "--requests" => args.requests = value().parse().expect("--requests N"),
            "--warmup" => args.warmup = value().parse().expect("--warmup N"),
            "--fixture" => args.fixture = value(),
            "--server-threads" => args.server_threads = value().parse().expect("--server-threads N"),
            "--client-threads" => args.client_threads = value().parse().expect("--client-threads N"),
            "--max-seconds" => args.max_seconds = value().parse().expect("--max-seconds N"),
            "--rate" => args.rate = Some(value().parse().expect("--rate REQUESTS_PER_SECOND")),
            other => panic!("unknown argument {other}: see the comment at the top of examples/admission_bench.rs"),
        }
    }
    assert!(args.connections > 0 && args.requests > 0 && args.max_seconds > 0);
    args
}

fn main() {
    let args = args();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission").join(format!("{}.json", args.fixture));
    let review = Bytes::from(std::fs::read(&fixture).unwrap_or_else(|e| panic!("{}: {e}", fixture.display())));

    let ca = Ca::new("sidemount bench CA");
    let serving = ca.issue();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let files = tls::Files { cert: dir.path().join("tls.crt"), key: dir.path().join("tls.key") };
    std::fs::write(&files.cert, &serving.cert_pem).unwrap();
    std::fs::write(&files.key, &serving.key_pem).unwrap();

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .thread_name("webhook")
        .enable_all()
        .build()
        .unwrap();
    let options = Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: files,
        inject: Config {
            image: inject::DEFAULT_IMAGE.into(),
            mode: Mode::Native,
            shutdown_timeout: Duration::from_secs(20),
        },
        shutdown_timeout: Duration::from_secs(5),
    };
    let webhook = server_rt.block_on(Webhook::bind(options)).expect("the webhook binds 127.0.0.1");
    let addr = webhook.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::mpsc::channel(1);
    let server = server_rt.spawn(webhook.serve(stopped));

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let (latencies, elapsed, errors) = client_rt.block_on(async {
        let mut senders = Vec::new();
        for _ in 0..args.connections {
            senders.push(connect(addr, ca.client()).await.expect("connect to the webhook"));
        }
        // The first answer is checked in full; the rest by status.
        let (status, body) = send(&mut senders[0], "POST", "/mutate", review.clone()).await.expect("one request");
        let answer: serde_json::Value = serde_json::from_slice(&body).expect("an AdmissionReview");
        assert_eq!(status, 200);
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        let patch = answer["response"]["patch"].as_str().map_or(0, |p| {
            use base64::Engine as _;
            let json = base64::engine::general_purpose::STANDARD.decode(p).expect("base64");
            serde_json::from_slice::<Vec<serde_json::Value>>(&json).expect("a JSON Patch").len()
        });
        println!("request {} bytes, answer {} bytes, patch of {patch} operations", review.len(), body.len());
        let (senders, _, _, _) = run(senders, &review, args.warmup, args.rate, deadline).await;
        let (_, latencies, elapsed, errors) = run(senders, &review, args.requests, args.rate, deadline).await;
        (latencies, elapsed, errors)
    });
    let _ = client_rt.block_on(stop.send("benchmark done"));
    let _ = server_rt.block_on(server);

    report(&args, latencies, elapsed, errors);
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>;

/// Sends `total` requests spread over the connections. Closed loop: each
/// connection sends its next request as soon as the previous answer is in.
/// Open loop (`rate`): connection i of n sends at start + (i + k·n) / rate.
async fn run(
    senders: Vec<Sender>,
    review: &Bytes,
    total: usize,
    rate: Option<f64>,
    deadline: Instant,
) -> (Vec<Sender>, Vec<Duration>, Duration, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let connections = senders.len();
    let mut tasks = Vec::new();
    for (i, mut sender) in senders.into_iter().enumerate() {
        let next = next.clone();
        let review = review.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total / connections + 1);
            let mut errors = 0;
            let mut k = 0u32;
            while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                if let Some(rate) = rate {
                    let at = started + Duration::from_secs_f64((i as f64 + f64::from(k) * connections as f64) / rate);
                    tokio::time::sleep_until(at.into()).await;
                    k += 1;
                }
                let t0 = Instant::now();
                match send(&mut sender, "POST", "/mutate", review.clone()).await {
                    Ok((200, _)) => latencies.push(t0.elapsed()),
                    Ok(_) | Err(_) => errors += 1,
                }
            }
            (sender, latencies, errors)
        }));
    }
    let mut senders = Vec::new();
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for task in tasks {
        let (sender, l, e) = task.await.expect("a client task");
        senders.push(sender);
        latencies.extend(l);
        errors += e;
    }
    (senders, latencies, started.elapsed(), errors)
}

fn report(args: &Args, mut latencies: Vec<Duration>, elapsed: Duration, errors: usize) {
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies.get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("admission benchmark: POST /mutate ({}.json) over TLS 1.3 on 127.0.0.1", args.fixture);
    let load = args.rate.map_or_else(|| "closed loop".to_string(), |r| format!("open loop at {r} req/s"));
    println!(
        "  {} connections, {load}, {} requests after {} warm-up; server {} worker thread(s), client {} thread(s), {} core(s)",
        args.connections, args.requests, args.warmup, args.server_threads, args.client_threads, cores
    );
    println!("  answered  {} in {:.2} s, {} errors", latencies.len(), elapsed.as_secs_f64(), errors);
    println!("  rate      {:.0} req/s", latencies.len() as f64 / elapsed.as_secs_f64());
    println!(
        "  latency   p50 {:.3} ms   p90 {:.3} ms   p99 {:.3} ms   p99.9 {:.3} ms   max {:.3} ms",
        ms(at(0.50)),
        ms(at(0.90)),
        ms(at(0.99)),
        ms(at(0.999)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    if latencies.len() < args.requests {
        println!("  stopped at --max-seconds {} before every request was sent", args.max_seconds);
    }
}
