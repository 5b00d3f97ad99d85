//! Logs: tracing to stderr, as text or JSON, filtered by `SIDEMOUNT_LOG`.
//! Spans carry `volume`, `mountpoint` and `pid`, so every line about a volume says which.

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|err| {
        eprintln!("SIDEMOUNT_LOG={filter:?} is not a valid filter ({err}); using `info`");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
}
