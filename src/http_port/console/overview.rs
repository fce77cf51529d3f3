//! The business overview (counts by state, decisions per day, the latest decisions) and the
//! console's export download.
//!
//! # What an overview costs
//!
//! The overview reads the business's decision index (`ConsentStore::records_page`, by the time
//! callgate received each decision) in pages of [`SCAN_PAGE`], holding one page at a time:
//!
//! - **the chart and the latest decisions**: the last [`DAYS`] UTC days, plus one temporary
//!   grant's window (and the clock skew) before them, so a grant received before the chart's
//!   first day and lapsing inside it counts as an expiry;
//! - **the counts by state**: every decision ever indexed for the business, keeping one small
//!   value per customer (its current decision's choice), evaluated with the app's clock.
//!
//! Each scan stops after [`MAX_SCAN`] decisions and the page says the numbers are partial.
//! So one overview costs at most `2 × MAX_SCAN / SCAN_PAGE` store reads and memory for
//! `MAX_SCAN` customers' choices (a few MB). Results are cached per business for
//! [`CACHE_TTL`] (at most [`CACHE_ENTRIES`] businesses), and only [`CONCURRENT`] overview is
//! computed at a time per replica; another waits up to [`QUEUE_WAIT`] and is then told to
//! retry. None of this takes a lock a check takes: the stores' read paths are shared with
//! `GetConsentHistory`, and the cache and semaphore are the console's own.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use http::{Response, StatusCode};

use super::chart::DayCounts;
use super::pages::{self, OverviewView, StateCounts};
use super::session::Active;
use super::{ConsoleError, Form, business_of, html_response};
use crate::domain::{Choice, ConsentState, HistoryEntry, HistoryOutcome, PhoneNumber, state_at};
use crate::grpc_api::auth::Caller;
use crate::http_port::HttpState;
use crate::http_port::reply::Body;
use crate::store::{RecordsPosition, RecordsRange, StoreError, TimeField};

/// Days the chart shows, today (UTC) included.
pub const DAYS: usize = 30;
/// Latest decisions the overview lists.
pub const LATEST: usize = 20;
/// Decisions read per store call.
pub const SCAN_PAGE: usize = 1000;
/// Most decisions one scan reads.
pub const MAX_SCAN: usize = 200_000;
/// How long a computed overview is shown again before it is recomputed.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Most businesses whose overview is cached.
pub const CACHE_ENTRIES: usize = 64;
/// Overviews computed at once per replica.
pub const CONCURRENT: usize = 1;
/// How long a request waits for its turn to compute.
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Everything an overview shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overview {
    pub counts: StateCounts,
    pub days: Vec<DayCounts>,
    /// Newest first.
    pub latest: Vec<HistoryEntry>,
    /// A scan stopped at [`MAX_SCAN`]: why the numbers are partial.
    pub partial: Option<String>,
    pub computed_at: DateTime<Utc>,
}

/// The cached overviews of this replica, and the turn to compute one.
pub struct OverviewCache {
    entries: Mutex<HashMap<PhoneNumber, Arc<Overview>>>,
    turn: tokio::sync::Semaphore,
}

impl Default for OverviewCache {
    fn default() -> Self {
        OverviewCache {
            entries: Mutex::new(HashMap::new()),
            turn: tokio::sync::Semaphore::new(CONCURRENT),
        }
    }
}

impl OverviewCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<PhoneNumber, Arc<Overview>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached overview of `business`, if computed less than [`CACHE_TTL`] before `now`.
    pub fn fresh(&self, business: &PhoneNumber, now: DateTime<Utc>) -> Option<Arc<Overview>> {
        let ttl = TimeDelta::from_std(CACHE_TTL).unwrap_or(TimeDelta::MAX);
        self.entries()
            .get(business)
            .filter(|o| now >= o.computed_at && now - o.computed_at < ttl)
            .cloned()
    }

    /// Keeps `overview` for `business`, dropping the oldest entry when full.
    pub fn keep(&self, business: PhoneNumber, overview: Arc<Overview>) {
        let mut entries = self.entries();
        if entries.len() >= CACHE_ENTRIES && !entries.contains_key(&business) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, o)| o.computed_at)
                .map(|(b, _)| b.clone());
            if let Some(oldest) = oldest {
                entries.remove(&oldest);
            }
        }
        entries.insert(business, overview);
    }

    /// Waits (at most [`QUEUE_WAIT`]) for the turn to compute an overview.
    pub async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(QUEUE_WAIT, self.turn.acquire())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

