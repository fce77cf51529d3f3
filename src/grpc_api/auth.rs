//! Who may read consent through the gRPC API: API clients, their keys and scopes, and the guard
//! that admits every `ConsentAuthority` call before it reaches a handler.
//!
//! - Operators declare clients in a TOML file (`CALLGATE_API_CLIENTS_FILE`): a name, one or
//!   more keys given by their SHA-256 (so the file holds no usable secret, and keys rotate by
//!   listing the new digest beside the old one), the scopes it has and, optionally, the business
//!   numbers it may see.
//! - A call carries `authorization: Bearer <key>`. [`Guard`] hashes the key, compares the digest
//!   with every configured digest in constant time, looks the RPC up in [`RPC_SCOPES`] and either
//!   refuses (`UNAUTHENTICATED` / `PERMISSION_DENIED`) or passes the call on with a [`Caller`] in
//!   its extensions, which handlers use for business scoping.
//! - Keys and digests never reach a log, an error or a metric label: refusals name the client
//!   (a configured name) and a reason.
//!
//! Health (`grpc.health.v1`) and reflection are separate services and are not guarded.

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use crate::config::ENV_API_CLIENTS_FILE;
use crate::domain::PhoneNumber;
use crate::metrics::{Metrics, RefusalReason, UNAUTHENTICATED_CLIENT};

/// What a client may do. Scopes are independent: `admin` does not imply the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// CheckCallPermission, CheckCallPermissions and ListCallable (and `GET /v1/callable`).
    Check,
    /// StreamGrants.
    Stream,
    /// GetConsentHistory (and, later, exports).
    History,
    /// Anything that writes through the API (no such RPC yet).
    Admin,
    /// issue 13: RegisterConsentRequest and CanRequestConsent (and `POST /v1/consent-requests`
    /// on the HTTP port). What a CRM or an automation tool holds: it says which requests a team
    /// sent and asks the request budget, for its own businesses only; it reads no consent
    /// (that is `check`) and administers nothing (that is `admin`), so a leaked CRM key can
    /// mislabel attribution but never make a call allowed.
    Register,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Check => "check",
            Scope::Stream => "stream",
            Scope::History => "history",
            Scope::Admin => "admin",
            Scope::Register => "register",
        }
    }
}

/// The gRPC service every entry of [`RPC_SCOPES`] belongs to.
pub const SERVICE: &str = "callgate.v1.ConsentAuthority";

/// Every RPC of [`SERVICE`] and the scope it needs: the one place this is decided. An RPC that
/// is not listed is refused to every client (fail closed when the proto grows).
pub const RPC_SCOPES: &[(&str, Scope)] = &[
    ("CheckCallPermission", Scope::Check),
    ("CheckCallPermissions", Scope::Check),
    ("StreamGrants", Scope::Stream),
    ("GetConsentHistory", Scope::History),
    // issue 17
    ("CreateWebhookSubscription", Scope::Admin),
    ("ListWebhookSubscriptions", Scope::Admin),
    ("DisableWebhookSubscription", Scope::Admin),
    ("EnableWebhookSubscription", Scope::Admin),
    ("RotateWebhookSecret", Scope::Admin),
    ("ReplayWebhookSubscription", Scope::Admin),
    // issue 14
    ("ExportDecisions", Scope::History),
    // issue 13
    ("RegisterConsentRequest", Scope::Register),
    ("CanRequestConsent", Scope::Register),
    // issue 13: a calling list is many checks at once.
    ("ListCallable", Scope::Check),
];

/// The scope the gRPC `path` (`/callgate.v1.ConsentAuthority/Method`) needs, if it is listed.
pub fn scope_of(path: &str) -> Option<Scope> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(SERVICE)?
        .strip_prefix('/')?;
    RPC_SCOPES
        .iter()
        .find(|(name, _)| *name == method)
        .map(|(_, scope)| *scope)
}

