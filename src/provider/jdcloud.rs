//! JD Cloud KMS provider: not built yet (its own issue). Selecting it is a clear configuration error.

use async_trait::async_trait;

use super::{KeyProvider, ProviderError};
use crate::config::JdCloudSpec;
use crate::secret::DataKey;

#[derive(Debug)]
pub struct JdCloudProvider {
    kek_id: String,
}

impl JdCloudProvider {
    pub fn new(spec: &JdCloudSpec) -> Result<Self, ProviderError> {
        let _ = spec;
        Err(ProviderError::Config(
            "Provider \"jdcloud\" is not built yet in this version; use \"sm2\"".into(),
        ))
    }
}

#[async_trait]
impl KeyProvider for JdCloudProvider {
    fn kek_id(&self) -> &str {
        &self.kek_id
    }
    fn kind(&self) -> &'static str {
        "jdcloud"
    }
    async fn wrap(&self, _dk: &DataKey) -> Result<Vec<u8>, ProviderError> {
        Err(ProviderError::Config("jdcloud provider not built".into()))
    }
    async fn unwrap(&self, _wrapped: &[u8]) -> Result<DataKey, ProviderError> {
        Err(ProviderError::Config("jdcloud provider not built".into()))
    }
    async fn describe(&self) -> Result<String, ProviderError> {
        Err(ProviderError::Config("jdcloud provider not built".into()))
    }
}
