//! Issue 14: exports of a business's decisions, as NDJSON or CSV rows: the one definition of a
//! row (columns, their order and spelling), shared by `GET /v1/export`, `callgate export` (from
//! the gRPC `ExportDecisions` stream) and `callgate audit verify --file` (which reads rows back
//! and checks their chain).
//!
//! Rows are produced one store page at a time ([`Pager`], [`EXPORT_PAGE`] decisions), so an
//! export of any size holds one page in memory, never the whole range.
//!
//! Times are RFC 3339 in UTC with milliseconds (`2026-11-25T18:00:00.123Z`), empty when absent.
//! Hashes are lower-case hex. CSV follows RFC 4180: a header line, `,` between fields, CRLF
//! line ends, a field quoted (`"`, doubled inside) when it holds `,`, `"`, CR or LF; `labels`
//! is a JSON object in one field.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{
    Attribution, ChainLink, Choice, Decision, Evidence, Hash, HistoryEntry, HistoryOutcome, Pair,
    PhoneNumber, Source,
};
use crate::pb;
use crate::store::{ConsentStore, RecordedDecision, RecordsPosition, RecordsRange, StoreError};

/// Decisions read from the store per page of an export.
pub const EXPORT_PAGE: usize = 500;

/// The `record` column: what the pair's history holds at the row's position.
pub const RECORD_CHAINED: &str = "chained";
pub const RECORD_PRE_CHAIN: &str = "pre_chain";
pub const RECORD_GONE: &str = "gone";

/// One exported decision. Field order is the CSV column order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRow {
    pub business: String,
    pub customer: String,
    /// Position in the pair's history.
    pub position: u64,
    /// [`RECORD_CHAINED`], [`RECORD_PRE_CHAIN`] or [`RECORD_GONE`].
    pub record: String,
    /// `grant_permanent`, `grant_temporary`, `deny`.
    pub decision: String,
    /// `applied` or `stale`.
    pub outcome: String,
    pub event_time: String,
    pub received_time: String,
    pub expires_at: String,
    pub team: String,
    pub campaign: String,
    pub labels: BTreeMap<String, String>,
    pub customer_name: String,
    pub source: String,
    pub message_id: String,
    pub paired_message_id: String,
    pub response_source: String,
    pub sender_customer_id: String,
    pub body_sha256: String,
    pub stated_event_time: String,
    pub stated_expires_at: String,
    pub prev_hash: String,
    pub entry_hash: String,
}

/// The CSV header: [`ExportRow`]'s fields in order.
pub const CSV_COLUMNS: [&str; 23] = [
    "business",
    "customer",
    "position",
    "record",
    "decision",
    "outcome",
    "event_time",
    "received_time",
    "expires_at",
    "team",
    "campaign",
    "labels",
    "customer_name",
    "source",
    "message_id",
    "paired_message_id",
    "response_source",
    "sender_customer_id",
    "body_sha256",
    "stated_event_time",
    "stated_expires_at",
    "prev_hash",
    "entry_hash",
];

/// An export's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ndjson" => Some(Format::Ndjson),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
        }
    }

    /// What comes before the first row (the CSV header).
    pub fn head(self) -> Vec<u8> {
        match self {
            Format::Ndjson => Vec::new(),
            Format::Csv => {
                let mut out = Vec::new();
                csv_line(&mut out, CSV_COLUMNS.iter().map(|c| c.to_string()));
                out
            }
        }
    }

    /// Appends `row` to `out`.
    pub fn write_row(self, out: &mut Vec<u8>, row: &ExportRow) {
        match self {
            Format::Ndjson => {
                // A row always serialises: plain strings, numbers and a string map.
                if serde_json::to_writer(&mut *out, row).is_ok() {
                    out.push(b'\n');
                }
            }
            Format::Csv => csv_line(out, row.csv_fields()),
        }
    }
}

fn csv_line(out: &mut Vec<u8>, fields: impl Iterator<Item = String>) {
    for (i, f) in fields.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if f.contains([',', '"', '\r', '\n']) {
            out.push(b'"');
            out.extend_from_slice(f.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(f.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A time as exported.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(field: &str, s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{field}: {s:?} is not an RFC 3339 time: {e}"))
}

fn parse_opt_time(field: &str, s: &str) -> Result<Option<DateTime<Utc>>, String> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse_time(field, s).map(Some)
    }
}

fn parse_hash(field: &str, s: &str) -> Result<Hash, String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| format!("{field}: {s:?} is not 64 hex digits"))?;
    Ok(out)
}

