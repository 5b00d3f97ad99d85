//! The mutating admission webhook: HTTPS (rustls) serving `/mutate`
//! (AdmissionReview v1 for pod CREATE) and `/healthz`, with the certificate
//! reloaded when its files change and a graceful drain on SIGTERM.
//!
//! The decision itself is `admission::review`, a pure function over the
//! request body; this module only moves bytes and keeps connections honest,
//! and runs each review on a blocking thread, a few at a time, so that parsing
//! never holds up the async workers that serve every other connection.

pub mod admission;
pub mod patch;
mod pod;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, info_span, warn};

use crate::settings::Settings;
use crate::signals::{self, Shutdown};
use crate::{exit, inject};

/// An AdmissionReview holds the object (at most ~1.5 MiB in etcd) and, for
/// updates, the old one too.
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// A client must finish its TLS handshake, its headers, and its body in this time.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for a review slot before it is answered 503: the API
/// server gives up after the webhook's `timeoutSeconds` (5 s in kustomize/webhook).
pub const REVIEW_WAIT: Duration = Duration::from_secs(5);

/// How many reviews run at once: one a core. A review of a body larger than
/// [`INLINE_REVIEW_BYTES`] runs on a blocking thread, not on the async workers,
/// so a slow one (a large pod, an annotation at the spec limits) holds up
/// neither the TLS handshakes of other clients nor `/healthz`.
pub fn review_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A body at most this large is reviewed on the async worker that read it. Its
/// review costs at most a few milliseconds (the costliest known, an annotation
/// nested as deep as a spec may be, took 3 ms of CPU, 7 ms the first time, in a
/// release build on a 2-core VM; `webhook_tls.rs` bounds it), while
/// handing a review to a blocking thread and back costs more than a typical
/// pod's whole review: the hand-off halved the answers per second.
pub const INLINE_REVIEW_BYTES: usize = 16 * 1024;

/// What the webhook needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub tls: tls::Files,
    pub inject: inject::Config,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
}

impl Options {
    pub fn from_settings(settings: &Settings) -> Options {
        Options {
            listen: settings.webhook_listen,
            tls: tls::Files { cert: settings.tls_cert.clone(), key: settings.tls_key.clone() },
            inject: inject::Config::from_settings(settings),
            shutdown_timeout: settings.shutdown_timeout,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot set up TLS: {0}")]
    TlsConfig(#[source] rustls::Error),
    #[error("cannot listen on {addr} (SIDEMOUNT_WEBHOOK_LISTEN): {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot set up {what}: {source}")]
    Setup { what: &'static str, source: std::io::Error },
    #[error("{0} connection(s) were cut short: a second signal, or the drain outlasted SIDEMOUNT_SHUTDOWN_TIMEOUT")]
    CutShort(usize),
}

impl WebhookError {
    /// Every failure is of the environment (files, addresses, signals): EX_CONFIG,
    /// except a cut-short drain, which is a plain failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            WebhookError::CutShort(_) => exit::FAILURE,
            _ => exit::ENVIRONMENT,
        }
    }
}

/// A bound webhook, not yet serving.
pub struct Webhook {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<tls::Resolver>,
    state: Arc<State>,
    shutdown_timeout: Duration,
}

struct State {
    config: inject::Config,
    reviews: Arc<Semaphore>,
}

impl Webhook {
    /// Loads the certificate and binds the address: every setting is checked
    /// before the first request.
    pub async fn bind(options: Options) -> Result<Webhook, WebhookError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = tls::Resolver::new(options.tls.clone(), provider.clone())?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(WebhookError::TlsConfig)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|source| WebhookError::Listen { addr: options.listen, source })?;
        Ok(Webhook {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            resolver,
            state: Arc::new(State { config: options.inject, reviews: Arc::new(Semaphore::new(review_slots())) }),
            shutdown_timeout: options.shutdown_timeout,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is requested, then lets in-flight requests finish
    /// within the shutdown timeout; a second request cuts that short.
    pub async fn serve(self, mut shutdown: Shutdown) -> Result<(), WebhookError> {
        let watch = self.resolver.watch();
        let graceful = GracefulShutdown::new();
        let addr = self.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
        info!("webhook listening on https://{addr}/mutate");
        let why = loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        let acceptor = self.acceptor.clone();
                        let state = self.state.clone();
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            let tls = match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(err)) => return debug!(%peer, %err, "TLS handshake failed"),
                                Err(_) => return debug!(%peer, "TLS handshake timed out"),
                            };
                            let service = hyper::service::service_fn(move |req| handle(req, state.clone()));
                            let conn = hyper::server::conn::http1::Builder::new()
                                .timer(TokioTimer::new())
                                .header_read_timeout(CLIENT_TIMEOUT)
                                .serve_connection(TokioIo::new(tls), service);
                            if let Err(err) = watcher.watch(conn).await {
                                debug!(%peer, %err, "connection ended with an error");
                            }
                        });
                    }
                    // Out of descriptors and the like: pause rather than spin.
                    Err(err) => {
                        warn!(%err, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                why = shutdown.requested() => break why,
            }
        };
        drop(self.listener);
        watch.abort();
        let open = graceful.count();
        info!(open, "{why}: draining open connections");
        tokio::select! {
            _ = graceful.shutdown() => Ok(()),
            _ = tokio::time::sleep(self.shutdown_timeout) => Err(WebhookError::CutShort(open)),
            why = shutdown.hurried() => { warn!("{why} again: not waiting for open connections"); Err(WebhookError::CutShort(open)) }
        }
    }
}