/// A SHA-256 digest of a key.
type KeyDigest = [u8; 32];

/// One configured API client.
struct ApiClient {
    name: Arc<str>,
    scopes: HashSet<Scope>,
    /// `None`: every business.
    businesses: Option<Arc<HashSet<PhoneNumber>>>,
}

/// The configured API clients and the digests of their keys.
pub struct ApiClients {
    clients: Vec<ApiClient>,
    /// `(digest, index into clients)`, every accepted key of every client.
    keys: Vec<(KeyDigest, usize)>,
}

impl fmt::Debug for ApiClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: a digest of a weak key is as good as the key.
        f.debug_struct("ApiClients")
            .field("clients", &self.names().collect::<Vec<_>>())
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Why the API clients file could not be used. Names the client and the field; never echoes
/// a digest.
#[derive(Debug, thiserror::Error)]
pub enum ClientsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Toml { path: String, message: String },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
}

/// The file's shape: `[[client]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    client: Vec<ClientEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    name: String,
    key_sha256: Vec<String>,
    scopes: Vec<Scope>,
    businesses: Option<Vec<String>>,
}

/// Longest client name; names are metric labels and log fields, so they are short and plain.
const MAX_NAME_LEN: usize = 64;

impl ApiClients {
    /// Reads and validates the clients file at `path`.
    pub fn load(path: &Path) -> Result<Self, ClientsError> {
        Ok(Self::load_with_digest(path)?.1)
    }

    /// Reads and validates the clients file at `path`; also returns the SHA-256 of the content
    /// it parsed, to notice a change.
    fn load_with_digest(path: &Path) -> Result<(KeyDigest, Self), ClientsError> {
        let shown = path.display().to_string();
        let read_error = |source| ClientsError::Read {
            path: shown.clone(),
            source,
        };
        let bytes = std::fs::read(path).map_err(read_error)?;
        let digest = Sha256::digest(&bytes).into();
        let text = String::from_utf8(bytes).map_err(|_| {
            read_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not UTF-8",
            ))
        })?;
        let clients = Self::parse(&text).map_err(|e| match e {
            ParseError::Toml(message) => ClientsError::Toml {
                path: shown,
                message,
            },
            ParseError::Invalid(problem) => ClientsError::Invalid {
                path: shown.clone(),
                problem,
            },
        })?;
        Ok((digest, clients))
    }

    /// Parses and validates the TOML text of a clients file.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let file: ClientsFile =
            toml::from_str(text).map_err(|e| ParseError::Toml(e.message().to_owned()))?;
        let mut clients = Vec::with_capacity(file.client.len());
        let mut keys: Vec<(KeyDigest, usize)> = Vec::new();
        let mut names = HashSet::new();
        for (i, entry) in file.client.into_iter().enumerate() {
            let invalid = |problem: String| ParseError::Invalid(problem);
            let name = entry.name.trim().to_owned();
            let valid_name = !name.is_empty()
                && name.len() <= MAX_NAME_LEN
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid_name {
                return Err(invalid(format!(
                    "client[{i}].name must be 1 to {MAX_NAME_LEN} letters, digits, `-`, `_` or `.`"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(invalid(format!("client {name:?} is declared twice")));
            }
            if entry.key_sha256.is_empty() {
                return Err(invalid(format!(
                    "client {name:?}: key_sha256 must list at least one digest"
                )));
            }
            for (k, digest) in entry.key_sha256.iter().enumerate() {
                let digest = parse_digest(digest).ok_or_else(|| {
                    invalid(format!(
                        "client {name:?}: key_sha256[{k}] must be 64 hex digits (the SHA-256 of \
                         a key; `callgate keygen` prints one)"
                    ))
                })?;
                if keys.iter().any(|(d, _)| *d == digest) {
                    return Err(invalid(format!(
                        "client {name:?}: key_sha256[{k}] is also listed for another client or \
                         twice; each key must identify one client"
                    )));
                }
                keys.push((digest, clients.len()));
            }
            if entry.scopes.is_empty() {
                return Err(invalid(format!(
                    "client {name:?}: scopes must list at least one of check, stream, history, \
                     admin"
                )));
            }
            let businesses = match entry.businesses {
                None => None,
                Some(list) if list.is_empty() => {
                    return Err(invalid(format!(
                        "client {name:?}: businesses is empty; leave it out to allow every \
                         business, or list the numbers it may see"
                    )));
                }
                Some(list) => Some(Arc::new(
                    list.iter()
                        .enumerate()
                        .map(|(b, raw)| {
                            PhoneNumber::parse(raw).map_err(|e| {
                                invalid(format!("client {name:?}: businesses[{b}]: {e}"))
                            })
                        })
                        .collect::<Result<HashSet<_>, _>>()?,
                )),
            };
            clients.push(ApiClient {
                name: name.into(),
                scopes: entry.scopes.into_iter().collect(),
                businesses,
            });
        }
        Ok(ApiClients { clients, keys })
    }

    /// The configured client names, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.clients.iter().map(|c| &*c.name)
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The client (by index) whose key this is. Compares the presented key's digest with every
    /// configured digest, with no early exit and no data-dependent branch.
    fn identify(&self, key: &[u8]) -> Option<usize> {
        let presented: KeyDigest = Sha256::digest(key).into();
        // 0: no match; otherwise 1 + the index of the client.
        let mut found = 0u32;
        for (digest, client) in &self.keys {
            let candidate = u32::try_from(*client).unwrap_or(u32::MAX - 1) + 1;
            found = u32::conditional_select(&found, &candidate, presented.ct_eq(digest));
        }
        (found as usize).checked_sub(1)
    }
}

/// A clients file that does not parse (without a path; [`ApiClients::load`] adds it).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not valid TOML: {0}")]
    Toml(String),
    #[error("{0}")]
    Invalid(String),
}

