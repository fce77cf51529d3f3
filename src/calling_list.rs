//! Issue 13, calling lists for every front end (gRPC `ListCallable`, HTTP `GET /v1/callable`):
//! what a request means (business, filters, page size, page token), who may ask, and one page
//! of the answer as domain values. The front ends only parse their wire format into a
//! [`ListQuery`] and turn a [`ListPage`] into theirs.
//!
//! **Snapshot + delta.** The first page takes the event log's head (the store's
//! [`head`](ConsentStore::head)) *before* it reads anything, and every later page carries that
//! cursor in its token. Every change whose event is at or before the cursor was committed
//! before the head was read (a decision's state, index entry and event are written in one
//! atomic step), so before any page was read: the pages show it. Every later change has an
//! event after the cursor, so a StreamGrants subscription resumed from it delivers it. A client
//! that loads the list and then follows the stream from `snapshot_cursor` misses nothing; a
//! change made while it paged may show up in a page *and* as an event (applying the event
//! again is harmless), but the stream delivers each change exactly once.
//!
//! **Page tokens** are opaque to clients and stable: `l1.<shard>.<after>.<filter>.<cursor>`,
//! the store's [`CallablePosition`], a digest binding the token to the business and filters it
//! was issued for (so a token cannot be replayed against another list), and the snapshot
//! cursor. Anything else is refused with a message naming `page_token`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::domain::{
    AttributionFilter, ConsentState, Decision, PhoneError, PhoneNumber, UnattributedPolicy,
    evaluate,
};
use crate::grpc_api::auth::Caller;
use crate::store::{CallablePosition, ConsentStore, Cursor, StoreError};

/// Entries per page when the client asks for none.
pub const DEFAULT_PAGE: usize = 500;
/// Most entries per page (larger requests get this many): a full gRPC page of entries with
/// bounded attribution stays far below gRPC's 4 MiB default message size.
pub const MAX_PAGE: usize = 5000;

/// The version prefix of a page token.
const TOKEN_PREFIX: &str = "l1.";

/// Why a list request was refused. Each names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("business_number: {0}")]
    Business(PhoneError),
    #[error("page_size: {0}; must not be negative")]
    NegativePageSize(i64),
    #[error("page_token: {0}")]
    PageToken(&'static str),
    /// The caller may not see this business's consent.
    #[error("business_number: this client may not see business {0}")]
    OtherBusiness(PhoneNumber),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A parsed list request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub business: PhoneNumber,
    pub filter: ListFilter,
    pub page_size: usize,
    /// Where this page starts and the snapshot it belongs to; `None`: the first page.
    pub resume: Option<(CallablePosition, Cursor)>,
}

/// Which of the business's callable pairs a list shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this team's grants (`None`: every team).
    pub team: Option<String>,
    /// Only this campaign's grants (`None`: every campaign).
    pub campaign: Option<String>,
}

impl ListFilter {
    /// True if `d` belongs on the list at `now`: a live grant (never a denial, never a lapsed
    /// temporary grant, whatever the sweep did) whose attribution matches the filters. An
    /// unattributed grant matches a team or campaign filter only under
    /// [`UnattributedPolicy::AllTeams`] (`CALLGATE_UNATTRIBUTED_REPLIES`).
    pub fn admits(&self, d: &Decision, now: DateTime<Utc>, policy: UnattributedPolicy) -> bool {
        let filter = AttributionFilter {
            teams: self.team.iter().cloned().collect(),
            campaigns: self.campaign.iter().cloned().collect(),
            labels: Default::default(),
        };
        filter.matches(d.attribution.as_ref(), policy) && evaluate(Some(d.clone()), now).allowed()
    }

    /// A digest binding a page token to the list it was issued for.
    fn digest(&self, business: &PhoneNumber) -> String {
        let mut h = Sha256::new();
        for part in [
            business.digits(),
            self.team.as_deref().unwrap_or("\u{0}none"),
            self.campaign.as_deref().unwrap_or("\u{0}none"),
        ] {
            h.update(part.as_bytes());
            h.update([0xff]);
        }
        hex::encode(&h.finalize()[..8])
    }
}

