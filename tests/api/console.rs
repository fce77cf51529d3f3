//! The compliance console (issue 14): in a real headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`; `scripts/test.sh` installs them), plus its
//! refusals over plain HTTP.
//!
//! The browser test is one browser session: sign in (a wrong key first), look up a customer,
//! read the state and the timeline, open the business overview and its chart, download an
//! export and read the file, sign out. Each page is saved as a screenshot under
//! `<target>/console-screenshots/` (one of them is `docs/console-customer.png`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use callgate::domain::attribution::Attribution;
use callgate::domain::{Choice, Decision, Evidence, Pair, PhoneNumber, Source};
use callgate::grpc_api::auth::key_digest;
use callgate::store::ConsentStore;
use callgate::store::redis::RedisStore;
use callgate::store::redis::codec;
use callgate::store::redis::keys::Keys;
use chrono::{DateTime, TimeDelta, Utc};
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::helpers::*;
use crate::redis_harness::RedisServer;

/// A second business, which [`SCOPED_KEY`] may see and [`BUSINESS`] it may not.
const OTHER: &str = "+14155550100";
/// History scope, limited to [`OTHER`].
const SCOPED_KEY: &str = "console-scoped-key-01";
/// Check scope only: no console.
const DIALER_KEY: &str = "console-dialer-key-02";

/// Overrides the `chromedriver` binary the browser test runs.
const CHROMEDRIVER_ENV: &str = "CHROMEDRIVER";
/// Overrides the Chromium binary (default Debian's `/usr/bin/chromium`).
const CHROMIUM_ENV: &str = "CHROMIUM";

fn clients_file() -> tempfile::NamedTempFile {
    let text = format!(
        r#"
[[client]]
name = "officer"
key_sha256 = ["{}"]
scopes = ["history"]

[[client]]
name = "officer-other"
key_sha256 = ["{}"]
scopes = ["history"]
businesses = ["{OTHER}"]

[[client]]
name = "dialer"
key_sha256 = ["{}"]
scopes = ["check"]
"#,
        key_digest(API_KEY),
        key_digest(SCOPED_KEY),
        key_digest(DIALER_KEY),
    );
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

async fn spawn_console(clients: &tempfile::NamedTempFile) -> TestApp {
    let mut config = test_config();
    config.api_clients_file = Some(clients.path().to_owned());
    spawn_app_with(config, memory_store()).await
}

fn phone(s: &str) -> PhoneNumber {
    PhoneNumber::parse(s).unwrap()
}

fn decision(
    business: &str,
    customer: &str,
    choice: Choice,
    at: DateTime<Utc>,
    id: &str,
) -> Decision {
    Decision {
        pair: Pair::new(phone(business), phone(customer)),
        choice,
        decided_at: at,
        evidence: Evidence {
            source: Source::DoubleTick,
            message_id: id.to_owned(),
            paired_message_id: format!("paired-{id}"),
            response_source: "user_initiated".to_owned(),
            sender_customer_id: "dt-customer-7".to_owned(),
            body_sha256: [7; 32],
            stated_at: at,
            stated_expires_at: None,
        },
        attribution: None,
        customer_name: None,
    }
}

/// Millisecond precision, as the stores keep it.
fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
}

/// Records what the pages will show, through the store: for [`CUSTOMER`] a denial ten days
/// ago, a temporary grant yesterday that runs 6 days and an hour more, and a permanent grant
/// stated five days ago that arrived after it (stale); a few other customers on other days.
/// Returns what was recorded, in the order received.
async fn seed(app: &TestApp) -> Vec<Seeded> {
    let now = ms(app.clock.now());
    let day = TimeDelta::days(1);
    let temporary = Choice::GrantTemporary {
        expires_at: now + TimeDelta::days(6) + TimeDelta::hours(1),
    };
    let feed = [
        (
            CUSTOMER,
            Choice::Deny,
            now - day * 10,
            now - day * 10,
            "deny-1",
        ),
        (
            "+919876500001",
            Choice::GrantPermanent,
            now - day * 8,
            now - day * 8,
            "other-1",
        ),
        (
            "+919876500002",
            Choice::Deny,
            now - day * 4,
            now - day * 4,
            "other-2",
        ),
        (CUSTOMER, temporary, now - day, now - day, "grant-2"),
        (
            CUSTOMER,
            Choice::GrantPermanent,
            now - day * 5,
            now - TimeDelta::hours(12),
            "stale-3",
        ),
        (
            "+919876500003",
            Choice::GrantPermanent,
            now - TimeDelta::hours(2),
            now - TimeDelta::hours(2),
            "other-3",
        ),
    ];
    let mut seeded = Vec::new();
    for (customer, choice, decided, received, id) in feed {
        let mut d = decision(BUSINESS, customer, choice, decided, id);
        if id == "grant-2" {
            // Attributed to the request that asked (issue 13), with Meta's profile name.
            d.attribution = Some(Attribution {
                request_message_id: "paired-grant-2".into(),
                team: "collections".into(),
                campaign: "nov-renewals".into(),
                labels: [("region".to_owned(), "south".to_owned())].into(),
            });
            d.customer_name = Some("Asha Rao".into());
        }
        app.store.record(&[d], received).await.unwrap();
        let kind = if choice == Choice::Deny {
            "denials"
        } else {
            "grants"
        };
        seeded.push(Seeded {
            id: id.to_owned(),
            received,
            kind,
        });
    }
    seeded
}

