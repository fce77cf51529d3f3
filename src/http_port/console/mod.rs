//! The compliance console: web pages for people, served on the HTTP port under `/console`.
//!
//! | method | path                     | what                                              |
//! |--------|--------------------------|---------------------------------------------------|
//! | GET    | `/console`               | the sign-in form, or the start page when signed in |
//! | GET    | `/console/console.css`   | the stylesheet                                    |
//! | POST   | `/console/sign-in`       | opens a session for an API key with `history`     |
//! | POST   | `/console/sign-out`      | ends it                                           |
//! | POST   | `/console/customer`      | a customer's state in words and every decision    |
//! | POST   | `/console/overview`      | a business: counts by state, 30-day chart, latest |
//! | POST   | `/console/export`        | the business's export, downloaded with the session |
//!
//! Everything that names a phone number is a POST with the number in the form body, so no
//! number lands in a URL, a browser history or an access log.
//!
//! Security, in the order a request meets it:
//! - a POST from another site is refused (`Sec-Fetch-Site`, else `Origin` against `Host`);
//! - the session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` when the port serves TLS)
//!   names a live session ([`session`]), whose API key is admitted again with the clients in
//!   force (`ApiAuth::admit_scope(Scope::History, ..)`), so a revoked key stops working at once;
//! - every form carries the session's CSRF token, compared in constant time; the sign-in form,
//!   which has no session yet, carries a token that must equal its cookie's;
//! - a key limited to some businesses sees only those (checked before the store is read);
//! - every answer carries a strict Content-Security-Policy (no script at all, styles and
//!   forms from this origin only, no framing), `nosniff`, `no-referrer`, `no-store`, and HSTS
//!   under TLS.
//!
//! Nothing here can slow a check: the console shares no lock with the check path (its sessions
//! have their own), reads the store through the same read methods as `GetConsentHistory`, in
//! bounded pages, and bounds its work per request (see [`overview`] for the one page that
//! reads many decisions, and its cache).

mod chart;
mod overview;
mod pages;
mod session;
mod words;

use std::collections::HashMap;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use maud::Markup;

use self::pages::{ChainStatus, CustomerView};
use self::session::{Active, Sessions};
use super::HttpState;
use super::export::{self, ExportError};
use super::reply::{Body, boxed};
use crate::domain::chain::{ChainLink, ChainWalk};
use crate::domain::{HistoryEntry, Pair, PhoneNumber, evaluate};
use crate::export::Format;
use crate::grpc_api::auth::{Caller, Refusal, Scope};
use crate::secret::Secret;
use crate::store::{RecordsRange, StoreError, TimeField};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

pub use self::overview::OverviewCache;

/// The console's pages and actions (the table above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Start,
    Stylesheet,
    SignIn,
    SignOut,
    Customer,
    Overview,
    Export,
}

/// The console's paths (the `route` of their spans).
pub const PATHS: [&str; 7] = [
    "/console",
    "/console/console.css",
    "/console/sign-in",
    "/console/sign-out",
    "/console/customer",
    "/console/overview",
    "/console/export",
];

/// The page `method` and `path` ask for: `None` when the path is not the console's, `Some(Err)`
/// for a console path with the wrong method.
pub fn resolve(method: &Method, path: &str) -> Option<Result<Page, ()>> {
    let page = match path {
        "/console" => Page::Start,
        "/console/console.css" => Page::Stylesheet,
        "/console/sign-in" => Page::SignIn,
        "/console/sign-out" => Page::SignOut,
        "/console/customer" => Page::Customer,
        "/console/overview" => Page::Overview,
        "/console/export" => Page::Export,
        _ => return None,
    };
    let want = match page {
        Page::Start | Page::Stylesheet => Method::GET,
        _ => Method::POST,
    };
    Some(if *method == want { Ok(page) } else { Err(()) })
}

/// Largest form body the console reads.
const MAX_FORM: usize = 8 * 1024;
/// Most decisions the customer page shows (the export has them all).
const MAX_TIMELINE: usize = 1000;
/// The history page size the customer page reads with.
const TIMELINE_PAGE: usize = 250;
/// Most entries of one pair the customer page verifies (its chain walk reads them all, one
/// page at a time, keeping only the first [`MAX_TIMELINE`]).
const MAX_CHAIN_WALK: usize = 100_000;