/// The first instant of the chart: midnight (UTC) [`DAYS`]` - 1` days before `now`'s day.
pub fn chart_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let today = now.date_naive();
    let first = today - TimeDelta::days(DAYS as i64 - 1);
    first.and_hms_opt(0, 0, 0).map_or(now, |t| t.and_utc())
}

/// Builds the chart and the latest decisions from the decisions received from `scan_from`
/// on, fed in the order callgate received them ([`ChartBuilder::add`]).
pub struct ChartBuilder {
    now: DateTime<Utc>,
    first_day: NaiveDate,
    days: Vec<DayCounts>,
    latest: VecDeque<HistoryEntry>,
    /// Per customer, the expiry of its current decision when that is a temporary grant.
    pending: HashMap<PhoneNumber, DateTime<Utc>>,
}

impl ChartBuilder {
    pub fn new(now: DateTime<Utc>) -> Self {
        let first_day = chart_start(now).date_naive();
        let days = (0..DAYS as i64)
            .map(|i| DayCounts {
                day: first_day + TimeDelta::days(i),
                grants: 0,
                denials: 0,
                expiries: 0,
            })
            .collect();
        ChartBuilder {
            now,
            first_day,
            days,
            latest: VecDeque::with_capacity(LATEST),
            pending: HashMap::new(),
        }
    }

    fn day_mut(&mut self, t: DateTime<Utc>) -> Option<&mut DayCounts> {
        let i = (t.date_naive() - self.first_day).num_days();
        usize::try_from(i).ok().and_then(|i| self.days.get_mut(i))
    }

    /// A temporary grant lapsed at `at`: an expiry, if the chart shows that day.
    fn expired(&mut self, at: DateTime<Utc>) {
        if at <= self.now
            && let Some(day) = self.day_mut(at)
        {
            day.expiries += 1;
        }
    }

    /// The next decision, in the order received.
    pub fn add(&mut self, entry: &HistoryEntry) {
        let customer = &entry.decision.pair.customer;
        if entry.outcome == HistoryOutcome::Applied {
            // The decision it replaced had lapsed already: that was an expiry.
            if let Some(expires_at) = self.pending.remove(customer)
                && expires_at <= entry.received_at
            {
                self.expired(expires_at);
            }
            if let Choice::GrantTemporary { expires_at } = entry.decision.choice {
                self.pending.insert(customer.clone(), expires_at);
            }
        }
        let received = entry.received_at;
        if let Some(day) = self.day_mut(received) {
            match entry.decision.choice {
                Choice::Deny => day.denials += 1,
                Choice::GrantPermanent | Choice::GrantTemporary { .. } => day.grants += 1,
            }
            if self.latest.len() == LATEST {
                self.latest.pop_front();
            }
            self.latest.push_back(entry.clone());
        }
    }

    /// The chart's days (oldest first) and the latest decisions (newest first).
    pub fn finish(mut self) -> (Vec<DayCounts>, Vec<HistoryEntry>) {
        let pending: Vec<_> = self.pending.drain().map(|(_, t)| t).collect();
        for expires_at in pending {
            self.expired(expires_at);
        }
        (self.days, self.latest.into_iter().rev().collect())
    }
}

/// Counts customers by current state from every decision of a business, fed in the order
/// received: a customer's current decision is the last one applied.
#[derive(Default)]
pub struct StateCounter {
    current: HashMap<PhoneNumber, Choice>,
}

