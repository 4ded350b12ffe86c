//! The keyring: every configured key-encryption key by id, one of them primary. New data keys are wrapped by
//! the primary; any key in the ring can unwrap (that is how rotation keeps old ciphertexts readable).

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::provider::{self, KeyProvider, ProviderError};

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("config {file}: key {index}: {source}")]
    Provider {
        file: String,
        /// `primary` or `PreviousKeys[i]`.
        index: String,
        source: ProviderError,
    },
    #[error(
        "config {file}: key id {id:?} appears twice (the primary and PreviousKeys must be different keys)"
    )]
    DuplicateId { file: String, id: String },
}

/// Key-encryption keys by id. Immutable: a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Keyring {
    primary: Arc<dyn KeyProvider>,
    by_id: HashMap<String, Arc<dyn KeyProvider>>,
}

impl Keyring {
    /// Loads every key the config names; any failure names the key entry.
    pub fn from_config(config: &Config) -> Result<Self, KeyringError> {
        let file = config.path.display().to_string();
        let mut providers = Vec::new();
        for (i, spec) in config.keys().enumerate() {
            let p = provider::from_spec(spec).map_err(|source| KeyringError::Provider {
                file: file.clone(),
                index: if i == 0 {
                    "primary".into()
                } else {
                    format!("PreviousKeys[{}]", i - 1)
                },
                source,
            })?;
            providers.push(p);
        }
        Self::new(providers).map_err(|id| KeyringError::DuplicateId { file, id })
    }

    /// The first provider is the primary. Errs with the id that occurs twice.
    pub fn new(providers: Vec<Arc<dyn KeyProvider>>) -> Result<Self, String> {
        let mut iter = providers.into_iter();
        let primary = iter.next().ok_or_else(String::new)?;
        let mut by_id = HashMap::new();
        for p in std::iter::once(primary.clone()).chain(iter) {
            let id = p.kek_id().to_string();
            if by_id.insert(id.clone(), p).is_some() {
                return Err(id);
            }
        }
        Ok(Self { primary, by_id })
    }

    pub fn primary(&self) -> &Arc<dyn KeyProvider> {
        &self.primary
    }

    pub fn get(&self, kek_id: &str) -> Option<&Arc<dyn KeyProvider>> {
        self.by_id.get(kek_id)
    }

    /// All ids, primary first, then the others sorted (stable output for `check` and logs).
    pub fn ids(&self) -> Vec<&str> {
        let mut rest: Vec<&str> = self
            .by_id
            .keys()
            .map(String::as_str)
            .filter(|id| *id != self.primary.kek_id())
            .collect();
        rest.sort_unstable();
        std::iter::once(self.primary.kek_id()).chain(rest).collect()
    }

    /// Every provider (for legacy reads and health reporting).
    pub fn providers(&self) -> impl Iterator<Item = &Arc<dyn KeyProvider>> {
        self.by_id.values()
    }
}
