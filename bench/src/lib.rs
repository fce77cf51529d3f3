//! `callgate-bench`: bounded, closed-loop load against a running callgate, and a do-nothing
//! floor server to compare it with.
//!
//! Code map:
//! - `population`: the deterministic numbering shared by `preload` and `check`;
//! - `runner`: the closed loop (workers, warm-up, request and time budgets);
//! - `histogram`: the latency histogram; `report`: one line (or JSON object) per scenario;
//! - `grpc`, `http`, `propagation`, `staleness`: the scenarios' workers; `floor`: the floor
//!   server;
//! - `subscribers`: many open StreamGrants streams and the service's memory with them;
//! - `target`: loopback-only address resolution;
//! - `redis_memory`: not a load test: fills an empty Redis through the Redis store and reports
//!   bytes of Redis memory per stored consent, by key kind (from the store's own report).
//!
//! This crate is a client of callgate's public API only (`callgate::pb`, the domain and ingest
//! types, the Redis store); callgate does not depend on it.
//!
//! Every scenario is bounded by `--requests` and `--duration`, whichever comes first, and aims
//! at loopback addresses only unless `--allow-remote` is given. See BENCHMARKS.md.

pub mod floor;
pub mod grpc;
pub mod histogram;
pub mod http;
pub mod population;
pub mod propagation;
pub mod record_prototype;
pub mod redis_floor;
pub mod redis_memory;
pub mod report;
pub mod runner;
pub mod staleness;
pub mod subscribers;
pub mod target;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use report::{Ratio, Report};
use runner::{Bounds, Worker};

/// Why a benchmark could not run (failed requests are counted, not raised).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{addr}: {reason}")]
    Address { addr: String, reason: String },
    #[error("--api-key: {0}")]
    ApiKey(String),
    #[error("{0} is not a loopback address; pass --allow-remote to aim at another host")]
    Remote(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the token is not a valid header value")]
    InvalidToken,
    #[error("cannot subscribe to StreamGrants: {0}")]
    Subscribe(tonic::Status),
    #[error("floor server failed: {0}")]
    Serve(tonic::transport::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Load generator and floor server for callgate.
#[derive(Debug, Parser)]
#[command(name = "callgate-bench", version)]
pub struct Cli {
    /// Print one JSON object per line instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Allow targets (and a floor listen address) that are not loopback.
    #[arg(long, global = true)]
    pub allow_remote: bool,
    /// callgate's API key (a client with the `check` and `stream` scopes), sent with every gRPC
    /// call; the floor ignores it.
    #[arg(long, global = true, env = "CALLGATE_TOKEN", hide_env_values = true)]
    pub api_key: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Post the population's decisions through the webhook port.
    Preload(PreloadArgs),
    /// CheckCallPermission on random pairs of the population.
    Check(CheckArgs),
    /// CheckCallPermissions of --batch-size random pairs per call.
    Batch(BatchArgs),
    /// Webhooks per second into the HTTP port, each with a new message id.
    Ingest(IngestArgs),
    /// Time from a webhook's 200 to a StreamGrants subscriber receiving its event.
    Propagation(PropagationArgs),
    /// Time from a denial's 200 on one replica to DENIED on another (the staleness bound).
    Staleness(StalenessArgs),
    /// Serve a do-nothing ConsentAuthority (the floor) until Ctrl-C.
    Floor(FloorArgs),
    /// Hold many StreamGrants subscribers, fan events out to all, read the service's memory.
    Subscribers(SubscribersArgs),
    /// Fill an empty Redis through the Redis store and report its memory per stored consent.
    RedisMemory(redis_memory::RedisMemoryArgs),
    /// Write the same consents into an empty Redis in the most compact layout known (not
    /// the store's): the memory floor the `redis-memory` figure is compared with.
    RedisMemoryFloor(redis_floor::RedisFloorArgs),
    /// Record the same consents through a prototype of the packed layout's record script:
    /// Redis CPU per call, calls per second, bytes per consent (docs/redis-layout-v2.md).
    RedisRecordPrototype(record_prototype::RecordPrototypeArgs),
}

#[derive(Debug, Args)]
pub struct SubscribersArgs {
    /// callgate's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Subscriptions to open.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// HTTP/2 connections the subscriptions are spread over (servers cap streams per connection).
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Grants to post once every subscription is open; each must reach every subscriber.
    #[arg(long, default_value_t = 100)]
    pub events: u64,
    /// The service's process id, to read its memory from /proc (Linux).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Longest wait for every delivery, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
}

/// Budgets of a closed-loop run. Unset values take the scenario's default.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Requests in flight (workers) [default: check 64, batch 4, ingest 32, propagation 1]
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Most measured requests [default: 10,000,000; propagation 1,000]
    #[arg(long)]
    pub requests: Option<u64>,
    /// Longest measured time in seconds [default: 10; propagation 30]
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
}

#[derive(Debug, Args)]
pub struct GrpcArgs {
    /// callgate's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// HTTP/2 connections; requests are spread over them round-robin.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// callgate's HTTP (webhook) address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// Sent as `Authorization: Bearer <token>` with every webhook.
    #[arg(long, env = "CALLGATE_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct PopulationArgs {
    /// Number of pairs (must match the preload's).
    #[arg(long, default_value_t = population::DEFAULT_POPULATION)]
    pub population: u64,
}

#[derive(Debug, Args)]
pub struct PreloadArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub population: PopulationArgs,
    /// Webhooks in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub grpc: GrpcArgs,
    #[command(flatten)]
    pub population: PopulationArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub compare: CompareArgs,
}

