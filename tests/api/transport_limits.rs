//! Issue 9, point 3: sockets that never speak and clients that never read cannot hold the
//! service's connections or memory.

use std::time::Duration;

use callgate::cli::BearerToken;
use callgate::pb::{self, EventKind, consent_authority_client::ConsentAuthorityClient};
use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::{Code, Streaming};

use crate::helpers::*;

/// Reads until the server closes the connection (or `limit` passes); `None`: still open.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await {
        Ok(_) => Some(buf),
        Err(_) => None,
    }
}

// Paused time: deadlines pass once every task is idle, not on the wall clock.
#[tokio::test(start_paused = true)]
async fn issue9_3_silent_http_connections_are_closed() {
    let mut config = test_config();
    config.http_header_timeout = Duration::from_millis(300);
    config.http_max_connections = 2;
    let app = spawn_app_with(config, memory_store()).await;
    // Two sockets that never send a byte fill the cap.
    let mut silent_a = TcpStream::connect(app.http).await.unwrap();
    let mut silent_b = TcpStream::connect(app.http).await.unwrap();
    // The server closes both within the header deadline (counted from accept), with no answer.
    for silent in [&mut silent_a, &mut silent_b] {
        let read = read_until_closed(silent, Duration::from_secs(5)).await;
        assert!(read.is_some(), "a silent connection was kept open");
    }
    // And the port serves again.
    let health = tokio::time::timeout(Duration::from_secs(5), app.get_raw("/healthz"))
        .await
        .expect("/healthz blocked by silent connections");
    assert_eq!(health.status, 200);
}

// Paused time: deadlines pass once every task is idle, not on the wall clock.
#[tokio::test(start_paused = true)]
async fn issue9_3_a_quiet_kept_alive_http_connection_is_closed() {
    let mut config = test_config();
    config.http_header_timeout = Duration::from_millis(300);
    let app = spawn_app_with(config, memory_store()).await;
    let mut conn = TcpStream::connect(app.http).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // The answer comes, then the connection (kept alive) goes quiet and is closed.
    let read = read_until_closed(&mut conn, Duration::from_secs(5))
        .await
        .expect("an idle kept-alive connection was kept open");
    let text = String::from_utf8_lossy(&read);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn issue9_3_the_webhook_port_refuses_http2() {
    let app = spawn_app().await;
    let mut conn = TcpStream::connect(app.http).await.unwrap();
    // The HTTP/2 connection preface, then an empty SETTINGS frame.
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let read = read_until_closed(&mut conn, Duration::from_secs(5))
        .await
        .expect("an HTTP/2 connection was kept open");
    // No HTTP/2 SETTINGS frame back (type 0x04 at byte 3): at most an HTTP/1.1 error.
    assert!(
        read.is_empty() || read.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&read)
    );
}

/// Posts `n` permanent grants for distinct customers of `BUSINESS`; returns their message ids.
pub(crate) async fn post_grants(app: &TestApp, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let customer = format!("+9198{i:08}");
        let body = doubletick(BUSINESS, &customer, &id, Utc::now(), "accept", Some(true));
        assert_eq!(app.post_doubletick(body).await.status, 200);
        ids.push(id);
    }
    ids
}

/// A gRPC client whose HTTP/2 stream window is small: the server cannot push far ahead of it.
pub(crate) async fn small_window_client(app: &TestApp) -> ApiClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    ConsentAuthorityClient::with_interceptor(channel, BearerToken::new(Some(API_KEY)).unwrap())
}

