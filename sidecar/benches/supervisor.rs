//! The supervisor's performance targets, each measured against a baseline in
//! the same run, in the kubelet's mount layout with real bindfs daemons.
//!
//! Run as root: `cargo bench -p sidemount --bench supervisor` (TRIALS=N to change
//! the number of trials; BENCH=single or BENCH=scale for one half: one volume and
//! ten, or the scale targets with up to 200; BENCH=repairs for memory over repairs
//! alone). Prints a Markdown table;
//! docs/benchmarks.md holds a run and says how each figure is taken.
//!
//! Times come from CLOCK_REALTIME on one machine: the supervisor's log timestamps,
//! and observers that wait on events (poll on mountinfo), not on timers.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::spec::{bindfs, spec, FuseVolume};
use support::{require_tool, wait_for, Ns, Pod};

const READY: Duration = Duration::from_secs(30);

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128
}

/// `2026-11-22T02:12:24.980867Z` → ns since the epoch.
fn parse_ts(ts: &str) -> Option<i128> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + hh * 3600 + mm * 60 + ss;
    let frac_ns: i128 = format!("{:0<9}", &frac[..frac.len().min(9)]).parse().ok()?;
    Some(secs as i128 * 1_000_000_000 + frac_ns)
}

/// Timestamps of the log lines containing `needle`, in order.
fn log_times(log: &str, needle: &str) -> Vec<i128> {
    log.lines().filter(|l| l.contains(needle)).filter_map(|l| parse_ts(l.split_whitespace().next()?)).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// A program started in a namespace that prints one line (a timestamp) when done.
struct Observer(Child);

impl Observer {
    fn start(pod: &Pod, ns: Ns, script: &str) -> Observer {
        let mut c = pod.command_in(ns, "sh");
        c.args(["-c", script]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = c.spawn().expect("observer");
        // Each observer prints `armed` once it watches, so no event is missed.
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "armed", "observer did not start: {script}");
        Observer(child)
    }

    fn time(mut self) -> i128 {
        let mut line = String::new();
        BufReader::new(self.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let _ = self.0.wait();
        line.trim().parse().unwrap_or_else(|_| panic!("observer said {line:?}"))
    }
}

/// Python waiting on mountinfo events for a fuse mount at `mp`; prints the time it saw it.
fn event_watcher(mp: &str) -> String {
    format!(
        r#"exec python3 -c '
import select, time, sys
mp = sys.argv[1]
f = open("/proc/self/mountinfo")
p = select.poll(); p.register(f, select.POLLPRI | select.POLLERR)
def has():
    f.seek(0)
    return any(l.split()[4] == mp and l.split(" - ")[1].startswith("fuse") for l in f.read().splitlines())
print("armed", flush=True)
while not has():
    p.poll()
print(time.time_ns(), flush=True)
' {mp}"#
    )
}

/// What shell-script sidecars do: look once a second.
fn polling_loop(mp: &str) -> String {
    format!(r#"echo armed; while ! grep -q " {mp} .* - fuse" /proc/self/mountinfo; do sleep 1; done; date +%s%N"#)
}

struct Row {
    what: &'static str,
    ours: String,
    baseline: String,
    ratio: f64,
    target: &'static str,
    met: bool,
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    support::require_privileges();
    require_tool("bindfs", "bindfs");
    let trials: usize = std::env::var("TRIALS").ok().and_then(|t| t.parse().ok()).unwrap_or(15);
    let which = std::env::var("BENCH").unwrap_or_default();
    let mut rows = Vec::new();
    if which != "scale" && which != "repairs" {
        rows.push(readiness(trials));
        rows.push(repair(trials));
        rows.extend(ten_volumes(trials.min(5)));
    }
    if which == "repairs" {
        rows.push(repairs_memory());
    } else if which != "single" {
        rows.extend(scale(trials.min(3)));
    }

    println!("\n| measure | sidemount | baseline (same run) | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.4} | {} | {} |",
            r.what,
            r.ours,
            r.baseline,
            r.ratio,
            r.target,
            if r.met { "yes" } else { "NO" }
        );
    }
    let missed: Vec<&str> = rows.iter().filter(|r| !r.met).map(|r| r.what).collect();
    println!(
        "\n{}",
        if missed.is_empty() { "PASS: every target met".into() } else { format!("FAIL: {}", missed.join("; ")) }
    );
}

/// Mount appears → supervisor notices it (its `mounted` log line), against a 1 s polling loop.
fn readiness(trials: usize) -> Row {
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..trials {
        let pod = Pod::new(&["data"]);
        let src = pod.work("src");
        let mp = pod.mountpoint("data").display().to_string();
        // The daemon mounts at a moment unrelated to the polling loop's phase.
        let delay = 0.2 + (now_ns() % 700) as f64 / 1000.0;
        let cmd = ["sh", "-c", &format!("sleep {delay}; exec bindfs -f {} {{mountpoint}}", src.display())];
        let vol = FuseVolume::new("data", &cmd);
        let watcher = Observer::start(&pod, Ns::Sidecar, &event_watcher(&mp));
        let poller = Observer::start(&pod, Ns::Sidecar, &polling_loop(&mp));
        let mut sup = pod.supervisor().spec(&spec(&[vol])).start();
        sup.wait_ready(READY);
        let appeared = watcher.time();
        let noticed = *log_times(&sup.log(), " mounted ").first().expect("mounted line");
        let polled = poller.time();
        ours.push((noticed - appeared) as f64 / 1e6);
        theirs.push((polled - appeared) as f64 / 1e6);
        sup.terminate();
    }
    let (o, t) = (median(ours), median(theirs));
    eprintln!("readiness: ours {o:.2} ms, 1 s polling {t:.1} ms");
    Row {
        what: "mount appears → ready noticed (median)",
        ours: format!("{o:.2} ms"),
        baseline: format!("{t:.0} ms (1 s polling loop)"),
        ratio: o / t,
        target: "< 20 ms",
        met: o < 20.0,
    }
}

/// kill -9 of the daemon → the app reads again, less the daemon's own start-to-mount time.
fn repair(trials: usize) -> Row {
    let mut overhead = Vec::new();
    let mut starts = Vec::new();
    for _ in 0..trials {
        let pod = Pod::new(&["data"]);
        let src = pod.work("src");
        std::fs::write(src.join("hello"), "hi").unwrap();
        let vol = bindfs("data", &src);
        let mut sup = pod.supervisor().spec(&spec(&[vol])).start();
        sup.wait_ready(READY);
        let file = pod.app_dir("data").join("hello").display().to_string();
        let pid = sup.daemon_pid("data");
        // The reader waits for the daemon to be dead (gone or a zombie), then reads
        // until a read succeeds again: the moment the app has its volume back.
        let reader = Observer::start(
            &pod,
            Ns::App,
            &format!(
                r#"exec python3 -c '
import time, sys
pid, path = sys.argv[1], sys.argv[2]
def dead():
    try:
        return open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
print("armed", flush=True)
while not dead():
    time.sleep(0.0002)
while True:
    try:
        open(path).read(); break
    except OSError:
        pass
print(time.time_ns(), flush=True)
' {pid} {file}"#
            ),
        );
        let killed = now_ns();
        support::signal(pid, libc::SIGKILL);
        let reads_again = reader.time();
        wait_for(READY, "repaired", || (sup.volume("data")?["state"] == "ready").then_some(()));
        let log = sup.log();
        let started = log_times(&log, "daemon started");
        let mounted = log_times(&log, " mounted ");
        let own_start = (mounted[1] - started[1]) as f64 / 1e6;
        starts.push(own_start);
        overhead.push((reads_again - killed) as f64 / 1e6 - own_start);
        sup.terminate();
    }
    let (o, s) = (median(overhead), median(starts));
    eprintln!("repair: overhead {o:.2} ms beyond the daemon's own {s:.2} ms");
    Row {
        what: "daemon killed → app reads again, beyond the daemon's start (median)",
        ours: format!("{o:.2} ms"),
        baseline: format!("{s:.2} ms (the daemon's own start-to-mount)"),
        ratio: o / s,
        target: "< 300 ms",
        met: o < 300.0,
    }
}

/// Ten idle volumes: SIGTERM to exit, resident memory, idle wakeups.
fn ten_volumes(trials: usize) -> Vec<Row> {
    let names: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut exits = Vec::new();
    let mut by_hand = Vec::new();
    let mut rss = Vec::new();
    let mut daemon_rss = Vec::new();
    let mut wakeups = Vec::new();
    let mut poll_wakeups = Vec::new();
    for trial in 0..trials {
        let pod = Pod::new(&refs);
        let vols: Vec<FuseVolume> = names
            .iter()
            .map(|n| {
                let src = pod.work(&format!("src-{n}"));
                bindfs(n, &src)
            })
            .collect();
        let mut sup = pod.supervisor().spec(&spec(&vols)).start();
        sup.wait_ready(READY);
        rss.push(vm_rss_kib(sup.pid()) as f64 / 1024.0);
        daemon_rss.push(vm_rss_kib(sup.daemon_pid("v0")) as f64 / 1024.0);
        if trial == 0 {
            let (ours, polling) = idle_wakeups(&pod, &sup);
            wakeups.push(ours);
            poll_wakeups.push(polling);
        }
        let t0 = Instant::now();
        let (code, _) = sup.terminate();
        assert_eq!(code, 0);
        exits.push(t0.elapsed().as_secs_f64() * 1000.0);

        // Baseline: the same ten bindfs mounts unmounted by a shell loop, no supervisor.
        let script: String = names
            .iter()
            .map(|n| format!("bindfs {} {}; ", pod.work(&format!("src-{n}")).display(), pod.mountpoint(n).display()))
            .collect();
        pod.sh(Ns::Sidecar, &script).expect("bindfs by hand");
        let umounts: String = names.iter().map(|n| format!("umount {}; ", pod.mountpoint(n).display())).collect();
        let t0 = Instant::now();
        pod.sh(Ns::Sidecar, &umounts).expect("umount by hand");
        by_hand.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let (e, h) = (median(exits), median(by_hand));
    let (r, d) = (median(rss), median(daemon_rss));
    let (w, p) = (median(wakeups), median(poll_wakeups));
    eprintln!("10 volumes: SIGTERM→exit {e:.1} ms (shell umount loop {h:.1} ms); RSS {r:.2} MiB (one bindfs {d:.2} MiB); idle {w:.2} wakeups/s (polling loop {p:.2}/s)");
    vec![
        Row {
            what: "SIGTERM → exit, 10 idle volumes (median)",
            ours: format!("{e:.1} ms"),
            baseline: format!("{h:.1} ms (`umount` of the 10 by a shell loop)"),
            ratio: e / h,
            target: "< 500 ms",
            met: e < 500.0,
        },
        Row {
            what: "supervisor resident memory, 10 volumes",
            ours: format!("{r:.2} MiB"),
            baseline: format!("{d:.2} MiB (one bindfs daemon)"),
            ratio: r / d,
            target: "< 10 MiB",
            met: r < 10.0,
        },
        idle_row(w, p),
    ]
}

fn idle_row(ours: f64, polling: f64) -> Row {
    Row {
        what: "idle wakeups per second, 10 volumes (all threads, 60 s)",
        ours: format!("{ours:.3}/s"),
        baseline: format!("{polling:.2}/s (a 1 s polling loop)"),
        ratio: ours / polling,
        target: "≤ 0.1/s",
        met: ours <= 0.1,
    }
}

/// A time held to `factor` times its baseline's.
fn within(what: &'static str, ours: f64, baseline: f64, which: &str, factor: f64) -> Row {
    Row {
        what,
        ours: format!("{ours:.1} ms"),
        baseline: format!("{baseline:.1} ms ({which})"),
        ratio: ours / baseline,
        target: if factor == 1.5 { "≤ 1.5× the baseline" } else { "≤ 2× the baseline" },
        met: ours <= factor * baseline,
    }
}

/// Wakeups per second of an idle supervisor over 60 s (two periodic checks at
/// the default SIDEMOUNT_CHECK_INTERVAL fall in it), and of a 1 s polling loop.
fn idle_wakeups(pod: &Pod, sup: &support::Supervisor) -> (f64, f64) {
    let idle = Duration::from_secs(60);
    // The process's own count (getrusage), short-lived threads included; one
    // /metrics request costs a few, measured and taken off.
    let before = process_switches(sup);
    let request_cost = process_switches(sup) - before;
    let loop_pid = pod.spawn_in(Ns::Sidecar, &["sh", "-c", "while true; do sleep 1; done"]);
    let loop_before = switches(loop_pid);
    std::thread::sleep(idle);
    let during = process_switches(sup).saturating_sub(before + 2 * request_cost);
    let polling = (switches(loop_pid) - loop_before) as f64 / idle.as_secs_f64();
    (during as f64 / idle.as_secs_f64(), polling)
}

/// The volume counts the start is measured at.
const SCALE: [usize; 4] = [1, 10, 50, 200];
/// The longest any start or reconcile in the scale runs may take.
const SCALE_WAIT: Duration = Duration::from_secs(180);

/// What one run of N volumes measured.
#[derive(Default)]
struct ScaleRun {
    /// exec → the last volume's `mounted` line, ms.
    start: f64,
    /// The same N bindfs started side by side by `sh` through `nsenter`, as the
    /// supervisor is, from just before the spawn to the last one in the mount table, ms.
    by_hand: f64,
    /// The same N bindfs started by a script and waited for in the mount table, timed
    /// inside the script (its own start, and the launch, not counted), ms.
    by_hand_script: f64,
    /// SIGTERM → exit, ms.
    sigterm: f64,
    /// A parallel `umount` of the N mounts made by hand, ms.
    umount: f64,
    rss_kib: u64,
    /// The supervisor's CPU time (user and system, every thread) from exec to
    /// the last volume ready, ms: what the start costs beside the daemons' own.
    cpu_ms: f64,
    /// Idle wakeups per second, and a 1 s polling loop's (measured at 10 volumes).
    idle: Option<(f64, f64)>,
    /// Spec written → the added volume mounted, and → the removed one's daemon exited, ms.
    add: Vec<f64>,
    remove: Vec<f64>,
}

/// The scale targets: start for 1 to 200 volumes against the daemons started by
/// hand; memory at 10 and 200 and over 1,000 repairs; SIGTERM with 200 against
/// a parallel umount; reconcile of one volume out of 200 against one out of 1.
fn scale(trials: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut runs: Vec<(usize, Vec<ScaleRun>)> = Vec::new();
    // VOLUMES=200 (say) runs one count alone, to look at it.
    let only: Option<usize> = std::env::var("VOLUMES").ok().and_then(|v| v.parse().ok());
    if let Some(n) = only {
        scale_run(n, true);
        return rows;
    }
    for n in SCALE {
        // The starts of 1 and 10 volumes take milliseconds, and a busy machine
        // moves them (and their baseline) by as much: three times the trials.
        let trials = if n <= 10 { 3 * trials } else { trials };
        let runs_n: Vec<ScaleRun> = (0..trials).map(|trial| scale_run(n, trial == 0)).collect();
        runs.push((n, runs_n));
    }
    let med = |n: usize, f: &dyn Fn(&ScaleRun) -> f64| -> f64 {
        median(runs.iter().find(|(m, _)| *m == n).unwrap().1.iter().map(f).collect())
    };
    for n in SCALE {
        let (o, h, hs) = (med(n, &|r| r.start), med(n, &|r| r.by_hand), med(n, &|r| r.by_hand_script));
        eprintln!("start, {n} volumes: {o:.1} ms; by hand {h:.1} ms (timed inside the script: {hs:.1} ms)");
        rows.push(Row {
            what: [
                "start → every volume ready, 1 volume (median)",
                "start → every volume ready, 10 volumes (median)",
                "start → every volume ready, 50 volumes (median)",
                "start → every volume ready, 200 volumes (median)",
            ][SCALE.iter().position(|m| *m == n).unwrap()],
            ours: format!("{o:.1} ms"),
            baseline: format!(
                "{h:.1} ms (the {n} bindfs started side by side by `sh` through `nsenter`; {hs:.1} ms timed inside a script)"
            ),
            ratio: o / h,
            target: "≤ 1.5× the baseline",
            met: o <= 1.5 * h,
        });
    }
    let (r10, r200) = (med(10, &|r| r.rss_kib as f64), med(200, &|r| r.rss_kib as f64));
    let per_volume = (r200 - r10) / 190.0;
    rows.push(Row {
        what: "resident memory, 200 volumes against 10",
        ours: format!("{:.2} MiB ({per_volume:.1} KiB per volume beyond 10)", r200 / 1024.0),
        baseline: format!("{:.2} MiB (10 volumes)", r10 / 1024.0),
        ratio: r200 / r10,
        target: "≤ 2× RSS(10) + 64 KiB per volume",
        met: r200 <= 2.0 * r10 + 200.0 * 64.0 && per_volume < 64.0,
    });
    let (s, u) = (med(200, &|r| r.sigterm), med(200, &|r| r.umount));
    rows.push(within("SIGTERM → exit, 200 volumes (median)", s, u, "a parallel `umount` of the 200 mounts", 2.0));
    type Pick<'a> = &'a dyn Fn(&ScaleRun) -> f64;
    let (add, remove): (Pick, Pick) = (&|r| median(r.add.clone()), &|r| median(r.remove.clone()));
    for (what, pick) in
        [("reconcile: add one volume to 200 (median)", add), ("reconcile: remove one volume of 200 (median)", remove)]
    {
        rows.push(within(what, med(200, pick), med(1, pick), "the same with 1 volume", 1.5));
    }
    if let Some((w, p)) = runs.iter().find(|(n, _)| *n == 10).and_then(|(_, r)| r[0].idle) {
        rows.push(idle_row(w, p));
    }
    rows.push(repairs_memory());
    rows
}

/// One supervisor with `n` bindfs volumes: its start, memory, reconciles and
/// SIGTERM; then the baseline by hand in the same pod.
fn scale_run(n: usize, first: bool) -> ScaleRun {
    let mut names: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
    names.push("extra".into());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pod = Pod::new(&refs);
    let vols: Vec<FuseVolume> = names.iter().map(|name| bindfs(name, &pod.work(&format!("src-{name}")))).collect();
    let mut run = ScaleRun::default();

    // The production log level (SCALE_LOG=debug to look closer): debug lines
    // would be most of the work at 200.
    let level = std::env::var("SCALE_LOG").unwrap_or_else(|_| "info".into());
    let mut sup = pod.supervisor().spec(&spec(&vols[..n])).env("SIDEMOUNT_LOG", &level).start();
    // From the spawn of `nsenter`, as the baseline by hand is timed: the spec and
    // the log files written before it are the harness's, not the start's.
    let t0 = sup.spawned_at().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128;
    sup.wait_ready(SCALE_WAIT);
    // The log is written a moment after the state it tells of.
    let mounted = wait_for(SCALE_WAIT, "a `mounted` line per volume", || {
        Some(log_times(&sup.log(), " mounted ")).filter(|m| m.len() >= n)
    });
    run.start = (mounted.iter().max().unwrap() - t0) as f64 / 1e6;
    run.cpu_ms = cpu_ms(sup.pid());
    // Let the start's short-lived threads go before memory is read.
    std::thread::sleep(Duration::from_secs(1));
    run.rss_kib = vm_rss_kib(sup.pid());
    if first && n == 10 {
        run.idle = Some(idle_wakeups(&pod, &sup));
    }
    if first {
        for _ in 0..3 {
            let t = now_ns();
            pod.write_spec(&spec(&vols));
            let at = wait_log(&sup, t, "volume=extra ", " mounted ");
            run.add.push((at - t) as f64 / 1e6);
            sup.wait_ready(SCALE_WAIT);
            let t = now_ns();
            pod.write_spec(&spec(&vols[..n]));
            let at = wait_log(&sup, t, "volume=extra ", "daemon exited");
            run.remove.push((at - t) as f64 / 1e6);
        }
    }
    let (code, took) = sup.terminate();
    assert_eq!(code, 0, "{}", sup.log());
    run.sigterm = took.as_secs_f64() * 1000.0;
    if let Ok(keep) = std::env::var("SCALE_KEEP_LOG") {
        std::fs::write(keep, sup.log()).unwrap();
    }

    // By hand: the same daemons on the same mountpoints, then a parallel umount.
    let script = pod.work("script").join("by_hand.py");
    std::fs::write(&script, format!("{MOUNT_WAIT}{BY_HAND}")).unwrap();
    let pairs: String = names[..n]
        .iter()
        .map(|name| format!("{} {}\n", pod.work(&format!("src-{name}")).display(), pod.mountpoint(name).display()))
        .collect();
    let out = pod
        .sh_stdin(Ns::Sidecar, &format!("exec python3 {}", script.display()), Some(pairs.as_bytes()))
        .expect("by hand");
    let mut ns = out.split_whitespace().map(|x| x.parse::<f64>().unwrap() / 1e6);
    (run.by_hand_script, run.umount) = (ns.next().unwrap(), ns.next().unwrap());
    run.by_hand = launched_by_hand(&pod, &pairs);
    eprintln!(
        "{n} volumes: start {:.1} ms (by hand {:.1}; inside a script {:.1}; CPU {:.0} ms), RSS {} KiB, SIGTERM {:.1} ms (parallel umount {:.1}), add {:?} remove {:?}, idle {:?}",
        run.start, run.by_hand, run.by_hand_script, run.cpu_ms, run.rss_kib, run.sigterm, run.umount, run.add, run.remove, run.idle
    );
    run
}

/// What the scripts below start with: `all_mounted()`, whether every MP in their
/// `want` holds a FUSE mount, from mountinfo, which `p.poll()` waits on for the
/// next change.
const MOUNT_WAIT: &str = r#"
import select, subprocess, sys, time
f = open("/proc/self/mountinfo")
p = select.poll(); p.register(f, select.POLLPRI | select.POLLERR)
def all_mounted():
    f.seek(0)
    seen = set()
    for l in f.read().splitlines():
        head, tail = l.split(" - ", 1)
        if tail.startswith("fuse"):
            seen.add(head.split()[4])
    return want <= seen
"#;

/// Starts every `bindfs -f SRC MP` read from stdin at once, waits on mountinfo
/// events until each MP holds a FUSE mount, then unmounts them all at once with
/// a `umount` each; prints both times in ns.
const BY_HAND: &str = r#"
pairs = [l.split() for l in sys.stdin if l.strip()]
want = set(mp for _, mp in pairs)
t0 = time.monotonic_ns()
daemons = [subprocess.Popen(["bindfs", "-f", src, mp]) for src, mp in pairs]
while not all_mounted():
    p.poll()
t1 = time.monotonic_ns()
umounts = [subprocess.Popen(["umount", mp]) for _, mp in pairs]
assert all(u.wait() == 0 for u in umounts)
t2 = time.monotonic_ns()
for d in daemons:
    d.wait()
print(t1 - t0, t2 - t1)
"#;

/// The daemons of `pairs` ("SRC MP" lines) started by hand the way the supervisor
/// is started: from just before the spawn of `nsenter` into the sidecar's
/// namespace, which execs `sh -c 'bindfs -f SRC MP & ... wait'` (dash: one exec,
/// as the supervisor's binary is one), to the last mount in the table, seen by an
/// observer started beforehand that waits on mountinfo events (its start is not
/// counted). No preflight, no check, no bind: a lower bound of any launcher. The
/// observer then unmounts them, and `sh` returns when its daemons have exited.
/// Returns ms.
fn launched_by_hand(pod: &Pod, pairs: &str) -> f64 {
    let script = pod.work("script").join("observe.py");
    std::fs::write(&script, format!("{MOUNT_WAIT}{OBSERVE}")).unwrap();
    let mut observer = pod.command_in(Ns::Sidecar, "python3");
    observer.arg(&script).stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut observer = observer.spawn().expect("the observer");
    std::io::Write::write_all(&mut observer.stdin.take().unwrap(), pairs.as_bytes()).unwrap();
    let mut lines = BufReader::new(observer.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "watching");
    let launch: String = pairs
        .lines()
        .map(|l| {
            let (src, mp) = l.split_once(' ').unwrap();
            format!("bindfs -f {src} {mp} & ")
        })
        .chain(["wait".to_string()])
        .collect();
    let mut sh = pod.command_in(Ns::Sidecar, "sh");
    sh.args(["-c", &launch]).stdin(Stdio::null()).stdout(Stdio::null());
    let t0 = now_ns();
    let mut sh = sh.spawn().expect("sh");
    let mounted: i128 = lines.next().expect("the observer's time").unwrap().trim().parse().unwrap();
    assert!(observer.wait().unwrap().success());
    let deadline = Instant::now() + SCALE_WAIT;
    while sh.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the daemons started by hand did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    (mounted - t0) as f64 / 1e6
}

/// Reads "SRC MP" lines, says `watching` once it waits on mountinfo events,
/// prints the CLOCK_REALTIME ns at which every MP holds a FUSE mount, then
/// unmounts them all at once.
const OBSERVE: &str = r#"
want = set(l.split()[1] for l in sys.stdin if l.strip())
all_mounted()
print("watching", flush=True)
while not all_mounted():
    p.poll()
print(time.time_ns(), flush=True)
umounts = [subprocess.Popen(["umount", mp]) for mp in want]
assert all(u.wait() == 0 for u in umounts)
"#;

/// The time of the first log line after `after` that has both `a` and `b`.
fn wait_log(sup: &support::Supervisor, after: i128, a: &str, b: &str) -> i128 {
    wait_for(SCALE_WAIT, &format!("a log line with {a:?} and {b:?}"), || {
        let log = sup.log();
        log.lines()
            .filter(|l| l.contains(a) && l.contains(b))
            .filter_map(|l| parse_ts(l.split_whitespace().next()?))
            .find(|t| *t > after)
    })
}

/// Memory across repairs of one volume: its mount unmounted by hand and bound
/// again from the stage each time. A warm-up of 200 repairs first, then two
/// windows of 1,000, each read at its end (a second after the last repair):
///
/// - the target, the supervisor's own memory: RssAnon (heap, stacks, the
///   relocated data of the binary), the part of the resident set that only the
///   process holds and that a leak would grow;
/// - the heap in use (`sidemount_heap_in_use_bytes`, where the build reports it);
/// - VmRSS, which also counts pages of the binary and its libraries the process
///   has mapped (RssFile): page cache, shared, at most the files' size, and
///   mapped 64 KiB at a time (the kernel's fault-around) when code runs for the
///   first time or after the kernel reclaimed them, so it moves by 64 KiB steps
///   with no allocation at all.
///
/// A leak grows the anonymous memory in both windows.
fn repairs_memory() -> Row {
    const WARM_UP: usize = 200;
    const WINDOW: usize = 1000;
    let pod = Pod::new(&["data"]);
    let vol = bindfs("data", &pod.work("src"));
    let mut sup = pod.supervisor().spec(&spec(&[vol])).env("SIDEMOUNT_LOG", "info").start();
    sup.wait_ready(READY);
    let script = pod.work("script").join("repairs.py");
    std::fs::write(&script, REPAIRS).unwrap();
    let mp = pod.mountpoint("data").display().to_string();
    let status = format!("http://{}/status", sup.addr());
    let repair = |count: usize| {
        pod.sh(Ns::Sidecar, &format!("exec python3 {} {mp} {count} {status}", script.display())).expect("repairs");
    };
    // (anon, file, VmRSS) KiB, and the heap in use.
    let read = |sup: &support::Supervisor| {
        std::thread::sleep(Duration::from_secs(1));
        let (anon, file) = rss_parts_kib(sup.pid());
        ((anon as f64, file as f64, vm_rss_kib(sup.pid()) as f64), heap_in_use_kib(sup))
    };
    repair(WARM_UP);
    let mut readings = vec![read(&sup)];
    let t = Instant::now();
    for _ in 0..2 {
        for _ in 0..WINDOW / 100 {
            repair(100);
        }
        readings.push(read(&sup));
    }
    let per_repair = (t.elapsed().as_secs_f64() - 2.0) * 1000.0 / (2 * WINDOW) as f64;
    let repairs = sup.volume("data").unwrap()["repairs"].as_u64().unwrap();
    assert!(repairs >= (WARM_UP + 2 * WINDOW) as u64, "{repairs} repairs counted");
    let (code, _) = sup.terminate();
    assert_eq!(code, 0);
    let step = |f: &dyn Fn(&(f64, f64, f64)) -> f64| -> Vec<f64> {
        readings.windows(2).map(|w| f(&w[1].0) - f(&w[0].0)).collect()
    };
    let (anon, file, rss) = (step(&|r| r.0), step(&|r| r.1), step(&|r| r.2));
    let heap = match readings.iter().map(|r| r.1).collect::<Option<Vec<f64>>>() {
        Some(h) => format!("; heap in use {:.0} KiB, {:+.1}, {:+.1}", h[0], h[1] - h[0], h[2] - h[1]),
        None => String::new(),
    };
    let (first, last) = (readings[0].0, readings[2].0);
    eprintln!(
        "repairs: (anon, file, VmRSS) KiB {:?} after {WARM_UP}, +{WINDOW}, +{WINDOW} ({per_repair:.2} ms each){heap}",
        readings.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    let worst = anon.iter().copied().fold(f64::MIN, f64::max);
    Row {
        what: "memory growth over 1,000 repairs, two windows after 200 (mount unmounted by hand, bound again)",
        ours: format!(
            "anonymous {:+.0}, {:+.0} KiB{heap}; VmRSS {:+.0}, {:+.0} KiB, of which file pages {:+.0}, {:+.0}",
            anon[0], anon[1], rss[0], rss[1], file[0], file[1]
        ),
        baseline: format!(
            "after 200: anonymous {:.0} KiB, VmRSS {:.2} MiB; after 2,200: {:.0} KiB, {:.2} MiB",
            first.0,
            first.2 / 1024.0,
            last.0,
            last.2 / 1024.0
        ),
        ratio: last.0 / first.0,
        target: "no growth (anonymous ≤ 64 KiB in each window)",
        met: worst <= 64.0,
    }
}

/// RssAnon and RssFile of `pid`, KiB: memory of its own, and pages of its files
/// (the binary's code and data, the libraries) it has touched.
fn rss_parts_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    (field("RssAnon:").unwrap_or(0), field("RssFile:").unwrap_or(0))
}

/// The supervisor's `sidemount_heap_in_use_bytes`, KiB; None if it has none.
fn heap_in_use_kib(sup: &support::Supervisor) -> Option<f64> {
    let metrics = sup.metrics();
    let bytes: f64 =
        metrics.lines().find_map(|l| l.strip_prefix("sidemount_heap_in_use_bytes ")?.trim().parse().ok())?;
    Some(bytes / 1024.0)
}

/// Unmounts the FUSE mount at MP COUNT times, each time waiting on mountinfo
/// events until a FUSE mount is back at MP, then for /status to count the
/// repair (a mount unmounted before the supervisor has confirmed its bind is
/// another case: a failed bind, started again after a backoff).
const REPAIRS: &str = r#"
import ctypes, json, os, select, sys, time, urllib.request
libc = ctypes.CDLL(None, use_errno=True)
mp, count, status = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def repairs():
    return json.load(urllib.request.urlopen(status))["volumes"][0]["repairs"]
f = open("/proc/self/mountinfo")
p = select.poll(); p.register(f, select.POLLPRI | select.POLLERR)
def fuse_at_mp():
    f.seek(0)
    return any(l.split(" - ", 1)[0].split()[4] == mp and l.split(" - ", 1)[1].startswith("fuse") for l in f.read().splitlines())
for _ in range(count):
    done = repairs()
    while not fuse_at_mp():
        p.poll()
    if libc.umount2(mp.encode(), 0) != 0:
        sys.exit("umount2: " + os.strerror(ctypes.get_errno()))
    while not fuse_at_mp():
        p.poll()
    while repairs() == done:
        time.sleep(0.001)
"#;

fn process_switches(sup: &support::Supervisor) -> u64 {
    let metrics = sup.metrics();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("sidemount_context_switches_total ")?.trim().parse().ok())
        .expect("sidemount_context_switches_total in /metrics")
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The user and system CPU time of `pid`, every thread's (ended ones too), ms.
/// /proc gives it in USER_HZ ticks, 100 a second in Linux's ABI: 10 ms each.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name, which may hold spaces: state is field 3, utime 14.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 * 10.0
}

/// Context switches of every thread of `pid`: each is a wakeup or a preemption.
fn switches(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for l in status.lines() {
            if let Some(v) =
                l.strip_prefix("voluntary_ctxt_switches:").or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}
