//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! Hand-rolled on atomics rather than a registry crate: the hot path (a check) pays two clock
//! reads and three relaxed atomic adds, with no locks and no allocation. Every label set is fixed
//! at compile time (enums), so no label can ever carry a phone number or other request data;
//! the one exception, the `client` of API refusals, takes only names from the clients file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::domain::ConsentState;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    /// Per-bucket counts (not cumulative); the last slot is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS.partition_point(|b| *b < secs);
        self.counts[slot].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    #[cfg(test)]
    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// How a check was answered: a consent state, or an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckAnswer {
    State(ConsentState),
    InvalidArgument,
    Unavailable,
}

impl CheckAnswer {
    const ALL: [CheckAnswer; 7] = [
        CheckAnswer::State(ConsentState::NoConsent),
        CheckAnswer::State(ConsentState::GrantedPermanent),
        CheckAnswer::State(ConsentState::GrantedTemporary),
        CheckAnswer::State(ConsentState::Denied),
        CheckAnswer::State(ConsentState::Expired),
        CheckAnswer::InvalidArgument,
        CheckAnswer::Unavailable,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|a| *a == self).unwrap_or(0)
    }

    fn label(self) -> &'static str {
        match self {
            CheckAnswer::State(ConsentState::NoConsent) => "no_consent",
            CheckAnswer::State(ConsentState::GrantedPermanent) => "granted_permanent",
            CheckAnswer::State(ConsentState::GrantedTemporary) => "granted_temporary",
            CheckAnswer::State(ConsentState::Denied) => "denied",
            CheckAnswer::State(ConsentState::Expired) => "expired",
            CheckAnswer::InvalidArgument => "invalid_argument",
            CheckAnswer::Unavailable => "unavailable",
        }
    }
}

/// Which gRPC check call.
#[derive(Debug, Clone, Copy)]
pub enum CheckRpc {
    Single = 0,
    Batch = 1,
}

/// The webhook routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    DoubleTick = 0,
    WhatsApp = 1,
    Other = 2,
}

impl Route {
    const LABELS: [&'static str; 3] = ["doubletick", "whatsapp", "other"];
}

/// What happened to a webhook request: the `outcome` label of `callgate_webhooks_total`.
/// A refusal's label is also its stable error code in the HTTP answer
/// (`WebhookError::status`), so the two never drift apart. Every variant is produced by some
/// request (`tests/api/metrics.rs` shows each one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The decisions were stored (200).
    Stored = 0,
    /// A Meta POST with no call permission reply in it (200, nothing to store).
    Ignored = 1,
    /// Meta's subscription handshake succeeded.
    Verified = 2,
    NotConfigured = 3,
    Unauthorized = 4,
    Forbidden = 5,
    NotFound = 6,
    MethodNotAllowed = 7,
    UnsupportedMediaType = 8,
    BodyTooLarge = 9,
    BodyTimeout = 10,
    BodyUnreadable = 11,
    InvalidJson = 12,
    InvalidField = 13,
    Conflict = 14,
    StoreUnavailable = 15,
}

impl WebhookOutcome {
    /// Every outcome, in label order.
    pub const ALL: [WebhookOutcome; 16] = [
        WebhookOutcome::Stored,
        WebhookOutcome::Ignored,
        WebhookOutcome::Verified,
        WebhookOutcome::NotConfigured,
        WebhookOutcome::Unauthorized,
        WebhookOutcome::Forbidden,
        WebhookOutcome::NotFound,
        WebhookOutcome::MethodNotAllowed,
        WebhookOutcome::UnsupportedMediaType,
        WebhookOutcome::BodyTooLarge,
        WebhookOutcome::BodyTimeout,
        WebhookOutcome::BodyUnreadable,
        WebhookOutcome::InvalidJson,
        WebhookOutcome::InvalidField,
        WebhookOutcome::Conflict,
        WebhookOutcome::StoreUnavailable,
    ];