fn parse_digest(hex_digest: &str) -> Option<KeyDigest> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest.trim(), &mut out).ok()?;
    Some(out)
}

/// The identity behind an admitted call.
#[derive(Clone, Debug)]
pub struct Caller {
    name: Arc<str>,
    /// `None`: every business.
    businesses: Option<Arc<HashSet<PhoneNumber>>>,
}

impl Caller {
    /// The caller when authentication is off (`--insecure-no-auth`): every business.
    pub fn unrestricted() -> Self {
        Caller {
            name: "insecure-no-auth".into(),
            businesses: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the caller may see `business`'s consent.
    pub fn may_see(&self, business: &PhoneNumber) -> bool {
        self.businesses
            .as_ref()
            .is_none_or(|b| b.contains(business))
    }

    /// The businesses the caller is limited to; `None`: every business.
    pub fn businesses(&self) -> Option<&HashSet<PhoneNumber>> {
        self.businesses.as_deref()
    }
}

/// Why a call was refused. Carries no key and no digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing `authorization: Bearer <key>` metadata")]
    MissingKey,
    #[error("`authorization` metadata must be `Bearer <key>`")]
    MalformedKey,
    #[error("the API key is not valid")]
    UnknownKey,
    #[error(
        "no API clients are configured on this server; the operator must set {ENV_API_CLIENTS_FILE}"
    )]
    NotConfigured,
    #[error("client {client:?} lacks the {scope:?} scope this call needs")]
    MissingScope {
        client: Arc<str>,
        scope: &'static str,
    },
    #[error("this RPC is not open to API clients")]
    UnlistedRpc,
    #[error("client {client:?} may not see business {business}")]
    OtherBusiness { client: Arc<str>, business: String },
}

