//! Who may post decisions: authentication primitives for the webhook endpoints, without I/O.
//!
//! A forged "accept" webhook would let someone add any customer to a calling list, so every
//! route that ingests decisions is authenticated before its body is parsed. Three mechanisms,
//! because the senders differ:
//!
//! - [`WebhookAuth`]: a shared secret, for senders that can only be configured with a static
//!   credential (DoubleTick, internal relays). Several secrets are accepted at once so a secret
//!   can be rotated without downtime: add the new one, move the senders, remove the old one.
//!   The secret may arrive as `Authorization: Bearer <s>`, as the password of
//!   `Authorization: Basic` (any user name), or as the whole value of a configurable header.
//! - [`verify_meta_signature`]: Meta signs each webhook body with the app secret
//!   (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`); it must be checked on the raw bytes,
//!   before any parsing.
//! - [`verify_subscription`]: Meta's one-time GET handshake proving the endpoint knows the verify
//!   token, answered by echoing `hub.challenge`.
//!
//! Every comparison with a secret is constant time, and against fixed-size SHA-256 digests so the
//! time taken reveals neither the content nor the length of a secret. Secrets live in [`Secret`],
//! which never prints, and no [`AuthError`] carries a secret or a presented credential.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

pub use crate::secret::Secret;

/// The header Meta puts the body signature in.
pub const META_SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// The only `hub.mode` Meta's verification handshake uses.
pub const SUBSCRIBE_MODE: &str = "subscribe";
/// Longest `hub.challenge` echoed back (Meta sends a short integer).
pub const MAX_CHALLENGE_LEN: usize = 256;

/// Why a request was not authenticated. Never holds a secret or a presented credential, so it
/// can be logged and returned as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials presented")]
    MissingCredentials,
    #[error("credentials are malformed: {0}")]
    MalformedCredentials(&'static str),
    #[error("credentials are not valid")]
    InvalidCredentials,
    #[error("missing X-Hub-Signature-256 header")]
    MissingSignature,
    #[error("X-Hub-Signature-256 must be `sha256=` followed by 64 hex digits")]
    MalformedSignature,
    #[error("X-Hub-Signature-256 does not match the body")]
    SignatureMismatch,
    #[error("query string is not valid percent-encoded UTF-8")]
    MalformedQuery,
    #[error("query parameter `{0}` is missing")]
    MissingParameter(&'static str),
    #[error("query parameter `{0}` is given more than once")]
    DuplicateParameter(&'static str),
    #[error("hub.mode must be `subscribe`")]
    NotSubscribe,
    #[error("hub.verify_token does not match")]
    VerifyTokenMismatch,
    #[error("hub.challenge must be 1 to {MAX_CHALLENGE_LEN} visible ASCII characters")]
    InvalidChallenge,
}

/// Why a [`WebhookAuth`] could not be built from configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    #[error("no webhook secret configured")]
    NoSecrets,
    #[error("a webhook secret is empty")]
    EmptySecret,
    #[error("{0:?} is not a valid HTTP header name")]
    InvalidHeaderName(String),
}

/// Shared-secret authentication of webhook requests, with several secrets for rotation.
#[derive(Clone)]
pub struct WebhookAuth {
    /// SHA-256 of each accepted secret: compared in constant time and in fixed size.
    secrets: Vec<[u8; 32]>,
    /// A header whose whole value may be the secret, for senders that cannot set
    /// `Authorization`.
    header: Option<HeaderName>,
}

impl WebhookAuth {
    /// Accepts any of `secrets` (at least one, none empty), in `Authorization` or in `header`.
    pub fn new(
        secrets: impl IntoIterator<Item = Secret>,
        header: Option<&str>,
    ) -> Result<Self, AuthConfigError> {
        let secrets = secrets
            .into_iter()
            .map(|s| match s.is_empty() {
                true => Err(AuthConfigError::EmptySecret),
                false => Ok(sha256(s.expose().as_bytes())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err(AuthConfigError::NoSecrets);
        }
        let header = header
            .map(|name| {
                HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| AuthConfigError::InvalidHeaderName(name.to_owned()))
            })
            .transpose()?;
        Ok(WebhookAuth { secrets, header })
    }

    /// Ok if any credential in `headers` is one of the configured secrets.
    pub fn verify(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let mut presented = Vec::new();
        let mut malformed = None;
        for value in headers.get_all(AUTHORIZATION) {
            match authorization_credential(value.as_bytes()) {
                Ok(credential) => presented.push(sha256(&credential)),
                Err(reason) => malformed = malformed.or(Some(reason)),
            }
        }
        if let Some(name) = &self.header {
            for value in headers.get_all(name) {
                match value.as_bytes().trim_ascii() {
                    [] => malformed = malformed.or(Some("custom header is empty")),
                    credential => presented.push(sha256(credential)),
                }
            }
        }
        if presented.is_empty() {
            return Err(malformed.map_or(
                AuthError::MissingCredentials,
                AuthError::MalformedCredentials,
            ));
        }
        // No early exit: every presented credential is compared with every secret.
        let mut matched = Choice::from(0);
        for credential in &presented {
            for secret in &self.secrets {
                matched |= credential[..].ct_eq(&secret[..]);
            }
        }
        match bool::from(matched) {
            true => Ok(()),
            false => Err(AuthError::InvalidCredentials),
        }
    }
}

impl fmt::Debug for WebhookAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Even digests stay out: a short secret can be recovered from its SHA-256.
        f.debug_struct("WebhookAuth")
            .field("secrets", &self.secrets.len())
            .field("header", &self.header)
            .finish()
    }
}