    /// The label (and, for a refusal, the error code of the answer).
    pub fn label(self) -> &'static str {
        match self {
            WebhookOutcome::Stored => "stored",
            WebhookOutcome::Ignored => "ignored",
            WebhookOutcome::Verified => "verified",
            WebhookOutcome::NotConfigured => "not_configured",
            WebhookOutcome::Unauthorized => "unauthorized",
            WebhookOutcome::Forbidden => "forbidden",
            WebhookOutcome::NotFound => "not_found",
            WebhookOutcome::MethodNotAllowed => "method_not_allowed",
            WebhookOutcome::UnsupportedMediaType => "unsupported_media_type",
            WebhookOutcome::BodyTooLarge => "body_too_large",
            WebhookOutcome::BodyTimeout => "body_timeout",
            WebhookOutcome::BodyUnreadable => "body_unreadable",
            WebhookOutcome::InvalidJson => "invalid_json",
            WebhookOutcome::InvalidField => "invalid_field",
            WebhookOutcome::Conflict => "conflict",
            WebhookOutcome::StoreUnavailable => "store_unavailable",
        }
    }
}

// ---- issue 13: the HTTP port's JSON checks ----

/// The HTTP port's JSON API routes (the `route` label of `callgate_http_api_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRoute {
    /// `POST /v1/check`.
    Check = 0,
    /// `POST /v1/check-batch`.
    CheckBatch = 1,
}

impl ApiRoute {
    const LABELS: [&'static str; 2] = ["check", "check_batch"];
}

/// What happened to a JSON API request: the `outcome` label of
/// `callgate_http_api_requests_total`, and for a refusal the stable `error` code of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiOutcome {
    /// 200: answered (a batch: its stream started).
    Answered = 0,
    Unauthorized = 1,
    Forbidden = 2,
    UnsupportedMediaType = 3,
    BodyTooLarge = 4,
    BodyTimeout = 5,
    BodyUnreadable = 6,
    InvalidJson = 7,
    InvalidField = 8,
    TooManyChecks = 9,
    StoreUnavailable = 10,
    /// Too many batches in progress on this replica.
    Busy = 11,
}

impl ApiOutcome {
    /// Every outcome, in label order.
    pub const ALL: [ApiOutcome; 12] = [
        ApiOutcome::Answered,
        ApiOutcome::Unauthorized,
        ApiOutcome::Forbidden,
        ApiOutcome::UnsupportedMediaType,
        ApiOutcome::BodyTooLarge,
        ApiOutcome::BodyTimeout,
        ApiOutcome::BodyUnreadable,
        ApiOutcome::InvalidJson,
        ApiOutcome::InvalidField,
        ApiOutcome::TooManyChecks,
        ApiOutcome::StoreUnavailable,
        ApiOutcome::Busy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ApiOutcome::Answered => "answered",
            ApiOutcome::Unauthorized => "unauthorized",
            ApiOutcome::Forbidden => "forbidden",
            ApiOutcome::UnsupportedMediaType => "unsupported_media_type",
            ApiOutcome::BodyTooLarge => "body_too_large",
            ApiOutcome::BodyTimeout => "body_timeout",
            ApiOutcome::BodyUnreadable => "body_unreadable",
            ApiOutcome::InvalidJson => "invalid_json",
            ApiOutcome::InvalidField => "invalid_field",
            ApiOutcome::TooManyChecks => "too_many_checks",
            ApiOutcome::StoreUnavailable => "store_unavailable",
            ApiOutcome::Busy => "busy",
        }
    }
}

// ---- end issue 13 ----

/// Store operations, for the error counter.
#[derive(Debug, Clone, Copy)]
pub enum StoreOp {
    Check = 0,
    Record = 1,
    History = 2,
    Events = 3,
    Sweep = 4,
    Ping = 5,
    /// Issue 13: reading a calling list (ListCallable, `GET /v1/callable`).
    List = 6,
}

impl StoreOp {
    const LABELS: [&'static str; 7] = [
        "check", "record", "history", "events", "sweep", "ping", "list",
    ];
}

