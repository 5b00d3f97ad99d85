//! The webhook's certificate: read from PEM files, served through a resolver
//! that is swapped when the files change, so a rotated certificate (a
//! cert-manager renewal, a Secret update) is served without a restart.
//!
//! A Kubernetes Secret volume replaces its files by renaming a `..data`
//! symlink in the directory, so the directories are watched (inotify), not the
//! files; a slow timer re-reads them too, in case an event is missed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use crate::file_watch::{self, Broken, DirWatch};

/// How often the files are read again when no event came.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate {path} (SIDEMOUNT_TLS_CERT): {source}")]
    ReadCert { path: PathBuf, source: std::io::Error },
    #[error("cannot read the private key {path} (SIDEMOUNT_TLS_KEY): {source}")]
    ReadKey { path: PathBuf, source: std::io::Error },
    #[error("{path} (SIDEMOUNT_TLS_CERT) holds no PEM certificate: {why}")]
    NoCert { path: PathBuf, why: String },
    #[error("{path} (SIDEMOUNT_TLS_KEY) holds no PEM private key: {why}")]
    NoKey { path: PathBuf, why: String },
    #[error("the private key {path} cannot sign with this TLS stack (use an RSA, ECDSA P-256/P-384 or Ed25519 key): {source}")]
    UnusableKey { path: PathBuf, source: rustls::Error },
    #[error("the private key {key} does not belong to the certificate {cert}: give the pair issued together")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// Where the certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The bytes a certificate was loaded from, to tell a change from a rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loaded {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// Reads and checks a certificate chain and its key.
pub fn load(files: &Files, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let (certified, _) = load_bytes(files, provider)?;
    Ok(certified)
}

fn load_bytes(files: &Files, provider: &CryptoProvider) -> Result<(Arc<CertifiedKey>, Loaded), TlsError> {
    let cert_pem =
        std::fs::read(&files.cert).map_err(|source| TlsError::ReadCert { path: files.cert.clone(), source })?;
    let key_pem = std::fs::read(&files.key).map_err(|source| TlsError::ReadKey { path: files.key.clone(), source })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCert { path: files.cert.clone(), why: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert { path: files.cert.clone(), why: "no BEGIN CERTIFICATE block".into() });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::NoKey { path: files.key.clone(), why: e.to_string() })?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnusableKey { path: files.key.clone(), source })?;
    let certified = CertifiedKey::new(chain, signer);
    // Only a proven mismatch is refused: with `Unknown` the key cannot say its
    // public half, and the handshake will tell.
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) = certified.keys_match() {
        return Err(TlsError::Mismatch { cert: files.cert.clone(), key: files.key.clone() });
    }
    Ok((Arc::new(certified), Loaded { cert: cert_pem, key: key_pem }))
}

/// Serves whatever certificate was loaded last.
pub struct Resolver {
    files: Files,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Arc<CertifiedKey>, Loaded)>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver").field("files", &self.files).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).0.clone())
    }
}

impl Resolver {
    /// Loads the certificate once; an unusable one is an error at start.
    pub fn new(files: Files, provider: Arc<CryptoProvider>) -> Result<Arc<Resolver>, TlsError> {
        let loaded = load_bytes(&files, &provider)?;
        Ok(Arc::new(Resolver { files, provider, current: RwLock::new(loaded) }))
    }

    /// Reads the files again and serves them if they changed. A pair that does
    /// not load (a rotation half done, a bad file) leaves the old one served.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (certified, loaded) = load_bytes(&self.files, &self.provider)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.1 == loaded {
            return Ok(false);
        }
        *current = (certified, loaded);
        Ok(true)
    }

    /// Reloads whenever the files' directories change, and every `RECHECK_INTERVAL`.
    /// The task ends when `self` is the last reference left.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let watch = watch_dirs(&[&self.files.cert, &self.files.key])
            .inspect_err(
                |err| warn!(%err, "certificate changes are noticed only every {}s", RECHECK_INTERVAL.as_secs()),
            )
            .ok();
        let resolver = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
            recheck.reset();
            loop {
                tokio::select! {
                    _ = recheck.tick() => {}
                    changed = changed(watch.as_ref()) => if !changed { return },
                }
                // Writers touch both files in a burst: wait for it to end before reading.
                tokio::time::sleep(file_watch::SETTLE).await;
                let Some(resolver) = resolver.upgrade() else { return };
                if let Some(watch) = &watch {
                    watch.drain();
                    let files = [resolver.files.cert.as_path(), resolver.files.key.as_path()];
                    if let Err(err) = watch.add_dirs_of(&files) {
                        warn!(%err, "cannot watch the certificate's directory again");
                    }
                }
                match resolver.reload() {
                    Ok(true) => info!(cert = %resolver.files.cert.display(), "serving the new certificate"),
                    Ok(false) => {}
                    Err(err) => warn!(%err, "keeping the certificate served so far"),
                }
            }
        })
    }
}

/// Watches the files' directories (`DirWatch::add_dirs_of`), for metadata
/// changes too.
fn watch_dirs(files: &[&Path]) -> std::io::Result<DirWatch> {
    let watch = DirWatch::new(file_watch::Events { renamed_away: false, directory_gone: false, metadata: true })?;
    watch.add_dirs_of(files)?;
    Ok(watch)
}

/// Waits for an inotify event; `false` when the watch is broken for good.
/// Without a watch it waits forever (the timer still fires).
async fn changed(watch: Option<&DirWatch>) -> bool {
    let Some(watch) = watch else { return std::future::pending().await };
    match watch.changed().await {
        Ok(()) => true,
        Err(Broken::Runtime(_)) => false,
        Err(Broken::Read(err)) => {
            warn!(%err, "the certificate watch failed; rechecking every {}s", RECHECK_INTERVAL.as_secs());
            std::future::pending().await
        }
    }
}