impl ListQuery {
    /// Parses the request's fields (as both front ends carry them: strings and a number). An
    /// empty team or campaign means no filter.
    pub fn parse(
        business: &str,
        team: &str,
        campaign: &str,
        page_size: i64,
        page_token: &str,
        shards: usize,
    ) -> Result<Self, ListError> {
        let business = PhoneNumber::parse(business).map_err(ListError::Business)?;
        let filter = ListFilter {
            team: (!team.is_empty()).then(|| team.to_owned()),
            campaign: (!campaign.is_empty()).then(|| campaign.to_owned()),
        };
        let page_size = match page_size {
            0 => DEFAULT_PAGE,
            n if n < 0 => return Err(ListError::NegativePageSize(n)),
            n => usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
        };
        let resume = if page_token.is_empty() {
            None
        } else {
            Some(parse_token(page_token, &filter.digest(&business), shards)?)
        };
        Ok(ListQuery {
            business,
            filter,
            page_size,
            resume,
        })
    }
}

/// One page of a calling list, as domain values.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub business: PhoneNumber,
    /// Each callable pair's current decision and its state (granted, permanent or temporary).
    pub entries: Vec<(Decision, ConsentState)>,
    /// Where the next page starts; `None` on the last.
    pub next: Option<CallablePosition>,
    /// The snapshot cursor, the same on every page of one listing.
    pub snapshot_cursor: Cursor,
    /// Binds the page tokens to this list.
    digest: String,
}

impl ListPage {
    /// The token of the next page; `None` on the last.
    pub fn next_page_token(&self) -> Option<String> {
        self.next
            .as_ref()
            .map(|pos| token(pos, &self.digest, &self.snapshot_cursor))
    }

    /// Moves `query` on to the page after this one (for a front end that streams every page);
    /// `false` if this was the last.
    pub fn advance(&self, query: &mut ListQuery) -> bool {
        match &self.next {
            Some(pos) => {
                query.resume = Some((pos.clone(), self.snapshot_cursor.clone()));
                true
            }
            None => false,
        }
    }
}

/// Answers list requests from the store, at the app's clock.
#[derive(Clone)]
pub struct CallingLists {
    store: Arc<dyn ConsentStore>,
    /// Whether an unattributed grant is on every team's list or on none.
    policy: UnattributedPolicy,
}

impl CallingLists {
    pub fn new(store: Arc<dyn ConsentStore>, policy: UnattributedPolicy) -> Self {
        CallingLists { store, policy }
    }

    /// The store's shard count (every snapshot cursor has one position per shard).
    pub fn shards(&self) -> usize {
        self.store.shards()
    }

    /// Refuses a business `caller` may not see, before the store is read.
    pub fn admit(caller: &Caller, query: &ListQuery) -> Result<(), ListError> {
        if caller.may_see(&query.business) {
            Ok(())
        } else {
            Err(ListError::OtherBusiness(query.business.clone()))
        }
    }

    /// One page of the list `query` asks for, evaluated at `now`. The caller must have been
    /// admitted ([`admit`](Self::admit)).
    pub async fn page(&self, query: &ListQuery, now: DateTime<Utc>) -> Result<ListPage, ListError> {
        // The snapshot is taken before the first page is read: see the module docs.
        let (from, snapshot) = match &query.resume {
            Some((pos, cursor)) => (pos.clone(), cursor.clone()),
            None => (CallablePosition::start(), self.store.head().await?),
        };
        let filter = &query.filter;
        let policy = self.policy;
        let keep = |d: &Decision| filter.admits(d, now, policy);
        let page = self
            .store
            .callable_page(&query.business, &from, query.page_size, &keep)
            .await?;
        let entries = page
            .entries
            .into_iter()
            .map(|d| {
                let state = evaluate(Some(d.clone()), now).state;
                (d, state)
            })
            .collect();
        Ok(ListPage {
            business: query.business.clone(),
            entries,
            next: page.next,
            snapshot_cursor: snapshot,
            digest: filter.digest(&query.business),
        })
    }
}