impl StateCounter {
    pub fn add(&mut self, entry: &HistoryEntry) {
        if entry.outcome == HistoryOutcome::Applied {
            self.current
                .insert(entry.decision.pair.customer.clone(), entry.decision.choice);
        }
    }

    pub fn finish(self, now: DateTime<Utc>) -> StateCounts {
        let mut counts = StateCounts::default();
        for choice in self.current.into_values() {
            match state_at(&choice, now) {
                ConsentState::GrantedPermanent => counts.granted_permanent += 1,
                ConsentState::GrantedTemporary => counts.granted_temporary += 1,
                ConsentState::Denied => counts.denied += 1,
                ConsentState::Expired => counts.expired += 1,
                ConsentState::NoConsent => {}
            }
        }
        counts
    }
}

/// `POST /console/overview`: the business's overview, from the cache or computed now.
pub(super) async fn page(
    state: &HttpState,
    form: &Form,
    active: &Active,
    caller: &Caller,
) -> Result<Response<Body>, ConsoleError> {
    let business = business_of(form, caller)?;
    let overview = overview_of(state, &business).await?;
    let view = OverviewView {
        business: &business,
        now: state.clock.now(),
        counts: &overview.counts,
        days: &overview.days,
        latest: &overview.latest,
        partial: overview.partial.clone(),
        computed_at: overview.computed_at,
    };
    Ok(html_response(
        StatusCode::OK,
        pages::layout(
            &format!("Business {business}"),
            Some(&active.csrf),
            pages::overview(&active.csrf, &view),
        ),
    ))
}

/// The overview of `business`: cached if fresh, else computed in this replica's turn.
async fn overview_of(
    state: &HttpState,
    business: &PhoneNumber,
) -> Result<Arc<Overview>, ConsoleError> {
    let cache = &state.console.overview;
    if let Some(fresh) = cache.fresh(business, state.clock.now()) {
        return Ok(fresh);
    }
    let Some(_turn) = cache.turn().await else {
        return Err(ConsoleError::Busy(
            "another overview is being computed on this server; try again in a moment",
        ));
    };
    // Another request may have computed it while this one waited.
    if let Some(fresh) = cache.fresh(business, state.clock.now()) {
        return Ok(fresh);
    }
    let overview = Arc::new(compute(state, business).await?);
    cache.keep(business.clone(), overview.clone());
    Ok(overview)
}

/// Reads the business's decisions (by the time received) from `from`, in pages, feeding each
/// to `each`; stops after [`MAX_SCAN`]. `Ok(false)`: stopped early.
async fn scan(
    state: &HttpState,
    business: &PhoneNumber,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    mut each: impl FnMut(&HistoryEntry),
) -> Result<bool, StoreError> {
    let range = RecordsRange {
        business: business.clone(),
        by: TimeField::Received,
        from,
        to,
    };
    let mut after: Option<RecordsPosition> = None;
    let mut read = 0;
    loop {
        let page = state
            .store
            .records_page(&range, after.as_ref(), SCAN_PAGE)
            .await?;
        for item in &page.items {
            // An entry the index names but the history lost is the audit's business
            // (`callgate audit verify`); the overview counts what is there.
            if let Some(entry) = &item.entry {
                each(entry);
            }
        }
        read += page.items.len();
        match page.next {
            Some(next) if read < MAX_SCAN => after = Some(next),
            Some(_) => return Ok(false),
            None => return Ok(true),
        }
    }
}