/// Options shared by the gRPC scenarios that can be compared with the floor.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Also run the same load against this floor server and print the ratio.
    #[arg(long)]
    pub floor_addr: Option<String>,
    /// Runs against each target, alternating with the floor; the figures sum all rounds.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Seed of the pair choice (same seed, same pairs).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Ask callgate for each answer's evidence (`include_evidence`); without it callgate
    /// leaves the evidence out, while the floor always sends it.
    #[arg(long)]
    pub include_evidence: bool,
}

#[derive(Debug, Args)]
pub struct BatchArgs {
    #[command(flatten)]
    pub grpc: GrpcArgs,
    #[command(flatten)]
    pub population: PopulationArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Pairs per call (callgate accepts at most 1,000).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    #[command(flatten)]
    pub compare: CompareArgs,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Spread the webhooks over this many pairs, cycling (0: every webhook a new pair). With
    /// fewer pairs than webhooks, most webhooks answer for a pair that already has a history:
    /// the recording path that reads the pair's chain tip.
    #[arg(long, default_value_t = 0)]
    pub pairs: u64,
}

#[derive(Debug, Args)]
pub struct PropagationArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// callgate's gRPC address (for StreamGrants).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Args)]
pub struct StalenessArgs {
    /// Replica A: its HTTP port takes the webhooks (`--http-addr`).
    #[command(flatten)]
    pub http: HttpArgs,
    /// Replica B's gRPC address: the checks go there.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Args)]
pub struct FloorArgs {
    /// Listen address of the floor server.
    #[arg(long, default_value = "127.0.0.1:50061")]
    pub addr: String,
}

/// Defaults of one scenario's budgets.
struct Defaults {
    concurrency: usize,
    requests: u64,
    duration: f64,
}

fn seconds(name: &str, s: f64) -> Result<Duration, BenchError> {
    Duration::try_from_secs_f64(s).map_err(|_| BenchError::Invalid(format!("{name}: {s} seconds")))
}

impl LoadArgs {
    fn bounds(&self, d: Defaults) -> Result<Bounds, BenchError> {
        let concurrency = self.concurrency.unwrap_or(d.concurrency);
        if concurrency == 0 {
            return Err(BenchError::Invalid(
                "--concurrency must be at least 1".into(),
            ));
        }
        Ok(Bounds {
            concurrency,
            requests: self.requests.unwrap_or(d.requests),
            duration: seconds("--duration", self.duration.unwrap_or(d.duration))?,
            warmup: seconds("--warmup", self.warmup)?,
        })
    }
}

impl PopulationArgs {
    fn size(&self) -> Result<u64, BenchError> {
        if self.population == 0 || self.population > population::MAX_POPULATION {
            return Err(BenchError::Invalid(format!(
                "--population must be between 1 and {}",
                population::MAX_POPULATION
            )));
        }
        Ok(self.population)
    }
}

/// Milliseconds since the epoch: a run id that keeps message ids unique across runs.
fn run_id() -> u64 {
    chrono::Utc::now().timestamp_millis().unsigned_abs()
}

/// Runs the command, printing one line (or JSON object) per scenario on stdout and error
/// samples on stderr. Returns the number of failed requests. `shutdown` stops the floor server.
pub async fn run(
    cli: Cli,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<u64, BenchError> {
    let out = Output { json: cli.json };
    let remote = cli.allow_remote;
    grpc::use_api_key(cli.api_key);
    match cli.command {
        Command::Preload(a) => preload(a, remote, &out).await,
        Command::Check(a) => check(a, remote, &out).await,
        Command::Batch(a) => batch(a, remote, &out).await,
        Command::Ingest(a) => ingest(a, remote, &out).await,
        Command::Propagation(a) => propagate(a, remote, &out).await,
        Command::Staleness(a) => staleness(a, remote, &out).await,
        Command::Subscribers(a) => hold_subscribers(a, remote, &out).await,
        Command::RedisMemory(a) => redis_memory::run(a, remote, out.json).await,
        Command::RedisMemoryFloor(a) => redis_floor::run(a, remote, out.json).await,
        Command::RedisRecordPrototype(a) => record_prototype::run(a, remote, out.json).await,
        Command::Floor(a) => {
            let addr = target::resolve(&a.addr, remote).await?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| BenchError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| BenchError::Bind { addr, source })?;
            eprintln!("floor listening on {local}");
            floor::serve(listener, shutdown)
                .await
                .map_err(BenchError::Serve)?;
            Ok(0)
        }
    }
}

/// Where results go.
struct Output {
    json: bool,
}

impl Output {
    fn report(&self, r: &Report) -> u64 {
        if self.json {
            println!("{}", r.json());
        } else {
            println!("{}", r.text());
        }
        for e in &r.measured.tally.error_samples {
            eprintln!("{:<12} error: {e}", r.scenario);
        }
        r.errors()
    }

