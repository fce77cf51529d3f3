//! `spawn_app()`: the real service on port 0, plus small HTTP and gRPC clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use callgate::cli::BearerToken;
use callgate::clock::Clock;
use callgate::config::{Config, Flags, Secret};
use callgate::pb::{self, consent_authority_client::ConsentAuthorityClient};
use callgate::store::ConsentStore;
use callgate::store::memory::{MemoryConfig, MemoryStore};
use callgate::{app, pb::ConsentState};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const BUSINESS: &str = "+919000000000";
pub const CUSTOMER: &str = "+919876543210";
/// The webhook secret every test service accepts.
pub const TOKEN: &str = "test-token-3f9a";
pub const AUTH: (&str, &str) = ("authorization", "Bearer test-token-3f9a");
pub const JSON: (&str, &str) = ("content-type", "application/json");
/// Meta app secret and verify token of test services.
pub const APP_SECRET: &str = "meta-app-secret-77";
pub const VERIFY_TOKEN: &str = "meta-verify-token-12";
/// The API key of the client with every scope that test services know
/// (`tests/fixtures/api/clients.toml`).
pub const API_KEY: &str = "test-api-key-7c1e";

/// A gRPC client that sends an API key.
pub type ApiClient = ConsentAuthorityClient<InterceptedService<Channel, BearerToken>>;

/// The clients file that declares [`API_KEY`].
pub fn api_clients_fixture() -> std::path::PathBuf {
    format!(
        "{}/tests/fixtures/api/clients.toml",
        env!("CARGO_MANIFEST_DIR")
    )
    .into()
}

pub fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Shows the service's logs when `TEST_LOG` is set (`TEST_LOG=1 cargo test --test api NAME`,
/// filtered by `RUST_LOG`, default `debug`); otherwise tests stay quiet. Installed once per
/// test binary; output goes through the test harness, so it shows with a failing test.
pub fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_none() {
            return;
        }
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// A config for tests: loopback ports chosen by the caller, quick sweeps and checkpoints, and
/// a clock that follows tokio's (so a test may pause time and advance it).
pub fn test_config() -> Config {
    let mut c = Config::resolve(&Flags::default(), |_| None).unwrap();
    c.clock = Clock::tokio();
    c.expiry_sweep_interval = Duration::from_millis(50);
    c.checkpoint_interval = Duration::from_millis(300);
    c.shutdown_grace = Duration::from_secs(2);
    c.webhook_tokens = vec![Secret::new(TOKEN)];
    c.whatsapp_app_secret = Some(Secret::new(APP_SECRET));
    c.whatsapp_verify_token = Some(Secret::new(VERIFY_TOKEN));
    c.api_clients_file = Some(api_clients_fixture());
    c
}

/// Clients for one running callgate (in this process or another).
pub struct Endpoints {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub struct TestApp {
    pub endpoints: Endpoints,
    pub store: Arc<dyn ConsentStore>,
    /// The service's clock: the "now" of its checks, arrivals and sweeps.
    pub clock: Clock,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::ops::Deref for TestApp {
    type Target = Endpoints;
    fn deref(&self) -> &Endpoints {
        &self.endpoints
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_config(), memory_store()).await
}

pub fn memory_store() -> Arc<dyn ConsentStore> {
    Arc::new(MemoryStore::new(MemoryConfig::default()))
}

pub async fn spawn_app_with(config: Config, store: Arc<dyn ConsentStore>) -> TestApp {
    init_test_log();
    let clock = config.clock;
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn({
        let store = store.clone();
        async move {
            app::run(config, store, app::Listeners { http, grpc }, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        }
    });
    TestApp {
        endpoints: Endpoints::new(http_addr, grpc_addr),
        store,
        clock,
        stop: Some(stop),
        task: Some(task),
    }
}

/// An HTTP answer as bytes.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

/// An HTTP answer: status and parsed JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Endpoints {
    pub fn new(http: SocketAddr, grpc: SocketAddr) -> Self {
        Endpoints {
            http,
            grpc,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A ConsentAuthority client with [`API_KEY`].
    pub async fn grpc(&self) -> ApiClient {
        self.grpc_as(Some(API_KEY)).await
    }

    /// A ConsentAuthority client with this key (or none).
    pub async fn grpc_as(&self, key: Option<&str>) -> ApiClient {
        ConsentAuthorityClient::with_interceptor(
            self.channel().await,
            BearerToken::new(key).unwrap(),
        )
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let raw = self.request_raw(method, path, headers, body).await;
        let body = serde_json::from_slice(&raw.body).unwrap_or(serde_json::Value::Null);
        Answer {
            status: raw.status,
            body,
        }
    }

    /// A GET whose answer is not JSON (metrics, Meta's challenge).
    pub async fn get_raw(&self, path: &str) -> RawAnswer {
        self.request_raw("GET", path, &[], Bytes::new()).await
    }

    pub async fn request_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> RawAnswer {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.http));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = self
            .client
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        RawAnswer {
            status,
            content_type,
            body,
        }
    }

    /// A gRPC channel to the service, for clients other than ConsentAuthority.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn post_doubletick(&self, body: impl Into<Bytes>) -> Answer {
        self.request("POST", "/webhooks/doubletick", &[JSON, AUTH], body)
            .await
    }

    /// Opens a StreamGrants subscription (registered once this returns).
    pub async fn stream(&self, req: pb::StreamGrantsRequest) -> tonic::Streaming<pb::ConsentEvent> {
        self.grpc()
            .await
            .stream_grants(req)
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn check(&self, business: &str, customer: &str) -> pb::CheckCallPermissionResponse {
        self.grpc()
            .await
            .check_call_permission(pb::CheckCallPermissionRequest {
                business_number: business.into(),
                customer_number: customer.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// A check that asks for the deciding decision's evidence (issue 16: only sent when
    /// asked).
    pub async fn check_with_evidence(
        &self,
        business: &str,
        customer: &str,
    ) -> pb::CheckCallPermissionResponse {
        self.grpc()
            .await
            .check_call_permission(pb::CheckCallPermissionRequest {
                business_number: business.into(),
                customer_number: customer.into(),
                include_evidence: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn state(&self, business: &str, customer: &str) -> ConsentState {
        ConsentState::try_from(self.check(business, customer).await.state).unwrap()
    }

    pub async fn history(&self, business: &str, customer: &str) -> Vec<pb::HistoryEntry> {
        self.grpc()
            .await
            .get_consent_history(pb::GetConsentHistoryRequest {
                business_number: business.into(),
                customer_number: customer.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries
    }
}

impl TestApp {
    /// Sends the shutdown signal without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the service and waits until it has drained.
    pub async fn stop(mut self) {
        self.begin_stop();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("service did not stop within 10 s")
                .unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A DoubleTick body with the given fields; times are RFC 3339.
pub fn doubletick(
    business: &str,
    customer: &str,
    message_id: &str,
    received_at: chrono::DateTime<chrono::Utc>,
    response: &str,
    permanent: Option<bool>,
) -> String {
    let mut v = serde_json::json!({
        "from": customer,
        "to": business,
        "receivedAt": received_at.to_rfc3339(),
        "messageId": message_id,
        "pairedMessageId": format!("paired-{message_id}"),
        "response": response,
        "responseSource": "user_initiated",
        "dtCustomerId": "customer_test",
    });
    if let Some(p) = permanent {
        v["isPermanent"] = p.into();
    }
    v.to_string()
}

/// Polls `done` every 10 ms until it returns true; fails the test with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