/// Computes the overview of `business` now (see the module docs for its cost).
async fn compute(state: &HttpState, business: &PhoneNumber) -> Result<Overview, StoreError> {
    let now = state.clock.now();
    // The end of the range is exclusive: one millisecond past now.
    let to = now + TimeDelta::milliseconds(1);
    let dates = &state.ingest.dates;
    let lead = TimeDelta::from_std(dates.temporary_window + dates.max_clock_skew)
        .unwrap_or(TimeDelta::MAX);
    let chart_from = chart_start(now)
        .checked_sub_signed(lead)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut chart = ChartBuilder::new(now);
    let chart_complete = scan(state, business, chart_from, to, |e| chart.add(e)).await?;
    let mut counter = StateCounter::default();
    let counts_complete = scan(state, business, DateTime::<Utc>::MIN_UTC, to, |e| {
        counter.add(e)
    })
    .await?;
    let (days, latest) = chart.finish();
    let partial = match (chart_complete, counts_complete) {
        (true, true) => None,
        (chart_ok, _) => Some(format!(
            "Partial: this business has more than {MAX_SCAN} decisions{}; the {} read the              first {MAX_SCAN}. The export has every decision.",
            if chart_ok { "" } else { " in the chart's days" },
            if chart_ok {
                "counts"
            } else {
                "chart, the latest decisions and the counts"
            },
        )),
    };
    Ok(Overview {
        counts: counter.finish(now),
        days,
        latest,
        partial,
        computed_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Decision, Evidence, Pair, Source};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn entry(
        customer: &str,
        choice: Choice,
        received: &str,
        outcome: HistoryOutcome,
    ) -> HistoryEntry {
        let at = t(received);
        HistoryEntry {
            decision: Decision {
                pair: Pair::new(
                    PhoneNumber::parse("+919000000000").unwrap(),
                    PhoneNumber::parse(customer).unwrap(),
                ),
                choice,
                decided_at: at,
                evidence: Evidence {
                    source: Source::DoubleTick,
                    message_id: format!("m-{received}"),
                    paired_message_id: String::new(),
                    response_source: String::new(),
                    sender_customer_id: String::new(),
                    body_sha256: [0; 32],
                    stated_at: at,
                    stated_expires_at: None,
                },
                attribution: None,
                customer_name: None,
            },
            outcome,
            received_at: at,
        }
    }

    fn temp(until: &str) -> Choice {
        Choice::GrantTemporary {
            expires_at: t(until),
        }
    }

    use HistoryOutcome::{Applied, Stale};

    #[test]
    fn the_chart_counts_grants_denials_and_expiries_per_day() {
        let now = t("2026-11-26T12:00:00Z");
        let mut chart = ChartBuilder::new(now);
        // In the order received.
        let feed = [
            // Received before the chart: only its expiry (28 Oct, the first day) counts.
            entry(
                "+919800000001",
                temp("2026-10-28T09:00:00Z"),
                "2026-10-21T09:00:00Z",
                Applied,
            ),
            // Lapses, then a new grant replaces it: one expiry on 5 Nov.
            entry(
                "+919800000002",
                temp("2026-11-05T09:00:00Z"),
                "2026-10-29T09:00:00Z",
                Applied,
            ),
            entry(
                "+919800000002",
                Choice::GrantPermanent,
                "2026-11-10T09:00:00Z",
                Applied,
            ),
            // Replaced before it lapsed: no expiry.
            entry(
                "+919800000003",
                temp("2026-11-25T08:00:00Z"),
                "2026-11-18T08:00:00Z",
                Applied,
            ),
            // Lapsed this morning and still current: an expiry today.
            entry(
                "+919800000005",
                temp("2026-11-26T08:00:00Z"),
                "2026-11-19T08:00:00Z",
                Applied,
            ),
            entry(
                "+919800000003",
                Choice::Deny,
                "2026-11-20T08:00:00Z",
                Applied,
            ),
            // A stale grant is a decision, but replaces nothing.
            entry(
                "+919800000003",
                temp("2026-11-26T08:00:00Z"),
                "2026-11-20T09:00:00Z",
                Stale,
            ),
            // Still running at `now`: no expiry yet.
            entry(
                "+919800000004",
                temp("2026-11-30T08:00:00Z"),
                "2026-11-23T08:00:00Z",
                Applied,
            ),
        ];
        for e in &feed {
            chart.add(e);
        }
        let (days, latest) = chart.finish();
        assert_eq!(days.len(), DAYS);
        assert_eq!(days[0].day, NaiveDate::from_ymd_opt(2026, 10, 28).unwrap());
        assert_eq!(days[29].day, NaiveDate::from_ymd_opt(2026, 11, 26).unwrap());
        let nonzero: Vec<_> = days
            .iter()
            .filter(|d| d.grants + d.denials + d.expiries > 0)
            .map(|d| {
                (
                    d.day.format("%m-%d").to_string(),
                    d.grants,
                    d.denials,
                    d.expiries,
                )
            })
            .collect();
        let want: Vec<(String, u64, u64, u64)> = vec![
            ("10-28".into(), 0, 0, 1),
            ("10-29".into(), 1, 0, 0),
            ("11-05".into(), 0, 0, 1),
            ("11-10".into(), 1, 0, 0),
            ("11-18".into(), 1, 0, 0),
            ("11-19".into(), 1, 0, 0),
            ("11-20".into(), 1, 1, 0),
            ("11-23".into(), 1, 0, 0),
            ("11-26".into(), 0, 0, 1),
        ];
        assert_eq!(nonzero, want);
        // Newest first, only the chart's days.
        assert_eq!(latest.len(), 7);
        assert_eq!(latest[0].received_at, t("2026-11-23T08:00:00Z"));
        assert_eq!(latest[6].received_at, t("2026-10-29T09:00:00Z"));
    }

    #[test]
    fn the_latest_keep_only_the_newest() {
        let now = t("2026-11-26T12:00:00Z");
        let mut chart = ChartBuilder::new(now);
        for minute in 0..(LATEST + 5) {
            let at = format!("2026-11-26T10:{minute:02}:00Z");
            chart.add(&entry("+919800000001", Choice::Deny, &at, Applied));
        }
        let (days, latest) = chart.finish();
        assert_eq!(days[29].denials, LATEST as u64 + 5);
        assert_eq!(latest.len(), LATEST);
        assert_eq!(
            latest[0].received_at,
            t(&format!("2026-11-26T10:{:02}:00Z", LATEST + 4))
        );
    }

    #[test]
    fn states_count_each_customer_once_by_its_last_applied_decision() {
        let now = t("2026-11-26T12:00:00Z");
        let mut counter = StateCounter::default();
        let feed = [
            entry(
                "+919800000001",
                Choice::GrantPermanent,
                "2026-01-01T00:00:00Z",
                Applied,
            ),
            entry(
                "+919800000001",
                Choice::Deny,
                "2026-02-01T00:00:00Z",
                Applied,
            ),
            entry(
                "+919800000001",
                Choice::GrantPermanent,
                "2026-02-02T00:00:00Z",
                Stale,
            ),
            entry(
                "+919800000002",
                temp("2026-11-30T00:00:00Z"),
                "2026-11-23T00:00:00Z",
                Applied,
            ),
            entry(
                "+919800000003",
                temp("2026-11-20T00:00:00Z"),
                "2026-11-13T00:00:00Z",
                Applied,
            ),
            entry(
                "+919800000004",
                Choice::GrantPermanent,
                "2026-11-13T00:00:00Z",
                Applied,
            ),
        ];
        for e in &feed {
            counter.add(e);
        }
        let counts = counter.finish(now);
        assert_eq!(
            counts,
            StateCounts {
                granted_permanent: 1,
                granted_temporary: 1,
                denied: 1,
                expired: 1,
            }
        );
    }

    #[test]
    fn the_cache_keeps_an_overview_for_its_ttl() {
        let cache = OverviewCache::default();
        let b = PhoneNumber::parse("+919000000000").unwrap();
        let at = t("2026-11-26T12:00:00Z");
        let overview = Arc::new(Overview {
            counts: StateCounts::default(),
            days: vec![],
            latest: vec![],
            partial: None,
            computed_at: at,
        });
        cache.keep(b.clone(), overview);
        assert!(cache.fresh(&b, at + TimeDelta::seconds(29)).is_some());
        assert!(cache.fresh(&b, at + TimeDelta::seconds(30)).is_none());
    }
}