/// The session cookie.
const SESSION_COOKIE: &str = "callgate_session";
/// The sign-in form's cookie (see [`session::sign_in_token`]).
const SIGN_IN_COOKIE: &str = "callgate_sign_in";

/// The console's state on the HTTP port.
pub struct Console {
    sessions: Sessions,
    /// The port serves TLS: cookies are `Secure` and answers carry HSTS.
    tls: bool,
    overview: OverviewCache,
}

impl Console {
    pub fn new(tls: bool) -> Self {
        Console {
            sessions: Sessions::default(),
            tls,
            overview: OverviewCache::default(),
        }
    }
}

/// Admits `key` with the `history` scope, with the API clients in force now (the gRPC API's,
/// reloaded when their file changes).
fn admit(state: &HttpState, key: &Secret) -> Result<Caller, Refusal> {
    let header = format!("Bearer {}", key.expose());
    state
        .auth
        .current()
        .admit_scope(Scope::History, &[header.as_bytes()])
        .map_err(|(_, refusal)| refusal)
}

/// Why a console request was refused; [`ConsoleError::status`] is the one place it becomes
/// an HTTP status.
#[derive(Debug, thiserror::Error)]
enum ConsoleError {
    #[error("your session has ended; sign in again")]
    SignedOut,
    #[error("this form came from another site; open the console yourself and try again")]
    CrossSite,
    #[error(
        "this form has expired or did not come from this console; reload the page and try again"
    )]
    Csrf,
    #[error("{field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("your key may not see business {0}")]
    OtherBusiness(PhoneNumber),
    #[error("the form must be sent as application/x-www-form-urlencoded")]
    UnsupportedMediaType,
    #[error("the form is larger than {MAX_FORM} bytes")]
    TooLarge,
    #[error("the form was not received in time")]
    BodyTimeout,
    #[error("could not read the form: {0}")]
    BodyRead(String),
    #[error("the consent store did not answer; nothing was changed, try again: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Busy(&'static str),
    #[error("{0}")]
    Unavailable(String),
}

impl ConsoleError {
    /// What the log says: a fixed word per kind (the message may name a business or echo a
    /// form field, and no phone number goes to a log).
    fn label(&self) -> &'static str {
        match self {
            ConsoleError::SignedOut => "signed_out",
            ConsoleError::CrossSite => "cross_site",
            ConsoleError::Csrf => "csrf",
            ConsoleError::Field { field, .. } => field,
            ConsoleError::OtherBusiness(_) => "other_business",
            ConsoleError::UnsupportedMediaType => "unsupported_media_type",
            ConsoleError::TooLarge => "body_too_large",
            ConsoleError::BodyTimeout => "body_timeout",
            ConsoleError::BodyRead(_) => "body_unreadable",
            ConsoleError::Store(_) => "store_unavailable",
            ConsoleError::Busy(_) => "busy",
            ConsoleError::Unavailable(_) => "unavailable",
        }
    }

    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ConsoleError::SignedOut => (StatusCode::UNAUTHORIZED, "Signed out"),
            ConsoleError::CrossSite | ConsoleError::Csrf => {
                (StatusCode::FORBIDDEN, "Request refused")
            }
            ConsoleError::OtherBusiness(_) => (StatusCode::FORBIDDEN, "Not your business"),
            ConsoleError::Field { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Check the form"),
            ConsoleError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Request refused")
            }
            ConsoleError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Request refused"),
            ConsoleError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "Request refused"),
            ConsoleError::BodyRead(_) => (StatusCode::BAD_REQUEST, "Request refused"),
            ConsoleError::Store(_) | ConsoleError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "Not available")
            }
            ConsoleError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "Busy"),
        }
    }
}

/// A form body's fields (the first value of each name).
struct Form(HashMap<String, String>);

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A required phone-number field, normalised.
    fn phone(&self, field: &'static str) -> Result<PhoneNumber, ConsoleError> {
        let raw = self.get(field).unwrap_or("").trim();
        if raw.is_empty() {
            return Err(ConsoleError::Field {
                field,
                message: "enter a phone number".into(),
            });
        }
        PhoneNumber::parse(raw).map_err(|e| ConsoleError::Field {
            field,
            message: e.to_string(),
        })
    }
}

