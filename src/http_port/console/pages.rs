//! The console's pages, as `maud` templates: every value is HTML-escaped by the template
//! engine (nothing is spliced in raw), and the pages need no script.
//!
//! Accessibility: one `h1` per page, landmarks (`header`, `main`, `nav`), a label for every
//! field, errors announced (`role="alert"`), visible keyboard focus (the stylesheet), a chart
//! that is one labelled image with its numbers repeated in a table. Colours meet WCAG AA
//! contrast on white.
//!
//! Phone numbers travel only in POST bodies: every form that carries one posts, and no link
//! holds one.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::chart::{self, DayCounts};
use super::words;
use crate::domain::chain::{ChainBreak, ChainLink};
use crate::domain::{ConsentState, HistoryEntry, HistoryOutcome, PhoneNumber, Verdict};

/// The chrome around every page: `signed_in` carries the session's CSRF token for the
/// sign-out form.
pub fn layout(title: &str, signed_in: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · callgate console" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/console" { "callgate " span { "consent console" } }
                    @if let Some(csrf) = signed_in {
                        form method="post" action="/console/sign-out" class="inline" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" class="link" { "Sign out" }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

/// The sign-in form; `error`, if the last attempt failed.
pub fn sign_in(token: &str, error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            p { "Sign in with an API key that has the " code { "history" } " scope." }
            @if let Some(error) = error {
                p class="error" role="alert" id="sign-in-error" { (error) }
            }
            form method="post" action="/console/sign-in" class="card" {
                input type="hidden" name="token" value=(token);
                label for="key" { "API key" }
                input id="key" name="key" type="password" autocomplete="off" required
                    aria-describedby=[error.map(|_| "sign-in-error")];
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// The business field of a form: a choice among the caller's businesses, or a free number.
fn business_field(id: &str, businesses: Option<&[PhoneNumber]>) -> Markup {
    html! {
        label for=(id) { "Business number" }
        @match businesses {
            Some(list) => {
                select id=(id) name="business" required {
                    @for b in list { option value=(b) { (b) } }
                }
            }
            None => {
                input id=(id) name="business" type="tel" inputmode="tel" autocomplete="off"
                    placeholder="+91 90000 00000" required;
            }
        }
    }
}

/// The start page of a signed-in officer: look up a customer, or open a business overview.
pub fn home(csrf: &str, client: &str, businesses: Option<&[PhoneNumber]>) -> Markup {
    layout(
        "Console",
        Some(csrf),
        html! {
            h1 { "Consent records" }
            p class="muted" { "Signed in as " strong { (client) } "." }
            div class="grid" {
                section class="card" aria-labelledby="lookup-h" {
                    h2 id="lookup-h" { "Look up a customer" }
                    form method="post" action="/console/customer" {
                        input type="hidden" name="csrf" value=(csrf);
                        (business_field("lookup-business", businesses))
                        label for="customer" { "Customer number" }
                        input id="customer" name="customer" type="tel" inputmode="tel"
                            autocomplete="off" placeholder="+91 98765 43210" required;
                        button type="submit" { "Show record" }
                    }
                }
                section class="card" aria-labelledby="overview-h" {
                    h2 id="overview-h" { "Business overview" }
                    form method="post" action="/console/overview" {
                        input type="hidden" name="csrf" value=(csrf);
                        (business_field("overview-business", businesses))
                        button type="submit" { "Show overview" }
                    }
                }
            }
        },
    )
}

/// Whether a pair's record checks out against its hash chain (`domain::chain`).
pub enum ChainStatus {
    /// Every hashed entry matches its hash and links to the one before it.
    Verified { hashed: u64, pre_chain: u64 },
    /// Where the chain is broken, and how.
    Broken { breaks: Vec<ChainBreak> },
    /// No entry of this record carries a hash (all recorded before the chain existed).
    Unavailable { pre_chain: u64 },
}

/// What the customer page shows.
pub struct CustomerView<'a> {
    pub business: &'a PhoneNumber,
    pub customer: &'a PhoneNumber,
    pub verdict: &'a Verdict,
    pub now: DateTime<Utc>,
    /// The record in arrival order (at most the page's cap).
    pub entries: &'a [HistoryEntry],
    /// Each entry's chain link (`None`: recorded before the chain existed).
    pub links: &'a [Option<ChainLink>],
    /// More entries exist than are shown.
    pub truncated: bool,
    pub chain: ChainStatus,
}

fn state_class(state: ConsentState) -> &'static str {
    match state {
        ConsentState::GrantedPermanent | ConsentState::GrantedTemporary => "state ok",
        ConsentState::Denied => "state no",
        ConsentState::Expired | ConsentState::NoConsent => "state off",
    }
}

/// The customer page: the state in words, then every decision with its evidence.
pub fn customer(view: &CustomerView<'_>) -> Markup {
    let now = view.now;
    html! {
        h1 { "Customer " (view.customer) }
        p class="muted" { "Business " (view.business) " · as of " (words::when(now)) }
        section class=(state_class(view.verdict.state)) aria-labelledby="state-h" {
            h2 id="state-h" class="sr-only" { "Current state" }
            p class="badge" { (words::state_name(view.verdict.state)) }
            p class="sentence" id="state-sentence" {
                (words::verdict_sentence(view.verdict, now))
            }
        }
        section aria-labelledby="chain-h" {
            h2 id="chain-h" { "Integrity" }
            @match &view.chain {
                ChainStatus::Verified { hashed, pre_chain } => p class="chain ok" id="chain" {
                    "Chain verified: each of the " (hashed) " hashed entries matches its hash and \
                     links to the one before it, so none was edited, removed or reordered."
                    @if *pre_chain > 0 {
                        " " (pre_chain) " earlier entries were recorded before the chain existed."
                    }
                },
                ChainStatus::Broken { breaks } => div class="chain no" id="chain" role="alert" {
                    p { "Chain broken: this record was changed after it was written." }
                    ul {
                        @for b in breaks {
                            li { "Entry #" (b.position + 1) ": " (b.kind) }
                        }
                    }
                },
                ChainStatus::Unavailable { pre_chain } => p class="chain off" id="chain" {
                    @if *pre_chain == 0 {
                        "No entry to verify."
                    } @else {
                        "These " (pre_chain) " entries were recorded before the hash chain existed; there is nothing to verify."
                    }
                },
            }
        }
        section aria-labelledby="timeline-h" {
            h2 id="timeline-h" { "Every decision (" (view.entries.len()) ")" }
            @if view.entries.is_empty() {
                p { "No decision has been recorded for this customer." }
            }
            @if view.truncated {
                p class="notice" role="status" {
                    "Showing the first " (view.entries.len())
                    " decisions; export the business's record for all of them."
                }
            }
            ol class="timeline" {
                @for (i, e) in view.entries.iter().enumerate() {
                    @let stale = e.outcome == HistoryOutcome::Stale;
                    li class={ "entry" @if stale { " stale" } } {
                        h3 {
                            span class="pos" { "#" (i + 1) } " "
                            (words::choice_words(&e.decision.choice))
                            @if stale {
                                " " span class="tag" title="A newer decision was already in force when this one arrived; it is kept as evidence only." { "Stale" }
                            } @else {
                                " " span class="tag applied" { "Applied" }
                            }
                        }
                        dl {
                            dt { "Decided" }
                            dd { (words::precise(e.decision.decided_at)) " (" (words::relative(e.decision.decided_at, now)) ")" }
                            @if e.decision.evidence.stated_at != e.decision.decided_at {
                                dt { "Sender stated" }
                                dd { (words::precise(e.decision.evidence.stated_at)) }
                            }
                            @if let Some(stated) = e.decision.evidence.stated_expires_at {
                                dt { "Stated expiry" }
                                dd { (words::precise(stated)) }
                            }
                            dt { "Received" }
                            dd { (words::precise(e.received_at)) }
                            dt { "Source" }
                            dd { (e.decision.evidence.source.as_str()) }
                            dt { "Message id" }
                            dd class="mono" { (e.decision.evidence.message_id) }
                            @if !e.decision.evidence.paired_message_id.is_empty() {
                                dt { "Request message id" }
                                dd class="mono" { (e.decision.evidence.paired_message_id) }
                            }
                            @if !e.decision.evidence.response_source.is_empty() {
                                dt { "Response source" }
                                dd { (e.decision.evidence.response_source) }
                            }
                            @if !e.decision.evidence.sender_customer_id.is_empty() {
                                dt { "Sender's customer id" }
                                dd class="mono" { (e.decision.evidence.sender_customer_id) }
                            }
                            @if let Some(name) = &e.decision.customer_name {
                                dt { "Customer's name" }
                                dd { (name) }
                            }
                            @if let Some(a) = &e.decision.attribution {
                                dt { "Team" }
                                dd { (a.team) }
                                dt { "Campaign" }
                                dd { (a.campaign) }
                                @if !a.labels.is_empty() {
                                    dt { "Labels" }
                                    dd {
                                        @for (i, (k, v)) in a.labels.iter().enumerate() {
                                            @if i > 0 { ", " }
                                            (k) "=" (v)
                                        }
                                    }
                                }
                            }
                            dt { "Body SHA-256" }
                            dd class="mono hash" { (hex::encode(e.decision.evidence.body_sha256)) }
                            dt { "Entry hash" }
                            @match view.links.get(i).copied().flatten() {
                                Some(link) => dd class="mono hash" { (hex::encode(link.hash)) },
                                None => dd { "none (recorded before the chain)" },
                            }
                        }
                    }
                }
            }
        }
        p { a href="/console" { "Look up another customer" } }
    }
}

/// A business's counts by current state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StateCounts {
    pub granted_permanent: u64,
    pub granted_temporary: u64,
    pub denied: u64,
    pub expired: u64,
}

/// What the business overview shows.
pub struct OverviewView<'a> {
    pub business: &'a PhoneNumber,
    pub now: DateTime<Utc>,
    pub counts: &'a StateCounts,
    pub days: &'a [DayCounts],
    pub latest: &'a [HistoryEntry],
    /// The overview read only part of the record (the scan hit its bound).
    pub partial: Option<String>,
    /// When the numbers were computed (they may come from a short cache).
    pub computed_at: DateTime<Utc>,
}