/// The secret inside one `Authorization` value: the Bearer token or the Basic password.
fn authorization_credential(value: &[u8]) -> Result<Vec<u8>, &'static str> {
    let value = value.trim_ascii();
    let split = value
        .iter()
        .position(u8::is_ascii_whitespace)
        .unwrap_or(value.len());
    let (scheme, rest) = value.split_at(split);
    let rest = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return match rest {
            [] => Err("bearer token is empty"),
            token => Ok(token.to_vec()),
        };
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = BASE64
            .decode(rest)
            .map_err(|_| "basic credentials are not base64")?;
        let colon = decoded
            .iter()
            .position(|&b| b == b':')
            .ok_or("basic credentials have no `user:password` colon")?;
        return Ok(decoded[colon + 1..].to_vec());
    }
    Err("authorization scheme must be Bearer or Basic")
}

/// Checks Meta's `X-Hub-Signature-256` header against the raw request body.
///
/// `body` must be the exact bytes received: re-serialised JSON has a different signature.
pub fn verify_meta_signature(
    app_secret: &Secret,
    body: &[u8],
    header: Option<&str>,
) -> Result<(), AuthError> {
    let header = header.ok_or(AuthError::MissingSignature)?.trim();
    let hex_digest = match header.split_at_checked("sha256=".len()) {
        Some((prefix, rest)) if prefix.eq_ignore_ascii_case("sha256=") => rest,
        _ => return Err(AuthError::MalformedSignature),
    };
    let mut signature = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut signature).map_err(|_| AuthError::MalformedSignature)?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(app_secret.expose().as_bytes())
        .map_err(|_| AuthError::SignatureMismatch)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| AuthError::SignatureMismatch)
}

