//! stub
use async_trait::async_trait;
use super::{KeyProvider, ProviderError};
use crate::config::Sm2Spec;
use crate::secret::DataKey;
#[derive(Debug)]
pub struct Sm2Provider { kek_id: String }
impl Sm2Provider { pub fn load(_s: &Sm2Spec) -> Result<Self, ProviderError> { todo!() } }
#[async_trait]
impl KeyProvider for Sm2Provider {
    fn kek_id(&self) -> &str { &self.kek_id }
    fn kind(&self) -> &'static str { "sm2" }
    async fn wrap(&self, _dk: &DataKey) -> Result<Vec<u8>, ProviderError> { todo!() }
    async fn unwrap(&self, _w: &[u8]) -> Result<DataKey, ProviderError> { todo!() }
    async fn describe(&self) -> Result<String, ProviderError> { todo!() }
}