impl ExportRow {
    /// The row of one decision the store listed.
    pub fn from_recorded(r: &RecordedDecision) -> Self {
        let mut row = ExportRow {
            business: r.pair.business.to_string(),
            customer: r.pair.customer.to_string(),
            position: r.position,
            record: RECORD_GONE.into(),
            ..ExportRow::default()
        };
        if let Some(entry) = &r.entry {
            row.fill(entry, r.link.as_ref());
        }
        row
    }

    fn fill(&mut self, entry: &HistoryEntry, link: Option<&ChainLink>) {
        let d = &entry.decision;
        let e = &d.evidence;
        self.record = if link.is_some() {
            RECORD_CHAINED
        } else {
            RECORD_PRE_CHAIN
        }
        .into();
        if let Some(link) = link {
            self.position = link.position;
            self.prev_hash = hex::encode(link.prev);
            self.entry_hash = hex::encode(link.hash);
        }
        self.decision = d.choice.name().into();
        self.outcome = match entry.outcome {
            HistoryOutcome::Applied => "applied",
            HistoryOutcome::Stale => "stale",
        }
        .into();
        self.event_time = time(d.decided_at);
        self.received_time = time(entry.received_at);
        self.expires_at = d.choice.expires_at().map(time).unwrap_or_default();
        self.source = e.source.as_str().into();
        self.message_id = e.message_id.clone();
        self.paired_message_id = e.paired_message_id.clone();
        self.response_source = e.response_source.clone();
        self.sender_customer_id = e.sender_customer_id.clone();
        self.body_sha256 = hex::encode(e.body_sha256);
        self.stated_event_time = time(e.stated_at);
        self.stated_expires_at = e.stated_expires_at.map(time).unwrap_or_default();
        if let Some(a) = &d.attribution {
            self.team = a.team.clone();
            self.campaign = a.campaign.clone();
            self.labels = a.labels.clone();
        }
        self.customer_name = d.customer_name.clone().unwrap_or_default();
    }