/// A POST about to be handled: its form, and the session it came with (if any).
struct Post {
    form: Form,
    session: Option<Active>,
}

/// Answers one console request. Every answer carries the security headers.
pub(super) async fn handle(
    state: &HttpState,
    page: Page,
    req: Request<Incoming>,
) -> Response<Body> {
    let console = &state.console;
    let result = match page {
        Page::Stylesheet => Ok(stylesheet()),
        Page::Start => Ok(start(state, &req)),
        _ => post(state, page, req).await,
    };
    let mut response = match result {
        Ok(response) => response,
        Err((e, signed_in)) => {
            let (status, title) = e.status();
            let reason = e.label();
            if let ConsoleError::Store(store) = &e {
                tracing::warn!(status = status.as_u16(), reason, error = %store, "console request failed");
            } else if status.is_server_error() {
                tracing::warn!(status = status.as_u16(), reason, "console request failed");
            } else {
                tracing::info!(status = status.as_u16(), reason, "console request refused");
            }
            if matches!(e, ConsoleError::SignedOut) {
                sign_in_page(console, status, Some(&e.to_string()))
            } else {
                html_response(
                    status,
                    pages::problem(title, &e.to_string(), signed_in.as_deref()),
                )
            }
        }
    };
    security_headers(&mut response, console.tls);
    response
}

type Failed = (ConsoleError, Option<String>);

/// `GET /console`: the start page of a live session, else the sign-in form.
fn start(state: &HttpState, req: &Request<Incoming>) -> Response<Body> {
    let console = &state.console;
    let now = state.clock.now();
    if let Some(active) = cookie(req, SESSION_COOKIE).and_then(|id| console.sessions.find(&id, now))
    {
        match admit(state, &active.key) {
            Ok(caller) => {
                let businesses = caller.businesses().map(sorted);
                return html_response(
                    StatusCode::OK,
                    pages::home(&active.csrf, caller.name(), businesses.as_deref()),
                );
            }
            Err(refusal) => {
                console.sessions.close(&active.id);
                return sign_in_page(
                    console,
                    StatusCode::UNAUTHORIZED,
                    Some(&refusal_words(&refusal)),
                );
            }
        }
    }
    sign_in_page(console, StatusCode::OK, None)
}

/// The sign-in form with a fresh sign-in token (and its cookie).
fn sign_in_page(console: &Console, status: StatusCode, error: Option<&str>) -> Response<Body> {
    let Ok(token) = session::sign_in_token() else {
        return html_response(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::problem("Not available", "no randomness for a sign-in token", None),
        );
    };
    let mut response = html_response(status, pages::sign_in(&token, error));
    set_cookie(
        &mut response,
        &format!(
            "{SIGN_IN_COOKIE}={token}; Path=/console; Max-Age=3600; HttpOnly; SameSite=Strict{}",
            secure(console.tls)
        ),
    );
    response
}

/// What a refused key reads as on the sign-in page.
fn refusal_words(refusal: &Refusal) -> String {
    match refusal {
        Refusal::MissingKey | Refusal::MalformedKey => "Enter an API key.".to_owned(),
        Refusal::UnknownKey => {
            "That API key is not valid. Check it and try again, or ask the operator for one."
                .to_owned()
        }
        Refusal::MissingScope { client, .. } => format!(
            "The key of {client:?} lacks the history scope the console needs; ask the operator \
             to add it."
        ),
        other => other.to_string(),
    }
}

