//! Measures what `POST /v1/check-batch` costs a running callgate (issue 13): the time to answer
//! a batch of `--checks` pairs (default 50,000), and the service's resident memory (`VmRSS`,
//! and the peak `VmHWM`, from `/proc/<pid>/status`) idle, after `--rounds` batches one after
//! the other, and after `--concurrent` batches at once. Each answer is read to its end and
//! checked to hold one result per pair. Linux only; a measuring tool, not a test: run it by
//! hand against a callgate you started.
//!
//! ```text
//! CALLGATE_API_CLIENTS_FILE=demo/api-clients.toml target/release/callgate &
//! cargo run --release -p callgate-bench --example check_batch_memory -- --pid $! \
//!     --api-key demo-key
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use callgate_bench::subscribers::memory_of;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

struct Args {
    http: String,
    pid: u32,
    api_key: String,
    checks: usize,
    rounds: usize,
    concurrent: usize,
}

fn args() -> Args {
    let mut a = Args {
        http: "127.0.0.1:8080".into(),
        pid: 0,
        api_key: String::new(),
        checks: 50_000,
        rounds: 5,
        concurrent: 4,
    };
    let mut it = std::env::args().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match k.as_str() {
            "--http" => a.http = v,
            "--pid" => a.pid = v.parse().expect("--pid"),
            "--api-key" => a.api_key = v,
            "--checks" => a.checks = v.parse().expect("--checks"),
            "--rounds" => a.rounds = v.parse().expect("--rounds"),
            "--concurrent" => a.concurrent = v.parse().expect("--concurrent"),
            other => panic!("unknown option {other}"),
        }
    }
    assert!(a.pid > 0, "--pid of the callgate process is required");
    a
}

/// A batch body of `n` pairs of one business and distinct customers.
fn body(n: usize) -> Bytes {
    let checks: Vec<String> = (0..n)
        .map(|i| {
            format!(r#"{{"business_number":"+919100000000","customer_number":"+9196{i:08}"}}"#)
        })
        .collect();
    Bytes::from(format!(r#"{{"checks":[{}]}}"#, checks.join(",")))
}

/// Where and how to post a batch.
#[derive(Clone)]
struct Target {
    client: Client<HttpConnector, Full<Bytes>>,
    url: String,
    authorization: String,
    checks: usize,
}

/// Posts one batch and reads its answer to the end: (time, body frames, bytes).
async fn batch(t: Target, body: Bytes) -> (Duration, usize, usize) {
    let started = Instant::now();
    let req = http::Request::post(&t.url)
        .header("content-type", "application/json")
        .header("authorization", &t.authorization)
        .body(Full::new(body))
        .unwrap();
    let res = t.client.request(req).await.expect("request");
    assert_eq!(res.status(), 200, "batch refused");
    let mut answer = res.into_body();
    let (mut frames, mut bytes) = (0, Vec::new());
    while let Some(frame) = answer.frame().await {
        if let Ok(data) = frame.expect("body").into_data() {
            frames += 1;
            bytes.extend_from_slice(&data);
        }
    }
    let elapsed = started.elapsed();
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON answer");
    assert_eq!(
        v["results"].as_array().map(Vec::len),
        Some(t.checks),
        "one result per check"
    );
    (elapsed, frames, bytes.len())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[tokio::main]
async fn main() {
    let a = args();
    let target = Target {
        client: Client::builder(TokioExecutor::new()).build_http(),
        url: format!("http://{}/v1/check-batch", a.http),
        authorization: format!("Bearer {}", a.api_key),
        checks: a.checks,
    };
    let request = body(a.checks);
    let show = |what: &str| {
        let m = memory_of(a.pid).expect("memory");
        println!(
            "{what}: RSS {} (peak so far {})",
            mib(m.rss_kib),
            mib(m.hwm_kib)
        );
    };
    println!(
        "{} checks per batch, request body {} bytes",
        a.checks,
        request.len()
    );
    show("idle");
    for round in 1..=a.rounds {
        let (took, frames, bytes) = batch(target.clone(), request.clone()).await;
        println!("batch {round}: {took:?}, answer {bytes} bytes in {frames} frames");
    }
    show(&format!("after {} batches one after the other", a.rounds));
    let started = Instant::now();
    let runs: Vec<_> = (0..a.concurrent)
        .map(|_| tokio::spawn(batch(target.clone(), request.clone())))
        .collect();
    for run in runs {
        let (took, _, _) = run.await.expect("batch task");
        println!("concurrent batch: {took:?}");
    }
    println!(
        "{} batches at once: {:?} in all",
        a.concurrent,
        started.elapsed()
    );
    show(&format!("after {} batches at once", a.concurrent));
}