/// Answers Meta's verification GET: `hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`.
///
/// `query` is the raw query string (a leading `?` is allowed). On success returns the challenge,
/// which the endpoint sends back as a `text/plain` 200 body; on any error Meta expects a 403.
pub fn verify_subscription(query: &str, verify_token: &Secret) -> Result<String, AuthError> {
    let query = query.strip_prefix('?').unwrap_or(query);
    // `form_urlencoded` (the WHATWG parser) keeps a broken `%` escape as it is and replaces
    // bytes that are not UTF-8 with U+FFFD; refuse both, so what is compared and echoed is
    // exactly what the sender encoded.
    if !escapes_are_whole(query) {
        return Err(AuthError::MalformedQuery);
    }
    let mut mode = None;
    let mut token = None;
    let mut challenge = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key.contains(char::REPLACEMENT_CHARACTER) {
            return Err(AuthError::MalformedQuery);
        }
        let (slot, name) = match key.as_ref() {
            "hub.mode" => (&mut mode, "hub.mode"),
            "hub.verify_token" => (&mut token, "hub.verify_token"),
            "hub.challenge" => (&mut challenge, "hub.challenge"),
            _ => continue,
        };
        if slot.is_some() {
            // Two values would leave room to check one and use the other.
            return Err(AuthError::DuplicateParameter(name));
        }
        if value.contains(char::REPLACEMENT_CHARACTER) {
            return Err(AuthError::MalformedQuery);
        }
        *slot = Some(value.into_owned());
    }
    let mode = mode.ok_or(AuthError::MissingParameter("hub.mode"))?;
    let token = token.ok_or(AuthError::MissingParameter("hub.verify_token"))?;
    let challenge = challenge.ok_or(AuthError::MissingParameter("hub.challenge"))?;
    if mode != SUBSCRIBE_MODE {
        return Err(AuthError::NotSubscribe);
    }
    let expected = sha256(verify_token.expose().as_bytes());
    let given = sha256(token.as_bytes());
    if !bool::from(expected[..].ct_eq(&given[..])) {
        return Err(AuthError::VerifyTokenMismatch);
    }
    // It is echoed back as the response body: keep it to what Meta sends.
    let visible = |c: char| c.is_ascii_graphic();
    if challenge.is_empty()
        || challenge.len() > MAX_CHALLENGE_LEN
        || !challenge.chars().all(visible)
    {
        return Err(AuthError::InvalidChallenge);
    }
    Ok(challenge)
}