/// One decision [`seed`] recorded.
struct Seeded {
    id: String,
    received: DateTime<Utc>,
    /// `grants` or `denials`, as the chart's bar titles say.
    kind: &'static str,
}

// ---- a plain HTTP client that keeps headers (cookies, redirects) ----

struct Http {
    base: String,
    client: HttpClient<HttpConnector, Full<Bytes>>,
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Reply {
    /// The value a `Set-Cookie` header gives cookie `name`.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                let first = v.split(';').next()?;
                let (n, value) = first.split_once('=')?;
                (n == name).then(|| value.to_owned())
            })
    }

    fn set_cookie_line(&self, name: &str) -> String {
        self.headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .unwrap_or_default()
            .to_owned()
    }
}

impl Http {
    fn new(app: &TestApp) -> Self {
        Http {
            base: format!("http://{}", app.http),
            client: HttpClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = self
            .client
            .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn form(&self, path: &str, cookie: &str, fields: &[(&str, &str)]) -> Reply {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send(
            "POST",
            path,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("cookie", cookie),
            ],
            &body,
        )
        .await
    }

    /// Signs in with `key` as a browser would: the sign-in form's token and cookie, then the
    /// form. Returns the answer to the sign-in.
    async fn sign_in(&self, key: &str) -> Reply {
        let page = self.send("GET", "/console", &[], "").await;
        assert_eq!(page.status, 200);
        let token = page
            .set_cookie("callgate_sign_in")
            .expect("a sign-in cookie");
        assert!(
            page.body
                .contains(&format!(r#"name="token" value="{token}""#))
        );
        self.form(
            "/console/sign-in",
            &format!("callgate_sign_in={token}"),
            &[("token", &token), ("key", key)],
        )
        .await
    }

    /// A session cookie and its CSRF token, for `key`.
    async fn session(&self, key: &str) -> (String, String) {
        let signed = self.sign_in(key).await;
        assert_eq!(signed.status, 303, "{}", signed.body);
        let id = signed.set_cookie("callgate_session").unwrap();
        let cookie = format!("callgate_session={id}");
        let start = self
            .send("GET", "/console", &[("cookie", &cookie)], "")
            .await;
        let csrf = start
            .body
            .split(r#"name="csrf" value=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a CSRF token in the start page")
            .to_owned();
        (cookie, csrf)
    }
}

#[tokio::test]
async fn issue14_console_refuses_cross_site_and_tokenless_forms_and_scopes_keys() {
    let clients = clients_file();
    let app = spawn_console(&clients).await;
    seed(&app).await;
    let http = Http::new(&app);

    // A key without the history scope, and an unknown key: the form again, with the reason.
    let dialer = http.sign_in(DIALER_KEY).await;
    assert_eq!(dialer.status, 401);
    assert!(
        dialer.body.contains("lacks the history scope"),
        "{}",
        dialer.body
    );
    let unknown = http.sign_in("not-a-key").await;
    assert_eq!(unknown.status, 401);
    assert!(unknown.body.contains("That API key is not valid"));
    assert!(unknown.set_cookie("callgate_session").is_none());
    // Sign-in without the sign-in cookie (a form posted from elsewhere): refused.
    let forged = http
        .form("/console/sign-in", "", &[("token", "x"), ("key", API_KEY)])
        .await;
    assert_eq!(forged.status, 403);

    let (cookie, csrf) = http.session(API_KEY).await;
    let fields = |token: &str| {
        vec![
            ("business".to_owned(), BUSINESS.to_owned()),
            ("customer".to_owned(), CUSTOMER.to_owned()),
            ("csrf".to_owned(), token.to_owned()),
        ]
    };
    let post = |token: String| {
        let http = &http;
        let cookie = cookie.clone();
        async move {
            let f = fields(&token);
            let refs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            http.form("/console/customer", &cookie, &refs).await
        }
    };
    // The session's token: the page.
    let ok = post(csrf.clone()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("May be called until"));
    // Without a token, or with another: refused, and nothing of the record shown.
    for token in ["", "wrong-token"] {
        let refused = post(token.to_owned()).await;
        assert_eq!(refused.status, 403, "token {token:?}");
        assert!(refused.body.contains("did not come from this console"));
        assert!(!refused.body.contains("May be called"));
    }
    // The right token, sent by a page of another site: refused.
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("business", BUSINESS),
            ("customer", CUSTOMER),
            ("csrf", csrf.as_str()),
        ])
        .finish();
    for (header, value) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
    ] {
        let cross = http
            .send(
                "POST",
                "/console/customer",
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("cookie", &cookie),
                    (header, value),
                ],
                &body,
            )
            .await;
        assert_eq!(cross.status, 403, "{header}");
    }
    // Every answer carries the security headers; the session cookie is HttpOnly and strict.
    for (name, want) in [
        (
            "content-security-policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(ok.headers.get(name).unwrap(), want, "{name}");
    }
    let signed = http.sign_in(API_KEY).await;
    let line = signed.set_cookie_line("callgate_session");
    assert!(
        line.contains("HttpOnly")
            && line.contains("SameSite=Strict")
            && line.contains("Path=/console"),
        "{line}"
    );
    assert!(!line.contains("Secure"), "no TLS on this port: {line}");

    // A key limited to another business sees nothing of this one, before the store is read.
    let (scoped_cookie, scoped_csrf) = http.session(SCOPED_KEY).await;
    let start = http
        .send("GET", "/console", &[("cookie", &scoped_cookie)], "")
        .await;
    assert!(
        start.body.contains(&format!(r#"<option value="{OTHER}">"#)),
        "a choice of its businesses"
    );
    assert!(!start.body.contains(BUSINESS));
    let other = http
        .form(
            "/console/customer",
            &scoped_cookie,
            &[
                ("business", BUSINESS),
                ("customer", CUSTOMER),
                ("csrf", &scoped_csrf),
            ],
        )
        .await;
    assert_eq!(other.status, 403);
    assert!(other.body.contains("may not see business"));
    assert!(!other.body.contains("Denied"));

    // A bad number is named.
    let bad = http
        .form(
            "/console/customer",
            &cookie,
            &[
                ("business", BUSINESS),
                ("customer", "12ab"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("customer:"), "{}", bad.body);

    // Sign-out ends the session: its cookie opens nothing any more.
    let out = http
        .form("/console/sign-out", &cookie, &[("csrf", &csrf)])
        .await;
    assert_eq!(out.status, 303);
    let after = post(csrf.clone()).await;
    assert_eq!(after.status, 401);
    assert!(after.body.contains("session has ended"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_console_shows_where_a_chain_edited_in_redis_breaks() {
    let server = RedisServer::start();
    let store: Arc<dyn ConsentStore> =
        Arc::new(RedisStore::connect(server.v1_config()).await.unwrap());
    let clients = clients_file();
    let mut config = test_config();
    config.api_clients_file = Some(clients.path().to_owned());
    let app = spawn_app_with(config, store).await;
    let seeded = seed(&app).await;
    let http = Http::new(&app);
    let (cookie, csrf) = http.session(API_KEY).await;
    let fields = [
        ("business", BUSINESS),
        ("customer", CUSTOMER),
        ("csrf", csrf.as_str()),
    ];
    let lookup = || http.form("/console/customer", &cookie, &fields);
    let intact = lookup().await;
    assert_eq!(intact.status, 200);
    assert!(
        intact
            .body
            .contains("Chain verified: each of the 3 hashed entries"),
        "{}",
        intact.body
    );
    assert!(intact.body.contains("May be called until"));

    // Edit the customer's second entry in Redis (its received time), keeping its old hash.
    let pair = Pair::new(phone(BUSINESS), phone(CUSTOMER));
    let key = Keys::new("callgate").pair(&pair).history;
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let raw: Vec<u8> = redis::cmd("LINDEX")
        .arg(&key)
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (mut entry, link) = codec::decode_history_linked(&pair, &raw).unwrap();
    assert_eq!(entry.decision.evidence.message_id, seeded[3].id);
    entry.received_at += TimeDelta::milliseconds(1);
    let forged = codec::encode_history_linked(
        &entry.decision,
        entry.outcome,
        entry.received_at,
        &link.unwrap(),
    );
    let _: () = redis::cmd("LSET")
        .arg(&key)
        .arg(1)
        .arg(forged)
        .query_async(&mut conn)
        .await
        .unwrap();

    let broken = lookup().await;
    assert_eq!(broken.status, 200);
    assert!(broken.body.contains("Chain broken"), "{}", broken.body);
    assert!(
        broken
            .body
            .contains("Entry #2: edited: the entry does not match its hash"),
        "{}",
        broken.body
    );
    assert!(!broken.body.contains("Chain verified"));
}

// ---- the browser ----

/// A `chromedriver` on a free loopback port, stopped on drop.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(std::env::var(CHROMEDRIVER_ENV).unwrap_or_else(|_| "chromedriver".into()))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is not installed: apt-get install -y chromium chromium-driver (scripts/test.sh does)");
        ChromeDriver { child, port }
    }

    /// A headless Chromium session; waits (bounded) for the driver to listen.
    async fn browser(&self, downloads: &Path) -> Client {
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": std::env::var(CHROMIUM_ENV).unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1280,1400", "--no-first-run", "--disable-extensions",
                ],
                "prefs": {
                    "download.default_directory": downloads.to_str().unwrap(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let caps = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{}", self.port);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => return client,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("no WebDriver session: {e}"),
            }
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where screenshots go: `<target>/console-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

async fn text(browser: &Client, css: &str) -> String {
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn fill(browser: &Client, css: &str, value: &str) {
    let field = browser.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

/// Submits a form and waits until the browser has left the page it was on (the old page's
/// root element went stale), so what the test reads next is the answer's page, not the form's.
async fn submit(browser: &Client, form_action: &str) {
    let old_page = browser.find(Locator::Css("html")).await.unwrap();
    click_submit(browser, form_action).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Each probe is a WebDriver round trip; no sleep is needed between them.
    while old_page.tag_name().await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{form_action}: the page did not change within 10 s"
        );
    }
}

/// Clicks a form's submit button, for a form whose answer is a download (the page stays).
async fn click_submit(browser: &Client, form_action: &str) {
    browser
        .find(Locator::Css(&format!(
            "form[action='{form_action}'] button[type=submit]"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The one file in `dir` once its download has finished (bounded wait).
async fn downloaded(dir: &Path) -> PathBuf {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let done: Vec<&PathBuf> = files
            .iter()
            .filter(|p| !p.to_string_lossy().ends_with(".crdownload"))
            .collect();
        if files.len() == 1 && done.len() == 1 {
            return done[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no finished download in {dir:?}: {files:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn issue14_console_in_headless_chromium() {
    let clients = clients_file();
    let app = spawn_console(&clients).await;
    let seeded = seed(&app).await;
    let driver = ChromeDriver::start();
    let downloads = tempfile::tempdir().unwrap();
    let browser = driver.browser(downloads.path()).await;
    let base = format!("http://{}", app.http);

    // Signing in with a wrong key fails, and says why.
    browser.goto(&format!("{base}/console")).await.unwrap();
    assert_eq!(text(&browser, "h1").await, "Sign in");
    screenshot(&browser, "sign-in").await;
    fill(&browser, "#key", "wrong-key").await;
    submit(&browser, "/console/sign-in").await;
    let error = text(&browser, "#sign-in-error").await;
    assert!(error.contains("That API key is not valid"), "{error}");
    screenshot(&browser, "sign-in-refused").await;

    // The right key: the start page.
    fill(&browser, "#key", API_KEY).await;
    submit(&browser, "/console/sign-in").await;
    assert_eq!(text(&browser, "h1").await, "Consent records");
    let cookie = browser.get_named_cookie("callgate_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    screenshot(&browser, "start").await;

    // A customer: the state in words, every decision with its evidence, the stale one marked.
    fill(&browser, "#lookup-business", BUSINESS).await;
    fill(&browser, "#customer", CUSTOMER).await;
    submit(&browser, "/console/customer").await;
    let sentence = text(&browser, "#state-sentence").await;
    assert!(sentence.starts_with("May be called until "), "{sentence}");
    assert!(sentence.ends_with(", 6 days from now."), "{sentence}");
    let entries = browser
        .find_all(Locator::Css("ol.timeline > li"))
        .await
        .unwrap();
    assert_eq!(entries.len(), 3);
    let stale = browser
        .find_all(Locator::Css("ol.timeline > li.stale"))
        .await
        .unwrap();
    assert_eq!(stale.len(), 1);
    assert!(stale[0].text().await.unwrap().contains("stale-3"));
    let timeline = text(&browser, "ol.timeline").await;
    for id in [
        "Asha Rao",
        "collections",
        "nov-renewals",
        "region=south",
        "deny-1",
        "grant-2",
        "paired-grant-2",
        "user_initiated",
        &hex::encode([7u8; 32]),
    ] {
        assert!(timeline.contains(id), "{id} in the timeline");
    }
    let chain = text(&browser, "#chain").await;
    assert!(
        chain.starts_with("Chain verified: each of the 3 hashed entries"),
        "{chain}"
    );
    // The number went in the body: the address names no number.
    let url = browser.current_url().await.unwrap();
    assert_eq!(url.path(), "/console/customer");
    assert_eq!(url.query(), None);
    screenshot(&browser, "customer").await;
    browser.set_window_size(390, 844).await.unwrap();
    screenshot(&browser, "customer-phone").await;
    browser.set_window_size(1280, 1400).await.unwrap();

    // The business overview: counts, the chart, the latest decisions.
    browser.goto(&format!("{base}/console")).await.unwrap();
    fill(&browser, "#overview-business", BUSINESS).await;
    submit(&browser, "/console/overview").await;
    assert_eq!(text(&browser, "#count-temporary").await, "1");
    assert_eq!(text(&browser, "#count-permanent").await, "2");
    assert_eq!(text(&browser, "#count-denied").await, "1");
    let bars = browser
        .find_all(Locator::Css("svg.chart rect.bar"))
        .await
        .unwrap();
    assert_eq!(bars.len(), 90, "30 days × grants, denials, expiries");
    // Each drawn bar is one (day received, kind) of the seeded decisions, with their number.
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for s in &seeded {
        *want
            .entry(format!("{}: {{}} {}", s.received.format("%-d %b"), s.kind))
            .or_default() += 1;
    }
    let want: BTreeSet<String> = want
        .into_iter()
        .map(|(label, n)| label.replace("{}", &n.to_string()))
        .collect();
    let mut drawn = BTreeSet::new();
    for bar in &bars {
        if bar.attr("height").await.unwrap().as_deref() != Some("0") {
            let title = bar.html(true).await.unwrap();
            drawn.insert(
                title
                    .trim_start_matches("<title>")
                    .trim_end_matches("</title>")
                    .to_owned(),
            );
        }
    }
    assert_eq!(drawn, want);
    let latest = text(&browser, "#latest").await;
    assert!(latest.contains("+919876500003"));
    screenshot(&browser, "overview").await;
    browser.set_window_size(390, 844).await.unwrap();
    screenshot(&browser, "overview-phone").await;
    browser.set_window_size(1280, 1400).await.unwrap();

    // The export: the browser downloads it with the session, and it holds every decision.
    browser
        .find(Locator::Css("#format"))
        .await
        .unwrap()
        .select_by_value("csv")
        .await
        .unwrap();
    click_submit(&browser, "/console/export").await;
    let file = downloaded(downloads.path()).await;
    let csv = std::fs::read_to_string(&file).unwrap();
    let mut reader = csv.lines();
    let header = reader.next().unwrap();
    assert!(header.contains("message_id"), "{header}");
    assert_eq!(reader.count(), seeded.len(), "{csv}");
    for s in &seeded {
        assert!(
            csv.contains(&format!(",{},", s.id)),
            "{} in the export",
            s.id
        );
    }

    // A customer of the latest decisions opens its record (a form post, no number in a URL).
    browser
        .find(Locator::Css(
            "#latest button[aria-label='Show the record of +919876500002']",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let sentence = text(&browser, "#state-sentence").await;
    assert!(
        sentence.starts_with("May not be called: permission denied on "),
        "{sentence}"
    );
    assert_eq!(browser.current_url().await.unwrap().query(), None);

    // Sign out: back to the sign-in form.
    submit(&browser, "/console/sign-out").await;
    assert_eq!(text(&browser, "h1").await, "Sign in");
    browser.close().await.unwrap();
}
