//! Sealing side: the current data key, its use count and age, and its replacement (rotation), with the
//! fallback of DESIGN §3 while the provider cannot wrap a new key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::cache::cache_key;
use super::{DataKeys, KeyState, lock};
use crate::cipher::{self, Cipher, HARD_MAX_USES};
use crate::ciphertext::FormatError;
use crate::error::{Error, ProviderError};
use crate::secret::DataKey;

/// After a failed wrap, the next attempt waits this long, so a down remote is not hammered on every call.
const WRAP_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The cipher new data keys are made for.
const SEALING_CIPHER: u8 = cipher::SM4_GCM;

/// The data key that seals new messages.
pub struct CurrentKey {
    kek_id: Arc<str>,
    wrapped: Vec<u8>,
    cipher: Arc<dyn Cipher>,
    uses: AtomicU64,
    born: Instant,
}

impl CurrentKey {
    /// The KEK that wrapped this data key (goes into the header and to kube-apiserver as `key_id`).
    pub fn kek_id(&self) -> &Arc<str> {
        &self.kek_id
    }
    pub fn wrapped(&self) -> &[u8] {
        &self.wrapped
    }
    pub fn cipher(&self) -> &dyn Cipher {
        self.cipher.as_ref()
    }
    pub fn uses(&self) -> u64 {
        self.uses.load(Ordering::Relaxed)
    }

    /// Claims one use if that stays within `limit`.
    fn claim(&self, limit: u64) -> bool {
        self.uses
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }
}

impl DataKeys {
    /// The data key to seal one message with; the use is counted.
    pub async fn current(&self) -> Result<Arc<CurrentKey>, Error> {
        loop {
            let state = self.state();
            let seen = lock(&self.current).clone();
            if let Some(c) = &seen
                && self.fresh(c, &state)
                && c.claim(state.policy.max_uses)
            {
                return Ok(c.clone());
            }
            let _rotating = match self.rotation.try_lock() {
                Ok(guard) => guard,
                Err(_) => {
                    // A rotation is under way. The old key may go on sealing within its own use cap
                    // (it retired by age or a new primary: a few more messages while the new key is
                    // wrapped break no limit), and past that cap only while wrapping is failing, when
                    // DESIGN §3's fallback applies.
                    if let Some(c) = seen.clone().filter(|c| {
                        self.still_in_ring(c, &state)
                            && (c.claim(state.policy.max_uses)
                                || (self.wrapping_fails() && c.claim(HARD_MAX_USES)))
                    }) {
                        return Ok(c);
                    }
                    // Otherwise wait for that rotation, bounded by its one provider call:
                    // `DataKeyMaxUses` is exact. The lock is then ours, and kept: released and
                    // tried again, it would pass from waiter to waiter (the lock is fair) while no
                    // `try_lock` ever won and nobody rotated.
                    self.rotation.lock().await
                }
            };
            let now = lock(&self.current).clone();
            let same = match (&now, &seen) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                continue; // another caller rotated while we looked or waited
            }
            // Nobody replaced the key we saw: this caller rotates (or, after a recent failure, falls back).
            return self.rotate(&self.state(), seen).await;
        }
    }

    fn fresh(&self, c: &CurrentKey, state: &KeyState) -> bool {
        *c.kek_id == *state.keyring.primary().kek_id() && c.born.elapsed() < state.policy.max_age
    }

    /// Whether an old data key may keep sealing: its KEK is still in the ring (so what it seals stays
    /// readable) and the hard use limit is not reached. Claims a use when it may.
    fn may_fall_back(&self, c: &CurrentKey, state: &KeyState) -> bool {
        self.still_in_ring(c, state) && c.claim(HARD_MAX_USES)
    }

    /// Its KEK is still in the ring: what it seals stays readable.
    fn still_in_ring(&self, c: &CurrentKey, state: &KeyState) -> bool {
        state.keyring.get(&c.kek_id).is_some()
    }

    /// The last attempt to wrap a new data key failed and none has worked since (a reload clears this,
    /// so the next caller tries at once).
    fn wrapping_fails(&self) -> bool {
        lock(&self.last_wrap_failure).is_some()
    }

    async fn rotate(
        &self,
        state: &KeyState,
        old: Option<Arc<CurrentKey>>,
    ) -> Result<Arc<CurrentKey>, Error> {
        let recent_failure = lock(&self.last_wrap_failure)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < WRAP_RETRY_AFTER)
            .map(|(_, e)| e.clone());
        let failure = match recent_failure {
            Some(e) => e,
            None => match self.make_key(state).await {
                Ok(new) => {
                    // What we seal now we may be asked to open soon: no provider call needed for that.
                    lock(&self.cache).put(
                        cache_key(new.cipher.id(), &new.kek_id, &new.wrapped),
                        new.cipher.clone(),
                    );
                    *lock(&self.current) = Some(new.clone());
                    *lock(&self.last_wrap_failure) = None;
                    self.degraded.store(false, Ordering::Relaxed);
                    self.stats.rotations.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(kek_id = %new.kek_id, "new data key in use");
                    return Ok(new);
                }
                Err(Error::Provider(e)) => {
                    self.stats.wrap_failures.fetch_add(1, Ordering::Relaxed);
                    *lock(&self.last_wrap_failure) = Some((Instant::now(), e.clone()));
                    tracing::warn!(error = %e, "cannot wrap a new data key");
                    e
                }
                Err(other) => return Err(other),
            },
        };
        match old {
            Some(c) if self.may_fall_back(&c, state) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        kek_id = %c.kek_id,
                        "sealing continues on the previous data key until a new one can be wrapped"
                    );
                }
                Ok(c)
            }
            _ => Err(Error::Provider(failure)),
        }
    }

    async fn make_key(&self, state: &KeyState) -> Result<Arc<CurrentKey>, Error> {
        let primary = state.keyring.primary();
        // A provider with its own certified RNG (a cipher machine) makes the key; the others leave it to
        // the OS CSPRNG.
        let dk = match primary.generate_data_key().await? {
            Some(dk) => dk,
            None => DataKey::generate().map_err(|e| Error::Rng(e.to_string()))?,
        };
        let wrapped = primary.wrap(&dk).await?;
        if wrapped.is_empty() {
            return Err(Error::Provider(ProviderError::Unavailable(
                format!("{} returned an empty wrapped key", primary.kek_id()).into(),
            )));
        }
        let cipher: Arc<dyn Cipher> = cipher::for_id(SEALING_CIPHER, &dk)
            .ok_or(Error::Malformed(FormatError::UnknownCipher(SEALING_CIPHER)))?
            .into();
        Ok(Arc::new(CurrentKey {
            kek_id: Arc::from(primary.kek_id()),
            wrapped,
            cipher,
            uses: AtomicU64::new(1),
            born: Instant::now(),
        }))
    }
}