    /// The row of one message of the gRPC `ExportDecisions` stream.
    pub fn from_pb(m: &pb::ExportedDecision) -> Self {
        let ts = |t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .and_then(crate::grpc_api::from_timestamp)
                .map(time)
                .unwrap_or_default()
        };
        let mut row = ExportRow {
            business: m.business_number.clone(),
            customer: m.customer_number.clone(),
            position: m.position,
            record: m.record.clone(),
            ..ExportRow::default()
        };
        if let Some(h) = &m.entry {
            row.position = h.position;
            row.prev_hash = h.prev_hash.clone();
            row.entry_hash = h.entry_hash.clone();
            row.decision = match pb::DecisionKind::try_from(h.kind) {
                Ok(pb::DecisionKind::GrantPermanent) => "grant_permanent",
                Ok(pb::DecisionKind::GrantTemporary) => "grant_temporary",
                Ok(pb::DecisionKind::Deny) => "deny",
                _ => "",
            }
            .into();
            row.outcome = match pb::HistoryOutcome::try_from(h.outcome) {
                Ok(pb::HistoryOutcome::Applied) => "applied",
                Ok(pb::HistoryOutcome::Stale) => "stale",
                _ => "",
            }
            .into();
            row.team = h.team.clone();
            row.campaign = h.campaign.clone();
            row.labels = h
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            row.customer_name = h.customer_name.clone();
            row.event_time = ts(&h.decided_at);
            row.received_time = ts(&h.received_at);
            row.expires_at = ts(&h.expires_at);
            if let Some(e) = &h.evidence {
                row.source = e.source.clone();
                row.message_id = e.message_id.clone();
                row.paired_message_id = e.paired_message_id.clone();
                row.response_source = e.response_source.clone();
                row.sender_customer_id = e.sender_customer_id.clone();
                row.body_sha256 = e.body_sha256.clone();
                row.stated_event_time = ts(&e.stated_decided_at);
                row.stated_expires_at = ts(&e.stated_expires_at);
            }
        }
        row
    }

    fn csv_fields(&self) -> impl Iterator<Item = String> {
        let labels = if self.labels.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&self.labels).unwrap_or_default()
        };
        [
            self.business.clone(),
            self.customer.clone(),
            self.position.to_string(),
            self.record.clone(),
            self.decision.clone(),
            self.outcome.clone(),
            self.event_time.clone(),
            self.received_time.clone(),
            self.expires_at.clone(),
            self.team.clone(),
            self.campaign.clone(),
            labels,
            self.customer_name.clone(),
            self.source.clone(),
            self.message_id.clone(),
            self.paired_message_id.clone(),
            self.response_source.clone(),
            self.sender_customer_id.clone(),
            self.body_sha256.clone(),
            self.stated_event_time.clone(),
            self.stated_expires_at.clone(),
            self.prev_hash.clone(),
            self.entry_hash.clone(),
        ]
        .into_iter()
    }

    /// The pair of the row.
    pub fn pair(&self) -> Result<Pair, String> {
        let phone =
            |field: &str, s: &str| PhoneNumber::parse(s).map_err(|e| format!("{field}: {s:?} {e}"));
        Ok(Pair::new(
            phone("business", &self.business)?,
            phone("customer", &self.customer)?,
        ))
    }

    /// Rebuilds the history entry and its chain link from the row (what an auditor's tool
    /// does): `None` for a `gone` row.
    pub fn entry(&self) -> Result<Option<(HistoryEntry, Option<ChainLink>)>, String> {
        if self.record == RECORD_GONE {
            return Ok(None);
        }
        let pair = self.pair()?;
        let expires = parse_opt_time("expires_at", &self.expires_at)?;
        let choice = match (self.decision.as_str(), expires) {
            ("grant_permanent", None) => Choice::GrantPermanent,
            ("deny", None) => Choice::Deny,
            ("grant_temporary", Some(expires_at)) => Choice::GrantTemporary { expires_at },
            (other, _) => {
                return Err(format!(
                    "decision: {other:?} with expires_at {:?} is not a decision",
                    self.expires_at
                ));
            }
        };
        let outcome = match self.outcome.as_str() {
            "applied" => HistoryOutcome::Applied,
            "stale" => HistoryOutcome::Stale,
            other => return Err(format!("outcome: {other:?} is not applied or stale")),
        };
        let source = Source::parse(&self.source)
            .ok_or_else(|| format!("source: {:?} is not doubletick or whatsapp", self.source))?;
        let entry = HistoryEntry {
            decision: Decision {
                pair,
                choice,
                decided_at: parse_time("event_time", &self.event_time)?,
                evidence: Evidence {
                    source,
                    message_id: self.message_id.clone(),
                    paired_message_id: self.paired_message_id.clone(),
                    response_source: self.response_source.clone(),
                    sender_customer_id: self.sender_customer_id.clone(),
                    body_sha256: parse_hash("body_sha256", &self.body_sha256)?,
                    stated_at: parse_time("stated_event_time", &self.stated_event_time)?,
                    stated_expires_at: parse_opt_time(
                        "stated_expires_at",
                        &self.stated_expires_at,
                    )?,
                },
                // Issue 13: the attribution columns, if any (not hashed).
                attribution: (!self.team.is_empty()).then(|| Attribution {
                    request_message_id: self.paired_message_id.clone(),
                    team: self.team.clone(),
                    campaign: self.campaign.clone(),
                    labels: self.labels.clone(),
                }),
                customer_name: (!self.customer_name.is_empty()).then(|| self.customer_name.clone()),
            },
            outcome,
            received_at: parse_time("received_time", &self.received_time)?,
        };
        let link = match self.record.as_str() {
            RECORD_PRE_CHAIN => None,
            RECORD_CHAINED => Some(ChainLink {
                position: self.position,
                prev: parse_hash("prev_hash", &self.prev_hash)?,
                hash: parse_hash("entry_hash", &self.entry_hash)?,
            }),
            other => {
                return Err(format!(
                    "record: {other:?} is not chained, pre_chain or gone"
                ));
            }
        };
        Ok(Some((entry, link)))
    }
}

/// Reads a range from the store one page at a time.
pub struct Pager {
    store: Arc<dyn ConsentStore>,
    range: RecordsRange,
    after: Option<RecordsPosition>,
    done: bool,
}

impl Pager {
    pub fn new(store: Arc<dyn ConsentStore>, range: RecordsRange) -> Self {
        Pager {
            store,
            range,
            after: None,
            done: false,
        }
    }

    /// The next page; `None` after the last.
    pub async fn next_page(&mut self) -> Result<Option<Vec<RecordedDecision>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .records_page(&self.range, self.after.as_ref(), EXPORT_PAGE)
            .await?;
        match page.next {
            Some(next) => self.after = Some(next),
            None => self.done = true,
        }
        Ok(Some(page.items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_as_rfc_4180_says() {
        let mut out = Vec::new();
        csv_line(
            &mut out,
            ["plain", "a,b", "say \"hi\"", "two\nlines", ""]
                .into_iter()
                .map(String::from),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\r\n"
        );
        assert_eq!(Format::Csv.head().split(|b| *b == b',').count(), 23);
    }
}
