//! TLS for both ports, with rustls (ring): certificate files, optional mutual TLS on the gRPC
//! port, and pick-up of a replaced certificate without a restart.
//!
//! Each port has a [`TlsPort`]: the rustls `ServerConfig` in force, behind a lock, rebuilt from
//! the files by [`TlsPort::reload_if_changed`]. A background task ([`watch`]) checks the files'
//! contents every `CALLGATE_TLS_RELOAD_SECS`; when they changed it rebuilds
//! the config, and every connection accepted after that uses the new certificate (connections
//! already open keep theirs). A replacement that does not load (half written, key and
//! certificate not matching) is logged and the previous certificate stays in force; the next
//! change of either file is tried again.
//!
//! Handshakes happen off the accept loop, each within a deadline, so a client that never
//! finishes one holds nothing but its own task.

use sha2::{Digest, Sha256};
use std::fs;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::TlsFiles;

/// A gRPC client must finish its TLS handshake within this time.
pub const GRPC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS files could not be used. Names the file; never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: no PEM {what} found")]
    Empty { path: String, what: &'static str },
    #[error("{path}: not a valid PEM {what}: {problem}")]
    Pem {
        path: String,
        what: &'static str,
        problem: String,
    },
    #[error("TLS settings refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {path}: {problem}")]
    ClientCa { path: String, problem: String },
}

/// Which port a config is for: they differ in ALPN and client authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// HTTP/1.1, no client certificate.
    Http,
    /// HTTP/2 (gRPC), a client certificate when a client CA is configured.
    Grpc,
}

/// The SHA-256 of each file's content (`None`: unreadable): a change means "reload". Content,
/// not modification time, so a replacement within the file system's timestamp granularity
/// is not missed; the files are a few KiB, read once per reload period.
type Stamp = Vec<Option<[u8; 32]>>;

/// The TLS settings of one port, reloadable.
pub struct TlsPort {
    kind: PortKind,
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// Stamp of the files at the last load attempt.
    seen: Mutex<Stamp>,
}

impl TlsPort {
    /// Loads the files now; an error here stops startup.
    pub fn load(kind: PortKind, files: &TlsFiles) -> Result<Self, TlsError> {
        let seen = stamp(kind, files);
        let config = server_config(kind, files)?;
        Ok(TlsPort {
            kind,
            files: files.clone(),
            current: RwLock::new(Arc::new(config)),
            seen: Mutex::new(seen),
        })
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.kind == PortKind::Grpc && self.files.client_ca.is_some()
    }

    /// An acceptor with the config in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }

    /// Rebuilds the config if a file changed since the last attempt. `Ok(true)`: reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(self.kind, &self.files);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let config = server_config(self.kind, &self.files)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
        Ok(true)
    }

    /// Completes the TLS handshake on `stream` within `deadline`.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        deadline: Duration,
    ) -> io::Result<TlsStream<TcpStream>> {
        match tokio::time::timeout(deadline, self.acceptor().accept(stream)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake not finished in time",
            )),
        }
    }
}

fn files_of(kind: PortKind, files: &TlsFiles) -> Vec<&Path> {
    let mut paths = vec![files.cert.as_path(), files.key.as_path()];
    if let (PortKind::Grpc, Some(ca)) = (kind, &files.client_ca) {
        paths.push(ca);
    }
    paths
}

fn stamp(kind: PortKind, files: &TlsFiles) -> Stamp {
    files_of(kind, files)
        .into_iter()
        .map(|p| fs::read(p).ok().map(|bytes| Sha256::digest(bytes).into()))
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            what,
            problem: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.display().to_string(),
            what,
        });
    }
    Ok(certs)
}