    fn ratio(&self, r: &Ratio<'_>) {
        if self.json {
            println!("{}", r.json());
        } else {
            println!("{}", r.text());
        }
    }
}

async fn preload(a: PreloadArgs, remote: bool, out: &Output) -> Result<u64, BenchError> {
    let n = a.population.size()?;
    let addr = target::resolve(&a.http.http_addr, remote).await?;
    let concurrency = a.concurrency.max(1);
    let client = http::WebhookClient::new(addr, a.http.token.as_deref(), concurrency)?;
    let next = Arc::new(AtomicU64::new(0));
    let workers = (0..concurrency)
        .map(|_| http::PreloadWorker {
            client: client.clone(),
            next: next.clone(),
            population: n,
        })
        .collect();
    let bounds = Bounds {
        concurrency,
        requests: n,
        duration: seconds("--duration", a.duration)?,
        warmup: Duration::ZERO,
    };
    let measured = runner::run(bounds, workers).await;
    Ok(out.report(&Report {
        scenario: "preload".into(),
        target: addr.to_string(),
        concurrency,
        connections: None,
        measured,
    }))
}

/// What a gRPC scenario runs against, and how long.
struct GrpcPlan<'a> {
    scenario: &'a str,
    grpc: &'a GrpcArgs,
    floor_addr: Option<&'a str>,
    rounds: u32,
    bounds: Bounds,
}