/// Polls `/metrics` (bounded) until `line` appears.
async fn wait_for_metric(app: &TestApp, line: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&app.get_raw("/metrics").await.body).into_owned();
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{line}` in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads a stream to its end: the events (checkpoints skipped) and the closing status.
pub(crate) async fn drain(
    s: &mut Streaming<pb::ConsentEvent>,
) -> (Vec<pb::ConsentEvent>, tonic::Status) {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut events = Vec::new();
        loop {
            match s.message().await {
                Ok(Some(e)) if e.kind == EventKind::Checkpoint as i32 => {}
                Ok(Some(e)) => events.push(e),
                Ok(None) => panic!("stream ended without a status"),
                Err(status) => return (events, status),
            }
        }
    })
    .await
    .expect("stream did not end")
}

/// Reads until a checkpoint arrives; returns the events before it.
pub(crate) async fn until_checkpoint(s: &mut Streaming<pb::ConsentEvent>) -> Vec<pb::ConsentEvent> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut events = Vec::new();
        loop {
            let e = s.message().await.unwrap().expect("stream ended");
            if e.kind == EventKind::Checkpoint as i32 {
                return events;
            }
            events.push(e);
        }
    })
    .await
    .expect("no checkpoint")
}

pub(crate) fn ids(events: &[pb::ConsentEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.evidence.as_ref().unwrap().message_id.clone())
        .collect()
}

/// The resume cursor a resumable end carries, in its trailer and its message.
pub(crate) fn resume_cursor(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let cursor = status
        .metadata()
        .get(callgate::grpc_api::RESUME_AFTER_KEY)
        .expect("no resume cursor in the trailer")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(status.message().contains(&cursor), "{}", status.message());
    cursor
}

// Paused time: deadlines pass once every task is idle, not on the wall clock.
#[tokio::test(start_paused = true)]
async fn issue9_3_subscriptions_over_the_cap_are_refused() {
    let mut config = test_config();
    config.max_subscriptions = 2;
    let app = spawn_app_with(config, memory_store()).await;
    let first = app.stream(pb::StreamGrantsRequest::default()).await;
    let _second = app.stream(pb::StreamGrantsRequest::default()).await;
    let refused = app
        .grpc()
        .await
        .stream_grants(pb::StreamGrantsRequest::default())
        .await
        .expect_err("a third subscription was accepted");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // A closed subscription frees its place.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = app
            .grpc()
            .await
            .stream_grants(pb::StreamGrantsRequest::default())
            .await;
        match again {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "place never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
}

// Paused time: deadlines pass once every task is idle, not on the wall clock.
#[tokio::test(start_paused = true)]
async fn issue9_3_a_subscriber_that_stops_reading_is_ended_with_its_resume_cursor() {
    let mut config = test_config();
    config.stream_stall_timeout = Duration::from_millis(300);
    let app = spawn_app_with(config, memory_store()).await;
    // A client that advertises a small window and then reads nothing.
    let mut stalled = small_window_client(&app)
        .await
        .stream_grants(pb::StreamGrantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // More than the window, HTTP/2's send buffer and the stream's queue hold.
    let posted = post_grants(&app, "stall", 150).await;
    wait_for_metric(&app, "callgate_stream_stalls_total 1").await;

    // What the client got before the end, then a status with the cursor to resume from.
    let (got, status) = drain(&mut stalled).await;
    let cursor = resume_cursor(&status);
    assert!(got.len() < posted.len(), "nothing was held back");
    assert_eq!(got.last().map(|e| e.cursor.clone()), Some(cursor.clone()));
    // Resuming there delivers exactly the rest.
    let mut resumed = app
        .stream(pb::StreamGrantsRequest {
            resume_after: cursor,
            ..Default::default()
        })
        .await;
    let rest = until_checkpoint(&mut resumed).await;
    let mut all = ids(&got);
    all.extend(ids(&rest));
    assert_eq!(all, posted);
}

/// Whether `call` finishes within a short bound (a capped call must not, a freed one must).
async fn finishes_within<F: std::future::Future>(limit: Duration, call: F) -> Option<F::Output> {
    tokio::time::timeout(limit, call).await.ok()
}

#[tokio::test]
async fn issue9_3_streams_per_connection_are_capped() {
    let mut config = test_config();
    config.grpc_max_streams_per_connection = 2;
    let app = spawn_app_with(config, memory_store()).await;
    // One connection: clones of a client share its channel.
    let client = app.grpc().await;
    let open = |mut c: ApiClient| async move {
        c.stream_grants(pb::StreamGrantsRequest::default())
            .await
            .map(|r| r.into_inner())
    };
    let first = open(client.clone()).await.unwrap();
    let _second = open(client.clone()).await.unwrap();
    // The server advertised 2 concurrent streams: a third waits for a free one.
    let third = tokio::spawn(open(client.clone()));
    let mut third = std::pin::pin!(third);
    assert!(
        finishes_within(Duration::from_millis(500), &mut third)
            .await
            .is_none(),
        "a third stream was opened on a connection capped at 2"
    );
    // Another connection is not held back by this one's streams.
    let other = app.check(BUSINESS, CUSTOMER).await;
    assert!(!other.allowed);
    drop(first);
    let opened = finishes_within(Duration::from_secs(10), third)
        .await
        .expect("the third stream never opened after one closed");
    assert!(opened.unwrap().is_ok());
}

#[tokio::test]
async fn issue9_3_grpc_connections_are_capped() {
    let mut config = test_config();
    config.grpc_max_connections = 1;
    let app = spawn_app_with(config, memory_store()).await;
    let mut held = app.grpc().await;
    assert!(
        !held
            .check_call_permission(check_request())
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // A second connection waits in the backlog: its call gets no answer while the first is open.
    let waiting = tokio::spawn(async move {
        let mut late = app_client(app.grpc).await;
        late.check_call_permission(check_request()).await
    });
    let mut waiting = std::pin::pin!(waiting);
    assert!(
        finishes_within(Duration::from_millis(500), &mut waiting)
            .await
            .is_none(),
        "a second connection was served while the cap of 1 was held"
    );
    drop(held);
    let answered = finishes_within(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting connection was never served after the first closed");
    assert!(!answered.unwrap().unwrap().into_inner().allowed);
}

fn check_request() -> pb::CheckCallPermissionRequest {
    pb::CheckCallPermissionRequest {
        business_number: BUSINESS.into(),
        customer_number: CUSTOMER.into(),
        ..Default::default()
    }
}

/// A client on a new connection that is not made until the first call (the server may not
/// accept it yet).
async fn app_client(grpc: std::net::SocketAddr) -> ApiClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect_lazy();
    ConsentAuthorityClient::with_interceptor(channel, BearerToken::new(Some(API_KEY)).unwrap())
}
