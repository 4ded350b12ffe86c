//! Data keys (DESIGN §3): the current data key for sealing, its rotation, and the cache of unwrapped keys
//! for opening.
//!
//! - Sealing reuses one data key (random nonces) until `DataKeyMaxUses`, `DataKeyMaxAgeSeconds` or a new
//!   primary KEK retires it. If the provider cannot wrap a replacement, the old key keeps serving up to the
//!   hard limit of 2^32 messages (the GCM random-nonce bound), and [`DataKeys::degraded`] says so.
//! - Opening looks the wrapped key up in a bounded LRU; concurrent misses for one wrapped key share one
//!   provider call (single-flight). A freshly unwrapped key enters the cache only after it opened the
//!   payload that asked for it, so a wrong key from a faulty remote is never cached.
//! - Keyed cipher instances own the only copy of each plaintext key and zeroize it when the last user drops.
//! - Legacy-form ciphertexts (DESIGN §2, JD Cloud's plugin) have no data key: the provider returns the
//!   payload itself. Those payloads get their own bounded LRU (same `DataKeyCacheSize`) and the same
//!   single-flight, so a storage migration reading thousands of distinct legacy ciphertexts never evicts
//!   the few data keys that serve all format-1 traffic.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use lru::LruCache;
use zeroize::Zeroizing;

use crate::cipher::Cipher;
use crate::config::DataKeyPolicy;
use crate::error::Error;
use crate::keyring::Keyring;
use crate::provider::{KeyProvider, ProviderError};

mod cache;
mod rotation;
mod single_flight;
#[cfg(test)]
pub(crate) mod test_provider;
#[cfg(test)]
mod tests;

pub(crate) use rotation::CurrentKey;
use single_flight::SingleFlight;

/// Exactly the bytes that determine a cached key (see [`cache::cache_key`]); shared, so clones are cheap.
type CacheKey = Arc<[u8]>;
/// A legacy payload, zeroized when the cache and the last reader let go of it.
type LegacyPlain = Arc<Zeroizing<Vec<u8>>>;

/// Locks a mutex, shrugging off poisoning: every critical section here leaves the data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The keyring and tuning in force; replaced whole on reload.
#[derive(Debug, Clone)]
pub struct KeyState {
    pub keyring: Arc<Keyring>,
    pub policy: DataKeyPolicy,
}

/// Counters for metrics, health and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub rotations: AtomicU64,
    pub wrap_failures: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Provider unwrap calls actually made (single-flight merges concurrent misses into one).
    pub unwraps: AtomicU64,
    pub unwrap_failures: AtomicU64,
    /// Decrypts answered from a legacy-form ciphertext (cache hits included): while this grows, storage
    /// still holds ciphertexts that JD Cloud's plugin wrote.
    pub legacy_reads: AtomicU64,
}

/// Owns the current data key and the unwrap cache.
pub struct DataKeys {
    state: RwLock<Arc<KeyState>>,
    current: Mutex<Option<Arc<CurrentKey>>>,
    /// Held while a new data key is being wrapped, so only one caller talks to the provider.
    rotation: tokio::sync::Mutex<()>,
    last_wrap_failure: Mutex<Option<(Instant, ProviderError)>>,
    degraded: AtomicBool,
    cache: Mutex<LruCache<CacheKey, Arc<dyn Cipher>>>,
    unwrapping: SingleFlight<CacheKey, Arc<dyn Cipher>, Error>,
    legacy_cache: Mutex<LruCache<CacheKey, LegacyPlain>>,
    legacy_opening: SingleFlight<CacheKey, LegacyPlain, Error>,
    last_legacy_log: Mutex<Option<Instant>>,
    stats: Stats,
}

impl DataKeys {
    /// Data keys for `keyring` under `policy`; the first data key is made on the first seal.
    pub fn new(keyring: Arc<Keyring>, policy: DataKeyPolicy) -> Self {
        let cap = NonZeroUsize::new(policy.cache_size).unwrap_or(NonZeroUsize::MIN);
        Self {
            state: RwLock::new(Arc::new(KeyState { keyring, policy })),
            current: Mutex::new(None),
            rotation: tokio::sync::Mutex::new(()),
            last_wrap_failure: Mutex::new(None),
            degraded: AtomicBool::new(false),
            cache: Mutex::new(LruCache::new(cap)),
            unwrapping: SingleFlight::default(),
            legacy_cache: Mutex::new(LruCache::new(cap)),
            legacy_opening: SingleFlight::default(),
            last_legacy_log: Mutex::new(None),
            stats: Stats::default(),
        }
    }

    /// The keyring and policy in force now.
    pub fn state(&self) -> Arc<KeyState> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs a new keyring and policy (SIGHUP). The current data key retires on its next use if the
    /// primary changed; cached keys of KEKs no longer in the ring become unreachable.
    pub fn replace_state(&self, keyring: Arc<Keyring>, policy: DataKeyPolicy) {
        if let Some(cap) = NonZeroUsize::new(policy.cache_size) {
            lock(&self.cache).resize(cap);
            lock(&self.legacy_cache).resize(cap);
        }
        *self.state.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(KeyState { keyring, policy });
        // A reload is the operator fixing things: try wrapping with the (maybe new) primary right away
        // instead of waiting out the back-off of a failure under the old configuration.
        *lock(&self.last_wrap_failure) = None;
    }

    /// True while sealing runs on a data key past its policy because a new one could not be wrapped.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// The data key now sealing, if any (health and metrics; does not count as a use).
    pub fn peek_current(&self) -> Option<Arc<CurrentKey>> {
        lock(&self.current).clone()
    }

    /// Number of unwrapped data keys cached.
    pub fn cache_len(&self) -> usize {
        lock(&self.cache).len()
    }

    /// Counters for metrics, health and tests.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The primary key-encryption key now (new data keys are wrapped by it).
    pub fn primary(&self) -> Arc<dyn KeyProvider> {
        self.state().keyring.primary().clone()
    }

    /// The keyring in force now.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.state().keyring.clone()
    }
}
