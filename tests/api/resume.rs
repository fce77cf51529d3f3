//! Issue 9, point 5: StreamGrants resumes exactly where the client is.

use callgate::pb;
use chrono::Utc;

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