/// Every POST: same-site check, form, then the action.
async fn post(
    state: &HttpState,
    page: Page,
    req: Request<Incoming>,
) -> Result<Response<Body>, Failed> {
    let console = &state.console;
    let now = state.clock.now();
    let session = cookie(&req, SESSION_COOKIE).and_then(|id| console.sessions.find(&id, now));
    let signed_in = session.as_ref().map(|s| s.csrf.clone());
    let fail = |e: ConsoleError| (e, signed_in.clone());
    if !same_site(&req) {
        return Err(fail(ConsoleError::CrossSite));
    }
    let sign_in_cookie = cookie(&req, SIGN_IN_COOKIE);
    let form = read_form(req, state).await.map_err(fail)?;
    let post = Post { form, session };
    match page {
        Page::SignIn => sign_in(state, &post, sign_in_cookie.as_deref()).map_err(fail),
        Page::SignOut => sign_out(state, &post).map_err(fail),
        Page::Customer => {
            let (active, caller) = authorise(state, &post).map_err(fail)?;
            customer(state, &post.form, &active, &caller)
                .await
                .map_err(fail)
        }
        Page::Overview => {
            let (active, caller) = authorise(state, &post).map_err(fail)?;
            overview::page(state, &post.form, &active, &caller)
                .await
                .map_err(fail)
        }
        Page::Export => {
            let (_, caller) = authorise(state, &post).map_err(fail)?;
            export(state, &post.form, &caller).await.map_err(fail)
        }
        Page::Start | Page::Stylesheet => {
            Err(fail(ConsoleError::Unavailable("not a form".to_owned())))
        }
    }
}

/// The session of a POST, its CSRF token checked and its key admitted again.
fn authorise(state: &HttpState, post: &Post) -> Result<(Active, Caller), ConsoleError> {
    let Some(active) = post.session.clone() else {
        return Err(ConsoleError::SignedOut);
    };
    if !session::csrf_matches(&active.csrf, post.form.get("csrf")) {
        return Err(ConsoleError::Csrf);
    }
    match admit(state, &active.key) {
        Ok(caller) => Ok((active, caller)),
        Err(refusal) => {
            state.console.sessions.close(&active.id);
            tracing::info!(reason = %refusal, "console session ended: its key is no longer admitted");
            Err(ConsoleError::SignedOut)
        }
    }
}

/// `POST /console/sign-in`: the form's token must equal its cookie's, then the key must hold
/// the `history` scope.
fn sign_in(
    state: &HttpState,
    post: &Post,
    sign_in_cookie: Option<&str>,
) -> Result<Response<Body>, ConsoleError> {
    let console = &state.console;
    let expected = sign_in_cookie.unwrap_or("");
    if expected.is_empty() || !session::csrf_matches(expected, post.form.get("token")) {
        return Err(ConsoleError::Csrf);
    }
    let key = Secret::new(post.form.get("key").unwrap_or("").trim());
    let caller = match admit(state, &key) {
        Ok(caller) => caller,
        Err(refusal) => {
            tracing::info!(reason = %refusal, "console sign-in refused");
            return Ok(sign_in_page(
                console,
                StatusCode::UNAUTHORIZED,
                Some(&refusal_words(&refusal)),
            ));
        }
    };
    let active = console
        .sessions
        .open(key, state.clock.now())
        .map_err(|e| ConsoleError::Unavailable(e.to_string()))?;
    tracing::info!(client = caller.name(), "console session opened");
    let mut response = redirect("/console");
    set_cookie(
        &mut response,
        &format!(
            "{SESSION_COOKIE}={}; Path=/console; HttpOnly; SameSite=Strict{}",
            active.id,
            secure(console.tls)
        ),
    );
    set_cookie(
        &mut response,
        &format!(
            "{SIGN_IN_COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict{}",
            secure(console.tls)
        ),
    );
    Ok(response)
}

/// `POST /console/sign-out`.
fn sign_out(state: &HttpState, post: &Post) -> Result<Response<Body>, ConsoleError> {
    let Some(active) = &post.session else {
        return Ok(redirect("/console"));
    };
    if !session::csrf_matches(&active.csrf, post.form.get("csrf")) {
        return Err(ConsoleError::Csrf);
    }
    state.console.sessions.close(&active.id);
    let mut response = redirect("/console");
    set_cookie(
        &mut response,
        &format!(
            "{SESSION_COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict{}",
            secure(state.console.tls)
        ),
    );
    Ok(response)
}

/// The pair of a form's `business` and `customer`, if the caller may see the business.
fn business_of(form: &Form, caller: &Caller) -> Result<PhoneNumber, ConsoleError> {
    let business = form.phone("business")?;
    if !caller.may_see(&business) {
        return Err(ConsoleError::OtherBusiness(business));
    }
    Ok(business)
}