/// Runs a gRPC scenario against `addr` and, if given, the same load against a floor: `rounds`
/// times each, alternating (target, floor, target, floor, ...), so drift in the machine's load
/// hits both alike. Each run gets the full budgets and its own warm-up; the rounds are summed.
async fn against_floor<W: Worker>(
    plan: GrpcPlan<'_>,
    remote: bool,
    out: &Output,
    make: impl Fn(grpc::Connections, u64) -> W,
) -> Result<u64, BenchError> {
    let GrpcPlan {
        scenario,
        grpc,
        floor_addr,
        rounds,
        bounds,
    } = plan;
    let mut targets = vec![(scenario.to_owned(), grpc.addr.as_str())];
    if let Some(f) = floor_addr {
        targets.push((format!("{scenario}@floor"), f));
    }
    let mut runs = Vec::new();
    for (name, addr) in targets {
        let addr = target::resolve(addr, remote).await?;
        let connections = grpc::Connections::new(grpc::connect(addr, grpc.connections).await?);
        runs.push((
            connections,
            Report {
                scenario: name,
                target: addr.to_string(),
                concurrency: bounds.concurrency,
                connections: Some(grpc.connections.max(1)),
                measured: runner::Measured::default(),
            },
        ));
    }
    for _ in 0..rounds.max(1) {
        for (connections, report) in &mut runs {
            let workers = (0..bounds.concurrency as u64)
                .map(|w| make(connections.clone(), w))
                .collect();
            report.measured.add(runner::run(bounds, workers).await);
        }
    }
    for (_, report) in &runs {
        out.report(report);
    }
    if let [(_, target), (_, floor)] = &runs[..] {
        out.ratio(&Ratio { target, floor });
    }
    // Only the target's errors count: the floor's answers are not checked.
    Ok(runs[0].1.errors())
}

async fn check(a: CheckArgs, remote: bool, out: &Output) -> Result<u64, BenchError> {
    let n = a.population.size()?;
    let bounds = a.load.bounds(Defaults {
        concurrency: 64,
        requests: 10_000_000,
        duration: 10.0,
    })?;
    let seed = a.compare.seed;
    let plan = GrpcPlan {
        scenario: "check",
        grpc: &a.grpc,
        floor_addr: a.compare.floor_addr.as_deref(),
        rounds: a.compare.rounds,
        bounds,
    };
    let evidence = a.compare.include_evidence;
    against_floor(plan, remote, out, |connections, w| grpc::CheckWorker {
        connections,
        rng: population::Rng::new(seed, w),
        population: n,
        evidence,
    })
    .await
}

async fn batch(a: BatchArgs, remote: bool, out: &Output) -> Result<u64, BenchError> {
    let n = a.population.size()?;
    if a.batch_size == 0 {
        return Err(BenchError::Invalid(
            "--batch-size must be at least 1".into(),
        ));
    }
    let bounds = a.load.bounds(Defaults {
        concurrency: 4,
        requests: 10_000_000,
        duration: 10.0,
    })?;
    let (seed, size) = (a.compare.seed, a.batch_size);
    let plan = GrpcPlan {
        scenario: "batch",
        grpc: &a.grpc,
        floor_addr: a.compare.floor_addr.as_deref(),
        rounds: a.compare.rounds,
        bounds,
    };
    let evidence = a.compare.include_evidence;
    against_floor(plan, remote, out, |connections, w| grpc::BatchWorker {
        connections,
        rng: population::Rng::new(seed, w),
        population: n,
        size,
        evidence,
    })
    .await
}