impl Refusal {
    /// How the refusal is counted in `callgate_api_refusals_total`.
    pub(crate) fn reason(&self) -> RefusalReason {
        match self {
            Refusal::MissingKey => RefusalReason::MissingKey,
            Refusal::MalformedKey => RefusalReason::MalformedKey,
            Refusal::UnknownKey => RefusalReason::UnknownKey,
            Refusal::NotConfigured => RefusalReason::NotConfigured,
            Refusal::MissingScope { .. } | Refusal::UnlistedRpc => RefusalReason::MissingScope,
            Refusal::OtherBusiness { .. } => RefusalReason::OtherBusiness,
        }
    }

    /// Counts the refusal (for `client`, a configured name or [`UNAUTHENTICATED_CLIENT`]) and
    /// turns it into its `Status`: the one place this is decided.
    pub fn status(self, client: &str, metrics: &Metrics) -> Status {
        metrics.api_refusal(client, self.reason());
        match self {
            Refusal::MissingKey
            | Refusal::MalformedKey
            | Refusal::UnknownKey
            | Refusal::NotConfigured => Status::unauthenticated(self.to_string()),
            Refusal::MissingScope { .. } | Refusal::UnlistedRpc | Refusal::OtherBusiness { .. } => {
                Status::permission_denied(self.to_string())
            }
        }
    }
}

/// How the API admits calls.
pub enum ApiAuth {
    /// Keys from the clients file.
    Clients(ApiClients),
    /// No client configured: every call is refused.
    Closed,
    /// `--insecure-no-auth`: every call is admitted as [`Caller::unrestricted`].
    Open,
}

impl ApiAuth {
    /// Logs how the API is protected (names and counts, never digests).
    pub fn log_startup(&self) {
        match self {
            ApiAuth::Clients(c) => tracing::info!(
                clients = ?c.names().collect::<Vec<_>>(),
                keys = c.keys.len(),
                "gRPC API: clients authenticated by key"
            ),
            ApiAuth::Closed => tracing::error!(
                "gRPC API: no API clients configured, so EVERY call is refused (UNAUTHENTICATED). \
                 Run `callgate keygen`, put the printed key_sha256 in a TOML file \
                 ([[client]] name, key_sha256, scopes) and set {ENV_API_CLIENTS_FILE} to it; or \
                 pass --insecure-no-auth for a local demo"
            ),
            ApiAuth::Open => tracing::warn!(
                "--insecure-no-auth: the gRPC API answers ANY caller without a key; anyone who \
                 can reach the gRPC port reads every consent. Never use this in production"
            ),
        }
    }

    /// Admits a call to `path` carrying `authorization` (each value of the header), or says
    /// why not, with the name of the client it was identified as (if any).
    pub fn admit(
        &self,
        path: &str,
        authorization: &[&[u8]],
    ) -> Result<Caller, (Option<Arc<str>>, Refusal)> {
        let Some(client) = self.identify(authorization)? else {
            return Ok(Caller::unrestricted());
        };
        let Some(scope) = scope_of(path) else {
            return Err((Some(client.name.clone()), Refusal::UnlistedRpc));
        };
        Self::grant(client, scope)
    }

    /// Admits a request that needs `scope` (the HTTP port's JSON API, exports, the console),
    /// carrying `authorization` (each value of the header, `Bearer <key>`); the same keys,
    /// scopes and business restrictions as the gRPC API.
    pub fn admit_scope(
        &self,
        scope: Scope,
        authorization: &[&[u8]],
    ) -> Result<Caller, (Option<Arc<str>>, Refusal)> {
        match self.identify(authorization)? {
            Some(client) => Self::grant(client, scope),
            None => Ok(Caller::unrestricted()),
        }
    }

    /// The client the key in `authorization` belongs to; `None` when the API is open.
    fn identify(
        &self,
        authorization: &[&[u8]],
    ) -> Result<Option<&ApiClient>, (Option<Arc<str>>, Refusal)> {
        let clients = match self {
            ApiAuth::Open => return Ok(None),
            ApiAuth::Closed => return Err((None, Refusal::NotConfigured)),
            ApiAuth::Clients(c) => c,
        };
        let key = match authorization {
            [] => return Err((None, Refusal::MissingKey)),
            [one] => bearer(one).ok_or((None, Refusal::MalformedKey))?,
            _ => return Err((None, Refusal::MalformedKey)),
        };
        let index = clients.identify(key).ok_or((None, Refusal::UnknownKey))?;
        Ok(Some(&clients.clients[index]))
    }

