//! One delivery attempt: a POST over a fresh HTTP/1.1 connection (plain or TLS with Mozilla's
//! roots) to an address the allowlist accepts *at connect time*, the whole attempt bounded by
//! one timeout. No connection pool: deliveries are one at a time per subscription, and a fresh
//! connection re-checks the resolved address every time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName};

use super::destination::{AllowList, Destination};

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx.
    Delivered,
    /// `410 Gone`: the receiver asks never to be called again.
    Gone,
    /// Anything else: a status, a timeout, a refused connection, a refused address.
    Failed(String),
}

/// Sends deliveries.
#[derive(Clone)]
pub struct Sender {
    allow: AllowList,
    timeout: Duration,
    tls: TlsConnector,
}

impl Sender {
    pub fn new(allow: AllowList, timeout: Duration) -> Self {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|e| unreachable!("ring supports the default versions: {e}"));
        Sender {
            allow,
            timeout,
            tls: TlsConnector::from(Arc::new(config)),
        }
    }

    pub fn allow_list(&self) -> &AllowList {
        &self.allow
    }

    /// POSTs `body` with `headers` to `url`.
    pub async fn post(&self, url: &str, headers: &[(&str, String)], body: Bytes) -> Attempt {
        match tokio::time::timeout(self.timeout, self.try_post(url, headers, body)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => Attempt::Delivered,
            Ok(Ok(410)) => Attempt::Gone,
            Ok(Ok(status)) => Attempt::Failed(format!("answered {status}")),
            Ok(Err(reason)) => Attempt::Failed(reason),
            Err(_) => Attempt::Failed(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn try_post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<u16, String> {
        let dest = Destination::parse(url).map_err(|e| e.to_string())?;
        let addrs = self.allow.allowed(&dest).await.map_err(|e| e.to_string())?;
        let tcp = connect(&addrs).await?;
        let mut request = http::Request::post(dest.path_and_query.as_str())
            .header(http::header::HOST, dest.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("callgate/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        if dest.https {
            let name = ServerName::try_from(dest.host.clone())
                .map_err(|_| format!("{} is not a valid TLS server name", dest.host))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(TokioIo::new(tls), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
    }
}

async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

async fn send<IO>(io: IO, request: http::Request<Full<Bytes>>) -> Result<u16, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // The connection is driven beside the request and dropped with it (the caller's timeout
    // bounds both).
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let answer = sender.send_request(request).await;
    driver.abort();
    answer
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("HTTP: {e}"))
}