async fn ingest(a: IngestArgs, remote: bool, out: &Output) -> Result<u64, BenchError> {
    let bounds = a.load.bounds(Defaults {
        concurrency: 32,
        requests: 10_000_000,
        duration: 10.0,
    })?;
    let addr = target::resolve(&a.http.http_addr, remote).await?;
    let client = http::WebhookClient::new(addr, a.http.token.as_deref(), bounds.concurrency)?;
    let (next, run_id) = (Arc::new(AtomicU64::new(0)), run_id());
    let workers = (0..bounds.concurrency)
        .map(|_| http::IngestWorker {
            client: client.clone(),
            next: next.clone(),
            run_id,
            pairs: a.pairs,
        })
        .collect();
    let measured = runner::run(bounds, workers).await;
    Ok(out.report(&Report {
        scenario: "ingest".into(),
        target: addr.to_string(),
        concurrency: bounds.concurrency,
        connections: None,
        measured,
    }))
}

async fn propagate(a: PropagationArgs, remote: bool, out: &Output) -> Result<u64, BenchError> {
    let bounds = a.load.bounds(Defaults {
        concurrency: 1,
        requests: 1_000,
        duration: 30.0,
    })?;
    let http_addr = target::resolve(&a.http.http_addr, remote).await?;
    let grpc_addr = target::resolve(&a.addr, remote).await?;
    let client = http::WebhookClient::new(http_addr, a.http.token.as_deref(), bounds.concurrency)?;
    let stream_client = grpc::connect(grpc_addr, 1).await?.remove(0);
    let waiters = propagation::Waiters::default();
    let subscriber = propagation::subscribe(stream_client, waiters.clone())
        .await
        .map_err(BenchError::Subscribe)?;
    let (next, run_id) = (Arc::new(AtomicU64::new(0)), run_id());
    let workers = (0..bounds.concurrency)
        .map(|_| propagation::PropagationWorker {
            client: client.clone(),
            waiters: waiters.clone(),
            next: next.clone(),
            run_id,
        })
        .collect();
    let measured = runner::run(bounds, workers).await;
    subscriber.abort();
    Ok(out.report(&Report {
        scenario: "propagation".into(),
        target: format!("{http_addr}->{grpc_addr}"),
        concurrency: bounds.concurrency,
        connections: None,
        measured,
    }))
}

async fn hold_subscribers(
    a: SubscribersArgs,
    remote: bool,
    out: &Output,
) -> Result<u64, BenchError> {
    if a.count == 0 || !(a.duration.is_finite() && a.duration > 0.0) {
        return Err(BenchError::Invalid(
            "--count and --duration must be positive".into(),
        ));
    }
    let http_addr = target::resolve(&a.http.http_addr, remote).await?;
    let grpc_addr = target::resolve(&a.addr, remote).await?;
    let webhooks = http::WebhookClient::new(http_addr, a.http.token.as_deref(), 1)?;
    let clients = grpc::connect(grpc_addr, a.connections.max(1)).await?;
    let o = subscribers::run(
        clients,
        webhooks,
        a.count,
        a.events,
        a.pid,
        Duration::from_secs_f64(a.duration),
    )
    .await?;
    let want = o.subscribers as u64 * o.events;
    let mib = |m: Option<subscribers::Memory>, f: fn(&subscribers::Memory) -> u64| {
        m.map(|m| f(&m) as f64 / 1024.0)
    };
    let (rss_before, rss_after, hwm) = (
        mib(o.before, |m| m.rss_kib),
        mib(o.after, |m| m.rss_kib),
        mib(o.after, |m| m.hwm_kib),
    );
    if out.json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "subscribers", "target": grpc_addr.to_string(),
                "subscribers": o.subscribers, "events": o.events,
                "delivered": o.delivered, "expected": want,
                "fan_out_ms": o.fan_out.as_secs_f64() * 1e3,
                "rss_before_mib": rss_before, "rss_after_mib": rss_after, "hwm_mib": hwm,
            })
        );
    } else {
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} MiB"));
        println!(
            "subscribers  {grpc_addr}  {} streams, {} events: delivered {}/{} in {:.1} ms; \
             service RSS before {} after {} (peak {})",
            o.subscribers,
            o.events,
            o.delivered,
            want,
            o.fan_out.as_secs_f64() * 1e3,
            show(rss_before),
            show(rss_after),
            show(hwm),
        );
    }
    Ok(want.saturating_sub(o.delivered))
}

