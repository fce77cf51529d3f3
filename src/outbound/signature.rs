//! Standard Webhooks signatures: the `whsec_` secrets callgate generates, and the
//! `webhook-signature` header (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one
//! entry per signing key, space-separated, as the specification allows during a rotation).

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How a signing secret is shown: `whsec_` and the key in standard base64.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a new signing key (the specification asks for 24 to 64).
pub const KEY_BYTES: usize = 32;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A new random signing key.
pub fn new_key() -> Result<Vec<u8>, getrandom::Error> {
    let mut key = vec![0u8; KEY_BYTES];
    getrandom::fill(&mut key)?;
    Ok(key)
}

/// The `whsec_` form of a key, shown to the operator once.
pub fn secret_string(key: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", b64().encode(key))
}

/// The key behind a `whsec_` secret (the prefix is optional, as receivers' libraries accept).
pub fn parse_secret(secret: &str) -> Option<Vec<u8>> {
    let body = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    b64().decode(body).ok().filter(|k| !k.is_empty())
}

/// One `v1,<signature>` entry for one key.
fn sign_one(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", b64().encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value: one entry per key, space-separated.
pub fn sign<'k>(
    keys: impl IntoIterator<Item = &'k [u8]>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    keys.into_iter()
        .map(|k| sign_one(k, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published example.
    #[test]
    fn issue17_matches_the_standard_webhooks_example() {
        let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let got = sign(
            [key.as_slice()],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(got, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_round_trip_and_two_keys_give_two_entries() {
        let key = new_key().unwrap();
        assert_eq!(key.len(), KEY_BYTES);
        let secret = secret_string(&key);
        assert!(secret.starts_with(SECRET_PREFIX));
        assert_eq!(parse_secret(&secret), Some(key.clone()));
        assert_ne!(new_key().unwrap(), key);
        assert_eq!(parse_secret("whsec_not base64!"), None);
        let other = new_key().unwrap();
        let header = sign([key.as_slice(), other.as_slice()], "id", 1, b"{}");
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], sign([key.as_slice()], "id", 1, b"{}"));
        assert_eq!(entries[1], sign([other.as_slice()], "id", 1, b"{}"));
    }
}