    /// The caller `client` is, if it holds `scope`.
    fn grant(client: &ApiClient, scope: Scope) -> Result<Caller, (Option<Arc<str>>, Refusal)> {
        if !client.scopes.contains(&scope) {
            return Err((
                Some(client.name.clone()),
                Refusal::MissingScope {
                    client: client.name.clone(),
                    scope: scope.as_str(),
                },
            ));
        }
        Ok(Caller {
            name: client.name.clone(),
            businesses: client.businesses.clone(),
        })
    }
}

/// The key in `Bearer <key>` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.first()?.is_ascii_whitespace() {
        return None;
    }
    match rest.trim_ascii() {
        [] => None,
        key => Some(key),
    }
}

/// A new random API key: `cgk_` and 32 random bytes in URL-safe base64.
pub fn generate_key() -> Result<String, getrandom::Error> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "cgk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The hex SHA-256 of `key`, as `key_sha256` lists it.
pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The API clients in force: read from the clients file at startup, and again whenever its
/// content changes ([`watch`]), so keys rotate and clients come and go without a restart.
pub struct AuthSource {
    file: Option<PathBuf>,
    insecure_no_auth: bool,
    current: RwLock<Arc<ApiAuth>>,
    /// SHA-256 of the file's content at the last load attempt.
    seen: Mutex<Option<KeyDigest>>,
}

impl AuthSource {
    /// Loads the clients `file` (if any); an error here stops startup. Without a client,
    /// `insecure_no_auth` decides between open and closed.
    pub fn load(file: Option<&Path>, insecure_no_auth: bool) -> Result<Self, ClientsError> {
        let (seen, clients) = match file {
            None => (None, None),
            Some(path) => {
                let (digest, clients) = ApiClients::load_with_digest(path)?;
                (Some(digest), Some(clients))
            }
        };
        Ok(AuthSource {
            file: file.map(Path::to_owned),
            insecure_no_auth,
            current: RwLock::new(Arc::new(Self::decide(clients, insecure_no_auth))),
            seen: Mutex::new(seen),
        })
    }

    fn decide(clients: Option<ApiClients>, insecure_no_auth: bool) -> ApiAuth {
        match clients.filter(|c| !c.is_empty()) {
            Some(c) => ApiAuth::Clients(c),
            None if insecure_no_auth => ApiAuth::Open,
            None => ApiAuth::Closed,
        }
    }

    /// The clients in force now.
    pub fn current(&self) -> Arc<ApiAuth> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Loads the file again if its content changed since the last attempt. `Ok(true)`: the
    /// new clients are in force. On an error the previous clients stay in force.
    pub fn reload_if_changed(&self) -> Result<bool, ClientsError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let now = std::fs::read(path).ok().map(|b| Sha256::digest(b).into());
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let (digest, clients) = ApiClients::load_with_digest(path)?;
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest);
        let auth = Self::decide(Some(clients), self.insecure_no_auth);
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(auth);
        Ok(true)
    }
}

/// Checks the clients file every `every` until `stop`, and puts a changed file in force.
pub async fn watch(source: Arc<AuthSource>, every: Duration, stop: CancellationToken) {
    if source.file.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = source.clone();
        match tokio::task::spawn_blocking(move || s.reload_if_changed()).await {
            Ok(Ok(true)) => {
                tracing::info!("API clients file changed; reloaded");
                source.current().log_startup();
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::error!(
                error = %e,
                "API clients file does not load; the previous clients stay in force"
            ),
            Err(e) => tracing::error!(error = %e, "API clients reload task failed"),
        }
    }
}