/// `POST /console/customer`: the current state in words, and the record.
async fn customer(
    state: &HttpState,
    form: &Form,
    active: &Active,
    caller: &Caller,
) -> Result<Response<Body>, ConsoleError> {
    let business = business_of(form, caller)?;
    let customer = form.phone("customer")?;
    let pair = Pair::new(business.clone(), customer.clone());
    let now = state.clock.now();
    let current = state.store.current(&pair).await?;
    let verdict = evaluate(current, now);
    let Timeline {
        entries,
        links,
        truncated,
        chain,
    } = timeline(state, &pair).await?;
    let view = CustomerView {
        business: &business,
        customer: &customer,
        verdict: &verdict,
        now,
        entries: &entries,
        links: &links,
        truncated,
        chain,
    };
    Ok(html_response(
        StatusCode::OK,
        pages::layout(
            &format!("Customer {customer}"),
            Some(&active.csrf),
            pages::customer(&view),
        ),
    ))
}

/// A pair's record as the customer page shows it.
struct Timeline {
    /// The first [`MAX_TIMELINE`] entries, in arrival order, and their chain links.
    entries: Vec<HistoryEntry>,
    links: Vec<Option<ChainLink>>,
    /// More entries exist than are kept.
    truncated: bool,
    chain: ChainStatus,
}

/// Reads the pair's whole history in pages (at most [`MAX_CHAIN_WALK`] entries), verifying
/// its hash chain, and keeps the first [`MAX_TIMELINE`] entries to show.
async fn timeline(state: &HttpState, pair: &Pair) -> Result<Timeline, StoreError> {
    let mut entries = Vec::new();
    let mut links = Vec::new();
    let mut walk = ChainWalk::new();
    let mut start = 0;
    loop {
        let page = state.store.history_page(pair, start, TIMELINE_PAGE).await?;
        for (i, entry) in page.entries.into_iter().enumerate() {
            let link = page.links.get(i).copied().flatten();
            walk.entry(&entry, link.as_ref());
            if entries.len() < MAX_TIMELINE {
                entries.push(entry);
                links.push(link);
            }
        }
        match page.next {
            Some(next) if next > start && (walk.len() as usize) < MAX_CHAIN_WALK => start = next,
            _ => break,
        }
    }
    let truncated = walk.len() as usize > entries.len();
    let chain = if !walk.breaks.is_empty() {
        ChainStatus::Broken {
            breaks: walk.breaks,
        }
    } else if walk.hashed == 0 {
        ChainStatus::Unavailable {
            pre_chain: walk.pre_chain,
        }
    } else {
        ChainStatus::Verified {
            hashed: walk.hashed,
            pre_chain: walk.pre_chain,
        }
    };
    Ok(Timeline {
        entries,
        links,
        truncated,
        chain,
    })
}

/// `POST /console/export`: the business's export, downloaded with the session. The same
/// rows and streaming as `GET /v1/export` (`export::stream`); the form gives UTC days, both
/// included.
async fn export(
    state: &HttpState,
    form: &Form,
    caller: &Caller,
) -> Result<Response<Body>, ConsoleError> {
    let business = business_of(form, caller)?;
    let day = |field: &'static str| -> Result<DateTime<Utc>, ConsoleError> {
        let raw = form.get(field).unwrap_or("").trim();
        NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc())
            .ok_or_else(|| ConsoleError::Field {
                field,
                message: format!("{raw:?} is not a day (YYYY-MM-DD)"),
            })
    };
    let from = day("from")?;
    let to = day("to")? + TimeDelta::days(1);
    if to <= from {
        return Err(ConsoleError::Field {
            field: "to",
            message: "is before from".into(),
        });
    }
    let format = Format::parse(form.get("format").unwrap_or("csv")).ok_or(ConsoleError::Field {
        field: "format",
        message: "must be csv or ndjson".into(),
    })?;
    let by = TimeField::parse(form.get("by").unwrap_or("received")).ok_or(ConsoleError::Field {
        field: "by",
        message: "must be received or event".into(),
    })?;
    let range = RecordsRange {
        business,
        by,
        from,
        to,
    };
    export::stream(state, range, format, caller.name())
        .await
        .map_err(|e| match e {
            ExportError::Store(e) => ConsoleError::Store(e),
            ExportError::OtherBusiness(b) => ConsoleError::OtherBusiness(b),
            other => ConsoleError::Unavailable(other.to_string()),
        })
}

