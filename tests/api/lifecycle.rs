//! Graceful shutdown and slow or greedy clients on the HTTP port.
//!
//! The in-process tests run on paused time: a sleep or a deadline there passes only once
//! every task is idle, so "the server had its chance" is exact, and no test waits on the wall.

use std::time::Duration;

use callgate::pb;
use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

use crate::helpers::*;

/// Reads until the server closes the connection (or `limit` passes); returns what was read.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&buf).into_owned()),
        Err(_) => None, // still open
    }
}

fn request_head(body_len: usize) -> String {
    format!(
        "POST /webhooks/doubletick HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Length: {body_len}\r\n\r\n"
    )
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_an_in_flight_webhook_finish_and_ends_streams_with_their_cursor() {
    let mut app = spawn_app().await;
    let mut stream = app.stream(pb::StreamGrantsRequest::default()).await;

    // A webhook whose body is half sent when shutdown begins.
    let body = doubletick(
        BUSINESS,
        CUSTOMER,
        "inflight",
        app.clock.now(),
        "accept",
        Some(true),
    );
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    let mut conn = TcpStream::connect(app.http).await.unwrap();
    conn.write_all(request_head(body.len()).as_bytes())
        .await
        .unwrap();
    conn.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let store = app.store.clone();
    app.begin_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.write_all(rest).await.unwrap();
    let answer = read_until_closed(&mut conn, Duration::from_secs(5))
        .await
        .expect("connection left open");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The decision was stored before the 200.
    let pair = callgate::domain::Pair::new(
        callgate::domain::PhoneNumber::parse(BUSINESS).unwrap(),
        callgate::domain::PhoneNumber::parse(CUSTOMER).unwrap(),
    );
    assert!(store.current(&pair).await.unwrap().is_some());

    // The stream ends with a status that says how to resume.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("stream did not end");
    let status = end.expect_err("stream should end with a status");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("resume_after"),
        "{}",
        status.message()
    );
    app.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let mut config = test_config();
    config.http_header_timeout = Duration::from_millis(300);
    let app = spawn_app_with(config, memory_store()).await;
    let mut conn = TcpStream::connect(app.http).await.unwrap();
    // A slow drip: one byte of headers every 100 ms, never the end of the headers.
    let drip = async {
        for b in b"POST /webhooks/doubletick HTTP/1.1\r\nHost: test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if conn.write_all(&[*b]).await.is_err() {
                return true; // the server closed the connection
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    let closed = tokio::time::timeout(Duration::from_secs(4), drip).await;
    assert!(
        matches!(closed, Ok(true)),
        "the slow client kept the connection"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_times_out_with_408_and_stores_nothing() {
    let mut config = test_config();
    config.http_body_timeout = Duration::from_millis(300);
    let app = spawn_app_with(config, memory_store()).await;
    let mut conn = TcpStream::connect(app.http).await.unwrap();
    conn.write_all(request_head(500).as_bytes()).await.unwrap();
    conn.write_all(b"{\"from\":").await.unwrap();
    let answer = read_until_closed(&mut conn, Duration::from_secs(3)).await;
    let answer = answer.expect("no answer to a stalled body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(app.history(BUSINESS, CUSTOMER).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn connections_over_the_cap_wait_until_one_is_freed() {
    let mut config = test_config();
    config.http_max_connections = 2;
    let app = spawn_app_with(config, memory_store()).await;
    let held_a = TcpStream::connect(app.http).await.unwrap();
    let held_b = TcpStream::connect(app.http).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut third = TcpStream::connect(app.http).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut third, Duration::from_millis(300))
            .await
            .is_none(),
        "a third connection was served while two held the cap"
    );
    drop(held_a);
    let answer = read_until_closed(&mut third, Duration::from_secs(3))
        .await
        .expect("never served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held_b);
}

#[tokio::test]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    let process =
        crate::process::CallgateProcess::start(&[("CALLGATE_WEBHOOK_TOKENS", TOKEN)]).unwrap();
    let api = Endpoints::new(process.http, process.grpc);
    let body = doubletick(BUSINESS, CUSTOMER, "p1", Utc::now(), "accept", Some(true));
    assert_eq!(api.post_doubletick(body).await.status, 200);
    assert!(api.check(BUSINESS, CUSTOMER).await.allowed);
    let log = process.log_text();
    assert!(log.contains("NOTHING survives a restart"), "{log}");
    assert!(
        !log.contains("9876543210"),
        "a phone number was logged:\n{log}"
    );
    assert!(
        tokio::task::spawn_blocking(move || process.terminate())
            .await
            .unwrap()
    );
}
