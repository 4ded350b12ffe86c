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

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use lru::LruCache;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use crate::cipher::{self, Cipher, CipherError};
use crate::ciphertext::FormatError;
use crate::config::DataKeyPolicy;
use crate::error::Error;
use crate::keyring::Keyring;
use crate::provider::{KeyProvider, ProviderError};
use crate::secret::DataKey;

/// No data key seals more messages than this, whatever the config says: the bound under which random
/// 96-bit GCM nonces stay safe (NIST SP 800-38D §8.3).
pub const HARD_MAX_USES: u64 = 1 << 32;

/// After a failed wrap, the next attempt waits this long, so a down remote is not hammered on every call.
const WRAP_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The cipher new data keys are made for.
const SEALING_CIPHER: u8 = cipher::SM4_GCM;

/// Stands in for the cipher id in the cache key of a legacy ciphertext (no cipher has id 0).
const LEGACY_FORM: u8 = 0;

/// The info line about legacy reads comes at most this often.
const LEGACY_LOG_EVERY: Duration = Duration::from_secs(60);

/// Exactly the bytes that determine a cached key (see [`cache_key`]); shared, so clones are cheap.
type CacheKey = Arc<[u8]>;
/// A legacy payload, zeroized when the cache and the last reader let go of it.
type LegacyPlain = Arc<Zeroizing<Vec<u8>>>;
/// One call's result, shared by every caller waiting on it.
type Shared<V> = Arc<OnceCell<Result<V, Error>>>;
/// The calls in flight, by cache key.
type Calls<V> = Mutex<HashMap<CacheKey, Shared<V>>>;

/// Locks a mutex, shrugging off poisoning: every critical section here leaves the data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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
    unwrapping: SingleFlight<Arc<dyn Cipher>>,
    legacy_cache: Mutex<LruCache<CacheKey, LegacyPlain>>,
    legacy_opening: SingleFlight<LegacyPlain>,
    last_legacy_log: Mutex<Option<Instant>>,
    pub stats: Stats,
}

