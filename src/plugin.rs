//! The running plugin: what one configuration loads into (keyring, data keys, envelope, health), and the
//! reload that swaps keys and tuning without touching the socket.

use std::sync::{Arc, RwLock};

use crate::config::{Config, ConfigError};
use crate::datakeys::DataKeys;
use crate::envelope::Envelope;
use crate::health::Health;
use crate::keyring::{Keyring, KeyringError};
use crate::metrics::Metrics;
use crate::selftest::{self, SelfTestError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    SelfTest(#[from] SelfTestError),
    #[error("config {file}: {field} cannot change on reload (restart the plugin to change it)")]
    Fixed { file: String, field: &'static str },
}

/// Settings the API layer reads on every call; replaced whole on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// What KMS v2 `Status.version` answers.
    pub kms_v2_version: String,
}

pub struct Plugin {
    config: RwLock<Arc<Config>>,
    api: RwLock<Arc<ApiSettings>>,
    pub envelope: Envelope,
    pub health: Health,
    pub metrics: Metrics,
}

impl Plugin {
    /// Runs the power-on self-tests, then loads every key of the config.
    pub fn load(config: Config) -> Result<Arc<Self>, LoadError> {
        selftest::run_all()?;
        let metrics = Metrics::new();
        let keyring = Keyring::from_config_metered(&config, metrics.provider())?;
        let datakeys = Arc::new(DataKeys::new(Arc::new(keyring), config.data_keys));
        Ok(Arc::new(Self {
            api: RwLock::new(Arc::new(ApiSettings {
                kms_v2_version: config.kms_v2_version.clone(),
            })),
            config: RwLock::new(Arc::new(config)),
            envelope: Envelope::new(datakeys),
            health: Health::new(),
            metrics,
        }))
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn api_settings(&self) -> Arc<ApiSettings> {
        self.api.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the config file and its keys. On any error nothing changes.
    /// Returns the new primary KEK id. Every attempt is counted in the metrics.
    pub fn reload(&self) -> Result<String, LoadError> {
        let r = self.try_reload();
        self.metrics.record_reload(r.is_ok());
        r
    }

    fn try_reload(&self) -> Result<String, LoadError> {
        let old = self.config();
        let new = Config::load(&old.path)?;
        let file = old.path.display().to_string();
        if new.socket != old.socket {
            return Err(LoadError::Fixed {
                file,
                field: "GRPCSocketPath",
            });
        }
        if new.health_addr != old.health_addr {
            return Err(LoadError::Fixed {
                file,
                field: "HealthAddr",
            });
        }
        let keyring = Keyring::from_config_metered(&new, self.metrics.provider())?;
        let primary = keyring.primary().kek_id().to_string();
        self.envelope
            .datakeys()
            .replace_state(Arc::new(keyring), new.data_keys);
        *self.api.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ApiSettings {
            kms_v2_version: new.kms_v2_version.clone(),
        });
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        Ok(primary)
    }
}
