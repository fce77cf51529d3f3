//! Issue 14: `callgate export` and `callgate audit verify`.
//!
//! Both talk to a running callgate over gRPC (`--addr`, `--token` with the `history` scope,
//! `--tls-ca`), like `check`: they need no Redis address or credentials, work the same on the
//! memory store, Redis and Redis Cluster, and read only what an API key may read.
//!
//! - `export` streams `ExportDecisions` into a file, NDJSON or CSV ([`crate::export`]), writing
//!   each row as it arrives (memory: one message) to `FILE.partial`, renamed to `FILE` only
//!   once the stream ended cleanly: a cut export never looks whole.
//! - `audit verify` either checks an export file offline (`--file`), or walks the store
//!   through a running callgate (`--business`, repeatable): `ExportDecisions` names every pair
//!   of the business with a decision in the range (default: all time) and any index entry
//!   whose history entry is gone, then each pair's **whole** history is read with
//!   `GetConsentHistory` and its chain checked with [`ChainWalk`]. Every break is printed with
//!   the pair and the position; the exit code is 2 if any chain is broken.
//!
//! A progress bar (indicatif) is drawn on stderr only when stderr is a terminal.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};

use super::{ClientError, ConnectArgs, connect};
use crate::domain::chain::{BreakKind, ChainBreak, ChainWalk};
use crate::domain::{ChainLink, GENESIS, HistoryEntry, Pair};
use crate::export::{ExportRow, Format, RECORD_GONE};
use crate::grpc_api::timestamp;
use crate::pb;

/// Exit code of `audit verify` when a chain is broken (1 is any other failure).
pub const EXIT_BROKEN: i32 = 2;

/// The default end of `audit verify`'s range: 10000-01-01T00:00:00Z (the range's end is
/// exclusive).
pub const END_OF_TIME: DateTime<Utc> = match DateTime::from_timestamp(253_402_300_800, 0) {
    Some(t) => t,
    None => DateTime::<Utc>::UNIX_EPOCH,
};

/// Failures of `export` and `audit verify` besides the connection's.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{path} line {line}: {message}")]
    BadRow {
        path: String,
        line: usize,
        message: String,
    },
}

impl From<tonic::Status> for RecordsError {
    fn from(s: tonic::Status) -> Self {
        RecordsError::Client(ClientError::Rpc(s))
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RecordsError + '_ {
    move |source| RecordsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Parses an RFC 3339 time given on the command line.
pub fn parse_time(field: &'static str, value: &str) -> Result<DateTime<Utc>, RecordsError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| RecordsError::Invalid {
            field,
            message: format!("{value:?} is not an RFC 3339 time ({e})"),
        })
}

/// What to export or walk.
#[derive(Debug, Clone)]
pub struct RangeArgs {
    pub business: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// `event` or `received`.
    pub by: String,
}

impl RangeArgs {
    fn request(&self) -> Result<pb::ExportDecisionsRequest, RecordsError> {
        let by = match self.by.as_str() {
            "event" => pb::ExportTimeField::Event,
            "received" => pb::ExportTimeField::Received,
            other => {
                return Err(RecordsError::Invalid {
                    field: "--by",
                    message: format!("{other:?}: must be event or received"),
                });
            }
        };
        Ok(pb::ExportDecisionsRequest {
            business_number: self.business.clone(),
            from: Some(timestamp(self.from)),
            to: Some(timestamp(self.to)),
            by: by as i32,
        })
    }
}

/// A progress bar on stderr if it is a terminal, else a hidden one.
fn progress(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{spinner}} {what}: {{pos}} {{msg}} ({{elapsed}}, {{per_sec}})"
    )) {
        bar.set_style(style);
    }
    bar
}

