//! Issue 13: shows that listing a business with very many live grants runs in bounded memory.
//!
//! Loads `--grants` permanent grants for one business straight into a store (the embedded
//! memory store, or Redis with `--redis <url>`), starts callgate in this process on loopback
//! ports (`--insecure-no-auth`), then reads the whole calling list twice, measuring this
//! process's resident memory (`VmRSS` from `/proc/self/status`, Linux only) before each
//! listing and its peak during it (sampled at every chunk or page):
//!
//! 1. `GET /v1/callable?format=csv`: one streamed HTTP answer, read chunk by chunk, counted
//!    and dropped;
//! 2. gRPC `ListCallable`, every page at the largest page size (5,000), counted and dropped.
//!
//! Both must list every grant once, and the RSS growth during a listing must not grow with the
//! number of grants (compare runs with 100,000 and 1,000,000). A measuring tool, not a test:
//!
//! ```text
//! cargo run --release -p callgate-bench --example calling_list -- --grants 1000000
//! cargo run --release -p callgate-bench --example calling_list -- --grants 1000000 \
//!     --redis redis://127.0.0.1:6379
//! ```

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use callgate::app::{self, Listeners};
use callgate::config::{Config, Flags};
use callgate::domain::{Choice, Decision, Evidence, Pair, PhoneNumber, Source};
use callgate::pb::{self, consent_authority_client::ConsentAuthorityClient};
use callgate::store::ConsentStore;
use callgate::store::memory::{MemoryConfig, MemoryStore};
use callgate::store::redis::{RedisConfig, RedisStore};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

const BUSINESS: &str = "+919000000000";
/// Decisions per `record` call while loading.
const LOAD_BATCH: usize = 1000;

struct Args {
    grants: usize,
    redis: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        grants: 1_000_000,
        redis: None,
    };
    let mut it = std::env::args().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match k.as_str() {
            "--grants" => a.grants = v.parse().expect("--grants"),
            "--redis" => a.redis = Some(v),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// This process's VmRSS, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
        .expect("VmRSS")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn grant(i: usize, at: chrono::DateTime<chrono::Utc>) -> Decision {
    Decision {
        pair: Pair::new(
            PhoneNumber::parse(BUSINESS).unwrap(),
            PhoneNumber::parse(&format!("+9198{i:08}")).unwrap(),
        ),
        choice: Choice::GrantPermanent,
        decided_at: at,
        evidence: Evidence {
            source: Source::DoubleTick,
            message_id: format!("bulk-{i}"),
            paired_message_id: format!("req-{i}"),
            response_source: "user_initiated".into(),
            sender_customer_id: String::new(),
            body_sha256: [7; 32],
            stated_at: at,
            stated_expires_at: None,
        },
        attribution: None,
        customer_name: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args();
    let store: Arc<dyn ConsentStore> = match &a.redis {
        None => Arc::new(MemoryStore::new(MemoryConfig::default())),
        Some(url) => {
            let mut config = RedisConfig::new(url.clone());
            config.timeout = std::time::Duration::from_secs(10);
            Arc::new(RedisStore::connect(config).await?)
        }
    };
    let backend = if a.redis.is_some() { "redis" } else { "memory" };
    let rss_start = rss_kib();
    let loading = Instant::now();
    let at = chrono::Utc::now();
    let mut batch = Vec::with_capacity(LOAD_BATCH);
    for i in 0..a.grants {
        batch.push(grant(i, at));
        if batch.len() == LOAD_BATCH || i + 1 == a.grants {
            store.record(&batch, at).await?;
            batch.clear();
        }
    }
    drop(batch);
    println!(
        "backend {backend}: loaded {} grants in {:.1} s; RSS {:.0} MiB -> {:.0} MiB",
        a.grants,
        loading.elapsed().as_secs_f64(),
        mib(rss_start),
        mib(rss_kib())
    );

    let mut config = Config::resolve(
        &Flags {
            insecure_no_auth: true,
            ..Flags::default()
        },
        |_| None,
    )?;
    config.api_clients_file = None;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(app::run(
        config,
        store.clone(),
        Listeners { http, grpc },
        async {
            let _ = stop_rx.await;
        },
    ));

    // 1. HTTP, CSV, one streamed answer.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let before = rss_kib();
    let mut peak = before;
    let started = Instant::now();
    let uri = format!("http://{http_addr}/v1/callable?business_number=%2B919000000000&format=csv");
    let res = client.get(uri.parse()?).await?;
    anyhow::ensure!(res.status() == 200, "HTTP list answered {}", res.status());
    let mut body = res.into_body();
    let (mut lines, mut bytes, mut chunks) = (0usize, 0usize, 0usize);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            lines += data.iter().filter(|b| **b == b'\n').count();
            bytes += data.len();
            chunks += 1;
            peak = peak.max(rss_kib());
        }
    }
    anyhow::ensure!(lines == a.grants + 1, "HTTP listed {} lines", lines);
    println!(
        "HTTP CSV: {} entries ({:.1} MiB in {chunks} chunks) in {:.1} s; RSS before {:.0} MiB, \
         peak during {:.0} MiB (+{:.1} MiB)",
        lines - 1,
        mib(bytes as u64 / 1024),
        started.elapsed().as_secs_f64(),
        mib(before),
        mib(peak),
        mib(peak - before)
    );

    // 2. gRPC, every page at the largest page size.
    let mut grpc_client = ConsentAuthorityClient::connect(format!("http://{grpc_addr}")).await?;
    let before = rss_kib();
    let mut peak = before;
    let started = Instant::now();
    let (mut entries, mut pages, mut token) = (0usize, 0usize, String::new());
    loop {
        let page = grpc_client
            .list_callable(pb::ListCallableRequest {
                business_number: BUSINESS.into(),
                page_size: 5000,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        entries += page.entries.len();
        pages += 1;
        peak = peak.max(rss_kib());
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    anyhow::ensure!(entries == a.grants, "gRPC listed {entries}");
    println!(
        "gRPC ListCallable: {entries} entries in {pages} pages in {:.1} s; RSS before {:.0} MiB, \
         peak during {:.0} MiB (+{:.1} MiB)",
        started.elapsed().as_secs_f64(),
        mib(before),
        mib(peak),
        mib(peak - before)
    );
    let _ = stop_tx.send(());
    service.await??;
    Ok(())
}
