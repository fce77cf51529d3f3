//! The webhook scenarios over the real HTTP port: `preload` (the population) and `ingest`
//! (unique webhooks as fast as the closed loop allows). Any status but 200 is an error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::BenchError;
use crate::population::{self, Kind};
use crate::report::Tally;
use crate::runner::{Step, Worker};

/// Path of DoubleTick's webhook.
pub const WEBHOOK_PATH: &str = "/webhooks/doubletick";
/// Longest error body kept in an error message.
const ERROR_BODY_CHARS: usize = 200;

/// Posts webhooks over keep-alive HTTP/1.1 connections (one per worker, pooled).
#[derive(Clone)]
pub struct WebhookClient {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    /// `Bearer <token>`, marked sensitive so it never prints.
    authorization: Option<HeaderValue>,
}

impl WebhookClient {
    pub fn new(
        addr: SocketAddr,
        token: Option<&str>,
        connections: usize,
    ) -> Result<Self, BenchError> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .build(connector);
        let uri = format!("http://{addr}{WEBHOOK_PATH}").parse().map_err(
            |e: http::uri::InvalidUri| BenchError::Address {
                addr: addr.to_string(),
                reason: e.to_string(),
            },
        )?;
        let authorization = token
            .map(|t| {
                let mut v = HeaderValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| BenchError::InvalidToken)?;
                v.set_sensitive(true);
                Ok(v)
            })
            .transpose()?;
        Ok(WebhookClient {
            client,
            uri,
            authorization,
        })
    }

    /// Posts one body; `Ok` only for a 200 answer.
    pub async fn post(&self, body: String) -> Result<(), String> {
        let mut req = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        if let Some(auth) = &self.authorization {
            req.headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        let res = self.client.request(req).await.map_err(|e| chain(&e))?;
        let status = res.status();
        // Read the whole body so the connection goes back to the pool.
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status != http::StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.chars().take(ERROR_BODY_CHARS).collect();
            return Err(format!("HTTP {}: {text}", status.as_u16()));
        }
        Ok(())
    }
}

/// An error and its causes, `outer: inner: root`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text += &format!(": {c}");
        cause = c.source();
    }
    text
}

fn label(kind: Kind) -> &'static str {
    match kind {
        Kind::Permanent => "permanent",
        Kind::Temporary => "temporary",
        Kind::Denied => "denied",
        Kind::Unknown => "unknown",
    }
}

/// Posts the population's decisions, each pair once, in index order (unknown pairs skipped).
pub struct PreloadWorker {
    pub client: WebhookClient,
    /// Next pair index to post, shared by all workers.
    pub next: Arc<AtomicU64>,
    pub population: u64,
}

impl Worker for PreloadWorker {
    async fn call(&mut self, tally: &mut Tally) -> Step {
        let (i, kind) = loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.population {
                return Step::Exhausted;
            }
            match population::kind(i) {
                Kind::Unknown => continue,
                k => break (i, k),
            }
        };
        let body = population::webhook_body(
            &population::business(i),
            &population::customer(i),
            &format!("bench-preload-{i}"),
            kind,
            chrono::Utc::now(),
        );
        match self.client.post(body).await {
            Ok(()) => tally.count(label(kind), 1),
            Err(e) => tally.error(format!("pair {i}: {e}")),
        }
        Step::Sent
    }
}

/// Posts permanent grants for customers outside the population, each with a new message id.
pub struct IngestWorker {
    pub client: WebhookClient,
    /// Number of the next webhook, shared by all workers.
    pub next: Arc<AtomicU64>,
    /// Makes message ids unique across runs against the same service.
    pub run_id: u64,
    /// The number of pairs the webhooks cycle over (0: a new pair for each).
    pub pairs: u64,
}

impl Worker for IngestWorker {
    async fn call(&mut self, tally: &mut Tally) -> Step {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let pair = if self.pairs == 0 { n } else { n % self.pairs };
        let body = population::webhook_body(
            &population::business(pair),
            &population::ingest_customer(pair),
            &format!("bench-ingest-{}-{n}", self.run_id),
            Kind::Permanent,
            chrono::Utc::now(),
        );
        match self.client.post(body).await {
            Ok(()) => tally.count("stored", 1),
            Err(e) => tally.error(e),
        }
        Step::Sent
    }
}
