//! Login sessions, kept in this web process's memory: a random id per login (the cookie's value), the role and
//! name it was issued for, its issue time (enforced here, not trusted from the browser), and its own CSRF token.
//! Logging out removes the session, so a copied cookie stops working at once; a restart logs everyone out, and
//! several web processes behind one balancer need sticky sessions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::auth::Role;

/// How long a session lasts after login, whatever the browser does with the cookie.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// Sessions kept at most; past that, logging in drops the oldest (a flood of logins cannot exhaust memory).
const MAX_SESSIONS: usize = 10_000;

/// One logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// What it may do.
    pub role: Role,
    /// The name given at login (cleaned), recorded as `web:NAME`.
    pub name: String,
    /// The token its forms and cookie-authenticated API calls must carry.
    pub csrf: String,
    issued: Instant,
    expires: Instant,
}

/// Every live session, by the SHA-256 of its id (a lookup's timing then says nothing about stored ids).
pub struct Sessions {
    lifetime: Duration,
    live: Mutex<HashMap<[u8; 32], Session>>,
}

/// 32 random bytes as hex, or `None` when the system has no randomness to give.
fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// An empty store whose sessions last `lifetime` from login.
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock leaves the map itself consistent (every change is one insert or remove).
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a session and returns its id (the cookie value); `None` when no randomness is available.
    pub fn start(&self, role: Role, name: String) -> Option<String> {
        let id = random_token()?;
        let csrf = random_token()?;
        let now = Instant::now();
        let mut live = self.live();
        live.retain(|_, s| now < s.expires);
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live.iter().min_by_key(|(_, s)| s.issued).map(|(k, _)| *k)
        {
            live.remove(&oldest);
        }
        let session = Session {
            role,
            name,
            csrf,
            issued: now,
            expires: now + self.lifetime,
        };
        live.insert(digest(&id), session);
        Some(id)
    }

    /// The session with this id, if it exists and has not outlived its lifetime (an expired one is removed).
    pub fn get(&self, id: &str) -> Option<Session> {
        let key = digest(id);
        let mut live = self.live();
        let session = live.get(&key)?;
        if Instant::now() >= session.expires {
            live.remove(&key);
            return None;
        }
        Some(session.clone())
    }

    /// Ends the session with this id (logout); unknown ids are ignored.
    pub fn end(&self, id: &str) {
        self.live().remove(&digest(id));
    }
}

impl Session {
    /// How long until it ends (measured from login with the store's lifetime when it was issued).
    pub fn remaining(&self) -> Duration {
        self.expires.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_login_gets_its_own_id_and_csrf_token() {
        let sessions = Sessions::new(DEFAULT_LIFETIME);
        let one = sessions.start(Role::Admin, "alice".into()).unwrap();
        let two = sessions.start(Role::Admin, "alice".into()).unwrap();
        assert_ne!(one, two);
        assert_ne!(
            sessions.get(&one).unwrap().csrf,
            sessions.get(&two).unwrap().csrf
        );
    }

    #[test]
    fn an_ended_or_expired_session_is_gone() {
        let sessions = Sessions::new(Duration::from_millis(50));
        let id = sessions.start(Role::Read, "bob".into()).unwrap();
        let other = sessions.start(Role::Read, "bob".into()).unwrap();
        sessions.end(&id);
        assert!(sessions.get(&id).is_none());
        assert!(sessions.get(&other).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(sessions.get(&other).is_none());
    }
}