fn sorted(set: &std::collections::HashSet<PhoneNumber>) -> Vec<PhoneNumber> {
    let mut list: Vec<_> = set.iter().cloned().collect();
    list.sort();
    list
}

/// Whether a POST comes from this console's own pages: a browser says so in `Sec-Fetch-Site`
/// (`same-origin`, or `none` when typed by the user); without it, an `Origin` must name the
/// `Host` it was sent to. A request with neither (not a browser) passes: it still needs the
/// session cookie and the form's token.
fn same_site(req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| authority.as_bytes() == host.as_bytes()),
        (Some(_), None) => false,
    }
}

/// Reads an urlencoded form within the port's body deadline and [`MAX_FORM`].
async fn read_form(req: Request<Incoming>, state: &HttpState) -> Result<Form, ConsoleError> {
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(ConsoleError::UnsupportedMediaType);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FORM as u64) {
        return Err(ConsoleError::TooLarge);
    }
    let body = Limited::new(req.into_body(), MAX_FORM);
    let bytes = match tokio::time::timeout(state.limits.body_timeout, body.collect()).await {
        Err(_) => return Err(ConsoleError::BodyTimeout),
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ConsoleError::TooLarge);
        }
        Ok(Err(e)) => return Err(ConsoleError::BodyRead(e.to_string())),
    };
    let mut fields = HashMap::new();
    for (name, value) in form_urlencoded::parse(&bytes) {
        fields
            .entry(name.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    Ok(Form(fields))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(req: &Request<Incoming>, name: &str) -> Option<String> {
    cookie_in(req.headers().get_all(header::COOKIE).iter(), name)
}

fn cookie_in<'a>(values: impl Iterator<Item = &'a HeaderValue>, name: &str) -> Option<String> {
    values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn secure(tls: bool) -> &'static str {
    if tls { "; Secure" } else { "" }
}

fn set_cookie<B>(response: &mut Response<B>, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// A page.
fn html_response(status: StatusCode, markup: Markup) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from(markup.into_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    boxed(res)
}

/// After a form that changed the session: back to `to` with a GET.
fn redirect(to: &'static str) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SEE_OTHER;
    res.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    boxed(res)
}

fn stylesheet() -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from_static(
        include_str!("console.css").as_bytes(),
    )));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    boxed(res)
}

/// The policy every console answer carries: no script from anywhere, styles and images only
/// from this origin, forms only to it, never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn security_headers<B>(response: &mut Response<B>, tls: bool) {
    let headers = response.headers_mut();
    let fixed = [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=(), payment=()",
        ),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_paths_take_one_method_each() {
        assert_eq!(resolve(&Method::GET, "/console"), Some(Ok(Page::Start)));
        assert_eq!(resolve(&Method::POST, "/console"), Some(Err(())));
        assert_eq!(
            resolve(&Method::POST, "/console/customer"),
            Some(Ok(Page::Customer))
        );
        assert_eq!(resolve(&Method::GET, "/console/customer"), Some(Err(())));
        assert_eq!(
            resolve(&Method::GET, "/console/console.css"),
            Some(Ok(Page::Stylesheet))
        );
        assert_eq!(resolve(&Method::GET, "/consoles"), None);
        for path in PATHS {
            assert!(resolve(&Method::GET, path).is_some(), "{path}");
        }
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let values = [
            HeaderValue::from_static("a=1; callgate_session_x=2"),
            HeaderValue::from_static("callgate_session=abc ; b=3"),
        ];
        assert_eq!(
            cookie_in(values.iter(), "callgate_session").as_deref(),
            Some("abc")
        );
        assert_eq!(cookie_in(values.iter(), "b").as_deref(), Some("3"));
        assert_eq!(cookie_in(values.iter(), "c"), None);
        let empty = [HeaderValue::from_static("callgate_session=")];
        assert_eq!(cookie_in(empty.iter(), "callgate_session"), None);
    }
}
