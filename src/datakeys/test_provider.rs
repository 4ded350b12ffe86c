//! A provider for unit tests here and in [`crate::envelope`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::lock;
use crate::provider::{KeyProvider, ProviderError};
use crate::secret::DataKey;

/// A provider that counts calls, can be slowed down or switched off, and can be made to answer with a wrong
/// key. With `legacy` on it reads the legacy ciphertexts listed in `legacy_blobs` (anything else it rejects
/// as a remote KMS would).
#[derive(Debug, Default)]
pub(crate) struct Counting {
    pub id: String,
    pub wraps: AtomicUsize,
    pub unwraps: AtomicUsize,
    pub down: AtomicBool,
    pub lie: AtomicBool,
    pub delay_ms: AtomicU64,
    /// How long a wrap takes (a remote KMS round trip), in milliseconds.
    pub wrap_delay_ms: AtomicU64,
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
        let ms = self.wrap_delay_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
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
