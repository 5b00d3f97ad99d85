//! Admission requests per second and latency of the webhook over TLS on
//! loopback, with many keep-alive connections each sending one AdmissionReview
//! after another (as API servers do), each load measured twice in the same run:
//! first the baseline review, then the review under test.
//!
//! ```text
//! cargo run --release -p sidemount --example admission_bench -- \
//!     [--connections 64] [--loads closed,1000,2000,5000,10000] [--seconds 10] [--warmup-seconds 2] \
//!     [--fixture plain-pod] [--baseline no-annotation] [--server-threads N] [--client-threads 1] \
//!     [--reviews 20000] [--review-only]
//! ```
//!
//! A load is `closed` or a rate in requests per second. Closed loop: each
//! connection sends its next request as soon as the previous answer is in, so
//! the rate is the webhook's capacity and the latency is mostly queueing, which
//! Little's law fixes at connections ÷ rate. A rate R: the connections together
//! send R requests per second on a fixed schedule (open loop; connection i of n
//! sends at start + (i + k·n) / R). A latency counts from the send, or from the
//! moment the request was due when the connection was still waiting for the
//! previous answer then, so a webhook that falls behind is charged for it.
//!
//! The baseline (`no-annotation.json`) is a pod the webhook parses and allows
//! unchanged: TLS, HTTP and JSON on both ends with no injection. The review under
//! test (`plain-pod.json`) injects two volumes and answers with a JSON Patch.
//! Both go through the same webhook, connections and cores, one after the other.
//!
//! The webhook is the library's `Webhook` on a runtime of its own (a worker per
//! core, as `sidemount webhook` runs, with the same allocator), with a
//! certificate from a generated CA; the client runs on its own runtime in the
//! same process, so both share the machine's cores. Prints Markdown tables,
//! the last of them the CPU cost of the review alone (no TLS, no HTTP):
//! `--reviews` times each, after a tenth as many to warm up. `--review-only`
//! measures that alone, with no webhook or client: what a profiler such as
//! callgrind is run on (`--baseline` and `--fixture` the same review to see
//! one alone). Then the targets: closed-loop answers per second at least 0.7 of
//! the baseline's, and a p99 under 1 ms at 1 000 requests per second (the
//! baseline's own p99 beside it); the last line is `PASS`, or `FAIL:` naming
//! the targets missed. A target whose load was not run is not judged.
//! Only 127.0.0.1 is ever contacted.

#[path = "../tests/webhook_support/mod.rs"]
mod webhook_support;

use std::path::Path;
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use sidemount::inject::{self, Config};
use sidemount::settings::Mode;
use sidemount::signals::{Shutdown, Stop};
use sidemount::webhook::{admission, tls, Options, Webhook};
use webhook_support::{connect, send, Ca};

/// The latency target of the admission path, at every load and, as a target
/// the run passes or fails, at `TARGET_RATE`.
const TARGET_P99: Duration = Duration::from_millis(1);
const TARGET_RATE: f64 = 1000.0;
/// The capacity target: closed-loop answers per second against the baseline's.
const TARGET_RATIO: f64 = 0.7;

#[derive(Clone, Copy)]
enum Load {
    Closed,
    Rate(f64),
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Closed => write!(f, "closed loop"),
            Load::Rate(r) => write!(f, "{r} req/s"),
        }
    }
}

struct Args {
    connections: usize,
    loads: Vec<Load>,
    seconds: f64,
    warmup_seconds: f64,
    fixture: String,
    baseline: String,
    server_threads: usize,
    client_threads: usize,
    reviews: u32,
    review_only: bool,
}

fn args() -> Args {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut args = Args {
        connections: 64,
        loads: parse_loads("closed,1000,2000,5000,10000"),
        seconds: 10.0,
        warmup_seconds: 2.0,
        fixture: "plain-pod".into(),
        baseline: "no-annotation".into(),
        server_threads: cores,
        client_threads: 1,
        reviews: 20_000,
        review_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--connections" => args.connections = value().parse().expect("--connections N"),
            "--loads" => args.loads = parse_loads(&value()),
            "--seconds" => args.seconds = value().parse().expect("--seconds S"),
            "--warmup-seconds" => args.warmup_seconds = value().parse().expect("--warmup-seconds S"),
            "--fixture" => args.fixture = value(),
            "--baseline" => args.baseline = value(),
            "--server-threads" => args.server_threads = value().parse().expect("--server-threads N"),
            "--client-threads" => args.client_threads = value().parse().expect("--client-threads N"),
            "--reviews" => args.reviews = value().parse().expect("--reviews N"),
            "--review-only" => args.review_only = true,
            other => panic!("unknown argument {other}: see the comment at the top of examples/admission_bench.rs"),
        }
    }
    assert!(args.connections > 0 && args.seconds > 0.0 && !args.loads.is_empty() && args.reviews > 0);
    args
}

