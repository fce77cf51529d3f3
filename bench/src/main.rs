//! `callgate-bench`: load generator and floor server; the work is in the `callgate_bench` library.

use clap::Parser;

use callgate_bench::{self as bench, Cli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let errors = bench::run(Cli::parse(), shutdown).await?;
    if errors > 0 {
        eprintln!("{errors} requests failed");
        std::process::exit(1);
    }
    Ok(())
}