impl DataKeys {
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
            match self.rotation.try_lock() {
                Ok(_guard) => {
                    let now = lock(&self.current).clone();
                    let same = match (&now, &seen) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    };
                    if !same {
                        continue; // another caller rotated while we looked
                    }
                    return self.rotate(&state, seen).await;
                }
                Err(_) => {
                    // A rotation is under way: keep sealing with the old key while it may serve.
                    if let Some(c) = seen.filter(|c| self.may_fall_back(c, &state)) {
                        return Ok(c);
                    }
                    drop(self.rotation.lock().await);
                }
            }
        }
    }

    fn fresh(&self, c: &CurrentKey, state: &KeyState) -> bool {
        *c.kek_id == *state.keyring.primary().kek_id() && c.born.elapsed() < state.policy.max_age
    }

    /// Whether an old data key may keep sealing: its KEK is still in the ring (so what it seals stays
    /// readable) and the hard use limit is not reached. Claims a use when it may.
    fn may_fall_back(&self, c: &CurrentKey, state: &KeyState) -> bool {
        state.keyring.get(&c.kek_id).is_some() && c.claim(HARD_MAX_USES)
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
        let dk = DataKey::generate().map_err(|e| Error::Rng(e.to_string()))?;
        let primary = state.keyring.primary();
        let wrapped = primary.wrap(&dk).await?;
        if wrapped.is_empty() {
            return Err(Error::Provider(ProviderError::Unavailable(format!(
                "{} returned an empty wrapped key",
                primary.kek_id()
            ))));
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

    /// Opens one message with the data key its header names, unwrapping (once) on a cache miss.
    ///
    /// `open` runs the payload decryption; its success is what admits a new key to the cache.
    pub async fn open_with<T>(
        &self,
        cipher_id: u8,
        kek_id: &str,
        wrapped: &[u8],
        open: impl Fn(&dyn Cipher) -> Result<T, CipherError>,
    ) -> Result<T, Error> {
        let state = self.state();
        let provider = state
            .keyring
            .get(kek_id)
            .ok_or_else(|| Error::UnknownKek(kek_id.to_string()))?
            .clone();
        let key = cache_key(cipher_id, kek_id, wrapped);
        let cached = lock(&self.cache).get(&key).cloned();
        if let Some(c) = cached {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return open(c.as_ref()).map_err(|_| Error::Authentication);
        }
        self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);

        let unwrap = || async {
            self.stats.unwraps.fetch_add(1, Ordering::Relaxed);
            let result = provider
                .unwrap(wrapped)
                .await
                .map_err(Error::from)
                .and_then(|dk| {
                    cipher::for_id(cipher_id, &dk)
                        .map(Arc::from)
                        .ok_or(Error::Malformed(FormatError::UnknownCipher(cipher_id)))
                });
            if let Err(e) = &result {
                self.stats.unwrap_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(kek_id, error = %e, "unwrap failed");
            }
            result
        };
        self.unwrapping
            .run(key.clone(), unwrap, |unwrapped: Arc<dyn Cipher>| {
                let out = open(unwrapped.as_ref()).map_err(|_| Error::Authentication)?;
                // Only a key that opened its payload is cached.
                lock(&self.cache).put(key, unwrapped);
                Ok(out)
            })
            .await
    }

    /// Opens a legacy-form ciphertext (DESIGN §2) through one legacy-reading key: the provider returns the
    /// payload itself. Results are cached by a hash of (KEK id, ciphertext) and concurrent misses for one
    /// ciphertext make a single provider call. Failures are never cached. Which keys to try, and in which
    /// order, is the envelope's business.
    ///
    /// A legacy payload has no tag of ours to verify: it is cached as the remote returned it (never empty).
    pub async fn open_legacy(
        &self,
        provider: &Arc<dyn KeyProvider>,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        if let Some(plain) = self.cached_legacy(std::slice::from_ref(provider), ciphertext) {
            return Ok(plain);
        }
        let kek_id = provider.kek_id();
        let key = cache_key(LEGACY_FORM, kek_id, ciphertext);
        let call = || async {
            let result = match provider.open_legacy(ciphertext).await {
                Ok(plain) if plain.is_empty() => Err(Error::Provider(ProviderError::Unavailable(
                    format!("{kek_id} returned an empty legacy plaintext"),
                ))),
                Ok(plain) => Ok(Arc::new(plain)),
                Err(e) => Err(Error::Provider(e)),
            };
            if let Err(e) = &result {
                tracing::debug!(kek_id, error = %e, "legacy ciphertext not opened");
            }
            result
        };
        let plain = self
            .legacy_opening
            .run(key.clone(), call, |plain: LegacyPlain| {
                lock(&self.legacy_cache).put(key, plain.clone());
                Ok(plain)
            })
            .await?;
        self.count_legacy_read(kek_id);
        Ok(Zeroizing::new(plain.to_vec()))
    }

    /// The payload of a legacy ciphertext already opened through any of `readers`, without a provider
    /// call (counted as a legacy read). Lets a ciphertext that the last of several legacy keys opened skip
    /// the keys tried before it next time.
    pub fn cached_legacy(
        &self,
        readers: &[Arc<dyn KeyProvider>],
        ciphertext: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        let (kek_id, plain) = readers.iter().find_map(|p| {
            let key = cache_key(LEGACY_FORM, p.kek_id(), ciphertext);
            let hit = lock(&self.legacy_cache).get(&key).cloned();
            hit.map(|plain| (p.kek_id(), plain))
        })?;
        self.count_legacy_read(kek_id);
        Some(Zeroizing::new(plain.to_vec()))
    }

    /// Counts a legacy read; says so at info level at most once a minute (with the running count), so
    /// operators can tell when a storage migration has rewritten everything, and at debug level each time.
    fn count_legacy_read(&self, kek_id: &str) {
        let n = self.stats.legacy_reads.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(kek_id, legacy_reads = n, "legacy ciphertext read");
        let due = {
            let mut last = lock(&self.last_legacy_log);
            let due = last.is_none_or(|at| at.elapsed() >= LEGACY_LOG_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            tracing::info!(
                kek_id,
                legacy_reads = n,
                "ciphertexts in JD Cloud's plugin form are still being read ({n} since start); \
                 rewrite all Secrets to finish the migration (docs/migration-from-jdcloud-plugin.md)"
            );
        }
    }

    /// Number of legacy payloads cached.
    pub fn legacy_cache_len(&self) -> usize {
        lock(&self.legacy_cache).len()
    }
}

/// At most one provider call per cache key at a time (single-flight): callers that miss the cache while a
/// call for the same key is under way wait for its result instead of making their own.
struct SingleFlight<V> {
    calls: Calls<V>,
}

impl<V> Default for SingleFlight<V> {
    fn default() -> Self {
        Self {
            calls: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone> SingleFlight<V> {
    /// Runs `call` for `key`, or joins the one already running, then hands the result to `admit`. `admit`
    /// runs while this caller still holds its place in the table, so a result cached by `admit` is in the
    /// cache before the entry can leave the table: no caller in between makes a second call.
    async fn run<T, F, Fut>(
        &self,
        key: CacheKey,
        call: F,
        admit: impl FnOnce(V) -> Result<T, Error>,
    ) -> Result<T, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, Error>>,
    {
        let cell = lock(&self.calls).entry(key.clone()).or_default().clone();
        let _leave = Leave {
            calls: &self.calls,
            key,
            cell: cell.clone(),
        };
        let value = cell.get_or_init(call).await.clone()?;
        admit(value)
    }

    #[cfg(test)]
    fn is_idle(&self) -> bool {
        lock(&self.calls).is_empty()
    }
}

/// Removes a finished (or abandoned) single-flight entry, so errors are not remembered and the table
/// cannot grow with cancelled calls.
struct Leave<'a, V> {
    calls: &'a Calls<V>,
    key: CacheKey,
    cell: Shared<V>,
}

impl<V> Drop for Leave<'_, V> {
    fn drop(&mut self) {
        let mut calls = lock(self.calls);
        if let Some(entry) = calls.get(&self.key) {
            // 2 = the table's reference and ours: nobody else is waiting on an unfinished call.
            if Arc::ptr_eq(entry, &self.cell)
                && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2)
            {
                calls.remove(&self.key);
            }
        }
    }
}

/// The cache is keyed by exactly what determines the data key: cipher, KEK id and wrapped bytes, with
/// lengths so no two different tuples collide by concatenation. The LRU hashes it with its own (randomly
/// seeded) hasher; keeping the bytes themselves makes a collision impossible, and is ~10 times cheaper per
/// Decrypt than the SM3 digest this used to be (callgrind: 9,300 instructions of ~15,000 per open).
fn cache_key(cipher_id: u8, kek_id: &str, wrapped: &[u8]) -> CacheKey {
    let mut k = Vec::with_capacity(1 + 4 + kek_id.len() + 4 + wrapped.len());
    k.push(cipher_id);
    k.extend_from_slice(&(kek_id.len() as u32).to_be_bytes());
    k.extend_from_slice(kek_id.as_bytes());
    k.extend_from_slice(&(wrapped.len() as u32).to_be_bytes());
    k.extend_from_slice(wrapped);
    k.into()
}

/// A provider for unit tests here and in [`crate::envelope`].
#[cfg(test)]
pub(crate) mod test_provider {
    use super::*;
    use async_trait::async_trait;
    use std::sync::atomic::AtomicUsize;

    /// A provider that counts calls, can be switched off, and can be made to answer with a wrong key. With
    /// `legacy` on it reads the legacy ciphertexts listed in `legacy_blobs` (anything else it rejects as
    /// a remote KMS would).
    #[derive(Debug, Default)]
    pub(crate) struct Counting {
        pub id: String,
        pub wraps: AtomicUsize,
        pub unwraps: AtomicUsize,
        pub down: AtomicBool,
        pub lie: AtomicBool,
        pub delay_ms: AtomicU64,
        pub legacy: bool,
        pub legacy_blobs: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
        pub legacy_calls: AtomicUsize,
    }

    impl Counting {
        pub(crate) fn new(id: &str) -> Arc<Self> {
            Arc::new(Self {
                id: id.into(),
                ..Default::default()
            })
        }

        /// A provider that reads the legacy ciphertext `blob` as `plain`.
        pub(crate) fn legacy(id: &str, blob: &[u8], plain: &[u8]) -> Arc<Self> {
            Arc::new(Self {
                id: id.into(),
                legacy: true,
                legacy_blobs: Mutex::new(HashMap::from([(blob.to_vec(), plain.to_vec())])),
                ..Default::default()
            })
        }

        async fn remote(&self) -> Result<(), ProviderError> {
            let ms = self.delay_ms.load(Ordering::SeqCst);
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if self.down.load(Ordering::SeqCst) {
                return Err(ProviderError::Unavailable("down".into()));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl KeyProvider for Counting {
        fn kek_id(&self) -> &str {
            &self.id
        }
        fn kind(&self) -> &'static str {
            "test"
        }
        async fn wrap(&self, dk: &DataKey) -> Result<Vec<u8>, ProviderError> {
            self.wraps.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(ProviderError::Unavailable("down".into()));
            }
            // "Wrapping" by XOR is enough to test the bookkeeping here.
            Ok(dk.as_bytes().iter().map(|b| b ^ 0x5A).collect())
        }
        async fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, ProviderError> {
            self.unwraps.fetch_add(1, Ordering::SeqCst);
            self.remote().await?;
            let mut k: Vec<u8> = wrapped.iter().map(|b| b ^ 0x5A).collect();
            if self.lie.load(Ordering::SeqCst) {
                k[0] ^= 1;
            }
            DataKey::from_slice(&k).ok_or(ProviderError::InvalidWrappedKey("len".into()))
        }
        async fn describe(&self) -> Result<String, ProviderError> {
            Ok(self.id.clone())
        }
        fn legacy_reads(&self) -> bool {
            self.legacy
        }
        async fn open_legacy(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
            self.legacy_calls.fetch_add(1, Ordering::SeqCst);
            self.remote().await?;
            let plain = lock(&self.legacy_blobs).get(blob).cloned();
            plain
                .map(Zeroizing::new)
                .ok_or_else(|| ProviderError::InvalidWrappedKey("not a ciphertext of mine".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_provider::Counting;
    use super::*;

    fn setup(policy: DataKeyPolicy) -> (Arc<Counting>, DataKeys) {
        let p = Counting::new("k1");
        let ring = Keyring::new(vec![p.clone() as Arc<dyn KeyProvider>]).unwrap();
        (p, DataKeys::new(Arc::new(ring), policy))
    }

    async fn seal(dks: &DataKeys, msg: &[u8]) -> (Arc<CurrentKey>, Vec<u8>) {
        let k = dks.current().await.unwrap();
        let mut out = Vec::new();
        k.cipher()
            .seal_append(&[0; 12], b"", msg, &mut out)
            .unwrap();
        (k, out)
    }

    #[tokio::test]
    async fn data_key_is_reused_until_max_uses() {
        let (p, dks) = setup(DataKeyPolicy {
            max_uses: 3,
            ..Default::default()
        });
        let mut ids = Vec::new();
        for _ in 0..7 {
            let k = dks.current().await.unwrap();
            ids.push(k.wrapped().to_vec());
        }
        assert_eq!(p.wraps.load(Ordering::SeqCst), 3, "7 uses at 3 per key");
        assert_eq!(ids[0], ids[2]);
        assert_ne!(ids[2], ids[3]);
        assert_eq!(dks.stats.rotations.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn data_key_retires_with_age() {
        let (p, dks) = setup(DataKeyPolicy {
            max_age: Duration::from_millis(30),
            ..Default::default()
        });
        dks.current().await.unwrap();
        dks.current().await.unwrap();
        assert_eq!(p.wraps.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        dks.current().await.unwrap();
        assert_eq!(p.wraps.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn outage_keeps_sealing_on_the_old_key_and_backs_off() {
        let (p, dks) = setup(DataKeyPolicy {
            max_uses: 2,
            ..Default::default()
        });
        let first = dks.current().await.unwrap();
        p.down.store(true, Ordering::SeqCst);
        for _ in 0..50 {
            let k = dks.current().await.unwrap();
            assert!(Arc::ptr_eq(&k, &first));
        }
        assert!(dks.degraded());
        // One failed attempt, then the back-off holds further ones off.
        assert_eq!(p.wraps.load(Ordering::SeqCst), 2);
        assert_eq!(first.uses(), 51);
    }

    #[tokio::test]
    async fn outage_with_no_key_yet_is_unavailable() {
        let (p, dks) = setup(DataKeyPolicy::default());
        p.down.store(true, Ordering::SeqCst);
        let e = dks.current().await.err().unwrap();
        assert!(
            matches!(e, Error::Provider(ProviderError::Unavailable(_))),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_unwrap_call() {
        let (p, dks) = setup(DataKeyPolicy::default());
        let dks = Arc::new(dks);
        let (k, sealed) = seal(&dks, b"payload").await;
        p.delay_ms.store(50, Ordering::SeqCst);
        let wrapped = k.wrapped().to_vec();
        // A fresh cache, as after a restart.
        let dks2 = {
            let ring = dks.state().keyring.clone();
            Arc::new(DataKeys::new(ring, DataKeyPolicy::default()))
        };
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (d, w, s) = (dks2.clone(), wrapped.clone(), sealed.clone());
            tasks.push(tokio::spawn(async move {
                d.open_with(cipher::SM4_GCM, "k1", &w, |c| c.open(&[0; 12], b"", &s))
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), b"payload");
        }
        assert_eq!(p.unwraps.load(Ordering::SeqCst), 1);
        assert_eq!(dks2.stats.unwraps.load(Ordering::SeqCst), 1);
        assert_eq!(dks2.cache_len(), 1);
        assert!(dks2.unwrapping.is_idle());
    }

    #[tokio::test]
    async fn a_wrong_key_from_the_provider_is_never_cached() {
        let (p, dks) = setup(DataKeyPolicy::default());
        let (k, sealed) = seal(&dks, b"payload").await;
        let fresh = DataKeys::new(dks.state().keyring.clone(), DataKeyPolicy::default());
        p.lie.store(true, Ordering::SeqCst);
        let r = fresh
            .open_with(cipher::SM4_GCM, "k1", k.wrapped(), |c| {
                c.open(&[0; 12], b"", &sealed)
            })
            .await;
        assert_eq!(r, Err(Error::Authentication));
        assert_eq!(fresh.cache_len(), 0);
        p.lie.store(false, Ordering::SeqCst);
        let r = fresh
            .open_with(cipher::SM4_GCM, "k1", k.wrapped(), |c| {
                c.open(&[0; 12], b"", &sealed)
            })
            .await;
        assert_eq!(r.unwrap(), b"payload");
        assert_eq!(
            p.unwraps.load(Ordering::SeqCst),
            2,
            "the failure was not remembered"
        );
        assert_eq!(fresh.cache_len(), 1);
    }

    #[tokio::test]
    async fn unknown_kek_is_refused_without_a_provider_call() {
        let (p, dks) = setup(DataKeyPolicy::default());
        let r = dks
            .open_with(cipher::SM4_GCM, "other", &[1; 16], |c| {
                c.open(&[0; 12], b"", &[0; 20])
            })
            .await;
        assert_eq!(r, Err(Error::UnknownKek("other".into())));
        assert_eq!(p.unwraps.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn cache_is_bounded() {
        let (p, dks) = setup(DataKeyPolicy {
            max_uses: 1,
            cache_size: 4,
            ..Default::default()
        });
        let mut sealed = Vec::new();
        for i in 0..10u8 {
            let (k, s) = seal(&dks, &[i + 1]).await;
            sealed.push((k.wrapped().to_vec(), s));
        }
        // Newest first: opening an old key in between would evict a cached new one.
        for (w, s) in sealed.iter().rev() {
            dks.open_with(cipher::SM4_GCM, "k1", w, |c| c.open(&[0; 12], b"", s))
                .await
                .unwrap();
        }
        assert_eq!(dks.cache_len(), 4);
        // The 4 most recent keys were cached when they were made; the 6 older ones needed the provider.
        assert_eq!(p.unwraps.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn primary_change_retires_the_current_key() {
        let (_p, dks) = setup(DataKeyPolicy::default());
        let first = dks.current().await.unwrap();
        let q = Counting::new("k2");
        let old = dks.state().keyring.primary().clone();
        let ring = Keyring::new(vec![q.clone() as Arc<dyn KeyProvider>, old]).unwrap();
        dks.replace_state(Arc::new(ring), DataKeyPolicy::default());
        let second = dks.current().await.unwrap();
        assert_eq!(&**second.kek_id(), "k2");
        assert_ne!(first.kek_id(), second.kek_id());
        assert_eq!(q.wraps.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_new_sealing_key_opens_without_a_provider_call() {
        let (p, dks) = setup(DataKeyPolicy::default());
        let (k, sealed) = seal(&dks, b"fresh").await;
        let r = dks
            .open_with(cipher::SM4_GCM, "k1", k.wrapped(), |c| {
                c.open(&[0; 12], b"", &sealed)
            })
            .await;
        assert_eq!(r.unwrap(), b"fresh");
        assert_eq!(p.unwraps.load(Ordering::SeqCst), 0);
    }

    fn legacy_setup(
        blob: &[u8],
        plain: &[u8],
        cache_size: usize,
    ) -> (Arc<Counting>, Arc<DataKeys>) {
        let p = Counting::legacy("jd", blob, plain);
        let ring = Keyring::new(vec![p.clone() as Arc<dyn KeyProvider>]).unwrap();
        let policy = DataKeyPolicy {
            cache_size,
            ..Default::default()
        };
        (p, Arc::new(DataKeys::new(Arc::new(ring), policy)))
    }

    #[tokio::test]
    async fn legacy_reads_share_one_call_then_hit_the_cache_and_are_counted() {
        let (p, dks) = legacy_setup(b"old blob", b"kube-apiserver DEK", 16);
        p.delay_ms.store(50, Ordering::SeqCst);
        let provider = dks.state().keyring.primary().clone();
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (d, p) = (dks.clone(), provider.clone());
            tasks.push(tokio::spawn(
                async move { d.open_legacy(&p, b"old blob").await },
            ));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().as_slice(), b"kube-apiserver DEK");
        }
        for _ in 0..936 {
            dks.open_legacy(&provider, b"old blob").await.unwrap();
        }
        assert_eq!(
            p.legacy_calls.load(Ordering::SeqCst),
            1,
            "1000 reads, 1 call"
        );
        assert_eq!(dks.stats.legacy_reads.load(Ordering::SeqCst), 1000);
        assert_eq!(dks.legacy_cache_len(), 1);
        assert_eq!(dks.cache_len(), 0, "data keys are cached apart");
        assert!(dks.legacy_opening.is_idle());
        assert_eq!(p.unwraps.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn legacy_failures_are_not_cached_or_counted() {
        let (p, dks) = legacy_setup(b"old blob", b"dek", 16);
        let provider = dks.state().keyring.primary().clone();
        p.down.store(true, Ordering::SeqCst);
        let e = dks.open_legacy(&provider, b"old blob").await.unwrap_err();
        assert!(
            matches!(e, Error::Provider(ProviderError::Unavailable(_))),
            "{e:?}"
        );
        p.down.store(false, Ordering::SeqCst);
        let e = dks.open_legacy(&provider, b"garbage").await.unwrap_err();
        assert!(
            matches!(e, Error::Provider(ProviderError::InvalidWrappedKey(_))),
            "{e:?}"
        );
        assert_eq!(dks.legacy_cache_len(), 0);
        assert_eq!(dks.stats.legacy_reads.load(Ordering::SeqCst), 0);
        let got = dks.open_legacy(&provider, b"old blob").await.unwrap();
        assert_eq!(got.as_slice(), b"dek");
        assert_eq!(p.legacy_calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_empty_legacy_plaintext_is_an_error_never_an_answer() {
        let (p, dks) = legacy_setup(b"old blob", b"", 16);
        let provider = dks.state().keyring.primary().clone();
        let e = dks.open_legacy(&provider, b"old blob").await.unwrap_err();
        assert!(
            matches!(e, Error::Provider(ProviderError::Unavailable(_))),
            "{e:?}"
        );
        assert_eq!(dks.legacy_cache_len(), 0);
        assert_eq!(p.legacy_calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn legacy_cache_is_bounded() {
        let (p, dks) = legacy_setup(b"", b"", 4);
        let provider = dks.state().keyring.primary().clone();
        for i in 0..10u8 {
            lock(&p.legacy_blobs).insert(vec![i; 8], vec![i + 1; 32]);
        }
        for i in 0..10u8 {
            let got = dks.open_legacy(&provider, &[i; 8]).await.unwrap();
            assert_eq!(got.as_slice(), [i + 1; 32]);
        }
        assert_eq!(dks.legacy_cache_len(), 4);
        dks.open_legacy(&provider, &[9; 8]).await.unwrap();
        dks.open_legacy(&provider, &[0; 8]).await.unwrap();
        assert_eq!(
            p.legacy_calls.load(Ordering::SeqCst),
            11,
            "the newest stayed cached, the oldest was evicted"
        );
    }

    #[test]
    fn cache_key_separates_fields() {
        assert_ne!(cache_key(1, "ab", b"c"), cache_key(1, "a", b"bc"));
        assert_ne!(cache_key(1, "a", b"b"), cache_key(2, "a", b"b"));
    }
}
