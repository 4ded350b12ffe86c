//! The keyring: every configured key-encryption key by id, one of them primary. New data keys are wrapped by
//! the primary; any key in the ring can unwrap (that is how rotation keeps old ciphertexts readable).

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::provider::metered::{Metered, Observer};
use crate::provider::{self, KeyProvider, ProviderError};

/// Why the keys of a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// A key could not be loaded.
    #[error("config {file}: key {index}: {cause}")]
    Provider {
        /// The config file.
        file: String,
        /// `primary` or `PreviousKeys[i]`.
        index: String,
        /// What the provider said (named in the message, so not a `source()`: crate::error's rule).
        cause: ProviderError,
    },
    /// Two keys have the same id.
    #[error(
        "config {file}: key id {id:?} appears twice (the primary and PreviousKeys must be different keys)"
    )]
    DuplicateId {
        /// The config file.
        file: String,
        /// The id.
        id: String,
    },
}

/// Key-encryption keys by id. Immutable: a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Keyring {
    primary: Arc<dyn KeyProvider>,
    by_id: HashMap<String, Arc<dyn KeyProvider>>,
    /// Keys that read legacy ciphertexts, in the order they are tried: config order (primary first).
    legacy: Vec<Arc<dyn KeyProvider>>,
}

impl Keyring {
    /// Loads every key the config names; any failure names the key entry.
    pub fn from_config(config: &Config) -> Result<Self, KeyringError> {
        Self::load(config, None)
    }

    /// [`Keyring::from_config`] with every provider wrapped in the [`Metered`] decorator reporting to
    /// `observer`: what the running plugin uses.
    pub fn from_config_metered(
        config: &Config,
        observer: Arc<dyn Observer>,
    ) -> Result<Self, KeyringError> {
        Self::load(config, Some(observer))
    }

    fn load(config: &Config, observer: Option<Arc<dyn Observer>>) -> Result<Self, KeyringError> {
        let file = config.path.display().to_string();
        let mut providers = Vec::new();
        for (i, spec) in config.keys().enumerate() {
            let p = provider::from_spec(spec).map_err(|cause| KeyringError::Provider {
                file: file.clone(),
                index: if i == 0 {
                    "primary".into()
                } else {
                    format!("PreviousKeys[{}]", i - 1)
                },
                cause,
            })?;
            providers.push(match &observer {
                Some(o) => Metered::around(p, o.clone()),
                None => p,
            });
        }
        Self::new(providers).map_err(|id| KeyringError::DuplicateId { file, id })
    }

    /// The first provider is the primary. Errs with the id that occurs twice.
    pub fn new(providers: Vec<Arc<dyn KeyProvider>>) -> Result<Self, String> {
        let mut iter = providers.into_iter();
        let primary = iter.next().ok_or_else(String::new)?;
        let mut by_id = HashMap::new();
        let mut legacy = Vec::new();
        for p in std::iter::once(primary.clone()).chain(iter) {
            if p.legacy_reads() {
                legacy.push(p.clone());
            }
            let id = p.kek_id().to_string();
            if by_id.insert(id.clone(), p).is_some() {
                return Err(id);
            }
        }
        Ok(Self {
            primary,
            by_id,
            legacy,
        })
    }

    /// The primary key: it wraps new data keys.
    pub fn primary(&self) -> &Arc<dyn KeyProvider> {
        &self.primary
    }

    /// The key with id `kek_id`.
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

    /// Every provider (for health reporting).
    pub fn providers(&self) -> impl Iterator<Item = &Arc<dyn KeyProvider>> {
        self.by_id.values()
    }

    /// The keys that read legacy ciphertexts ([`KeyProvider::legacy_reads`]), in the order Decrypt tries
    /// them: the primary first if it is one, then `PreviousKeys` in config order. Empty: no legacy reads,
    /// and a ciphertext that is not format 1 is refused without any remote call.
    pub fn legacy_readers(&self) -> &[Arc<dyn KeyProvider>] {
        &self.legacy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jd(key: &str, extra: &str) -> String {
        format!(
            r#"{{"AccessKey": "ak", "SecretKey": "sk", "KmsEndpoint": "127.0.0.1:9", "KmsSchema": "http",
                "KmsKeyId": "{key}"{extra}}}"#
        )
    }

    fn legacy_ids(text: &str) -> Vec<String> {
        let config = Config::parse(text, std::path::Path::new("/etc/kms.json")).unwrap();
        let ring = Keyring::from_config(&config).unwrap();
        ring.legacy_readers()
            .iter()
            .map(|p| p.kek_id().to_string())
            .collect()
    }

    #[test]
    fn legacy_readers_are_the_enabled_jdcloud_keys_primary_first_then_config_order() {
        // JD Cloud's plugin file as it is: the primary reads legacy ciphertexts.
        assert_eq!(legacy_ids(&jd("a", "")), ["jdcloud-a"]);
        // An explicit Provider turns the default off.
        assert!(legacy_ids(&jd("a", r#", "Provider": "jdcloud""#)).is_empty());
        let prev = format!(
            r#", "PreviousKeys": [{}, {}, {}]"#,
            jd("z", r#", "LegacyCiphertexts": true"#),
            jd("m", ""),
            jd("b", r#", "LegacyCiphertexts": true"#)
        );
        assert_eq!(
            legacy_ids(&jd("p", &prev)),
            ["jdcloud-p", "jdcloud-z", "jdcloud-b"]
        );
        let off = format!(r#", "LegacyCiphertexts": false{prev}"#);
        assert_eq!(legacy_ids(&jd("p", &off)), ["jdcloud-z", "jdcloud-b"]);
    }
}