fn server_config(kind: PortKind, files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&files.cert, "certificate")?;
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let path = files.key.display().to_string();
        match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
                path,
                what: "private key",
            },
            // The message of a PEM error never carries key material.
            e => TlsError::Pem {
                path,
                what: "private key",
                problem: e.to_string(),
            },
        }
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (kind, &files.client_ca) {
        (PortKind::Grpc, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "CA certificate")? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: ca.display().to_string(),
                    problem: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.display().to_string(),
                    problem: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = match kind {
        PortKind::Http => vec![b"http/1.1".to_vec()],
        PortKind::Grpc => vec![b"h2".to_vec()],
    };
    Ok(config)
}

/// The TLS settings of both ports.
#[derive(Clone)]
pub struct Tls {
    pub http: Arc<TlsPort>,
    pub grpc: Arc<TlsPort>,
}

impl Tls {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Tls {
            http: Arc::new(TlsPort::load(PortKind::Http, files)?),
            grpc: Arc::new(TlsPort::load(PortKind::Grpc, files)?),
        })
    }
}

/// Checks the files every `every` until `stop`, reloading each port whose files changed.
pub async fn watch(tls: Tls, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (port, name) in [(&tls.http, "http"), (&tls.grpc, "grpc")] {
            // Reading a few small files: off the runtime's worker threads all the same.
            let p = port.clone();
            match tokio::task::spawn_blocking(move || p.reload_if_changed()).await {
                Ok(Ok(true)) => tracing::info!(port = name, "TLS certificate reloaded"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!(
                    port = name,
                    error = %e,
                    "replaced TLS files do not load; still serving the previous certificate"
                ),
                Err(e) => tracing::error!(port = name, error = %e, "TLS reload task failed"),
            }
        }
    }
}

/// A connection of either port: plain TCP, or TLS when configured.
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl MaybeTls {
    /// Completes the TLS handshake when `tls` is set, within `deadline`.
    pub async fn accept(
        stream: TcpStream,
        tls: Option<&TlsPort>,
        deadline: Duration,
    ) -> io::Result<Self> {
        match tls {
            None => Ok(MaybeTls::Plain(stream)),
            Some(port) => Ok(MaybeTls::Tls(Box::new(
                port.handshake(stream, deadline).await?,
            ))),
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> TlsFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
        };
        fs::write(&files.cert, cert.pem()).unwrap();
        fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn config_of(port: &TlsPort) -> Arc<ServerConfig> {
        port.current.read().unwrap().clone()
    }

    #[test]
    fn reloads_on_change_and_keeps_the_old_config_when_the_new_files_are_broken() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path(), "one.test");
        let port = TlsPort::load(PortKind::Grpc, &files).unwrap();
        assert_eq!(config_of(&port).alpn_protocols, vec![b"h2".to_vec()]);
        let first = config_of(&port);
        assert!(!port.reload_if_changed().unwrap(), "nothing changed");

        // A certificate that does not parse: refused, the old config stays.
        fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
        assert!(port.reload_if_changed().is_err());
        assert!(Arc::ptr_eq(&first, &config_of(&port)));
        // A key that does not match the certificate: refused too.
        let other = tempfile::tempdir().unwrap();
        let other_files = write_pair(other.path(), "two.test");
        fs::copy(&other_files.cert, &files.cert).unwrap();
        let err = port.reload_if_changed().unwrap_err().to_string();
        assert!(Arc::ptr_eq(&first, &config_of(&port)), "{err}");
        assert!(!err.contains("PRIVATE KEY"), "{err}");

        // The matching key arrives: reloaded.
        fs::copy(&other_files.key, &files.key).unwrap();
        assert!(port.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(&first, &config_of(&port)));
    }

    #[test]
    fn missing_or_empty_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = write_pair(dir.path(), "one.test");
        fs::write(&files.key, "").unwrap();
        let err = TlsPort::load(PortKind::Http, &files)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("key.pem") && err.contains("private key"),
            "{err}"
        );
        files.cert = dir.path().join("absent.pem");
        let err = TlsPort::load(PortKind::Http, &files)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("absent.pem"), "{err}");
    }
}