/// Issue 16: how the replica's check cache took part in one check (the `result` label of
/// `callgate_check_cache_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Answered from the cache.
    Hit = 0,
    /// No usable entry (none, past its deadline, or from before a flush): read the store.
    Miss = 1,
    /// The pair's shard had not heard from the store within the staleness bound: read the
    /// store.
    StaleShard = 2,
    /// The check's `at_least_as_fresh` token was newer than what the shard had applied: read
    /// the store.
    Token = 3,
}

impl CacheResult {
    pub const ALL: [CacheResult; 4] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::StaleShard,
        CacheResult::Token,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::StaleShard => "stale_shard",
            CacheResult::Token => "token",
        }
    }
}

/// Why the gRPC API refused a call (the `reason` label of `callgate_api_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// No `authorization` metadata.
    MissingKey = 0,
    /// `authorization` present but not `Bearer <key>`.
    MalformedKey = 1,
    /// A key no configured client has (including a rotated-out one).
    UnknownKey = 2,
    /// No API client is configured, so every call is refused.
    NotConfigured = 3,
    /// A known client without the scope the RPC needs.
    MissingScope = 4,
    /// A known client asked about a business it may not see.
    OtherBusiness = 5,
}

impl RefusalReason {
    const LABELS: [&'static str; 6] = [
        "missing_key",
        "malformed_key",
        "unknown_key",
        "not_configured",
        "missing_scope",
        "other_business",
    ];

    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// The `client` label of a refusal made before any client was identified.
pub const UNAUTHENTICATED_CLIENT: &str = "unauthenticated";

/// API refusals per client name and reason. The names are those of the clients file (or
/// [`UNAUTHENTICATED_CLIENT`]), so the label set is the configured one: never a key, never a
/// phone number. Only refusals touch the lock, never an admitted call.
#[derive(Default)]
struct Refusals(Mutex<BTreeMap<String, [u64; RefusalReason::LABELS.len()]>>);

// ---- issue 17: outbound webhooks ----

/// One subscription's delivery series on this replica.
#[derive(Default, Clone, Copy)]
struct OutboundSeries {
    delivered: u64,
    retried: u64,
    failing: bool,
    /// `None` while this replica does not deliver the subscription.
    lag_seconds: Option<f64>,
}

/// Outbound delivery series by subscription id. The label set is bounded by the number of
/// subscriptions (at most `outbound::manage::MAX_SUBSCRIPTIONS`), and an id is callgate's own
/// random `wh_…`, never request data.
#[derive(Default)]
struct OutboundMetrics(Mutex<BTreeMap<String, OutboundSeries>>);

impl OutboundMetrics {
    fn with(&self, id: &str, f: impl FnOnce(&mut OutboundSeries)) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match all.get_mut(id) {
            Some(series) => f(series),
            None => {
                let mut series = OutboundSeries::default();
                f(&mut series);
                all.insert(id.to_owned(), series);
            }
        }
    }

