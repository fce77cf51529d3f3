//! The console's sign-in sessions: who is signed in, with which key, and the token each of
//! their forms must carry.
//!
//! Where sessions live is a deliberate choice: **in this replica's memory**. A session is a
//! random 256-bit id (the cookie) mapped to the API key it was opened with, its CSRF token and
//! its times. Nothing is written to the consent store, so the console adds no keys to Redis and
//! no write to the store's hot path. The price: each replica has its own sessions, so behind a
//! load balancer the console needs session affinity (or one replica serving `/console`), and a
//! restart signs everyone out. The README says so.
//!
//! - The map is bounded ([`MAX_SESSIONS`]); expired sessions are dropped when a new one is
//!   opened, and a full map refuses new sign-ins rather than growing.
//! - A session ends after [`IDLE_TIMEOUT`] without a request, after [`MAX_LIFETIME`] in any
//!   case, or on sign-out. Times come from the app's `Clock`.
//! - The key is kept (as a [`Secret`]) so every request is admitted again with the API clients
//!   in force: a key removed from the clients file ends its sessions at the next request.
//! - Ids are kept only as their SHA-256, so even a dump of this map opens no session; tokens
//!   are compared in constant time.
//! - The lock is this module's own, held for a map operation only; checks never take it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// How long a session lives without a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long a session lives at most, however active.
pub const MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions one replica holds at once.
pub const MAX_SESSIONS: usize = 10_000;

/// A random token: 32 bytes, spelled in URL-safe base64 (43 characters).
fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

type IdDigest = [u8; 32];

fn digest(id: &str) -> IdDigest {
    Sha256::digest(id.as_bytes()).into()
}

/// One signed-in browser.
struct Session {
    key: Secret,
    csrf: String,
    opened: DateTime<Utc>,
    last_seen: DateTime<Utc>,
}

impl Session {
    fn alive(&self, now: DateTime<Utc>) -> bool {
        now < self.opened + delta(MAX_LIFETIME) && now < self.last_seen + delta(IDLE_TIMEOUT)
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// A session as a request sees it.
#[derive(Clone)]
pub struct Active {
    /// The cookie value (the id in clear), to end the session.
    pub id: String,
    /// The API key it was opened with, admitted again on every request.
    pub key: Secret,
    /// The token every form of this session carries.
    pub csrf: String,
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("too many console sessions are open on this server; try again later")]
    Full,
    #[error("no randomness for a session id: {0}")]
    Random(getrandom::Error),
}

/// The sessions of this replica.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<IdDigest, Session>>,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<IdDigest, Session>> {
        // Every mutation is a single map operation: a poisoned map is still consistent.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for `key` at `now`.
    pub fn open(&self, key: Secret, now: DateTime<Utc>) -> Result<Active, OpenError> {
        let id = random_token().map_err(OpenError::Random)?;
        let csrf = random_token().map_err(OpenError::Random)?;
        let mut map = self.map();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.alive(now));
        }
        if map.len() >= MAX_SESSIONS {
            return Err(OpenError::Full);
        }
        map.insert(
            digest(&id),
            Session {
                key: key.clone(),
                csrf: csrf.clone(),
                opened: now,
                last_seen: now,
            },
        );
        Ok(Active { id, key, csrf })
    }

    /// The live session whose cookie is `id`, touched at `now`; an expired one is removed.
    pub fn find(&self, id: &str, now: DateTime<Utc>) -> Option<Active> {
        let d = digest(id);
        let mut map = self.map();
        let session = map.get_mut(&d)?;
        if !session.alive(now) {
            map.remove(&d);
            return None;
        }
        session.last_seen = now;
        Some(Active {
            id: id.to_owned(),
            key: session.key.clone(),
            csrf: session.csrf.clone(),
        })
    }

    /// Ends the session whose cookie is `id`.
    pub fn close(&self, id: &str) {
        self.map().remove(&digest(id));
    }

    /// Sessions held (live or not yet swept).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map().len()
    }
}

/// Whether the token a form carried is the session's, compared in constant time.
pub fn csrf_matches(expected: &str, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected.as_bytes())))
}

/// A token for the sign-in form, which has no session yet: it is set as a cookie and repeated
/// in the form, and sign-in requires both to match (a cross-site page can neither read nor
/// set the cookie, which is `SameSite=Strict`).
pub fn sign_in_token() -> Result<String, getrandom::Error> {
    random_token()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_session_is_found_by_its_id_until_idle_or_too_old() {
        let sessions = Sessions::default();
        let s = sessions.open(Secret::new("k"), at(0)).unwrap();
        assert_eq!(s.id.len(), 43);
        assert_ne!(s.id, s.csrf);
        let found = sessions.find(&s.id, at(60)).unwrap();
        assert_eq!(found.csrf, s.csrf);
        assert_eq!(found.key.expose(), "k");
        assert!(sessions.find("not-an-id", at(60)).is_none());
        // Idle: 30 minutes after the last request.
        let idle = IDLE_TIMEOUT.as_secs() as i64;
        assert!(sessions.find(&s.id, at(60 + idle - 1)).is_some());
        assert!(sessions.find(&s.id, at(60 + 2 * idle)).is_none());
        assert_eq!(
            sessions.len(),
            0,
            "an expired session is removed when found"
        );
    }

    #[test]
    fn an_active_session_still_ends_at_its_maximum_lifetime() {
        let sessions = Sessions::default();
        let s = sessions.open(Secret::new("k"), at(0)).unwrap();
        let max = MAX_LIFETIME.as_secs() as i64;
        let mut t = 0;
        while t + 600 < max {
            t += 600;
            assert!(sessions.find(&s.id, at(t)).is_some(), "at {t}");
        }
        assert!(sessions.find(&s.id, at(max)).is_none());
    }

    #[test]
    fn sign_out_ends_the_session() {
        let sessions = Sessions::default();
        let s = sessions.open(Secret::new("k"), at(0)).unwrap();
        sessions.close(&s.id);
        assert!(sessions.find(&s.id, at(1)).is_none());
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        assert!(csrf_matches("abc", Some("abc")));
        assert!(!csrf_matches("abc", Some("abd")));
        assert!(!csrf_matches("abc", Some("ab")));
        assert!(!csrf_matches("abc", Some("")));
        assert!(!csrf_matches("abc", None));
    }
}
