//! The floor: a `ConsentAuthority` server that does no work, so `check --addr <floor>` measures
//! what gRPC, HTTP/2, the runtime and the benchmark client cost on this machine, and
//! `check --floor-addr` can show how much callgate adds on top.
//!
//! `CheckCallPermission` returns one constant answer of the real shape (every field set);
//! `CheckCallPermissions` returns that answer once per pair; the other methods are
//! `UNIMPLEMENTED`. Its evidence source is [`SOURCE`], which the `check` scenario recognises and
//! does not verify against the population.

use std::future::Future;
use std::pin::Pin;

use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use callgate::pb::{self, consent_authority_server::ConsentAuthority};

/// Evidence source of every floor answer.
pub const SOURCE: &str = "floor";

/// The do-nothing service.
pub struct Floor {
    answer: pb::CheckCallPermissionResponse,
}

impl Default for Floor {
    fn default() -> Self {
        let at = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
        Floor {
            answer: pb::CheckCallPermissionResponse {
                allowed: true,
                state: pb::ConsentState::GrantedPermanent as i32,
                expires_at: Some(at(1_800_000_000)),
                decided_at: Some(at(1_768_473_000)),
                evidence: Some(pb::Evidence {
                    message_id: "wamid.floor".into(),
                    paired_message_id: "wamid.floor.template".into(),
                    source: SOURCE.into(),
                    response_source: "user_initiated".into(),
                    sender_customer_id: "customer_floor".into(),
                    body_sha256: "0".repeat(64),
                    stated_decided_at: Some(at(1_768_473_000)),
                    stated_expires_at: None,
                }),
                business_number: "+919000000000".into(),
                customer_number: "+919800000000".into(),
                ..Default::default()
            },
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ConsentEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ConsentAuthority for Floor {
    async fn check_call_permission(
        &self,
        _request: Request<pb::CheckCallPermissionRequest>,
    ) -> Result<Response<pb::CheckCallPermissionResponse>, Status> {
        Ok(Response::new(self.answer.clone()))
    }

    async fn check_call_permissions(
        &self,
        request: Request<pb::CheckCallPermissionsRequest>,
    ) -> Result<Response<pb::CheckCallPermissionsResponse>, Status> {
        let results = request
            .get_ref()
            .checks
            .iter()
            .map(|_| pb::CheckResult {
                result: Some(pb::check_result::Result::Answer(self.answer.clone())),
            })
            .collect();
        Ok(Response::new(pb::CheckCallPermissionsResponse { results }))
    }

    type StreamGrantsStream = EventStream;

    async fn stream_grants(
        &self,
        _request: Request<pb::StreamGrantsRequest>,
    ) -> Result<Response<Self::StreamGrantsStream>, Status> {
        Err(Status::unimplemented("the floor does not stream"))
    }

    async fn get_consent_history(
        &self,
        _request: Request<pb::GetConsentHistoryRequest>,
    ) -> Result<Response<pb::GetConsentHistoryResponse>, Status> {
        Err(Status::unimplemented("the floor keeps no history"))
    }

    // issue 14
    type ExportDecisionsStream =
        Pin<Box<dyn Stream<Item = Result<pb::ExportedDecision, Status>> + Send>>;

    async fn export_decisions(
        &self,
        _request: Request<pb::ExportDecisionsRequest>,
    ) -> Result<Response<Self::ExportDecisionsStream>, Status> {
        Err(Status::unimplemented("the floor keeps no history"))
    }

    async fn register_consent_request(
        &self,
        _request: Request<pb::RegisterConsentRequestRequest>,
    ) -> Result<Response<pb::RegisterConsentRequestResponse>, Status> {
        Err(Status::unimplemented("the floor keeps no requests"))
    }

    async fn can_request_consent(
        &self,
        _request: Request<pb::CanRequestConsentRequest>,
    ) -> Result<Response<pb::CanRequestConsentResponse>, Status> {
        Err(Status::unimplemented("the floor keeps no requests"))
    }

    // issue 17: the floor delivers no webhooks.

    async fn create_webhook_subscription(
        &self,
        _request: Request<pb::CreateWebhookSubscriptionRequest>,
    ) -> Result<Response<pb::CreateWebhookSubscriptionResponse>, Status> {
        Err(Status::unimplemented("the floor delivers no webhooks"))
    }

    async fn list_webhook_subscriptions(
        &self,
        _request: Request<pb::ListWebhookSubscriptionsRequest>,
    ) -> Result<Response<pb::ListWebhookSubscriptionsResponse>, Status> {
        Err(Status::unimplemented("the floor delivers no webhooks"))
    }

    async fn disable_webhook_subscription(
        &self,
        _request: Request<pb::WebhookSubscriptionId>,
    ) -> Result<Response<pb::WebhookSubscription>, Status> {
        Err(Status::unimplemented("the floor delivers no webhooks"))
    }

    async fn enable_webhook_subscription(
        &self,
        _request: Request<pb::WebhookSubscriptionId>,
    ) -> Result<Response<pb::WebhookSubscription>, Status> {
        Err(Status::unimplemented("the floor delivers no webhooks"))
    }

    async fn rotate_webhook_secret(
        &self,
        _request: Request<pb::WebhookSubscriptionId>,
    ) -> Result<Response<pb::CreateWebhookSubscriptionResponse>, Status> {
        Err(Status::unimplemented("the floor delivers no webhooks"))
    }

    async fn replay_webhook_subscription(
        &self,
        _request: Request<pb::ReplayWebhookSubscriptionRequest>,
    ) -> Result<Response<pb::WebhookSubscription>, Status> {
        Err(Status::unimplemented("the floor delivers no webhooks"))
    }

    async fn list_callable(
        &self,
        _request: Request<pb::ListCallableRequest>,
    ) -> Result<Response<pb::ListCallableResponse>, Status> {
        Err(Status::unimplemented("the floor keeps no calling lists"))
    }
}

/// Serves the floor on `listener` until `shutdown` completes.
///
/// `TCP_NODELAY` is set on each accepted socket by [`TcpIncoming`]: `Server::tcp_nodelay` is
/// ignored by `serve_with_incoming*`, and without it Nagle's algorithm meets the client's
/// delayed ACKs and stalls a connection for about 40 ms now and then.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(pb::consent_authority_server::ConsentAuthorityServer::new(
            Floor::default(),
        ))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
