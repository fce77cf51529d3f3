//! The `callgate` binary: telemetry, config, build the store, run until a signal.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use callgate::config::{self, Config, Flags};
use callgate::store::ConsentStore;
use callgate::store::memory::{MemoryConfig, MemoryStore};
use callgate::store::redis::{RedisConfig, RedisStore};
use callgate::{app, cli, pb, telemetry};

#[derive(Parser)]
#[command(version, about = "callgate: the consent authority for outbound calls")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve(ServeArgs),
    /// Ask CheckCallPermission and print the answer (exit code 0 if allowed, 3 if not).
    Check {
        business: String,
        customer: String,
        #[command(flatten)]
        conn: cli::ConnectArgs,
    },
    /// Print StreamGrants events as they come.
    Watch {
        #[command(flatten)]
        conn: cli::ConnectArgs,
        /// Only these business numbers (repeatable).
        #[arg(long = "business")]
        businesses: Vec<String>,
        #[arg(long)]
        include_denials: bool,
        #[arg(long)]
        include_expiries: bool,
        /// Resume after this cursor.
        #[arg(long)]
        resume_after: Option<String>,
    },
    /// Print a new random API key and its SHA-256 for the API clients file.
    Keygen,
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    // Help texts name the variables and defaults from `config`, their one source.
    #[arg(long, help = format!(
        "HTTP (webhook) listen address [env: {}] [default: {}]",
        config::ENV_HTTP_ADDR,
        config::DEFAULT_HTTP_ADDR
    ))]
    http_addr: Option<String>,
    #[arg(long, help = format!(
        "gRPC listen address [env: {}] [default: {}]",
        config::ENV_GRPC_ADDR,
        config::DEFAULT_GRPC_ADDR
    ))]
    grpc_addr: Option<String>,
    #[arg(long, help = format!(
        "Redis URL; unset: embedded in-memory store [env: {}]",
        config::ENV_REDIS_URL
    ))]
    redis_url: Option<String>,
    /// Serve the webhook routes and the gRPC API WITHOUT authentication (local demos only)
    #[arg(long)]
    insecure_no_auth: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse()
        .command
        .unwrap_or(Command::Serve(ServeArgs::default()))
    {
        Command::Serve(args) => serve(args).await,
        Command::Check {
            business,
            customer,
            conn,
        } => {
            let allowed = cli::check(&conn, &business, &customer).await?;
            std::process::exit(if allowed { 0 } else { 3 });
        }
        Command::Watch {
            conn,
            businesses,
            include_denials,
            include_expiries,
            resume_after,
        } => {
            let request = pb::StreamGrantsRequest {
                business_numbers: businesses,
                include_denials,
                include_expiries,
                resume_after: resume_after.unwrap_or_default(),
                since: None,
            };
            Ok(cli::watch(&conn, request).await?)
        }
        Command::Keygen => {
            print!("{}", cli::keygen()?);
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let flags = Flags {
        http_addr: args.http_addr,
        grpc_addr: args.grpc_addr,
        redis_url: args.redis_url,
        insecure_no_auth: args.insecure_no_auth,
    };
    let config = Config::resolve(&flags, |k| std::env::var(k).ok())?;
    telemetry::init(config.log_format);

    let store: Arc<dyn ConsentStore> = match &config.redis_url {
        None => {
            tracing::warn!(
                "no {} set: using the embedded in-memory store; NOTHING survives a restart and \
                 replicas do not share state",
                config::ENV_REDIS_URL
            );
            Arc::new(MemoryStore::new(MemoryConfig {
                event_retention: config.event_retention,
                ..MemoryConfig::default()
            }))
        }
        Some(url) => {
            let redis = RedisConfig {
                url: url.expose().to_owned(),
                prefix: config.redis_prefix.clone(),
                timeout: config.redis_timeout,
                health_interval: config.redis_health_interval,
                event_retention: config.event_retention,
            };
            let target = redis.redacted_url();
            let store = RedisStore::connect(redis).await.map_err(|e| {
                tracing::error!(redis = %target, error = %e, "cannot use this Redis");
                anyhow::anyhow!("cannot use Redis at {target}: {e}")
            })?;
            tracing::info!(redis = %target, prefix = %config.redis_prefix, "using the Redis store");
            Arc::new(store)
        }
    };

    let http = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP port {}", config.http_addr))?;
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC port {}", config.grpc_addr))?;
    tracing::info!(
        http = %http.local_addr()?,
        grpc = %grpc.local_addr()?,
        version = env!("CARGO_PKG_VERSION"),
        "callgate listening"
    );
    app::run(
        config,
        store,
        app::Listeners { http, grpc },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