fn parse_loads(text: &str) -> Vec<Load> {
    text.split(',')
        .map(|load| match load.trim() {
            "closed" => Load::Closed,
            rate => Load::Rate(
                rate.parse()
                    .ok()
                    .filter(|r: &f64| *r > 0.0)
                    .expect("--loads: `closed` or requests per second, by commas"),
            ),
        })
        .collect()
}

fn fixture(name: &str) -> Bytes {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission").join(format!("{name}.json"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>;

/// One review the benchmark sends, with what its answer must say.
struct Review {
    name: String,
    body: Bytes,
    /// What the webhook answered: checked once, in full, before measuring.
    answer: String,
}

/// What one phase measured.
struct Measured {
    latencies: Vec<Duration>,
    elapsed: Duration,
    errors: usize,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn at(&self, q: f64) -> Duration {
        let i = ((self.latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
        self.latencies.get(i).copied().unwrap_or_default()
    }
}

fn main() {
    let args = args();
    let reviews = review_cost(&args);
    if args.review_only {
        print_review_cost(&args, &reviews);
        return;
    }
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
        inject: bench_config(),
        shutdown_timeout: Duration::from_secs(5),
    };
    let webhook = server_rt.block_on(Webhook::bind(options)).expect("the webhook binds 127.0.0.1");
    let addr = webhook.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::mpsc::channel(1);
    let server = server_rt.spawn(webhook.serve(Shutdown::from_channel(stopped)));

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    let results = client_rt.block_on(async {
        let mut senders = Vec::new();
        for _ in 0..args.connections {
            senders.push(connect(addr, ca.client()).await.expect("connect to the webhook"));
        }
        let baseline = check(&mut senders[0], &args.baseline, fixture(&args.baseline)).await;
        let tested = check(&mut senders[0], &args.fixture, fixture(&args.fixture)).await;
        let mut results = Vec::new();
        for &load in &args.loads {
            let mut pair = Vec::new();
            for review in [&baseline, &tested] {
                let (s, _) = run(senders, &review.body, load, args.warmup_seconds).await;
                let (s, measured) = run(s, &review.body, load, args.seconds).await;
                senders = s;
                pair.push(measured);
            }
            let tested_run = pair.pop().unwrap();
            results.push((load, pair.pop().unwrap(), tested_run));
        }
        (baseline, tested, results)
    });
    let _ = client_rt.block_on(stop.send(Stop::named("benchmark done")));
    let _ = server_rt.block_on(server);

    report(&args, &results.0, &results.1, &results.2);
    println!();
    print_review_cost(&args, &reviews);
    println!();
    verdict(&results.2);
}

fn print_review_cost(args: &Args, reviews: &[(String, f64)]) {
    println!("| the review alone, in-process (`admission::review`, {} times) | µs per review |", args.reviews);
    println!("|---|---|");
    for (name, micros) in reviews {
        println!("| {name} | {micros:.1} |");
    }
    println!("| ratio | {:.2} |", reviews[1].1 / reviews[0].1);
}

/// What the review itself costs, without TLS, HTTP or a client: the body to
/// the answer, for the baseline and the tested review, one after the other.
fn review_cost(args: &Args) -> Vec<(String, f64)> {
    let config = bench_config();
    [&args.baseline, &args.fixture]
        .into_iter()
        .map(|name| {
            let body = fixture(name);
            for _ in 0..args.reviews.div_ceil(10) {
                std::hint::black_box(admission::review(&body, &config).expect("a review"));
            }
            let started = Instant::now();
            for _ in 0..args.reviews {
                std::hint::black_box(admission::review(&body, &config).expect("a review"));
            }
            (name.clone(), started.elapsed().as_secs_f64() * 1e6 / f64::from(args.reviews))
        })
        .collect()
}

fn bench_config() -> Config {
    Config { image: inject::DEFAULT_IMAGE.into(), mode: Mode::Native, shutdown_timeout: Duration::from_secs(20) }
}

/// Sends the review once and checks the answer in full; the measured requests
/// are then checked by status.
async fn check(sender: &mut Sender, name: &str, body: Bytes) -> Review {
    let (status, answer) = send(sender, "POST", "/mutate", body.clone()).await.expect("one request");
    let json: serde_json::Value = serde_json::from_slice(&answer).expect("an AdmissionReview");
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["response"]["allowed"], true, "{name}: {json}");
    let answer = match json["response"]["patch"].as_str() {
        None => format!("allowed unchanged, {} B answer", answer.len()),
        Some(patch) => {
            use base64::Engine as _;
            let patch = base64::engine::general_purpose::STANDARD.decode(patch).expect("base64");
            let operations = serde_json::from_slice::<Vec<serde_json::Value>>(&patch).expect("a JSON Patch").len();
            format!("injected, {} B answer with a JSON Patch of {operations} operations", answer.len())
        }
    };
    Review { name: name.into(), body, answer }
}

/// Sends the review on every connection for `seconds` at the given load.
async fn run(senders: Vec<Sender>, review: &Bytes, load: Load, seconds: f64) -> (Vec<Sender>, Measured) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let connections = senders.len();
    let mut tasks = Vec::new();
    for (i, mut sender) in senders.into_iter().enumerate() {
        let review = review.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut previous_done = started;
            for k in 0u64.. {
                let due = match load {
                    Load::Closed => Instant::now(),
                    Load::Rate(rate) => {
                        started + Duration::from_secs_f64((i as f64 + (k as f64) * connections as f64) / rate)
                    }
                };
                if due >= deadline {
                    break;
                }
                if let Load::Rate(_) = load {
                    tokio::time::sleep_until(due.into()).await;
                }
                // The timer wakes up to a millisecond late: that is the client's
                // lateness, not the webhook's. A request held back because the
                // previous answer on its connection came after it was due is the
                // webhook's, and counts from when it was due.
                let sent = Instant::now();
                let from = if previous_done > due { due } else { sent };
                match send(&mut sender, "POST", "/mutate", review.clone()).await {
                    Ok((200, _)) => latencies.push(from.elapsed()),
                    Ok(_) | Err(_) => errors += 1,
                }
                previous_done = Instant::now();
            }
            (sender, latencies, errors)
        }));
    }
    let mut senders = Vec::new();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (sender, l, e) = task.await.expect("a client task");
        senders.push(sender);
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    (senders, Measured { latencies, elapsed, errors })
}