/// Wraps the `ConsentAuthority` server: every call is admitted by [`ApiAuth::admit`] before it
/// reaches a handler, which finds the [`Caller`] in the request's extensions.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    auth: Arc<AuthSource>,
    metrics: Arc<Metrics>,
}

impl<S> Guard<S> {
    pub fn new(inner: S, auth: Arc<AuthSource>, metrics: Arc<Metrics>) -> Self {
        Guard {
            inner,
            auth,
            metrics,
        }
    }
}

impl<S: NamedService> NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Guard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let presented: Vec<&[u8]> = req
            .headers()
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        match self.auth.current().admit(req.uri().path(), &presented) {
            Ok(caller) => {
                // The RPC's span (`trace::Traced`) names the client.
                tracing::Span::current().record("client", caller.name());
                req.extensions_mut().insert(caller);
                Box::pin(self.inner.call(req))
            }
            Err((client, refusal)) => {
                let rpc = req.uri().path().rsplit('/').next().unwrap_or_default();
                let client = client.as_deref().unwrap_or(UNAUTHENTICATED_CLIENT);
                tracing::Span::current().record("client", client);
                tracing::info!(
                    rpc,
                    client,
                    reason = refusal.reason().label(),
                    "api call refused"
                );
                let status = refusal.status(client, &self.metrics);
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "key-for-dialer";
    const KEY_A2: &str = "new-key-for-dialer";
    const KEY_B: &str = "key-for-streamer";

    fn clients() -> ApiClients {
        let text = format!(
            r#"
            [[client]]
            name = "dialer-eu"
            key_sha256 = ["{}", "{}"]
            scopes = ["check"]

            [[client]]
            name = "crm"
            key_sha256 = ["{}"]
            scopes = ["stream", "history"]
            businesses = ["+91 90000 00000"]
            "#,
            key_digest(KEY_A),
            key_digest(KEY_A2),
            key_digest(KEY_B)
        );
        ApiClients::parse(&text).unwrap()
    }

    fn path(method: &str) -> String {
        format!("/{SERVICE}/{method}")
    }

    fn admit(auth: &ApiAuth, method: &str, header: Option<&str>) -> Result<Caller, Refusal> {
        let values: Vec<&[u8]> = header.iter().map(|h| h.as_bytes()).collect();
        auth.admit(&path(method), &values).map_err(|(_, r)| r)
    }

    #[test]
    fn every_rpc_of_the_proto_has_a_scope() {
        let descriptors = <prost_types::FileDescriptorSet as prost::Message>::decode(
            crate::pb::FILE_DESCRIPTOR_SET,
        )
        .unwrap();
        let methods: Vec<String> = descriptors
            .file
            .iter()
            .flat_map(|f| &f.service)
            .filter(|s| s.name() == "ConsentAuthority")
            .flat_map(|s| &s.method)
            .map(|m| m.name().to_owned())
            .collect();
        assert!(!methods.is_empty());
        for m in methods {
            assert!(scope_of(&path(&m)).is_some(), "{m} has no scope");
        }
        assert_eq!(scope_of("/callgate.v1.ConsentAuthority/Nope"), None);
        assert_eq!(scope_of("/other.Service/CheckCallPermission"), None);
    }

    #[test]
    fn keys_identify_clients_and_scopes_decide() {
        let auth = ApiAuth::Clients(clients());
        let bearer = |k: &str| format!("Bearer {k}");
        let dialer = admit(&auth, "CheckCallPermission", Some(&bearer(KEY_A))).unwrap();
        assert_eq!(dialer.name(), "dialer-eu");
        // Both keys of a rotating client work; the scheme is case-insensitive.
        let rotated = admit(
            &auth,
            "CheckCallPermissions",
            Some(&format!("bearer  {KEY_A2}")),
        );
        assert_eq!(rotated.unwrap().name(), "dialer-eu");
        assert!(matches!(
            admit(&auth, "StreamGrants", Some(&bearer(KEY_A))),
            Err(Refusal::MissingScope { .. })
        ));
        let crm = admit(&auth, "StreamGrants", Some(&bearer(KEY_B))).unwrap();
        assert_eq!(crm.name(), "crm");
        assert!(crm.may_see(&PhoneNumber::parse("+919000000000").unwrap()));
        assert!(!crm.may_see(&PhoneNumber::parse("+919000000001").unwrap()));
        assert!(dialer.may_see(&PhoneNumber::parse("+919000000001").unwrap()));
        let refusals = [
            (None, Refusal::MissingKey),
            (Some("Bearer".to_owned()), Refusal::MalformedKey),
            (Some("Bearer ".to_owned()), Refusal::MalformedKey),
            (Some(format!("Basic {KEY_A}")), Refusal::MalformedKey),
            (Some(format!("Bearer{KEY_A}")), Refusal::MalformedKey),
            (Some(bearer("nope")), Refusal::UnknownKey),
            (Some(bearer(&KEY_A[1..])), Refusal::UnknownKey),
            (Some(bearer(&key_digest(KEY_A))), Refusal::UnknownKey),
        ];
        for (header, want) in refusals {
            assert_eq!(
                admit(&auth, "CheckCallPermission", header.as_deref()).unwrap_err(),
                want,
                "{header:?}"
            );
        }
        assert_eq!(
            admit(&auth, "Unlisted", Some(&bearer(KEY_A))).unwrap_err(),
            Refusal::UnlistedRpc
        );
        let two = [bearer(KEY_A), bearer(KEY_B)];
        let two: Vec<&[u8]> = two.iter().map(|s| s.as_bytes()).collect();
        assert_eq!(
            auth.admit(&path("CheckCallPermission"), &two)
                .unwrap_err()
                .1,
            Refusal::MalformedKey
        );
    }

    #[test]
    fn closed_refuses_and_open_admits_everything() {
        assert_eq!(
            admit(&ApiAuth::Closed, "CheckCallPermission", Some("Bearer x")).unwrap_err(),
            Refusal::NotConfigured
        );
        let open = admit(&ApiAuth::Open, "GetConsentHistory", None).unwrap();
        assert!(open.businesses().is_none());
    }

    #[test]
    fn refusals_map_to_their_status_codes() {
        let m = Metrics::default();
        let cases = [
            (Refusal::MissingKey, tonic::Code::Unauthenticated),
            (Refusal::UnknownKey, tonic::Code::Unauthenticated),
            (Refusal::NotConfigured, tonic::Code::Unauthenticated),
            (
                Refusal::MissingScope {
                    client: "x".into(),
                    scope: "check",
                },
                tonic::Code::PermissionDenied,
            ),
            (Refusal::UnlistedRpc, tonic::Code::PermissionDenied),
        ];
        for (refusal, code) in cases {
            assert_eq!(refusal.clone().status("x", &m).code(), code, "{refusal:?}");
        }
    }

    #[test]
    fn bad_files_are_refused_with_the_client_and_field_named() {
        let d = key_digest("k");
        let cases = [
            (
                "[[client]]\nname = \"a\"\nscopes = [\"check\"]".to_owned(),
                "key_sha256",
            ),
            (
                "[[client]]\nname = \"a\"\nkey_sha256 = [\"abc\"]\nscopes = [\"check\"]".to_owned(),
                "key_sha256[0]",
            ),
            (
                format!("[[client]]\nname = \"a\"\nkey_sha256 = [\"{d}\"]\nscopes = [\"read\"]"),
                "read",
            ),
            (
                format!("[[client]]\nname = \"a\"\nkey_sha256 = [\"{d}\"]\nscopes = []"),
                "scopes",
            ),
            (
                format!(
                    "[[client]]\nname = \"a\"\nkey_sha256 = [\"{d}\"]\nscopes = [\"check\"]\nbusinesses = []"
                ),
                "businesses",
            ),
            (
                format!(
                    "[[client]]\nname = \"a\"\nkey_sha256 = [\"{d}\"]\nscopes = [\"check\"]\nbusinesses = [\"12ab\"]"
                ),
                "businesses[0]",
            ),
            (
                format!("[[client]]\nname = \"a b\"\nkey_sha256 = [\"{d}\"]\nscopes = [\"check\"]"),
                "name",
            ),
            (
                format!(
                    "[[client]]\nname = \"a\"\nkey_sha256 = [\"{d}\"]\nscopes = [\"check\"]\n\
                     [[client]]\nname = \"b\"\nkey_sha256 = [\"{d}\"]\nscopes = [\"check\"]"
                ),
                "another client",
            ),
            (
                format!(
                    "[[client]]\nname = \"a\"\nkey_sha256 = [\"{d}\"]\nscopes = [\"check\"]\nscope = 1"
                ),
                "scope",
            ),
        ];
        for (text, needle) in cases {
            let err = ApiClients::parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
            assert!(!err.contains(&d), "digest echoed: {err}");
        }
    }

    #[test]
    fn generated_keys_are_random_and_their_digest_admits_them() {
        let (a, b) = (generate_key().unwrap(), generate_key().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("cgk_") && a.len() == 4 + 43, "{a}");
        let text = format!(
            "[[client]]\nname = \"a\"\nkey_sha256 = [\"{}\"]\nscopes = [\"check\"]",
            key_digest(&a)
        );
        let auth = ApiAuth::Clients(ApiClients::parse(&text).unwrap());
        assert!(admit(&auth, "CheckCallPermission", Some(&format!("Bearer {a}"))).is_ok());
        assert!(admit(&auth, "CheckCallPermission", Some(&format!("Bearer {b}"))).is_err());
        let printed = format!("{:?}", clients());
        assert!(!printed.contains(&key_digest(KEY_A)), "{printed}");
    }

    #[test]
    fn the_source_reloads_a_changed_file_and_keeps_the_old_clients_when_it_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.toml");
        let file = |key: &str| {
            format!(
                "[[client]]\nname = \"a\"\nkey_sha256 = [\"{}\"]\nscopes = [\"check\"]",
                key_digest(key)
            )
        };
        let admitted = |source: &AuthSource, key: &str| {
            admit(
                &source.current(),
                "CheckCallPermission",
                Some(&format!("Bearer {key}")),
            )
            .is_ok()
        };
        std::fs::write(&path, file(KEY_A)).unwrap();
        let source = AuthSource::load(Some(&path), false).unwrap();
        assert!(admitted(&source, KEY_A));
        assert!(!source.reload_if_changed().unwrap(), "nothing changed");

        std::fs::write(&path, file(KEY_B)).unwrap();
        assert!(source.reload_if_changed().unwrap());
        assert!(!admitted(&source, KEY_A) && admitted(&source, KEY_B));

        // Broken or gone: refused, and the clients in force stay.
        std::fs::write(&path, "[[client]]\nname = ").unwrap();
        assert!(source.reload_if_changed().is_err());
        assert!(admitted(&source, KEY_B));
        std::fs::remove_file(&path).unwrap();
        assert!(source.reload_if_changed().is_err());
        assert!(admitted(&source, KEY_B));

        // Emptied: no client, so closed (or open with --insecure-no-auth).
        std::fs::write(&path, "").unwrap();
        assert!(source.reload_if_changed().unwrap());
        assert!(matches!(*source.current(), ApiAuth::Closed));
        let open = AuthSource::load(Some(&path), true).unwrap();
        assert!(matches!(*open.current(), ApiAuth::Open));
        assert!(matches!(
            *AuthSource::load(None, false).unwrap().current(),
            ApiAuth::Closed
        ));
    }
}
