//! Small process and polling helpers: bounded commands, signals, and what
//! /proc says about a pid.

use std::fs;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::POLL;

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

/// Poll `f` every 50 ms until it returns Some, or panic after `timeout` naming `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Like `wait_for` but returns false on timeout instead of panicking.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Run to completion with piped output, killing the command after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    // Reader threads: a full pipe must not block the child. They are detached on
    // timeout (a grandchild may hold the pipe open).
    let to = drain(child.stdout.take().unwrap());
    let te = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} did not finish in {timeout:?} (killed)"));
            }
            Err(e) => return Err(format!("wait {cmd:?}: {e}")),
        }
    };
    // A daemon it forked may keep the pipes open: take what came within a second.
    let grace = Duration::from_secs(1);
    Ok(Output {
        status,
        stdout: to.recv_timeout(grace).unwrap_or_default(),
        stderr: te.recv_timeout(grace).unwrap_or_default(),
    })
}

fn drain(mut r: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        let _ = tx.send(v);
    });
    rx
}

/// Send `sig` to `pid`; ESRCH is not an error.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) to a pid this test started or found in its own namespaces.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Alive means: exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the ")" that closes comm.
        Ok(s) => s.rsplit_once(')').map(|(_, r)| !r.trim_start().starts_with(['Z', 'X'])).unwrap_or(false),
        Err(_) => false,
    }
}

/// The mount namespace of `pid`, e.g. `mnt:[4026532180]`; None if gone or a zombie.
pub fn mnt_ns(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok().map(|p| p.display().to_string())
}

pub fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

/// argv of `pid` joined with spaces.
pub fn cmdline(pid: u32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string()
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    let mut pids: Vec<u32> =
        fs::read_dir("/proc").expect("read /proc").filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    pids
}

/// Pids whose mount namespace is one of `namespaces`.
pub fn pids_in_namespaces(namespaces: &[String]) -> Vec<u32> {
    let me = std::process::id();
    all_pids().into_iter().filter(|&p| p != me && mnt_ns(p).is_some_and(|ns| namespaces.contains(&ns))).collect()
}

pub(super) fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}
