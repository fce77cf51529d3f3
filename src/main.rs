//! The `callgate` binary: telemetry, config, build the store, run until a signal.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use callgate::cli::records;
use callgate::config::{self, Config, Flags};
use callgate::export::Format;
use callgate::store::ConsentStore;
use callgate::store::memory::{MemoryConfig, MemoryStore};
use callgate::store::redis::{RedisConfig, RedisStore};
use callgate::{app, cli, pb, telemetry};

/// mimalloc, not the system allocator (issue 16: BENCHMARKS.md measures both).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Only grants attributed to these teams (repeatable; issue 13). Denials and expiries
        /// reach every team.
        #[arg(long = "team")]
        teams: Vec<String>,
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
    /// Manage outbound webhook subscriptions (issue 17) of a running callgate.
    Webhooks {
        #[command(subcommand)]
        command: cli::webhooks::WebhooksCommand,
    },
    /// Write every decision of a business in a time range to a file, NDJSON or CSV, from a
    /// running callgate (issue 14; needs the `history` scope).
    Export {
        #[command(flatten)]
        range: RangeFlags,
        /// ndjson or csv
        #[arg(long, default_value = "ndjson")]
        format: String,
        /// The file to write (written as FILE.partial, renamed when complete)
        #[arg(long)]
        out: std::path::PathBuf,
        #[command(flatten)]
        conn: cli::ConnectArgs,
    },
    /// The tamper-evident record (issue 14).
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// Issue 14: `callgate audit …`.
#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chains: of an export file (--file), or of every pair of the given
    /// businesses through a running callgate (--business). Exit code 2 if any chain is broken.
    Verify {
        /// An NDJSON export to check offline
        #[arg(long, conflicts_with = "businesses")]
        file: Option<std::path::PathBuf>,
        /// Walk every pair of this business (repeatable)
        #[arg(long = "business", required_unless_present = "file")]
        businesses: Vec<String>,
        /// Only pairs with a decision at or after this RFC 3339 time [default: all]
        #[arg(long)]
        from: Option<String>,
        /// Only pairs with a decision before this RFC 3339 time [default: all]
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        conn: cli::ConnectArgs,
    },
}

/// Issue 14: the range of `callgate export`.
#[derive(clap::Args)]
struct RangeFlags {
    /// The business number
    #[arg(long)]
    business: String,
    /// RFC 3339, inclusive
    #[arg(long)]
    from: String,
    /// RFC 3339, exclusive
    #[arg(long)]
    to: String,
    /// Which time the range is about: event or received
    #[arg(long, default_value = "received")]
    by: String,
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
            teams,
            resume_after,
        } => {
            let request = pb::StreamGrantsRequest {
                business_numbers: businesses,
                include_denials,
                include_expiries,
                resume_after: resume_after.unwrap_or_default(),
                teams,
                ..Default::default()
            };
            finish(cli::watch(&conn, request).await);
            Ok(())
        }
        Command::Keygen => {
            print!("{}", cli::keygen()?);
            Ok(())
        }
        Command::Webhooks { command } => {
            finish(cli::webhooks::run(command).await);
            Ok(())
        }
        Command::Export {
            range,
            format,
            out,
            conn,
        } => {
            let rows = finish_records(export(&range, &format, &out, &conn).await);
            eprintln!("exported {rows} decisions to {}", out.display());
            Ok(())
        }
        Command::Audit(AuditCommand::Verify {
            file,
            businesses,
            from,
            to,
            conn,
        }) => {
            let report = finish_records(audit_verify(file, businesses, from, to, &conn).await);
            let _ = report.print(&mut std::io::stdout());
            if !report.breaks.is_empty() {
                std::process::exit(records::EXIT_BROKEN);
            }
            Ok(())
        }
    }
}

/// Issue 14: `callgate export`.
async fn export(
    range: &RangeFlags,
    format: &str,
    out: &std::path::Path,
    conn: &cli::ConnectArgs,
) -> Result<u64, records::RecordsError> {
    let format = Format::parse(format).ok_or_else(|| records::RecordsError::Invalid {
        field: "--format",
        message: format!("{format:?}: must be ndjson or csv"),
    })?;
    let range = records::RangeArgs {
        business: range.business.clone(),
        from: records::parse_time("--from", &range.from)?,
        to: records::parse_time("--to", &range.to)?,
        by: range.by.clone(),
    };
    records::export(conn, &range, format, out).await
}

/// Issue 14: `callgate audit verify`.
async fn audit_verify(
    file: Option<std::path::PathBuf>,
    businesses: Vec<String>,
    from: Option<String>,
    to: Option<String>,
    conn: &cli::ConnectArgs,
) -> Result<records::AuditReport, records::RecordsError> {
    if let Some(file) = file {
        return records::verify_file(&file);
    }
    let from = match from {
        Some(f) => records::parse_time("--from", &f)?,
        None => chrono::DateTime::UNIX_EPOCH,
    };
    let to = match to {
        Some(t) => records::parse_time("--to", &t)?,
        None => records::END_OF_TIME,
    };
    let ranges: Vec<records::RangeArgs> = businesses
        .into_iter()
        .map(|business| records::RangeArgs {
            business,
            from,
            to,
            by: "received".into(),
        })
        .collect();
    records::verify_service(conn, &ranges).await
}

/// An export or audit failure is one line on stderr and exit code 1.
fn finish_records<T>(result: Result<T, records::RecordsError>) -> T {
    result.unwrap_or_else(|e| {
        eprintln!("callgate: {e}");
        std::process::exit(1);
    })
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
                layout: config.redis_layout,
                hot_buckets: config.redis_hot_buckets,
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
                layout = ?store.config().layout,
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