    fn render(&self, out: &mut String) {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        type Value = fn(&OutboundSeries) -> Option<f64>;
        let families: [(&str, &str, &str, Value); 4] = [
            (
                "callgate_outbound_delivered_total",
                "counter",
                "Events delivered (2xx) to a webhook subscription by this replica.",
                |s| Some(s.delivered as f64),
            ),
            (
                "callgate_outbound_retries_total",
                "counter",
                "Failed delivery attempts to a webhook subscription that will be retried.",
                |s| Some(s.retried as f64),
            ),
            (
                "callgate_outbound_failing",
                "gauge",
                "1 while a webhook subscription is marked failing (as last seen by this replica).",
                |s| Some(f64::from(u8::from(s.failing))),
            ),
            (
                "callgate_outbound_lag_seconds",
                "gauge",
                "Age of the oldest event not yet delivered to a webhook subscription (0 when \
                 caught up); only on the replica delivering it.",
                |s| s.lag_seconds,
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (id, series) in all.iter() {
                if let Some(v) = value(series) {
                    let _ = writeln!(out, "{name}{{subscription=\"{id}\"}} {v}");
                }
            }
        }
    }
}

/// All of callgate's metrics. One instance per running service.
#[derive(Default)]
pub struct Metrics {
    /// Issue 17: outbound webhook delivery, by subscription.
    outbound: OutboundMetrics,
    api_refusals: Refusals,
    checks: [AtomicU64; 7],
    check_latency: [Histogram; 2],
    /// Single checks' latency by answer (a batch has many answers, so it is not split).
    answer_latency: [Histogram; 7],
    webhooks: [[AtomicU64; WebhookOutcome::ALL.len()]; 3],
    webhook_latency: [Histogram; 3],
    /// issue 13: JSON API requests by route and outcome, and their time to the response head.
    api_requests: [[AtomicU64; ApiOutcome::ALL.len()]; 2],
    api_latency: [Histogram; 2],
    store_errors: [AtomicU64; StoreOp::LABELS.len()],
    open_streams: AtomicI64,
    stream_events: AtomicU64,
    /// StreamGrants streams ended because their client stopped reading.
    stream_stalls: AtomicU64,
    /// Times a slow subscriber fell out of the fan-out ring and read from the store (counted
    /// by the fan-out itself).
    stream_catch_ups: AtomicU64,
    expired: AtomicU64,
    /// Issue 16: checks by how the check cache took part, its flushes, and the oldest
    /// shard's `heard_at` (unix ms; 0: some shard has not heard from the store).
    check_cache: [AtomicU64; CacheResult::ALL.len()],
    check_cache_flushes: AtomicU64,
    check_cache_oldest_heard_ms: AtomicI64,
    /// Whether the store answered the last readiness probe (what `/readyz` and gRPC health say).
    ready: AtomicBool,
}

impl Metrics {
    /// Counts a refused API call of the client named `client` (a configured name, or
    /// [`UNAUTHENTICATED_CLIENT`]).
    pub fn api_refusal(&self, client: &str, reason: RefusalReason) {
        let mut counts = self
            .api_refusals
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match counts.get_mut(client) {
            Some(slot) => slot[reason as usize] += 1,
            None => {
                let mut slot = [0; RefusalReason::LABELS.len()];
                slot[reason as usize] = 1;
                counts.insert(client.to_owned(), slot);
            }
        }
    }

    pub fn check(&self, answer: CheckAnswer) {
        self.checks[answer.index()].fetch_add(1, Relaxed);
    }

    pub fn check_latency(&self, rpc: CheckRpc, d: Duration) {
        self.check_latency[rpc as usize].observe(d);
    }

    /// A single `CheckCallPermission`'s latency: by RPC and by answer.
    pub fn single_check_latency(&self, answer: CheckAnswer, d: Duration) {
        self.check_latency(CheckRpc::Single, d);
        self.answer_latency[answer.index()].observe(d);
    }

    /// Counts a webhook request with its outcome and the time it took to answer.
    pub fn webhook(&self, route: Route, outcome: WebhookOutcome, d: Duration) {
        self.webhooks[route as usize][outcome as usize].fetch_add(1, Relaxed);
        self.webhook_latency[route as usize].observe(d);
    }

    /// Counts a JSON API request with its outcome and the time to its response head (a
    /// batch's: its first chunk of answers).
    pub fn api_request(&self, route: ApiRoute, outcome: ApiOutcome, d: Duration) {
        self.api_requests[route as usize][outcome as usize].fetch_add(1, Relaxed);
        self.api_latency[route as usize].observe(d);
    }

    pub fn store_error(&self, op: StoreOp) {
        self.store_errors[op as usize].fetch_add(1, Relaxed);
    }

    pub fn stream_opened(&self) {
        self.open_streams.fetch_add(1, Relaxed);
    }

    pub fn stream_closed(&self) {
        self.open_streams.fetch_sub(1, Relaxed);
    }

    pub fn stream_event(&self) {
        self.stream_events.fetch_add(1, Relaxed);
    }

    pub fn stream_stalled(&self) {
        self.stream_stalls.fetch_add(1, Relaxed);
    }

    pub fn stream_caught_up(&self) {
        self.stream_catch_ups.fetch_add(1, Relaxed);
    }

    /// Times a subscriber fell behind the fan-out ring and caught up from the store.
    pub fn stream_catch_ups(&self) -> u64 {
        self.stream_catch_ups.load(Relaxed)
    }