async fn staleness(a: StalenessArgs, remote: bool, out: &Output) -> Result<u64, BenchError> {
    let bounds = a.load.bounds(Defaults {
        concurrency: 1,
        requests: 500,
        duration: 60.0,
    })?;
    let http_addr = target::resolve(&a.http.http_addr, remote).await?;
    let grpc_addr = target::resolve(&a.addr, remote).await?;
    let writer = http::WebhookClient::new(http_addr, a.http.token.as_deref(), bounds.concurrency)?;
    let readers = grpc::connect(grpc_addr, bounds.concurrency).await?;
    let (next, run_id) = (Arc::new(AtomicU64::new(0)), run_id());
    let workers = readers
        .into_iter()
        .map(|reader| staleness::StalenessWorker {
            writer: writer.clone(),
            reader,
            next: next.clone(),
            run_id,
        })
        .collect();
    let measured = runner::run(bounds, workers).await;
    Ok(out.report(&Report {
        scenario: "staleness".into(),
        target: format!("{http_addr} -> {grpc_addr}"),
        concurrency: bounds.concurrency,
        connections: None,
        measured,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_parses_every_scenario() {
        for args in [
            "callgate-bench preload --population 10000 --concurrency 8 --token t",
            "callgate-bench check --connections 4 --floor-addr 127.0.0.1:50061 --rounds 3 --duration 2",
            "callgate-bench --json batch --batch-size 500 --requests 100",
            "callgate-bench ingest --http-addr 127.0.0.1:9 --concurrency 16 --json",
            "callgate-bench propagation --requests 100 --allow-remote",
            "callgate-bench floor --addr 127.0.0.1:0",
            "callgate-bench redis-memory --redis-url redis://127.0.0.1:6390 --consents 1000",
        ] {
            Cli::try_parse_from(args.split(' ')).unwrap_or_else(|e| panic!("{args}: {e}"));
        }
    }

    #[test]
    fn unset_budgets_take_the_scenario_defaults() {
        let load = LoadArgs {
            concurrency: None,
            requests: Some(5),
            duration: None,
            warmup: 0.5,
        };
        let b = load
            .bounds(Defaults {
                concurrency: 64,
                requests: 1,
                duration: 10.0,
            })
            .unwrap();
        assert_eq!(b.concurrency, 64);
        assert_eq!(b.requests, 5);
        assert_eq!(b.duration, Duration::from_secs(10));
        assert_eq!(b.warmup, Duration::from_millis(500));
    }

    /// The check scenario against a floor on port 0, end to end over a real socket.
    #[tokio::test]
    async fn check_and_batch_run_against_the_floor() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(floor::serve(listener, async {
            let _ = stopped.await;
        }));
        let connections = grpc::Connections::new(grpc::connect(addr, 2).await.unwrap());
        let bounds = Bounds {
            concurrency: 4,
            requests: 200,
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
        };
        let workers = (0..4)
            .map(|w| grpc::CheckWorker {
                connections: connections.clone(),
                rng: population::Rng::new(1, w),
                population: 1000,
                evidence: false,
            })
            .collect();
        let m = runner::run(bounds, workers).await;
        assert_eq!(
            (m.latency.count(), m.tally.get("floor"), m.tally.errors),
            (200, 200, 0)
        );

        let workers = (0..2)
            .map(|w| grpc::BatchWorker {
                connections: connections.clone(),
                rng: population::Rng::new(1, w),
                population: 1000,
                size: 100,
                evidence: false,
            })
            .collect();
        let m = runner::run(
            Bounds {
                requests: 10,
                ..bounds
            },
            workers,
        )
        .await;
        assert_eq!(
            (m.latency.count(), m.tally.items, m.tally.errors),
            (10, 1000, 0)
        );
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
