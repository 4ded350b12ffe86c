//! Failed Decrypts, logged at INFO so an operator sees them without debug logs, and without a flood: one
//! line per kind of failure at once, then at most one a minute per kind, saying how many were not logged
//! in between. A line names the API, the kind and the error's message (which never carries key material,
//! crate::error); never the ciphertext or the request's uid.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Error;

/// At most one line per kind in this long.
pub(crate) const EVERY: Duration = Duration::from_secs(60);

/// The kind of a failed Decrypt, as its log line names it.
pub(crate) fn kind(e: &Error) -> &'static str {
    match e {
        Error::Malformed(_) => "malformed",
        Error::Authentication => "authentication",
        Error::UnknownKek(_) => "unknown_key",
        Error::Provider(p) => p.kind().label(),
        Error::EmptyPlaintext | Error::PlaintextTooLong { .. } | Error::TooLong { .. } => {
            "invalid_input"
        }
        Error::Rng(_) => "internal",
    }
}

#[derive(Debug)]
struct Seen {
    last_logged: Instant,
    not_logged: u64,
}

/// The rate limiter of the Decrypt failure lines; one per running plugin.
#[derive(Debug, Default)]
pub(crate) struct DecryptFailures {
    kinds: Mutex<HashMap<&'static str, Seen>>,
}

impl DecryptFailures {
    /// Counts one failure; logs it if it is the first of its kind or the last line of its kind is
    /// [`EVERY`] old.
    pub(crate) fn record(
        &self,
        api: &'static str,
        kind: &'static str,
        why: &dyn std::fmt::Display,
    ) {
        if let Some(not_logged) = self.due(kind, Instant::now()) {
            tracing::info!(
                api,
                kind,
                error = %why,
                not_logged_since_last = not_logged,
                "Decrypt failed"
            );
        }
    }

    /// `Some(failures of this kind not logged since its last line)` when a line is due at `now`.
    fn due(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        match kinds.get_mut(kind) {
            None => {
                kinds.insert(
                    kind,
                    Seen {
                        last_logged: now,
                        not_logged: 0,
                    },
                );
                Some(0)
            }
            Some(seen) if now.saturating_duration_since(seen.last_logged) >= EVERY => {
                let n = seen.not_logged;
                seen.last_logged = now;
                seen.not_logged = 0;
                Some(n)
            }
            Some(seen) => {
                seen.not_logged = seen.not_logged.saturating_add(1);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_of_each_kind_then_once_a_minute_with_a_count() {
        let f = DecryptFailures::default();
        let t0 = Instant::now();
        assert_eq!(f.due("authentication", t0), Some(0));
        assert_eq!(f.due("malformed", t0), Some(0), "kinds are separate");
        for s in 1..=5 {
            assert_eq!(f.due("authentication", t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(f.due("authentication", t0 + EVERY), Some(5));
        assert_eq!(f.due("authentication", t0 + EVERY), None);
        assert_eq!(f.due("malformed", t0 + EVERY), Some(0));
    }

    #[test]
    fn kinds_of_decrypt_errors() {
        use crate::ciphertext::FormatError;
        use crate::error::ProviderError;
        assert_eq!(kind(&Error::Malformed(FormatError::BadMagic)), "malformed");
        assert_eq!(kind(&Error::Authentication), "authentication");
        assert_eq!(kind(&Error::UnknownKek("k".into())), "unknown_key");
        assert_eq!(
            kind(&Error::Provider(ProviderError::Unavailable("x".into()))),
            "unavailable"
        );
    }
}