    /// Issue 16: one check's part of the check cache.
    pub fn check_cache(&self, result: CacheResult) {
        self.check_cache[result as usize].fetch_add(1, Relaxed);
    }

    /// Issue 16: checks counted with `result` so far.
    pub fn check_cache_count(&self, result: CacheResult) -> u64 {
        self.check_cache[result as usize].load(Relaxed)
    }

    /// Issue 16: a shard of the check cache was flushed (tailer error, gap, restart).
    pub fn check_cache_flushed(&self) {
        self.check_cache_flushes.fetch_add(1, Relaxed);
    }

    /// Issue 16: the oldest shard's `heard_at` (unix ms), 0 when one never heard.
    pub fn check_cache_heard(&self, oldest_ms: i64) {
        self.check_cache_oldest_heard_ms.store(oldest_ms, Relaxed);
    }

    pub fn expired(&self, n: usize) {
        self.expired.fetch_add(n as u64, Relaxed);
    }

    /// Issue 17: an event delivered to subscription `id`.
    pub fn outbound_delivered(&self, id: &str) {
        self.outbound.with(id, |s| s.delivered += 1);
    }

    /// Issue 17: a failed attempt to subscription `id` that will be retried.
    pub fn outbound_retried(&self, id: &str) {
        self.outbound.with(id, |s| s.retried += 1);
    }

    /// Issue 17: whether subscription `id` is marked failing.
    pub fn outbound_failing(&self, id: &str, failing: bool) {
        self.outbound.with(id, |s| s.failing = failing);
    }

    /// Issue 17: subscription `id`'s lag, or `None` when this replica stops delivering it.
    pub fn outbound_lag(&self, id: &str, lag_seconds: Option<f64>) {
        self.outbound.with(id, |s| s.lag_seconds = lag_seconds);
    }

