//! `callgate webhooks add|list|disable|enable|rotate-secret|replay` (issue 17): the outbound
//! webhook admin RPCs from the command line, one line per subscription.

use chrono::{DateTime, Utc};

use super::{ClientError, ConnectArgs, connect};
use crate::grpc_api::timestamp;
use crate::pb;

/// The `webhooks` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum WebhooksCommand {
    /// Register an endpoint; prints `id=<id> secret=<secret>` (the secret is shown only now).
    Add {
        #[command(flatten)]
        conn: ConnectArgs,
        /// https:// (or http://) URL of the receiver
        #[arg(long)]
        url: String,
        /// Event kinds: some of grant,deny,expiry [default: all]
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
        /// Only this business number (repeatable)
        #[arg(long = "business")]
        businesses: Vec<String>,
        /// Only events attributed to this team (repeatable)
        #[arg(long = "team")]
        teams: Vec<String>,
        /// Only events attributed to this campaign (repeatable)
        #[arg(long = "campaign")]
        campaigns: Vec<String>,
    },
    /// Print every subscription, one per line.
    List {
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Stop delivering to a subscription (its cursor is kept).
    Disable {
        #[command(flatten)]
        conn: ConnectArgs,
        #[arg(long)]
        id: String,
    },
    /// Resume a failing or disabled subscription from its kept cursor.
    Enable {
        #[command(flatten)]
        conn: ConnectArgs,
        #[arg(long)]
        id: String,
    },
    /// A new signing secret; prints `id=<id> secret=<secret>`. The old one keeps signing for
    /// the overlap window.
    RotateSecret {
        #[command(flatten)]
        conn: ConnectArgs,
        #[arg(long)]
        id: String,
    },
    /// Deliver again every event logged at or after a time (RFC 3339).
    Replay {
        #[command(flatten)]
        conn: ConnectArgs,
        #[arg(long)]
        id: String,
        #[arg(long)]
        since: DateTime<Utc>,
    },
}

fn or_dash(values: &[String]) -> String {
    if values.is_empty() {
        "-".to_owned()
    } else {
        values.join(",")
    }
}

/// One subscription as one line.
pub fn line(s: &pb::WebhookSubscription) -> String {
    format!(
        "id={} state={} url={} kinds={} businesses={} teams={} campaigns={} secrets={} reason={:?}",
        s.id,
        s.state,
        s.url,
        or_dash(&s.kinds),
        or_dash(&s.business_numbers),
        or_dash(&s.teams),
        or_dash(&s.campaigns),
        s.signing_secrets,
        s.reason,
    )
}

/// Runs one `webhooks` subcommand, printing its answer.
pub async fn run(command: WebhooksCommand) -> Result<(), ClientError> {
    match command {
        WebhooksCommand::Add {
            conn,
            url,
            kinds,
            businesses,
            teams,
            campaigns,
        } => {
            let answer = connect(&conn)
                .await?
                .create_webhook_subscription(pb::CreateWebhookSubscriptionRequest {
                    url,
                    kinds,
                    business_numbers: businesses,
                    teams,
                    campaigns,
                })
                .await?
                .into_inner();
            let id = answer.subscription.map(|s| s.id).unwrap_or_default();
            println!("id={id} secret={}", answer.secret);
        }
        WebhooksCommand::List { conn } => {
            let answer = connect(&conn)
                .await?
                .list_webhook_subscriptions(pb::ListWebhookSubscriptionsRequest {})
                .await?
                .into_inner();
            for s in &answer.subscriptions {
                println!("{}", line(s));
            }
        }
        WebhooksCommand::Disable { conn, id } => {
            let s = connect(&conn)
                .await?
                .disable_webhook_subscription(pb::WebhookSubscriptionId { id })
                .await?
                .into_inner();
            println!("{}", line(&s));
        }
        WebhooksCommand::Enable { conn, id } => {
            let s = connect(&conn)
                .await?
                .enable_webhook_subscription(pb::WebhookSubscriptionId { id })
                .await?
                .into_inner();
            println!("{}", line(&s));
        }
        WebhooksCommand::RotateSecret { conn, id } => {
            let answer = connect(&conn)
                .await?
                .rotate_webhook_secret(pb::WebhookSubscriptionId { id: id.clone() })
                .await?
                .into_inner();
            println!("id={id} secret={}", answer.secret);
        }
        WebhooksCommand::Replay { conn, id, since } => {
            let s = connect(&conn)
                .await?
                .replay_webhook_subscription(pb::ReplayWebhookSubscriptionRequest {
                    id,
                    since: Some(timestamp(since)),
                })
                .await?
                .into_inner();
            println!("{}", line(&s));
        }
    }
    Ok(())
}
