//! Measures what a large export costs in memory (issue 14): records `--decisions` decisions
//! for one business in an embedded callgate (memory store, in this process), then downloads
//! `GET /v1/export` as NDJSON, reading the body chunk by chunk and dropping it, and prints the
//! process's resident memory (`VmRSS`, and the high-water mark `VmHWM`, from
//! `/proc/self/status`) before and after. If the export held its rows, the high-water mark
//! would grow by at least the export's size; streamed one store page at a time, it grows by
//! about a page. Linux only; a measuring tool, not a test.
//!
//! ```text
//! cargo run -p callgate-bench --example export_memory -- --decisions 200000
//! ```

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use callgate::config::{Config, Flags};
use callgate::domain::{Choice, Decision, Evidence, Pair, PhoneNumber, Source};
use callgate::store::ConsentStore;
use callgate::store::memory::{MemoryConfig, MemoryStore};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn memory(label: &str) {
    println!(
        "{label:<28} VmRSS {:>8} kB   VmHWM {:>8} kB",
        status_kb("VmRSS:"),
        status_kb("VmHWM:")
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut decisions: usize = 200_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--decisions" => decisions = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let store: Arc<dyn ConsentStore> = Arc::new(MemoryStore::new(MemoryConfig::default()));
    let business = PhoneNumber::parse("+919000000000")?;
    let t0 = chrono::DateTime::from_timestamp_millis(1_767_000_000_000).unwrap_or_default();
    let started = Instant::now();
    for chunk in 0..decisions.div_ceil(1000) {
        let batch: Vec<Decision> = (chunk * 1000..((chunk + 1) * 1000).min(decisions))
            .map(|i| {
                let at = t0 + chrono::Duration::milliseconds(i as i64);
                Decision {
                    pair: Pair::new(
                        business.clone(),
                        PhoneNumber::parse(&format!("+9198{i:08}")).unwrap_or(business.clone()),
                    ),
                    choice: Choice::GrantPermanent,
                    decided_at: at,
                    evidence: Evidence {
                        source: Source::WhatsApp,
                        message_id: format!("wamid.HBgLOTE5ODc2NTQzMjEwFQIAEhgg{i:012}"),
                        paired_message_id: format!("wamid.template.{i}"),
                        response_source: "user_action".into(),
                        sender_customer_id: String::new(),
                        body_sha256: [0x5a; 32],
                        stated_at: at,
                        stated_expires_at: None,
                    },
                    attribution: None,
                    customer_name: None,
                }
            })
            .collect();
        store.record(&batch, t0).await?;
    }
    println!("recorded {decisions} decisions in {:?}", started.elapsed());

    let mut config = Config::resolve(&Flags::default(), |_| None)?;
    config.insecure_no_auth = true;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let addr = http.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(callgate::app::run(
        config,
        store.clone(),
        callgate::app::Listeners { http, grpc },
        async {
            let _ = stopped.await;
        },
    ));
    memory("before the export");
    let url = format!(
        "http://{addr}/v1/export?business=%2B919000000000&from=2025-01-01T00:00:00Z\
         &to=2027-01-01T00:00:00Z&format=ndjson&by=received"
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let started = Instant::now();
    let response = client.get(url.parse()?).await?;
    anyhow::ensure!(
        response.status() == 200,
        "export answered {}",
        response.status()
    );
    let mut body = response.into_body();
    let (mut bytes, mut lines, mut chunks) = (0usize, 0usize, 0usize);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes += data.len();
            lines += data.iter().filter(|b| **b == b'\n').count();
            chunks += 1;
            if chunks % 100 == 0 {
                memory(&format!("during ({lines} rows)"));
            }
        }
    }
    memory("after the export");
    println!(
        "exported {lines} rows, {} MB, in {chunks} chunks, {:?}",
        bytes / 1_000_000,
        started.elapsed()
    );
    let _ = stop.send(());
    let _ = service.await;
    anyhow::ensure!(lines == decisions, "exported {lines} of {decisions} rows");
    Ok(())
}