    /// Records the outcome of the periodic store probe behind readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let _ = writeln!(out, "# HELP callgate_build_info Build information.");
        let _ = writeln!(out, "# TYPE callgate_build_info gauge");
        let _ = writeln!(
            out,
            "callgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );

        let _ = writeln!(
            out,
            "# HELP callgate_checks_total Consent checks answered, by answer."
        );
        let _ = writeln!(out, "# TYPE callgate_checks_total counter");
        for a in CheckAnswer::ALL {
            let n = self.checks[a.index()].load(Relaxed);
            let _ = writeln!(out, "callgate_checks_total{{answer=\"{}\"}} {n}", a.label());
        }

        let _ = writeln!(
            out,
            "# HELP callgate_check_cache_total Checks by how the replica's check cache took \
             part (issue 16)."
        );
        let _ = writeln!(out, "# TYPE callgate_check_cache_total counter");
        for r in CacheResult::ALL {
            let n = self.check_cache[r as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "callgate_check_cache_total{{result=\"{}\"}} {n}",
                r.label()
            );
        }

        let _ = writeln!(
            out,
            "# HELP callgate_check_duration_seconds Time to answer a check RPC."
        );
        let _ = writeln!(out, "# TYPE callgate_check_duration_seconds histogram");
        for (rpc, h) in ["single", "batch"].iter().zip(&self.check_latency) {
            h.render(
                &mut out,
                "callgate_check_duration_seconds",
                &format!("rpc=\"{rpc}\""),
            );
        }

        let _ = writeln!(
            out,
            "# HELP callgate_check_answer_duration_seconds Time to answer a single \
             CheckCallPermission, by answer."
        );
        let _ = writeln!(
            out,
            "# TYPE callgate_check_answer_duration_seconds histogram"
        );
        for a in CheckAnswer::ALL {
            self.answer_latency[a.index()].render(
                &mut out,
                "callgate_check_answer_duration_seconds",
                &format!("answer=\"{}\"", a.label()),
            );
        }

        let _ = writeln!(
            out,
            "# HELP callgate_webhooks_total Webhook requests, by route and outcome."
        );
        let _ = writeln!(out, "# TYPE callgate_webhooks_total counter");
        for (r, route) in Route::LABELS.iter().enumerate() {
            for outcome in WebhookOutcome::ALL {
                let n = self.webhooks[r][outcome as usize].load(Relaxed);
                if n > 0 || outcome == WebhookOutcome::Stored {
                    let _ = writeln!(
                        out,
                        "callgate_webhooks_total{{route=\"{route}\",outcome=\"{}\"}} {n}",
                        outcome.label()
                    );
                }
            }
        }

        let _ = writeln!(
            out,
            "# HELP callgate_webhook_duration_seconds Time to answer a webhook request."
        );
        let _ = writeln!(out, "# TYPE callgate_webhook_duration_seconds histogram");
        for (route, h) in Route::LABELS.iter().zip(&self.webhook_latency) {
            h.render(
                &mut out,
                "callgate_webhook_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }

        let _ = writeln!(
            out,
            "# HELP callgate_http_api_requests_total HTTP JSON API requests, by route and outcome."
        );
        let _ = writeln!(out, "# TYPE callgate_http_api_requests_total counter");
        for (r, route) in ApiRoute::LABELS.iter().enumerate() {
            for outcome in ApiOutcome::ALL {
                let n = self.api_requests[r][outcome as usize].load(Relaxed);
                if n > 0 || outcome == ApiOutcome::Answered {
                    let _ = writeln!(
                        out,
                        "callgate_http_api_requests_total{{route=\"{route}\",outcome=\"{}\"}} {n}",
                        outcome.label()
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP callgate_http_api_duration_seconds Time to the response head of an HTTP JSON \
             API request (a batch: its first chunk of answers)."
        );
        let _ = writeln!(out, "# TYPE callgate_http_api_duration_seconds histogram");
        for (route, h) in ApiRoute::LABELS.iter().zip(&self.api_latency) {
            h.render(
                &mut out,
                "callgate_http_api_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }

        let _ = writeln!(
            out,
            "# HELP callgate_api_refusals_total API calls (gRPC and HTTP JSON) refused, by client \
             and reason."
        );
        let _ = writeln!(out, "# TYPE callgate_api_refusals_total counter");
        let refusals = self
            .api_refusals
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (client, counts) in refusals.iter() {
            for (reason, n) in RefusalReason::LABELS.iter().zip(counts) {
                if *n > 0 {
                    let _ = writeln!(
                        out,
                        "callgate_api_refusals_total{{client=\"{client}\",reason=\"{reason}\"}} {n}"
                    );
                }
            }
        }
        drop(refusals);

        let _ = writeln!(
            out,
            "# HELP callgate_store_errors_total Store calls that failed."
        );
        let _ = writeln!(out, "# TYPE callgate_store_errors_total counter");
        for (i, op) in StoreOp::LABELS.iter().enumerate() {
            let n = self.store_errors[i].load(Relaxed);
            let _ = writeln!(out, "callgate_store_errors_total{{op=\"{op}\"}} {n}");
        }

        let gauges: [(&str, &str, &str, i64); 8] = [
            (
                "callgate_ready",
                "gauge",
                "1 while the store answers the readiness probe (as /readyz and gRPC health), else 0.",
                i64::from(self.ready.load(Relaxed)),
            ),
            (
                "callgate_open_streams",
                "gauge",
                "Open StreamGrants streams.",
                self.open_streams.load(Relaxed),
            ),
            (
                "callgate_stream_events_total",
                "counter",
                "Events sent to StreamGrants subscribers.",
                self.stream_events.load(Relaxed) as i64,
            ),
            (
                "callgate_stream_stalls_total",
                "counter",
                "StreamGrants streams ended because their client stopped reading.",
                self.stream_stalls.load(Relaxed) as i64,
            ),
            (
                "callgate_stream_catch_ups_total",
                "counter",
                "Times a slow subscriber fell out of the fan-out ring and read from the store.",
                self.stream_catch_ups.load(Relaxed) as i64,
            ),
            (
                "callgate_check_cache_flushes_total",
                "counter",
                "Times a shard of the check cache was flushed (tailer error, gap, restart).",
                self.check_cache_flushes.load(Relaxed) as i64,
            ),
            (
                "callgate_check_cache_oldest_heard_ms",
                "gauge",
                "Unix ms at which the least recently heard log shard's tailer read was sent \
                 (0: a shard has not heard); checks of a shard older than the staleness bound \
                 go to the store.",
                self.check_cache_oldest_heard_ms.load(Relaxed),
            ),
            (
                "callgate_grants_expired_total",
                "counter",
                "Temporary grants this replica announced as expired.",
                self.expired.load(Relaxed) as i64,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
        self.outbound.render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let h = Histogram::default();
        for micros in [10, 60, 60, 700, 20_000_000] {
            h.observe(Duration::from_micros(micros));
        }
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.00005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.0001\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.001\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_count 5\n"), "{out}");
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn webhook_outcomes_are_listed_once_in_index_order() {
        for (i, outcome) in WebhookOutcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, i, "{outcome:?}");
        }
        let labels: std::collections::HashSet<_> =
            WebhookOutcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels.len(), WebhookOutcome::ALL.len());
    }

    #[test]
    fn api_outcomes_are_listed_once_in_index_order() {
        for (i, outcome) in ApiOutcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, i, "{outcome:?}");
        }
        let labels: std::collections::HashSet<_> =
            ApiOutcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels.len(), ApiOutcome::ALL.len());
        let m = Metrics::default();
        m.api_request(
            ApiRoute::CheckBatch,
            ApiOutcome::TooManyChecks,
            Duration::from_millis(1),
        );
        let out = m.render();
        for needle in [
            "callgate_http_api_requests_total{route=\"check\",outcome=\"answered\"} 0",
            "callgate_http_api_requests_total{route=\"check_batch\",outcome=\"too_many_checks\"} 1",
            "callgate_http_api_duration_seconds_count{route=\"check_batch\"} 1",
        ] {
            assert!(out.contains(needle), "missing {needle}:\n{out}");
        }
    }

    #[test]
    fn render_has_every_family_and_only_fixed_labels() {
        let m = Metrics::default();
        m.check(CheckAnswer::State(ConsentState::Denied));
        m.webhook(
            Route::DoubleTick,
            WebhookOutcome::InvalidField,
            Duration::from_millis(1),
        );
        m.store_error(StoreOp::Check);
        m.stream_caught_up();
        m.stream_caught_up();
        m.single_check_latency(CheckAnswer::Unavailable, Duration::from_micros(300));
        let out = m.render();
        assert!(m.render().contains("callgate_ready 0\n"));
        m.set_ready(true);
        assert!(m.render().contains("callgate_ready 1\n"));
        let m = Metrics::default();
        m.api_refusal(UNAUTHENTICATED_CLIENT, RefusalReason::UnknownKey);
        m.api_refusal("dialer-eu", RefusalReason::MissingScope);
        let refusals = m.render();
        for needle in [
            "callgate_api_refusals_total{client=\"unauthenticated\",reason=\"unknown_key\"} 1",
            "callgate_api_refusals_total{client=\"dialer-eu\",reason=\"missing_scope\"} 1",
        ] {
            assert!(refusals.contains(needle), "missing {needle}:\n{refusals}");
        }
        for needle in [
            "callgate_build_info{version=",
            "callgate_checks_total{answer=\"denied\"} 1",
            "callgate_webhooks_total{route=\"doubletick\",outcome=\"invalid_field\"} 1",
            "callgate_store_errors_total{op=\"check\"} 1",
            "callgate_stream_catch_ups_total 2",
            "callgate_ready 0",
            "callgate_check_answer_duration_seconds_bucket{answer=\"unavailable\",le=\"0.0005\"} 1",
            "callgate_check_answer_duration_seconds_count{answer=\"denied\"} 0",
            "callgate_check_duration_seconds_count{rpc=\"single\"} 1",
            "callgate_check_duration_seconds_bucket{rpc=\"single\",le=\"+Inf\"} 1",
        ] {
            assert!(out.contains(needle), "missing {needle}:\n{out}");
        }
    }
}
