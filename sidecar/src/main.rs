//! The `sidemount` binary: parse the command, load settings, call the library,
//! map errors to exit codes.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sidemount::inject::krm;
use sidemount::settings::{Mode, Settings};
use sidemount::{endpoints, exit, inject, logging, spec, supervisor, sys, webhook};

#[derive(Parser)]
#[command(
    name = "sidemount",
    version,
    about = "Mounts network and local filesystems for the other containers of a Kubernetes pod"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The supervisor: mount every volume, keep it mounted, unmount on SIGTERM.
    Run,
    /// Exit 0 iff the local supervisor reports every volume ready.
    Probe {
        /// Only ask whether the supervisor is alive.
        #[arg(long)]
        live: bool,
        /// How long to wait for an answer (100ms to 10m).
        #[arg(long, default_value = "5s", value_parser = parse_probe_timeout)]
        timeout: Duration,
    },
    /// Validate volume specs: one line per problem, naming the field.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The mutating admission webhook (HTTPS, AdmissionReview v1, pods CREATE).
    Webhook,
    /// Inject the sidecar into Kubernetes YAML: every Pod, Deployment, StatefulSet,
    /// DaemonSet, ReplicaSet, Job and CronJob whose pod carries sidemount.io/volumes.
    Inject {
        /// A file to read, `-` for stdin (repeatable); stdin when none is given.
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// The sidecar image [default: SIDEMOUNT_IMAGE, else the image of this release].
        #[arg(long)]
        image: Option<String>,
        /// Where the sidecar goes when a pod does not say (sidemount.io/mode) [default: SIDEMOUNT_MODE, else native].
        #[arg(long, value_parser = parse_mode)]
        mode: Option<Mode>,
        /// A function config (kind SidemountInjector, spec: image, mode, shutdownTimeout) that sets
        /// what the flags don't: how kustomize's exec plugin passes its transformer config.
        /// A KRM ResourceList on stdin is recognised by itself and carries its own functionConfig.
        #[arg(long, value_name = "FILE")]
        function_config: Option<PathBuf>,
    },
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    match text {
        "native" => Ok(Mode::Native),
        "legacy" => Ok(Mode::Legacy),
        other => Err(format!("{other:?} is not a mode: use native (Kubernetes 1.29 and later) or legacy")),
    }
}

/// The probe's deadline: a zero one cannot be set on a socket, and one longer
/// than any kubelet probe timeout only hides a supervisor that does not answer.
const PROBE_TIMEOUT: std::ops::RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(600);

fn parse_probe_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text).map_err(|e| format!("{e}: write e.g. 5s"))?;
    if !PROBE_TIMEOUT.contains(&timeout) {
        return Err(format!("must be from 100ms to 10m, e.g. 5s (got {text})"));
    }
    Ok(timeout)
}

/// The settings a command reads, so that a bad value of another (`SIDEMOUNT_LISTEN`
/// for `sidemount check`) cannot fail it; `None` for all of them.
fn settings_read_by(command: &Command) -> Option<&'static [&'static str]> {
    match command {
        Command::Check { .. } => Some(&[]),
        Command::Inject { .. } => Some(&["SIDEMOUNT_IMAGE", "SIDEMOUNT_MODE", "SIDEMOUNT_SHUTDOWN_TIMEOUT"]),
        Command::Probe { .. } => Some(&["SIDEMOUNT_LISTEN"]),
        Command::Run | Command::Webhook => None,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let read = settings_read_by(&cli.command);
    // Settings of other commands are left out; unknown `SIDEMOUNT_*` names stay in,
    // so a misspelling is still named (they only warn).
    let known = sidemount::settings::known_variables();
    let vars = std::env::vars()
        .filter(|(key, _)| read.map_or(true, |keys| keys.contains(&key.as_str())) || !known.contains(key));
    let settings = match Settings::from_pairs(vars) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("sidemount: {err}");
            return ExitCode::from(exit::ENVIRONMENT);
        }
    };
    for warning in &settings.warnings {
        eprintln!("sidemount: warning: {warning}");
    }
    match cli.command {
        Command::Run => run(settings),
        Command::Probe { live, timeout } => {
            let path = if live { "/healthz" } else { "/readyz" };
            match endpoints::probe(settings.listen, path, timeout) {
                Ok(_) => ExitCode::SUCCESS,
                Err(why) => {
                    eprintln!("sidemount probe: {why}");
                    ExitCode::from(exit::FAILURE)
                }
            }
        }
        Command::Check { files } => check(&files),
        Command::Webhook => serve_webhook(settings),
        Command::Inject { files, image, mode, function_config } => {
            let flags = krm::Overrides { image, mode, shutdown_timeout: None };
            let base = inject::Config::from_settings(&settings);
            match inject::stream::run(&files, base, function_config.as_deref(), &flags) {
                Ok(()) => ExitCode::SUCCESS,
                Err(failure) => ExitCode::from(failure.exit_code()),
            }
        }
    }
}

fn serve_webhook(settings: Settings) -> ExitCode {
    logging::init(&settings.log, settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("sidemount: cannot start the runtime: {err}");
            return ExitCode::from(exit::ENVIRONMENT);
        }
    };
    match runtime.block_on(webhook::run(webhook::Options::from_settings(&settings))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("sidemount webhook: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn run(settings: Settings) -> ExitCode {
    sys::limit_malloc_arenas();
    logging::init(&settings.log, settings.log_format);
    // One thread: the work is waiting on events; filesystem calls that may
    // block get threads of their own (see `sys::bounded`).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("sidemount: cannot start the runtime: {err}");
            return ExitCode::from(exit::ENVIRONMENT);
        }
    };
    let result = runtime.block_on(supervisor::run(settings, Arc::new(sys::Kernel)));
    // Threads stuck on a hung mount must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The refusal is one line per problem on stderr, whatever the log format.
            tracing::error!("{err}");
            eprintln!("sidemount: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    match spec::check(files) {
        Ok(volumes) => {
            println!("{volumes} volume(s), all valid");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            problems.iter().for_each(|p| println!("{p}"));
            ExitCode::from(exit::INVALID)
        }
    }
}