/// Whether every `%` in `query` starts an escape of two hex digits.
fn escapes_are_whole(query: &str) -> bool {
    query.split('%').skip(1).all(|rest| {
        rest.as_bytes()
            .get(..2)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    })
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn basic(user_pass: &str) -> String {
        format!("Basic {}", BASE64.encode(user_pass))
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "[redacted]");
        let auth = WebhookAuth::new([s], Some("X-Token")).unwrap();
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[test]
    fn secret_lists_split_on_commas() {
        let got: Vec<String> = Secret::parse_list(" a , b,,c ,")
            .iter()
            .map(|s| s.expose().to_owned())
            .collect();
        assert_eq!(got, ["a", "b", "c"]);
        assert!(Secret::parse_list(" , ").is_empty());
    }

    #[test]
    fn configuration_errors() {
        let cases: Vec<(Vec<Secret>, Option<&str>, AuthConfigError)> = vec![
            (vec![], None, AuthConfigError::NoSecrets),
            (vec![Secret::new("")], None, AuthConfigError::EmptySecret),
            (
                vec![Secret::new("a")],
                Some("bad header"),
                AuthConfigError::InvalidHeaderName("bad header".into()),
            ),
        ];
        for (secrets, header, want) in cases {
            assert_eq!(WebhookAuth::new(secrets, header).unwrap_err(), want);
        }
    }

    #[test]
    fn webhook_auth_table() {
        let auth = WebhookAuth::new(
            Secret::parse_list("old-token,new-token"),
            Some("X-Callgate-Token"),
        )
        .unwrap();
        let without_header = WebhookAuth::new(Secret::parse_list("old-token"), None).unwrap();
        let with_colon = WebhookAuth::new([Secret::new("a:b")], None).unwrap();
        use AuthError::*;
        /// (name, verifier, headers, expected)
        type Case<'a> = (
            &'a str,
            &'a WebhookAuth,
            Vec<(&'a str, String)>,
            Result<(), AuthError>,
        );
        let cases: Vec<Case> = vec![
            (
                "bearer ok",
                &auth,
                vec![("authorization", "Bearer old-token".into())],
                Ok(()),
            ),
            (
                "rotation: second token works",
                &auth,
                vec![("authorization", "Bearer new-token".into())],
                Ok(()),
            ),
            (
                "scheme is case-insensitive",
                &auth,
                vec![("authorization", "bearer   new-token ".into())],
                Ok(()),
            ),
            (
                "bearer wrong",
                &auth,
                vec![("authorization", "Bearer nope".into())],
                Err(InvalidCredentials),
            ),
            (
                "bearer prefix of a secret",
                &auth,
                vec![("authorization", "Bearer old".into())],
                Err(InvalidCredentials),
            ),
            (
                "bearer empty",
                &auth,
                vec![("authorization", "Bearer".into())],
                Err(MalformedCredentials("bearer token is empty")),
            ),
            (
                "basic ok",
                &auth,
                vec![("authorization", basic("doubletick:old-token"))],
                Ok(()),
            ),
            (
                "basic any user",
                &auth,
                vec![("authorization", basic(":new-token"))],
                Ok(()),
            ),
            (
                "basic password may hold a colon",
                &with_colon,
                vec![("authorization", basic("u:a:b"))],
                Ok(()),
            ),
            (
                "basic wrong",
                &auth,
                vec![("authorization", basic("old-token:x"))],
                Err(InvalidCredentials),
            ),
            (
                "basic user name is not the secret",
                &auth,
                vec![("authorization", basic("old-token"))],
                Err(MalformedCredentials(
                    "basic credentials have no `user:password` colon",
                )),
            ),
            (
                "basic not base64",
                &auth,
                vec![("authorization", "Basic !!!".into())],
                Err(MalformedCredentials("basic credentials are not base64")),
            ),
            (
                "unknown scheme",
                &auth,
                vec![("authorization", "Token old-token".into())],
                Err(MalformedCredentials(
                    "authorization scheme must be Bearer or Basic",
                )),
            ),
            (
                "custom header ok",
                &auth,
                vec![("x-callgate-token", "new-token".into())],
                Ok(()),
            ),
            (
                "custom header wrong",
                &auth,
                vec![("x-callgate-token", "Bearer new-token".into())],
                Err(InvalidCredentials),
            ),
            (
                "custom header not configured",
                &without_header,
                vec![("x-callgate-token", "old-token".into())],
                Err(MissingCredentials),
            ),
            (
                "one good credential among bad ones",
                &auth,
                vec![
                    ("authorization", "Token x".into()),
                    ("authorization", "Bearer wrong".into()),
                    ("x-callgate-token", "old-token".into()),
                ],
                Ok(()),
            ),
            ("no header", &auth, vec![], Err(MissingCredentials)),
            (
                "unrelated headers only",
                &auth,
                vec![("x-api-key", "old-token".into())],
                Err(MissingCredentials),
            ),
        ];
        for (name, auth, pairs, want) in cases {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
            assert_eq!(auth.verify(&headers(&pairs)), want, "{name}");
        }
    }

    #[test]
    fn meta_signature_table() {
        // GitHub's published example for the same scheme (X-Hub-Signature-256).
        let secret = Secret::new("It's a Secret to Everybody");
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let upper = good.to_uppercase();
        let one_bit_off = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e16";
        use AuthError::*;
        /// (name, header, body, expected)
        type Case<'a> = (&'a str, Option<&'a str>, &'a [u8], Result<(), AuthError>);
        let cases: Vec<Case> = vec![
            ("published vector", Some(good), body, Ok(())),
            ("upper-case hex and prefix", Some(&upper), body, Ok(())),
            (
                "one bit off",
                Some(one_bit_off),
                body,
                Err(SignatureMismatch),
            ),
            (
                "other body",
                Some(good),
                b"Hello, World?",
                Err(SignatureMismatch),
            ),
            ("missing", None, body, Err(MissingSignature)),
            ("empty", Some(""), body, Err(MalformedSignature)),
            ("no prefix", Some(&good[7..]), body, Err(MalformedSignature)),
            (
                "sha1 prefix",
                Some("sha1=757107ea0eb2509fc211221cce984b8a"),
                body,
                Err(MalformedSignature),
            ),
            (
                "truncated",
                Some(&good[..good.len() - 2]),
                body,
                Err(MalformedSignature),
            ),
            (
                "odd length",
                Some(&good[..good.len() - 1]),
                body,
                Err(MalformedSignature),
            ),
            ("not hex", Some("sha256=zz"), body, Err(MalformedSignature)),
            (
                "multibyte at the prefix boundary",
                Some("sha256é0"),
                body,
                Err(MalformedSignature),
            ),
        ];
        for (name, header, body, want) in cases {
            assert_eq!(verify_meta_signature(&secret, body, header), want, "{name}");
        }
    }

    #[test]
    fn subscription_table() {
        let token = Secret::new("my token/é");
        use AuthError::*;
        let ok = "hub.mode=subscribe&hub.verify_token=my+token%2F%C3%A9&hub.challenge=1158201444";
        let with_question_mark = format!("?{ok}");
        let duplicate = format!("{ok}&hub.verify_token=x");
        let cases: Vec<(&str, &str, Result<&str, AuthError>)> = vec![
            ("Meta's handshake", ok, Ok("1158201444")),
            ("leading ?", &with_question_mark, Ok("1158201444")),
            (
                "order and other parameters do not matter",
                "x=1&hub.challenge=abc&&hub.verify_token=my%20token/%c3%a9&hub.mode=subscribe",
                Ok("abc"),
            ),
            (
                "wrong token",
                "hub.mode=subscribe&hub.verify_token=my+token&hub.challenge=1",
                Err(VerifyTokenMismatch),
            ),
            (
                "wrong mode",
                "hub.mode=unsubscribe&hub.verify_token=my+token%2F%C3%A9&hub.challenge=1",
                Err(NotSubscribe),
            ),
            (
                "no mode",
                "hub.verify_token=my+token%2F%C3%A9&hub.challenge=1",
                Err(MissingParameter("hub.mode")),
            ),
            (
                "no token",
                "hub.mode=subscribe&hub.challenge=1",
                Err(MissingParameter("hub.verify_token")),
            ),
            (
                "no challenge",
                "hub.mode=subscribe&hub.verify_token=my+token%2F%C3%A9",
                Err(MissingParameter("hub.challenge")),
            ),
            ("empty query", "", Err(MissingParameter("hub.mode"))),
            (
                "duplicate token",
                &duplicate,
                Err(DuplicateParameter("hub.verify_token")),
            ),
            ("broken escape", "hub.mode=subscribe%2", Err(MalformedQuery)),
            ("not utf-8", "hub.challenge=%ff", Err(MalformedQuery)),
            (
                "empty challenge",
                "hub.mode=subscribe&hub.verify_token=my+token%2F%C3%A9&hub.challenge=",
                Err(InvalidChallenge),
            ),
            (
                "markup in the challenge",
                "hub.mode=subscribe&hub.verify_token=my+token%2F%C3%A9&hub.challenge=%3Cscript+x%3E",
                Err(InvalidChallenge),
            ),
        ];
        for (name, query, want) in cases {
            let got = verify_subscription(query, &token);
            assert_eq!(got.as_deref().map_err(Clone::clone), want, "{name}");
        }
    }

    #[test]
    fn query_decoding_table() {
        // (the encoded verify token, the token it decodes to; `None`: refused as malformed)
        let cases = [
            ("a+b", Some("a b")),
            ("%41%62%2b", Some("Ab+")),
            ("%e2%82%AC", Some("€")),
            ("100%", None),
            ("%4", None),
            ("%g1", None),
            ("%80", None),
        ];
        for (raw, want) in cases {
            let query = format!("hub.mode=subscribe&hub.verify_token={raw}&hub.challenge=1");
            let token = Secret::new(want.unwrap_or("unused"));
            let got = verify_subscription(&query, &token);
            match want {
                Some(_) => assert_eq!(got.as_deref(), Ok("1"), "{raw:?}"),
                None => assert_eq!(got, Err(AuthError::MalformedQuery), "{raw:?}"),
            }
        }
        for broken in [
            "x%zz=1&hub.mode=subscribe",
            "x%ff=1&hub.mode=subscribe",
            "%c3=1",
        ] {
            let got = verify_subscription(broken, &Secret::new("t"));
            assert_eq!(got, Err(AuthError::MalformedQuery), "{broken:?}");
        }
    }

    proptest! {
        #[test]
        fn any_encoded_verify_token_is_decoded_back(s in any::<String>(), plus_for_space in any::<bool>()) {
            // U+FFFD is what a byte that is not UTF-8 decodes to: refused, even when sent.
            prop_assume!(!s.contains(char::REPLACEMENT_CHARACTER));
            let mut encoded = String::new();
            for b in s.bytes() {
                match b {
                    b' ' if plus_for_space => encoded.push('+'),
                    b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => encoded.push(b as char),
                    b => encoded.push_str(&format!("%{b:02X}")),
                }
            }
            let query = format!("hub.mode=subscribe&hub.verify_token={encoded}&hub.challenge=1");
            let answer = verify_subscription(&query, &Secret::new(s));
            prop_assert_eq!(answer.as_deref(), Ok("1"));
        }
    }
}
