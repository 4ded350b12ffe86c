//! A [`KeyProvider`] decorator that times and counts every wrap and unwrap of the provider it wraps
//! ([`crate::metrics::ProviderMetrics`]) and logs each failed call once. The keyring puts it around every
//! provider it loads, so back-ends need no metrics code of their own.
//!
//! Every method of [`KeyProvider`] is delegated, including those with a default body: a method added to
//! the trait must be delegated here too, or the decorator would silently answer with the default.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::{KeyProvider, ProviderError};
use crate::metrics::{ProviderMetrics, outcome_label};
use crate::secret::DataKey;

#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn KeyProvider>,
    metrics: ProviderMetrics,
}

impl Metered {
    pub fn around(inner: Arc<dyn KeyProvider>, metrics: ProviderMetrics) -> Arc<dyn KeyProvider> {
        Arc::new(Self { inner, metrics })
    }

    fn record<T>(&self, operation: &'static str, r: &Result<T, ProviderError>, elapsed: Duration) {
        self.metrics
            .observe(self.inner.kind(), operation, outcome_label(r), elapsed);
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
    use crate::metrics::Metrics;

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

    #[tokio::test]
    async fn delegates_and_counts() {
        let metrics = Metrics::new();
        let p = Metered::around(Arc::new(Fails), metrics.provider().clone());
        assert_eq!(p.kek_id(), "k");
        assert_eq!(p.kind(), "test");
        assert_eq!(p.probe_interval(), Duration::from_secs(123));
        assert_eq!(p.describe().await.unwrap(), "test key");
        assert!(p.wrap(&DataKey::from_bytes([1; 16])).await.is_err());
        assert!(p.unwrap(b"x").await.is_ok());
        assert!(p.unwrap(b"x").await.is_ok());
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, metrics.registry())
            .unwrap();
        assert!(
            text.contains(
                r#"gm_kms_provider_calls_total{provider="test",operation="wrap",outcome="unavailable"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"gm_kms_provider_calls_total{provider="test",operation="unwrap",outcome="ok"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"gm_kms_provider_call_duration_seconds_count{provider="test",operation="unwrap"} 2"#
            ),
            "{text}"
        );
    }
}