fn report(args: &Args, baseline: &Review, tested: &Review, results: &[(Load, Measured, Measured)]) {
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "admission benchmark: POST /mutate over TLS 1.3 on 127.0.0.1, {} keep-alive connections",
        args.connections
    );
    println!(
        "server {} worker thread(s), client {} thread(s), {cores} core(s); each phase {} s after {} s of warm-up",
        args.server_threads, args.client_threads, args.seconds, args.warmup_seconds
    );
    for review in [baseline, tested] {
        println!("- {}.json ({} B): {}", review.name, review.body.len(), review.answer);
    }
    println!();
    println!("| load | review | answered/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (load, base, test) in results {
        for (name, m) in [(&baseline.name, base), (&tested.name, test)] {
            println!(
                "| {load} | {name} | {:.0} | {} | {} | {} | {} | {} | {} |",
                m.rate(),
                ms(m.at(0.50)),
                ms(m.at(0.90)),
                ms(m.at(0.99)),
                ms(m.at(0.999)),
                ms(m.latencies.last().copied().unwrap_or_default()),
                m.errors
            );
        }
    }
    println!();
    println!(
        "| load | answered/s ÷ baseline | p99 ÷ baseline p99 | p99 {} | p99 under {} ms |",
        tested.name,
        TARGET_P99.as_millis()
    );
    println!("|---|---|---|---|---|");
    for (load, base, test) in results {
        println!(
            "| {load} | {:.2} | {:.2} | {} ms | {} |",
            test.rate() / base.rate(),
            test.at(0.99).as_secs_f64() / base.at(0.99).as_secs_f64(),
            ms(test.at(0.99)),
            if test.at(0.99) < TARGET_P99 { "yes" } else { "no" }
        );
    }
}

/// The targets, met or not, and a last line `PASS` or `FAIL:` naming those missed.
fn verdict(results: &[(Load, Measured, Measured)]) {
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    let mut missed = Vec::new();
    for (load, base, test) in results {
        match load {
            Load::Closed => {
                let ratio = test.rate() / base.rate();
                let met = ratio >= TARGET_RATIO;
                println!(
                    "- closed loop: answered/s ÷ baseline {ratio:.2} ({:.0}/s against {:.0}/s), target ≥ {TARGET_RATIO}: {}",
                    test.rate(),
                    base.rate(),
                    if met { "yes" } else { "NO" }
                );
                if !met {
                    missed.push(format!("closed-loop ratio {ratio:.2}"));
                }
            }
            Load::Rate(rate) if *rate == TARGET_RATE => {
                let met = test.at(0.99) < TARGET_P99;
                println!(
                    "- {load}: p99 {} ms (baseline's own p99 {} ms), target under {} ms: {}",
                    ms(test.at(0.99)),
                    ms(base.at(0.99)),
                    TARGET_P99.as_millis(),
                    if met { "yes" } else { "NO" }
                );
                if !met {
                    missed.push(format!("p99 {} ms at {load}", ms(test.at(0.99))));
                }
            }
            Load::Rate(_) => {}
        }
    }
    if missed.is_empty() {
        println!("PASS");
    } else {
        println!("FAIL: {}", missed.join(", "));
    }
}
