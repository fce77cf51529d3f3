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

/// The crate version, plus the git commit when the build knew it (see build.rs).
const BUILD_VERSION: &str = env!("CALLGATE_BUILD_VERSION");

#[derive(Parser)]
#[command(
    version = BUILD_VERSION,
    about = "callgate: the consent authority for outbound calls",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `serve`'s flags, so `callgate --http-addr ...` runs the service without spelling `serve`.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve(ServeArgs),
    /// Ask CheckCallPermission and print the answer (exit code 0 if allowed, 3 if not, 1 on
    /// error).
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
    /// GET the HTTP port's /healthz; exit 0 if it answers 2xx, 1 otherwise (the container
    /// image's HEALTHCHECK: the image has no curl).
    Healthcheck {
        /// host:port of the HTTP port [default: CALLGATE_HTTP_ADDR with 0.0.0.0 as 127.0.0.1,
        /// else 127.0.0.1:8080]
        #[arg(long)]
        addr: Option<String>,
        #[arg(long, default_value = "/healthz")]
        path: String,
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
    let args = Cli::parse();
    match args.command.unwrap_or(Command::Serve(args.serve)) {
        Command::Serve(args) => serve(args).await,
        Command::Check {
            business,
            customer,
            conn,
        } => {
            let allowed = finish(cli::check(&conn, &business, &customer).await);
            std::process::exit(if allowed { 0 } else { 3 });
        }
        Command::Healthcheck { addr, path } => {
            let addr = addr.unwrap_or_else(|| {
                cli::healthcheck_addr(std::env::var(config::ENV_HTTP_ADDR).ok().as_deref())
            });
            let status = finish(cli::healthcheck(&addr, &path).await);
            println!("healthy: http://{addr}{path} answered {status}");
            Ok(())
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
                ..Default::default()
            };
            finish(cli::watch(&conn, request).await);
            Ok(())
        }
        Command::Keygen => {
            print!("{}", cli::keygen()?);
            Ok(())
        }
    }
}

/// A client subcommand's failure is one line on stderr and exit code 1: no backtrace, no
/// error chain.
fn finish<T>(result: Result<T, cli::ClientError>) -> T {
    result.unwrap_or_else(|e| {
        eprintln!("callgate: {e}");
        std::process::exit(1);
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let flags = Flags {
        http_addr: args.http_addr,
        grpc_addr: args.grpc_addr,
        redis_url: args.redis_url,
        insecure_no_auth: args.insecure_no_auth,
    };
    let config = Config::resolve(&flags, |k| std::env::var(k).ok())?;
    let telemetry = telemetry::init(
        config.log_format,
        config.otlp_endpoint.as_deref(),
        BUILD_VERSION,
    )?;

    let redis = match (&config.redis_url, &config.redis_cluster_nodes) {
        (Some(url), _) => Some(RedisConfig::new(url.clone())),
        (None, Some(nodes)) => Some(RedisConfig::cluster(nodes.clone())),
        (None, None) => None,
    };
    let store: Arc<dyn ConsentStore> = match redis {
        None => {
            tracing::warn!(
                "neither {} nor {} set: using the embedded in-memory store; NOTHING survives a \
                 restart and replicas do not share state",
                config::ENV_REDIS_URL,
                config::ENV_REDIS_CLUSTER_NODES
            );
            Arc::new(MemoryStore::new(MemoryConfig {
                event_retention: config.event_retention,
                ..MemoryConfig::default()
            }))
        }
        Some(redis) => {
            let redis = RedisConfig {
                prefix: config.redis_prefix.clone(),
                timeout: config.redis_timeout,
                health_interval: config.redis_health_interval,
                event_retention: config.event_retention,
                replica_acks: config.redis_replica_acks,
                request_retention: callgate::store::RequestPolicy::new(
                    config.attribution.request_limits.clone(),
                    config.attribution.request_retention,
                )
                .retention,
                ..redis
            };
            let target = redis.redacted_url();
            let cluster = redis.cluster;
            let store = RedisStore::connect(redis).await.map_err(|e| {
                tracing::error!(redis = %target, error = %e, "cannot use this Redis");
                anyhow::anyhow!("cannot use Redis at {target}: {e}")
            })?;
            tracing::info!(
                redis = %target,
                cluster,
                replica_acks = config.redis_replica_acks,
                prefix = %config.redis_prefix,
                "using the Redis store"
            );
            Arc::new(store)
        }
    };

    let shutdown = shutdown_signal();
    let http = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP port {}", config.http_addr))?;
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC port {}", config.grpc_addr))?;
    tracing::info!(
        http = %http.local_addr()?,
        grpc = %grpc.local_addr()?,
        version = BUILD_VERSION,
        "callgate listening"
    );
    app::run(config, store, app::Listeners { http, grpc }, shutdown).await?;
    telemetry.shutdown();
    Ok(())
}

/// Listens for SIGTERM and Ctrl-C from now on (so a signal that arrives right after the ports
/// are announced drains the service instead of killing it) and returns a future that completes
/// on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    #[cfg(unix)]
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        #[cfg(unix)]
        let (term, ctrl_c) = (wait_for(term, "SIGTERM"), wait_for(interrupt, "Ctrl-C"));
        #[cfg(not(unix))]
        let (term, ctrl_c) = (std::future::pending::<()>(), async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        });
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
    }
}

/// Completes when the signal arrives; never, if it could not be listened for.
#[cfg(unix)]
async fn wait_for(signal: std::io::Result<tokio::signal::unix::Signal>, name: &str) {
    match signal {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for {name}");
            std::future::pending::<()>().await;
        }
    }
}
