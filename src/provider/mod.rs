//! Key providers: the seam between data keys and whatever protects them (a local SM2 key, a remote KMS,
//! later an HSM or Vault). A provider wraps and unwraps 16-byte data keys under one key-encryption key
//! (KEK) and names that KEK with a stable id. Providers know nothing of gRPC or of the ciphertext layout.

use std::sync::Arc;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::config::KeySpec;
pub use crate::error::{Detail, ProviderError};
use crate::secret::DataKey;

pub mod jdcloud;
pub mod metered;
pub mod sdf;
pub mod sm2;

/// Wraps and unwraps data keys under one key-encryption key.
#[async_trait]
pub trait KeyProvider: Send + Sync + std::fmt::Debug {
    /// The KEK id written into every ciphertext header; identical on every master with the same config.
    fn kek_id(&self) -> &str;

    /// Short provider name for logs and metrics (`sm2`, `jdcloud`).
    fn kind(&self) -> &'static str;

    /// A fresh data key for [`KeyProvider::wrap`], from the provider's own random number generator when
    /// it has one that must be used (a cipher machine's, DESIGN §4). `None`, the default: the caller
    /// draws the data key from the operating system's CSPRNG (DESIGN §3).
    async fn generate_data_key(&self) -> Result<Option<DataKey>, ProviderError> {
        Ok(None)
    }

    /// Encrypts a data key under the KEK. The result goes into the ciphertext header as it is.
    async fn wrap(&self, dk: &DataKey) -> Result<Vec<u8>, ProviderError>;

    /// Recovers a data key that [`KeyProvider::wrap`] produced. Anything but exactly 16 bytes is an error.
    async fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, ProviderError>;

    /// A one-line description of the key's state for `check` (a remote provider asks its service).
    async fn describe(&self) -> Result<String, ProviderError>;

    /// How often the background health round trip may use this key. A remote provider bills and
    /// rate-limits calls, so it is probed less often than a local key.
    fn probe_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(10)
    }

    /// Whether this key also reads ciphertexts in the legacy form (DESIGN §2: what JD Cloud's own plugin
    /// wrote, no header). Off unless a provider knows that form and its config turns it on.
    fn legacy_reads(&self) -> bool {
        false
    }

    /// Opens a legacy-form ciphertext: `blob` is the whole ciphertext as kube-apiserver stored it. The
    /// result is the payload itself (kube-apiserver's DEK, any length), never empty. A provider without a
    /// legacy form refuses without any remote call.
    async fn open_legacy(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        let _ = blob;
        Err(ProviderError::InvalidWrappedKey(
            format!("{} keys do not read legacy ciphertexts", self.kind()).into(),
        ))
    }
}

/// Builds the provider a key entry of the configuration asks for.
pub fn from_spec(spec: &KeySpec) -> Result<Arc<dyn KeyProvider>, ProviderError> {
    match spec {
        KeySpec::Sm2(s) => Ok(Arc::new(sm2::Sm2Provider::load(s)?)),
        KeySpec::JdCloud(j) => Ok(Arc::new(jdcloud::JdCloudProvider::new(j)?)),
        KeySpec::Sdf(s) => Ok(Arc::new(sdf::SdfProvider::load(s)?)),
    }
}