/// The token of the page starting at `pos`.
fn token(pos: &CallablePosition, digest: &str, snapshot: &Cursor) -> String {
    let after = pos.after.as_ref().map_or("", |c| c.digits());
    format!("{TOKEN_PREFIX}{}.{after}.{digest}.{snapshot}", pos.shard)
}

/// The position and snapshot a token stands for, if it was issued for the list with `digest`.
fn parse_token(
    token: &str,
    digest: &str,
    shards: usize,
) -> Result<(CallablePosition, Cursor), ListError> {
    const UNREADABLE: &str = "not a token this API gave";
    let body = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(ListError::PageToken(UNREADABLE))?;
    let mut parts = body.splitn(4, '.');
    let (Some(shard), Some(after), Some(token_digest), Some(cursor)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ListError::PageToken(UNREADABLE));
    };
    let shard: usize = shard
        .parse()
        .ok()
        .filter(|s| *s < shards)
        .ok_or(ListError::PageToken(UNREADABLE))?;
    let after = match after {
        "" => None,
        digits => Some(
            PhoneNumber::from_digits(digits)
                .ok()
                .filter(|p| p.digits() == digits)
                .ok_or(ListError::PageToken(UNREADABLE))?,
        ),
    };
    if token_digest != digest {
        return Err(ListError::PageToken(
            "issued for another business, team or campaign; start again without a token",
        ));
    }
    let cursor = Cursor::parse(cursor, shards).map_err(|_| ListError::PageToken(UNREADABLE))?;
    Ok((CallablePosition { shard, after }, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StreamId;

    fn business() -> PhoneNumber {
        PhoneNumber::parse("+919000000000").unwrap()
    }

    #[test]
    fn a_token_round_trips_and_is_bound_to_its_list() {
        let filter = ListFilter::default();
        let digest = filter.digest(&business());
        let cursor = Cursor::from_ids((0..18).map(|i| StreamId::new(1_700_000 + i, i)).collect());
        for pos in [
            CallablePosition::start(),
            CallablePosition {
                shard: 17,
                after: Some(PhoneNumber::parse("+919876543210").unwrap()),
            },
        ] {
            let t = token(&pos, &digest, &cursor);
            assert_eq!(parse_token(&t, &digest, 18).unwrap(), (pos, cursor.clone()));
            // Another business, team or campaign: refused.
            let team = ListFilter {
                team: Some("premium".into()),
                campaign: None,
            };
            let other = PhoneNumber::parse("+919000000001").unwrap();
            for d in [team.digest(&business()), filter.digest(&other)] {
                assert!(matches!(
                    parse_token(&t, &d, 18),
                    Err(ListError::PageToken(_))
                ));
            }
        }
    }

    #[test]
    fn unreadable_tokens_are_refused_naming_the_field() {
        let digest = ListFilter::default().digest(&business());
        let cursor = Cursor::uniform(18, StreamId::ZERO);
        let good = token(&CallablePosition::start(), &digest, &cursor);
        for bad in [
            "x",
            "l1.",
            "l2.0..abc.c2.0-0",
            &good.replace("l1.0.", "l1.18."),
            &good.replace("l1.0.", "l1.-1."),
            &good.replace("l1.0..", "l1.0.12ab."),
            &good.replace("l1.0..", "l1.0.0123."),
            &good[..good.len() - 4],
            &format!("{good}.0-0"),
        ] {
            let err = parse_token(bad, &digest, 18).unwrap_err();
            assert!(err.to_string().starts_with("page_token: "), "{bad}: {err}");
        }
        // The cursor must have the store's shard count.
        assert!(parse_token(&good, &digest, 1).is_err());
    }

    #[test]
    fn page_sizes_default_cap_and_refuse_negatives() {
        let parse = |n| ListQuery::parse("+919000000000", "", "", n, "", 18);
        assert_eq!(parse(0).unwrap().page_size, DEFAULT_PAGE);
        assert_eq!(parse(7).unwrap().page_size, 7);
        assert_eq!(parse(1_000_000).unwrap().page_size, MAX_PAGE);
        let err = parse(-1).unwrap_err().to_string();
        assert!(err.starts_with("page_size: "), "{err}");
        let err = ListQuery::parse("abc", "", "", 0, "", 18)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("business_number: "), "{err}");
    }
}
