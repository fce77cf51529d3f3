//! The admin RPCs of outbound webhooks (issue 17): request fields to [`Outbound`]'s operations
//! and subscriptions to their protobuf message. A client restricted to some businesses sees
//! and changes only subscriptions filtered to businesses it may see (an unfiltered one would
//! deliver every business's events).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{Api, ApiError, caller, from_timestamp, phone, timestamp};
use crate::domain::{EventKinds, Subscription};
use crate::grpc_api::auth::Caller;
use crate::outbound::Outbound;
use crate::outbound::manage::{ManageError, NewSubscription};
use crate::pb;
use crate::store::WebhookRecord;

impl From<ManageError> for Status {
    fn from(e: ManageError) -> Status {
        match e {
            ManageError::Invalid(_) => Status::invalid_argument(e.to_string()),
            ManageError::NotFound(_) => Status::not_found(e.to_string()),
            ManageError::OutOfRange(_) => Status::out_of_range(e.to_string()),
            ManageError::Contended => Status::aborted(e.to_string()),
            ManageError::Limit(_) => Status::resource_exhausted(e.to_string()),
            ManageError::Store(e) => ApiError::Store(e).into(),
        }
    }
}

/// The message of `record`; `now` counts the secrets signing now.
fn message(record: &WebhookRecord, now: chrono::DateTime<chrono::Utc>) -> pb::WebhookSubscription {
    let s = &record.subscription;
    let kinds = s.kinds.to_string();
    pb::WebhookSubscription {
        id: s.id.clone(),
        url: s.url.clone(),
        kinds: kinds.split(',').map(str::to_owned).collect(),
        business_numbers: s.businesses.iter().map(ToString::to_string).collect(),
        teams: s.teams.clone(),
        campaigns: s.campaigns.clone(),
        state: s.state.as_str().to_owned(),
        reason: s.reason.clone(),
        created_at: Some(timestamp(s.created_at)),
        signing_secrets: s.signing_keys(now).count() as u32,
        cursor: record.cursor.to_string(),
    }
}

/// Whether `caller` may see and manage `sub`.
fn visible(caller: &Caller, sub: &Subscription) -> bool {
    caller.businesses().is_none()
        || (!sub.businesses.is_empty() && sub.businesses.iter().all(|b| caller.may_see(b)))
}

impl Api {
    fn outbound(&self) -> Result<&Arc<Outbound>, Status> {
        self.outbound
            .as_ref()
            .ok_or_else(|| Status::unimplemented("outbound webhooks are not running here"))
    }

    /// The subscription `id`, if the caller may manage it (else NOT_FOUND, as if absent).
    async fn managed(&self, caller: &Caller, id: &str) -> Result<(), Status> {
        let record = self.outbound()?.get(id).await?;
        if visible(caller, &record.subscription) {
            Ok(())
        } else {
            Err(ManageError::NotFound(id.to_owned()).into())
        }
    }

    pub(super) async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookSubscriptionRequest>,
    ) -> Result<Response<pb::CreateWebhookSubscriptionResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let kinds = if req.kinds.is_empty() {
            EventKinds::ALL
        } else {
            EventKinds::parse(&req.kinds.join(","))
                .map_err(|e| ApiError::InvalidArgument(format!("kinds: {e}")))?
        };
        let businesses = req
            .business_numbers
            .iter()
            .map(|b| phone("business_numbers", b))
            .collect::<Result<Vec<_>, _>>()?;
        if caller.businesses().is_some() && businesses.is_empty() {
            return Err(Status::permission_denied(
                "business_numbers: this client may see only some businesses; name them",
            ));
        }
        for b in &businesses {
            self.scope(&caller, "business_numbers", b)?;
        }
        let (record, secret) = self
            .outbound()?
            .create(NewSubscription {
                url: req.url,
                kinds,
                businesses,
                teams: req.teams,
                campaigns: req.campaigns,
            })
            .await?;
        tracing::info!(subscription = %record.subscription.id, client = caller.name(), "webhook subscription created");
        Ok(Response::new(pb::CreateWebhookSubscriptionResponse {
            subscription: Some(message(&record, self.clock.now())),
            secret,
        }))
    }

    pub(super) async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhookSubscriptionsRequest>,
    ) -> Result<Response<pb::ListWebhookSubscriptionsResponse>, Status> {
        let caller = caller(&request)?;
        let all = self.outbound()?.list().await?;
        Ok(Response::new(pb::ListWebhookSubscriptionsResponse {
            subscriptions: all
                .iter()
                .filter(|r| visible(&caller, &r.subscription))
                .map(|r| message(r, self.clock.now()))
                .collect(),
        }))
    }

    pub(super) async fn set_webhook_state(
        &self,
        request: Request<pb::WebhookSubscriptionId>,
        enable: bool,
    ) -> Result<Response<pb::WebhookSubscription>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        self.managed(&caller, &id).await?;
        let outbound = self.outbound()?;
        let record = if enable {
            outbound.enable(&id).await?
        } else {
            outbound.disable(&id).await?
        };
        tracing::info!(subscription = %id, client = caller.name(), enable, "webhook subscription state set");
        Ok(Response::new(message(&record, self.clock.now())))
    }

    pub(super) async fn rotate_webhook_secret(
        &self,
        request: Request<pb::WebhookSubscriptionId>,
    ) -> Result<Response<pb::CreateWebhookSubscriptionResponse>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        self.managed(&caller, &id).await?;
        let (record, secret) = self.outbound()?.rotate_secret(&id).await?;
        tracing::info!(subscription = %id, client = caller.name(), "webhook secret rotated");
        Ok(Response::new(pb::CreateWebhookSubscriptionResponse {
            subscription: Some(message(&record, self.clock.now())),
            secret,
        }))
    }

    pub(super) async fn replay_webhook(
        &self,
        request: Request<pb::ReplayWebhookSubscriptionRequest>,
    ) -> Result<Response<pb::WebhookSubscription>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let since =
            req.since.as_ref().and_then(from_timestamp).ok_or_else(|| {
                ApiError::InvalidArgument("since: required (a valid time)".into())
            })?;
        self.managed(&caller, &req.id).await?;
        let record = self.outbound()?.replay(&req.id, since).await?;
        tracing::info!(subscription = %req.id, client = caller.name(), %since, "webhook replay");
        Ok(Response::new(message(&record, self.clock.now())))
    }
}
