//! TLS on both ports with a CA made in the test: TLS clients work, plaintext ones do not,
//! mutual TLS refuses strangers, and a replaced certificate is served without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use callgate::cli::BearerToken;
use callgate::config::TlsFiles;
use callgate::pb::{self, ConsentState, consent_authority_client::ConsentAuthorityClient};
use chrono::Utc;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::helpers::*;

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate and key (PEM) for `localhost` / 127.0.0.1.
    fn leaf(&self, purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "callgate test");
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes a server certificate signed by `ca` (and the client CA, if any) into `dir`.
fn server_files(dir: &Path, ca: &Ca, client_ca: Option<&Ca>) -> TlsFiles {
    let (cert, key) = ca.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: client_ca.map(|_| dir.join("client-ca.pem")),
    };
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    if let (Some(path), Some(ca)) = (&files.client_ca, client_ca) {
        std::fs::write(path, &ca.pem).unwrap();
    }
    files
}

async fn spawn_tls(files: TlsFiles) -> TestApp {
    let mut config = test_config();
    config.tls = Some(files);
    config.tls_reload_interval = Duration::from_millis(100);
    spawn_app_with(config, memory_store()).await
}

/// A gRPC channel over TLS trusting `ca`, presenting `identity` if given.
async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn check_over(channel: Channel) -> Result<pb::CheckCallPermissionResponse, tonic::Status> {
    let token = BearerToken::new(Some(API_KEY)).unwrap();
    ConsentAuthorityClient::with_interceptor(channel, token)
        .check_call_permission(pb::CheckCallPermissionRequest {
            business_number: BUSINESS.into(),
            customer_number: CUSTOMER.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn client_config(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// One HTTP/1.1 request over TLS, written by hand; returns the status and the body.
async fn https_post(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(client_config(ca_pem))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         authorization: Bearer {TOKEN}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_string(&mut answer))
        .await
        .expect("answer within 5 s")?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

#[tokio::test]
async fn both_ports_serve_tls_and_refuse_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let app = spawn_tls(server_files(dir.path(), &ca, None)).await;

    // The webhook port over TLS stores a signed (authenticated) webhook.
    let body = doubletick(
        BUSINESS,
        CUSTOMER,
        "tls-1",
        Utc::now(),
        "accept",
        Some(true),
    );
    let (status, answer) = https_post(app.http, &ca.pem, "/webhooks/doubletick", &body)
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"stored\""), "{answer}");

    // A TLS gRPC client that trusts the CA sees it.
    let channel = tls_channel(app.grpc, &ca.pem, None).await.unwrap();
    let answer = check_over(channel).await.unwrap();
    assert_eq!(answer.state, ConsentState::GrantedPermanent as i32);

    // A plaintext gRPC client gets nothing.
    let plain = Endpoint::from_shared(format!("http://{}", app.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let err = check_over(channel).await.unwrap_err();
        assert_ne!(err.code(), tonic::Code::Ok);
    }
    // A plaintext HTTP client gets no HTTP answer.
    let mut tcp = TcpStream::connect(app.http).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A client that does not trust the server's CA refuses it.
    let stranger = Ca::new("someone else");
    assert!(
        https_post(app.http, &stranger.pem, "/healthz", "")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_signed_by_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let app = spawn_tls(server_files(dir.path(), &server_ca, Some(&client_ca))).await;

    let trusted = client_ca.leaf(ExtendedKeyUsagePurpose::ClientAuth);
    let channel = tls_channel(app.grpc, &server_ca.pem, Some(trusted))
        .await
        .unwrap();
    let answer = check_over(channel).await.unwrap();
    assert_eq!(answer.state, ConsentState::NoConsent as i32);

    // A certificate from another CA, or none at all: refused in the handshake.
    let untrusted = Ca::new("untrusted").leaf(ExtendedKeyUsagePurpose::ClientAuth);
    for identity in [Some(untrusted), None] {
        let named = identity.is_some();
        let refused = match tls_channel(app.grpc, &server_ca.pem, identity).await {
            Err(_) => true,
            Ok(channel) => check_over(channel).await.is_err(),
        };
        assert!(refused, "client with certificate: {named}");
    }

    // The webhook port asks no client certificate (senders like Meta have none).
    let body = doubletick(
        BUSINESS,
        CUSTOMER,
        "mtls-1",
        Utc::now(),
        "accept",
        Some(true),
    );
    let (status, _) = https_post(app.http, &server_ca.pem, "/webhooks/doubletick", &body)
        .await
        .unwrap();
    assert_eq!(status, 200);
}

// Paused time: the polling below passes no wall-clock time.
#[tokio::test(start_paused = true)]
async fn a_replaced_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    let files = server_files(dir.path(), &old_ca, None);
    let app = spawn_tls(files.clone()).await;
    let new_ca = Ca::new("new CA");
    assert!(tls_channel(app.grpc, &new_ca.pem, None).await.is_err());

    // Roll: write the new pair beside the old one, then rename over it (key first).
    let (cert, key) = new_ca.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    let staged = |path: &PathBuf, content: &str| {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    };
    staged(&files.key, &key);
    staged(&files.cert, &cert);

    // Both ports pick it up within a few reload periods (bounded wait on the condition).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let grpc = tls_channel(app.grpc, &new_ca.pem, None).await;
        let http = https_post(app.http, &new_ca.pem, "/healthz", "").await;
        if let (Ok(grpc), Ok(_)) = (grpc, http) {
            check_over(grpc).await.unwrap();
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old certificate is no longer served.
    assert!(tls_channel(app.grpc, &old_ca.pem, None).await.is_err());

    // A broken replacement keeps the certificate in force.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let channel = tls_channel(app.grpc, &new_ca.pem, None).await.unwrap();
    check_over(channel).await.unwrap();
}
