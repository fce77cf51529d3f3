//! Issue 9, point 3: sockets that never speak and clients that never read cannot hold the
//! service's connections or memory.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Reads until the server closes the connection (or `limit` passes); `None`: still open.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await {
        Ok(_) => Some(buf),
        Err(_) => None,
    }
}

#[tokio::test]
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

#[tokio::test]
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
