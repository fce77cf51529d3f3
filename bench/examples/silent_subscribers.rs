//! Measures what StreamGrants subscribers that never read cost a running callgate (issue 9.3).
//!
//! Opens `--subscribers` StreamGrants streams over raw HTTP/2 connections (100 streams each)
//! that advertise the largest flow-control windows HTTP/2 allows and then never read a byte,
//! posts `--events` ordinary grants to the webhook port, and prints the service's resident
//! memory (`VmRSS` / `VmHWM` from `/proc/<pid>/status`) before and after. Linux only; a
//! measuring tool, not a test: run it by hand against a callgate you started.
//!
//! ```text
//! CALLGATE_WEBHOOK_TOKENS=tok CALLGATE_API_CLIENTS_FILE=demo/api-clients.toml callgate serve &
//! cargo run --release -p callgate-bench --example silent_subscribers -- --pid $! --token tok \
//!     --api-key demo-key
//! ```

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STREAMS_PER_CONNECTION: usize = 100;

struct Args {
    http: String,
    grpc: String,
    pid: u32,
    token: String,
    api_key: String,
    subscribers: usize,
    events: usize,
}

fn args() -> Args {
    let mut a = Args {
        http: "127.0.0.1:8080".into(),
        grpc: "127.0.0.1:50051".into(),
        pid: 0,
        token: String::new(),
        api_key: String::new(),
        subscribers: 2000,
        events: 2000,
    };
    let mut it = std::env::args().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match k.as_str() {
            "--http" => a.http = v,
            "--grpc" => a.grpc = v,
            "--pid" => a.pid = v.parse().expect("--pid"),
            "--token" => a.token = v,
            "--api-key" => a.api_key = v,
            "--subscribers" => a.subscribers = v.parse().expect("--subscribers"),
            "--events" => a.events = v.parse().expect("--events"),
            other => panic!("unknown option {other}"),
        }
    }
    assert!(a.pid > 0, "--pid of the callgate process is required");
    a
}

/// (VmRSS, VmHWM) in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("memory field")
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// One HPACK literal header field without indexing (names and values under 127 bytes).
fn header(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x00);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

/// Opens a connection carrying `streams` StreamGrants calls, then never reads from it.
async fn silent_connection(grpc: &str, api_key: &str, streams: usize) -> TcpStream {
    let mut conn = TcpStream::connect(grpc).await.expect("connect gRPC");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS: ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 2^31-1; then the connection window likewise.
    let mut settings = Vec::new();
    settings.extend_from_slice(&[0, 2, 0, 0, 0, 0]);
    settings.extend_from_slice(&[0, 4]);
    settings.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    out.extend(frame(4, 0, 0, &settings));
    out.extend(frame(8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()));
    let mut block = Vec::new();
    header(&mut block, ":method", "POST");
    header(&mut block, ":scheme", "http");
    header(
        &mut block,
        ":path",
        "/callgate.v1.ConsentAuthority/StreamGrants",
    );
    header(&mut block, ":authority", "callgate");
    header(&mut block, "content-type", "application/grpc");
    header(&mut block, "te", "trailers");
    if !api_key.is_empty() {
        header(&mut block, "authorization", &format!("Bearer {api_key}"));
    }
    for i in 0..streams {
        let id = 1 + 2 * i as u32;
        out.extend(frame(1, 0x4, id, &block)); // HEADERS, END_HEADERS
        out.extend(frame(0, 0x1, id, &[0, 0, 0, 0, 0])); // an empty request, END_STREAM
    }
    conn.write_all(&out).await.expect("write streams");
    conn
}

async fn post_grant(http: &str, token: &str, n: usize) {
    let body = serde_json::json!({
        "from": format!("+9198{n:08}"),
        "to": "+919000000000",
        "receivedAt": chrono::Utc::now().to_rfc3339(),
        "messageId": format!("silent-{}-{n}", std::process::id()),
        "pairedMessageId": "paired",
        "response": "accept",
        "responseSource": "user_initiated",
        "dtCustomerId": "customer",
        "isPermanent": true,
    })
    .to_string();
    let req = format!(
        "POST /webhooks/doubletick HTTP/1.1\r\nHost: callgate\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut conn = TcpStream::connect(http).await.expect("connect HTTP");
    conn.write_all(req.as_bytes()).await.expect("post");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.expect("answer");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    let (rss0, _) = memory(a.pid);
    let mut held = Vec::new();
    let mut left = a.subscribers;
    while left > 0 {
        let n = left.min(STREAMS_PER_CONNECTION);
        held.push(silent_connection(&a.grpc, &a.api_key, n).await);
        left -= n;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, _) = memory(a.pid);
    for n in 0..a.events {
        post_grant(&a.http, &a.token, n).await;
    }
    // Let the fan-out settle: until two readings a second apart agree within 1 MiB (max 10 s).
    let mut last = memory(a.pid).0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = memory(a.pid).0;
        if now.abs_diff(last) < 1024 {
            break;
        }
        last = now;
    }
    let (rss2, hwm) = memory(a.pid);
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "{} silent subscribers, {} events: RSS {:.1} MiB before, {:.1} MiB with the streams open, \
         {:.1} MiB after the events (peak {:.1} MiB)",
        a.subscribers,
        a.events,
        mib(rss0),
        mib(rss1),
        mib(rss2),
        mib(hwm)
    );
    drop(held);
}
