//! Issue 9, point 5: StreamGrants resumes exactly where the client is.

use std::sync::Arc;

use callgate::pb;
use callgate::store::ConsentStore;
use callgate::store::memory::{MemoryConfig, MemoryStore};
use chrono::Utc;
use tonic::Code;

use crate::helpers::*;
use crate::transport_limits::{
    drain, ids, post_grants, resume_cursor, small_window_client, until_checkpoint,
};

#[tokio::test]
async fn issue9_5_resume_after_shutdown_misses_nothing() {
    let store = memory_store();
    let mut first = spawn_app_with(test_config(), store.clone()).await;
    let since = Utc::now() - chrono::Duration::seconds(1);
    // More than one store read's worth, so a replaying subscription has events queued inside.
    let posted = post_grants(&first, "shut", 700).await;
    // A client that reads slowly (a small HTTP/2 window): the server cannot push far ahead.
    let mut stream = small_window_client(&first)
        .await
        .stream_grants(pb::StreamGrantsRequest {
            since: Some(callgate::grpc_api::timestamp(since)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // One event read: the replay has started. Then shutdown, with most events still queued.
    let head = stream.message().await.unwrap().expect("stream ended");
    first.begin_stop();
    let (mut got, status) = drain(&mut stream).await;
    got.insert(0, head);
    let cursor = resume_cursor(&status);
    // The cursor covers exactly what the client received.
    assert_eq!(got.last().map(|e| e.cursor.clone()), Some(cursor.clone()));
    first.stop().await;

    let second = spawn_app_with(test_config(), store).await;
    let mut resumed = second
        .stream(pb::StreamGrantsRequest {
            resume_after: cursor,
            ..Default::default()
        })
        .await;
    let rest = until_checkpoint(&mut resumed).await;
    let mut all = ids(&got);
    all.extend(ids(&rest));
    assert_eq!(all.len(), posted.len(), "events lost or repeated");
    assert_eq!(all, posted);
}

#[tokio::test]
async fn issue9_5_since_older_than_the_retained_log_starts_at_the_first_retained_event() {
    let store: Arc<dyn ConsentStore> = Arc::new(MemoryStore::new(MemoryConfig {
        max_events: 3,
        ..MemoryConfig::default()
    }));
    let app = spawn_app_with(test_config(), store).await;
    let posted = post_grants(&app, "old", 6).await;
    let mut s = app
        .stream(pb::StreamGrantsRequest {
            since: Some(callgate::grpc_api::timestamp(
                Utc::now() - chrono::Duration::days(30),
            )),
            ..Default::default()
        })
        .await;
    assert_eq!(ids(&until_checkpoint(&mut s).await), posted[3..].to_vec());
}

#[tokio::test]
async fn issue9_5_a_cursor_or_since_in_the_future_is_refused() {
    let app = spawn_app().await;
    let posted = post_grants(&app, "now", 1).await;
    let mut s = app
        .stream(pb::StreamGrantsRequest {
            since: Some(callgate::grpc_api::timestamp(
                Utc::now() - chrono::Duration::minutes(1),
            )),
            ..Default::default()
        })
        .await;
    let got = until_checkpoint(&mut s).await;
    assert_eq!(ids(&got), posted);
    // A cursor from this log, moved past its end.
    let real = got[0].cursor.clone();
    let (prefix, id) = real.rsplit_once('.').unwrap();
    let (ms, _) = id.split_once('-').unwrap();
    let ahead = format!("{prefix}.{}-0", ms.parse::<u64>().unwrap() + 3_600_000);
    let tomorrow = Utc::now() + chrono::Duration::days(1);
    for (what, req) in [
        (
            "cursor",
            pb::StreamGrantsRequest {
                resume_after: ahead,
                ..Default::default()
            },
        ),
        (
            "since",
            pb::StreamGrantsRequest {
                since: Some(callgate::grpc_api::timestamp(tomorrow)),
                ..Default::default()
            },
        ),
    ] {
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            app.grpc().await.stream_grants(req),
        )
        .await
        .expect("no answer");
        let err = answer.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains("future") || err.message().contains("past the end"),
            "{what}: {}",
            err.message()
        );
    }
}