/// Runs the webhook until SIGTERM or SIGINT.
pub async fn run(options: Options) -> Result<(), WebhookError> {
    let webhook = Webhook::bind(options).await?;
    let shutdown = signals::shutdown().map_err(|err| WebhookError::Setup { what: err.what, source: err.source })?;
    webhook.serve(shutdown).await
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::POST, "/mutate") => mutate(req, state).await,
        (_, "/healthz" | "/mutate") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET /healthz or POST /mutate\n".into())
        }
        _ => text(StatusCode::NOT_FOUND, "not found: the webhook serves POST /mutate and GET /healthz\n".into()),
    })
}

async fn mutate(req: Request<Incoming>, state: Arc<State>) -> Response<Full<Bytes>> {
    let body = match tokio::time::timeout(CLIENT_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(err)) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the request body (at most {MAX_BODY} bytes): {err}\n"),
            )
        }
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time\n".into()),
    };
    let slot = match tokio::time::timeout(REVIEW_WAIT, state.reviews.clone().acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        _ => {
            warn!("no review slot within {REVIEW_WAIT:?}: answering 503");
            return text(StatusCode::SERVICE_UNAVAILABLE, "too many reviews at once: try again\n".into());
        }
    };
    let reviewed = if body.len() <= INLINE_REVIEW_BYTES {
        let _slot = slot;
        Ok(admission::review(&body, &state.config))
    } else {
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            admission::review(&body, &state.config)
        })
        .await
    };
    let reviewed = match reviewed {
        Ok(reviewed) => reviewed,
        Err(err) => {
            warn!(%err, "the review did not finish");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "the review did not finish\n".into());
        }
    };
    match reviewed {
        Ok(reviewed) => {
            let span = info_span!("admission", uid = %reviewed.uid, pod = %reviewed.object);
            span.in_scope(|| match &reviewed.verdict {
                admission::Verdict::Injected { operations } => info!(operations, "injected"),
                admission::Verdict::Unchanged(why) => debug!("allowed unchanged: {why}"),
                admission::Verdict::Denied(message) => info!(%message, "denied"),
            });
            let mut response = Response::new(Full::new(Bytes::from(reviewed.body)));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(err) => {
            warn!(%err, "not an AdmissionReview");
            text(StatusCode::BAD_REQUEST, format!("{err}\n"))
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
