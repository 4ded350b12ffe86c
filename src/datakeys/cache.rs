//! Opening side: the unwrap cache of data keys (and of legacy payloads), filled through the single-flight
//! so concurrent misses for one wrapped key make one provider call.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::{CacheKey, DataKeys, LegacyPlain, lock};
use crate::cipher::{self, Cipher, CipherError};
use crate::ciphertext::FormatError;
use crate::error::{Error, ProviderError};
use crate::provider::KeyProvider;

/// Stands in for the cipher id in the cache key of a legacy ciphertext (no cipher has id 0).
const LEGACY_FORM: u8 = 0;

/// The info line about legacy reads comes at most this often.
const LEGACY_LOG_EVERY: Duration = Duration::from_secs(60);

impl DataKeys {
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
                    format!("{kek_id} returned an empty legacy plaintext").into(),
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

/// The cache is keyed by exactly what determines the data key: cipher, KEK id and wrapped bytes, with
/// lengths so no two different tuples collide by concatenation. The LRU hashes it with its own (randomly
/// seeded) hasher; keeping the bytes themselves makes a collision impossible, and is ~10 times cheaper per
/// Decrypt than the SM3 digest this used to be (callgrind: 9,300 instructions of ~15,000 per open).
pub(super) fn cache_key(cipher_id: u8, kek_id: &str, wrapped: &[u8]) -> CacheKey {
    let mut k = Vec::with_capacity(1 + 4 + kek_id.len() + 4 + wrapped.len());
    k.push(cipher_id);
    k.extend_from_slice(&(kek_id.len() as u32).to_be_bytes());
    k.extend_from_slice(kek_id.as_bytes());
    k.extend_from_slice(&(wrapped.len() as u32).to_be_bytes());
    k.extend_from_slice(wrapped);
    k.into()
}