/// `callgate export`: writes the range to `out`; returns the number of rows.
pub async fn export(
    conn: &ConnectArgs,
    range: &RangeArgs,
    format: Format,
    out: &Path,
) -> Result<u64, RecordsError> {
    let request = range.request()?;
    let mut client = connect(conn).await?;
    let mut stream = client.export_decisions(request).await?.into_inner();
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let file = std::fs::File::create(&partial).map_err(io(&partial))?;
    let mut writer = BufWriter::new(file);
    writer.write_all(&format.head()).map_err(io(&partial))?;
    let bar = progress("rows exported");
    let mut rows = 0u64;
    let mut line = Vec::with_capacity(1024);
    let result: Result<(), RecordsError> = async {
        while let Some(m) = stream.message().await? {
            line.clear();
            format.write_row(&mut line, &ExportRow::from_pb(&m));
            writer.write_all(&line).map_err(io(&partial))?;
            rows += 1;
            bar.inc(1);
        }
        writer.flush().map_err(io(&partial))?;
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    if let Err(e) = result {
        drop(writer);
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    drop(writer);
    std::fs::rename(&partial, out).map_err(io(out))?;
    Ok(rows)
}

/// What `audit verify` found.
#[derive(Debug, Default)]
pub struct AuditReport {
    pub pairs: u64,
    pub entries: u64,
    pub pre_chain: u64,
    /// Every break, by pair.
    pub breaks: Vec<(Pair, ChainBreak)>,
}

impl AuditReport {
    fn add(&mut self, pair: &Pair, walk: ChainWalk) {
        self.pairs += 1;
        self.entries += walk.len();
        self.pre_chain += walk.pre_chain;
        for b in walk.breaks {
            self.breaks.push((pair.clone(), b));
        }
    }

    /// One line per break, then a summary line.
    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        for (pair, b) in &self.breaks {
            writeln!(
                out,
                "BROKEN business={} customer={} position={}: {}",
                pair.business, pair.customer, b.position, b.kind
            )?;
        }
        let broken: BTreeSet<&Pair> = self.breaks.iter().map(|(p, _)| p).collect();
        writeln!(
            out,
            "{}: {} pairs, {} entries ({} pre-chain), {} broken chains, {} breaks",
            if self.breaks.is_empty() {
                "OK"
            } else {
                "BROKEN"
            },
            self.pairs,
            self.entries,
            self.pre_chain,
            broken.len(),
            self.breaks.len()
        )
    }
}

/// `callgate audit verify --business …`: walks every pair of each business with a decision in
/// the range, through a running callgate.
pub async fn verify_service(
    conn: &ConnectArgs,
    ranges: &[RangeArgs],
) -> Result<AuditReport, RecordsError> {
    let mut client = connect(conn).await?;
    let bar = progress("entries verified");
    let mut report = AuditReport::default();
    for range in ranges {
        // The pairs of the business, and index entries whose history entry is gone.
        let mut pairs: BTreeSet<Pair> = BTreeSet::new();
        let mut gone: Vec<(Pair, u64)> = Vec::new();
        let mut stream = client
            .export_decisions(range.request()?)
            .await?
            .into_inner();
        while let Some(m) = stream.message().await? {
            let row = ExportRow::from_pb(&m);
            let pair = row.pair().map_err(|message| RecordsError::Invalid {
                field: "business_number",
                message,
            })?;
            if row.record == RECORD_GONE {
                gone.push((pair.clone(), m.position));
            }
            pairs.insert(pair);
        }
        for pair in pairs {
            bar.set_message(format!("{}", pair.business));
            let mut walk = ChainWalk::new();
            let mut token = String::new();
            loop {
                let page = client
                    .get_consent_history(pb::GetConsentHistoryRequest {
                        business_number: pair.business.to_string(),
                        customer_number: pair.customer.to_string(),
                        page_size: 1000,
                        page_token: token.clone(),
                    })
                    .await?
                    .into_inner();
                for h in &page.entries {
                    match history_of(&pair, h) {
                        Ok((entry, link)) => walk.entry(&entry, link.as_ref()),
                        Err(why) => walk.unreadable(why),
                    }
                    bar.inc(1);
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            for (_, position) in gone.iter().filter(|(p, _)| *p == pair) {
                walk.breaks.push(ChainBreak {
                    position: *position,
                    kind: BreakKind::Gone,
                });
            }
            report.add(&pair, walk);
        }
    }
    bar.finish_and_clear();
    Ok(report)
}

/// A `GetConsentHistory` entry as the domain entry and link it stands for.
fn history_of(
    pair: &Pair,
    h: &pb::HistoryEntry,
) -> Result<(HistoryEntry, Option<ChainLink>), String> {
    let m = pb::ExportedDecision {
        business_number: pair.business.to_string(),
        customer_number: pair.customer.to_string(),
        entry: Some(h.clone()),
        position: h.position,
        record: if h.entry_hash.is_empty() {
            crate::export::RECORD_PRE_CHAIN
        } else {
            crate::export::RECORD_CHAINED
        }
        .into(),
    };
    ExportRow::from_pb(&m)
        .entry()?
        .ok_or_else(|| "no entry".to_owned())
}

/// `callgate audit verify --file`: checks an NDJSON export offline. Every row must match its
/// own hash; rows of one pair at consecutive positions must link (`prev_hash` of one is the
/// `entry_hash` of the one before); a chained row at position 0 must have a zero `prev_hash`;
/// a `gone` row is a break. An export of a time range holds only some of a pair's entries:
/// links across entries outside it cannot be checked from the file alone.
pub fn verify_file(path: &Path) -> Result<AuditReport, RecordsError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let bar = progress("rows verified");
    // Per pair: position -> (prev, hash) of its chained rows (64 bytes a row).
    let mut chains: BTreeMap<Pair, BTreeMap<u64, ChainLink>> = BTreeMap::new();
    let mut report = AuditReport::default();
    let mut edited: Vec<(Pair, ChainBreak)> = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| RecordsError::BadRow {
            path: path.display().to_string(),
            line: n + 1,
            message,
        };
        let row: ExportRow = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let pair = row.pair().map_err(bad)?;
        report.entries += 1;
        bar.inc(1);
        let links = chains.entry(pair.clone()).or_default();
        match row.entry().map_err(bad)? {
            None => edited.push((
                pair,
                ChainBreak {
                    position: row.position,
                    kind: BreakKind::Gone,
                },
            )),
            Some((_, None)) => report.pre_chain += 1,
            Some((entry, Some(link))) => {
                if !link.matches(&entry) {
                    edited.push((
                        pair.clone(),
                        ChainBreak {
                            position: link.position,
                            kind: BreakKind::Edited,
                        },
                    ));
                }
                if let Some(other) = links.insert(link.position, link)
                    && other != link
                {
                    edited.push((
                        pair,
                        ChainBreak {
                            position: link.position,
                            kind: BreakKind::OutOfOrder {
                                stated: link.position,
                            },
                        },
                    ));
                }
            }
        }
    }
    bar.finish_and_clear();
    report.pairs = chains.len() as u64;
    report.breaks = edited;
    for (pair, links) in &chains {
        let mut before: Option<&ChainLink> = None;
        for link in links.values() {
            let expected = match before {
                Some(b) if b.position + 1 == link.position => Some(b.hash),
                _ if link.position == 0 => Some(GENESIS),
                _ => None,
            };
            if let Some(expected) = expected
                && link.prev != expected
            {
                report.breaks.push((
                    pair.clone(),
                    ChainBreak {
                        position: link.position,
                        kind: BreakKind::Unlinked,
                    },
                ));
            }
            before = Some(link);
        }
    }
    report
        .breaks
        .sort_by(|(p, a), (q, b)| (p, a.position).cmp(&(q, b.position)));
    Ok(report)
}