/// The business overview: counts by state, the chart, the latest decisions, the export form.
pub fn overview(csrf: &str, view: &OverviewView<'_>) -> Markup {
    let c = view.counts;
    html! {
        h1 { "Business " (view.business) }
        p class="muted" { "As of " (words::when(view.computed_at)) }
        @if let Some(partial) = &view.partial {
            p class="notice" role="status" { (partial) }
        }
        section aria-labelledby="counts-h" {
            h2 id="counts-h" { "Customers by state" }
            ul class="counts" {
                li class="ok" { span class="n" id="count-permanent" { (c.granted_permanent) } " granted, permanent" }
                li class="ok" { span class="n" id="count-temporary" { (c.granted_temporary) } " granted, temporary" }
                li class="no" { span class="n" id="count-denied" { (c.denied) } " denied" }
                li class="off" { span class="n" id="count-expired" { (c.expired) } " expired" }
            }
        }
        section aria-labelledby="chart-h" {
            h2 id="chart-h" { "Decisions per day, last " (view.days.len()) " days" }
            ul class="legend" aria-hidden="true" {
                li { span class="key grant" {} "Grants" }
                li { span class="key deny" {} "Denials" }
                li { span class="key expire" {} "Expiries" }
            }
            div class="chart-wrap" { (chart::render(view.days, "chart-title")) }
            details {
                summary { "The chart's numbers" }
                div class="scroll" {
                    table {
                        caption class="sr-only" { "Decisions per day" }
                        thead { tr { th scope="col" { "Day" } th scope="col" { "Grants" } th scope="col" { "Denials" } th scope="col" { "Expiries" } } }
                        tbody {
                            @for d in view.days.iter().rev() {
                                tr { th scope="row" { (d.day.format("%Y-%m-%d")) } td { (d.grants) } td { (d.denials) } td { (d.expiries) } }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="latest-h" {
            h2 id="latest-h" { "Latest decisions" }
            @if view.latest.is_empty() {
                p { "No decision in the last " (view.days.len()) " days." }
            } @else {
                div class="scroll" {
                    table id="latest" {
                        thead { tr { th scope="col" { "Received" } th scope="col" { "Customer" } th scope="col" { "Decision" } th scope="col" { "Outcome" } } }
                        tbody {
                            @for e in view.latest {
                                tr {
                                    td { (words::when(e.received_at)) }
                                    td {
                                        form method="post" action="/console/customer" class="inline" {
                                            input type="hidden" name="csrf" value=(csrf);
                                            input type="hidden" name="business" value=(view.business);
                                            input type="hidden" name="customer" value=(e.decision.pair.customer);
                                            button type="submit" class="cell mono"
                                                aria-label={ "Show the record of " (e.decision.pair.customer) } {
                                                (e.decision.pair.customer)
                                            }
                                        }
                                    }
                                    td { (words::choice_words(&e.decision.choice)) }
                                    td { @if e.outcome == HistoryOutcome::Stale { "Stale" } @else { "Applied" } }
                                }
                            }
                        }
                    }
                }
            }
        }
        section class="card" aria-labelledby="export-h" {
            h2 id="export-h" { "Export decisions" }
            p { "Every decision recorded for this business in the range, with its evidence and its place in the chain. Both days are included (UTC)." }
            form method="post" action="/console/export" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="business" value=(view.business);
                div class="row" {
                    div {
                        label for="from" { "From (UTC day, included)" }
                        input id="from" name="from" type="date" required
                            value=(words::day(view.now - chrono::TimeDelta::days(29)));
                    }
                    div {
                        label for="to" { "To (UTC day, included)" }
                        input id="to" name="to" type="date" required
                            value=(words::day(view.now));
                    }
                }
                div class="row" {
                    div {
                        label for="by" { "Range applies to" }
                        select id="by" name="by" {
                            option value="received" { "when callgate received it" }
                            option value="event" { "when the customer decided" }
                        }
                    }
                    div {
                        label for="format" { "Format" }
                        select id="format" name="format" {
                            option value="csv" { "CSV (spreadsheets)" }
                            option value="ndjson" { "NDJSON (one JSON object per line)" }
                        }
                    }
                }
                button type="submit" { "Download export" }
            }
        }
        p { a href="/console" { "Back to the start" } }
    }
}

/// A refusal or failure, in words, with the way back.
pub fn problem(title: &str, message: &str, signed_in: Option<&str>) -> Markup {
    layout(
        title,
        signed_in,
        html! {
            h1 { (title) }
            p class="error" role="alert" { (message) }
            p { a href="/console" { "Back to the console" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let page =
            problem("<b>", "<script>alert(1)</script> & \"x\"", Some("t\"><x")).into_string();
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;"));
        assert!(page.contains(r#"value="t&quot;&gt;&lt;x""#));
        assert!(page.contains("<title>&lt;b&gt; · callgate console</title>"));
    }

    #[test]
    fn the_sign_in_page_labels_its_field_and_announces_errors() {
        let page = sign_in("tok", Some("That key is not valid.")).into_string();
        assert!(page.contains(r#"<label for="key">API key</label>"#));
        assert!(page.contains(r#"role="alert""#));
        assert!(page.contains(r#"name="token" value="tok""#));
        assert!(page.contains(r#"lang="en""#));
    }
}
