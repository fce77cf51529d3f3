//! The `callgate` binary: telemetry, config, build the store, run until a signal.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use callgate::config::{self, Config, Flags, LogFormat};
use callgate::store::ConsentStore;
use callgate::store::memory::{MemoryConfig, MemoryStore};
use callgate::store::redis::{RedisConfig, RedisStore};
use callgate::{app, cli, pb};

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
    /// HTTP (webhook) listen address [env: CALLGATE_HTTP_ADDR] [default: 0.0.0.0:8080]
    #[arg(long)]
    http_addr: Option<String>,
    /// gRPC listen address [env: CALLGATE_GRPC_ADDR] [default: 0.0.0.0:50051]
    #[arg(long)]
    grpc_addr: Option<String>,
    /// Redis URL; unset: embedded in-memory store [env: CALLGATE_REDIS_URL]
    #[arg(long)]
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
                since: None,
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
    let telemetry = init_tracing(config.log_format, config.otlp_endpoint.as_deref())?;

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

/// What must be flushed before exit: the OTLP exporter, when one runs.
struct Telemetry {
    #[cfg(feature = "otlp")]
    otlp: Option<callgate::otlp::Exporter>,
}

impl Telemetry {
    fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(exporter) = self.otlp {
            exporter.shutdown();
        }
    }
}

fn init_tracing(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    #[cfg(feature = "otlp")]
    if let Some(endpoint) = otlp_endpoint {
        let (exporter, layer) = callgate::otlp::Exporter::start(endpoint, BUILD_VERSION)?;
        registry.with(layer).init();
        tracing::info!(endpoint, "exporting spans over OTLP");
        return Ok(Telemetry {
            otlp: Some(exporter),
        });
    }
    registry.init();
    #[cfg(not(feature = "otlp"))]
    if otlp_endpoint.is_some() {
        tracing::warn!(
            "{} is set, but this build has no OTLP export (build with --features otlp); \
             spans are not exported",
            config::ENV_OTLP_ENDPOINT
        );
    }
    Ok(Telemetry {
        #[cfg(feature = "otlp")]
        otlp: None,
    })
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
