//! A [`KeyProvider`] decorator that times and counts every wrap and unwrap of the provider it wraps (through
//! an [`Observer`], which the metrics layer implements) and logs each failed call once. The keyring puts it around every
//! provider it loads, so back-ends need no metrics code of their own.
//!
//! Every method of [`KeyProvider`] is delegated, including those with a default body: a method added to
//! the trait must be delegated here too, or the decorator would silently answer with the default.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::{KeyProvider, ProviderError};
use crate::error::ErrorKind;
use crate::secret::DataKey;

/// Receives one record per provider call. Defined here, implemented above (by the metrics), so the
/// providers never depend on the layer that counts them.
pub trait Observer: Send + Sync {
    /// One call: `provider` is [`KeyProvider::kind`], `operation` `wrap`, `unwrap` or `open_legacy`.
    fn observe(
        &self,
        provider: &'static str,
        operation: &'static str,
        outcome: Result<(), ErrorKind>,
        elapsed: Duration,
    );
}

/// The decorator; see the module doc.
pub struct Metered {
    inner: Arc<dyn KeyProvider>,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Metered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Metered {
    /// `inner`, with every call reported to `observer`.
    pub fn around(
        inner: Arc<dyn KeyProvider>,
        observer: Arc<dyn Observer>,
    ) -> Arc<dyn KeyProvider> {
        Arc::new(Self { inner, observer })
    }

    fn record<T>(&self, operation: &'static str, r: &Result<T, ProviderError>, elapsed: Duration) {
        let outcome = r.as_ref().map(|_| ()).map_err(ProviderError::kind);
        self.observer
            .observe(self.inner.kind(), operation, outcome, elapsed);
        if let Err(e) = r {
            let elapsed_ms = elapsed.as_millis() as u64;
            match e {
                // A ciphertext this key cannot open is bad input from the caller, answered with
                // InvalidArgument; not an operator's problem unless debugging.
                ProviderError::InvalidWrappedKey(_) => tracing::debug!(
                    provider = self.inner.kind(),
                    key = self.inner.kek_id(),
                    operation,
                    elapsed_ms,
                    error = %e,
                    "key provider call failed"
                ),
                _ => tracing::warn!(
                    provider = self.inner.kind(),
                    key = self.inner.kek_id(),
                    operation,
                    elapsed_ms,
                    error = %e,
                    "key provider call failed"
                ),
            }
        }
    }
}

#[async_trait]
impl KeyProvider for Metered {
    fn kek_id(&self) -> &str {
        self.inner.kek_id()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn wrap(&self, dk: &DataKey) -> Result<Vec<u8>, ProviderError> {
        let start = Instant::now();
        let r = self.inner.wrap(dk).await;
        self.record("wrap", &r, start.elapsed());
        r
    }

    async fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, ProviderError> {
        let start = Instant::now();
        let r = self.inner.unwrap(wrapped).await;
        self.record("unwrap", &r, start.elapsed());
        r
    }

    async fn describe(&self) -> Result<String, ProviderError> {
        self.inner.describe().await
    }

    // Not counted: only a device-backed provider makes keys itself, and its wrap right after is counted.
    async fn generate_data_key(&self) -> Result<Option<DataKey>, ProviderError> {
        self.inner.generate_data_key().await
    }

    fn probe_interval(&self) -> Duration {
        self.inner.probe_interval()
    }

    fn legacy_reads(&self) -> bool {
        self.inner.legacy_reads()
    }

    async fn open_legacy(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        let start = Instant::now();
        let r = self.inner.open_legacy(blob).await;
        self.record("open_legacy", &r, start.elapsed());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fails;

    #[async_trait]
    impl KeyProvider for Fails {
        fn kek_id(&self) -> &str {
            "k"
        }
        fn kind(&self) -> &'static str {
            "test"
        }
        async fn wrap(&self, _dk: &DataKey) -> Result<Vec<u8>, ProviderError> {
            Err(ProviderError::Unavailable("down".into()))
        }
        async fn unwrap(&self, _w: &[u8]) -> Result<DataKey, ProviderError> {
            Ok(DataKey::from_bytes([7; 16]))
        }
        async fn describe(&self) -> Result<String, ProviderError> {
            Ok("test key".into())
        }
        fn probe_interval(&self) -> Duration {
            Duration::from_secs(123)
        }
    }

    /// Records what the decorator reports.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<Record>>);

    type Record = (&'static str, &'static str, Result<(), ErrorKind>);

    impl Observer for Recorder {
        fn observe(
            &self,
            provider: &'static str,
            operation: &'static str,
            outcome: Result<(), ErrorKind>,
            _elapsed: Duration,
        ) {
            self.0.lock().unwrap().push((provider, operation, outcome));
        }
    }

    #[tokio::test]
    async fn delegates_and_counts() {
        let recorder = Arc::new(Recorder::default());
        let p = Metered::around(Arc::new(Fails), recorder.clone());
        assert_eq!(p.kek_id(), "k");
        assert_eq!(p.kind(), "test");
        assert_eq!(p.probe_interval(), Duration::from_secs(123));
        assert_eq!(p.describe().await.unwrap(), "test key");
        assert!(p.wrap(&DataKey::from_bytes([1; 16])).await.is_err());
        assert!(p.unwrap(b"x").await.is_ok());
        assert!(p.unwrap(b"x").await.is_ok());
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                ("test", "wrap", Err(ErrorKind::Unavailable)),
                ("test", "unwrap", Ok(())),
                ("test", "unwrap", Ok(())),
            ]
        );
    }
}
