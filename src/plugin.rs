//! The running plugin: what one configuration loads into (keyring, data keys, envelope, health, metrics),
//! and the reload that swaps keys and tuning without touching the socket. This is where the layers are
//! put together; the layers themselves only know the ones below them.

use std::sync::{Arc, RwLock};

use crate::api::{ApiSettings, Backend};
use crate::config::{Config, ConfigError};
use crate::datakeys::DataKeys;
use crate::envelope::Envelope;
use crate::health::Health;
use crate::http::Probes;
use crate::keyring::{Keyring, KeyringError};
use crate::metrics::{self, Format, Metrics, Snapshot};
use crate::selftest::{self, SelfTestError};

/// Why a configuration could not be loaded (at start, by `check`, or on reload).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The config file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key could not be loaded.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// A power-on self-test failed.
    #[error(transparent)]
    SelfTest(#[from] SelfTestError),
    /// A reload tried to change a field that only a restart can.
    #[error("config {file}: {field} cannot change on reload (restart the plugin to change it)")]
    Fixed {
        /// The config file.
        file: String,
        /// The field that changed.
        field: &'static str,
    },
}

/// One loaded configuration and everything built from it.
#[derive(Debug)]
pub struct Plugin {
    config: RwLock<Arc<Config>>,
    backend: Backend,
}

impl Plugin {
    /// Runs the power-on self-tests, then loads every key of the config.
    pub fn load(config: Config) -> Result<Arc<Self>, LoadError> {
        selftest::run_all()?;
        let metrics = Arc::new(Metrics::new());
        let keyring = Keyring::from_config_metered(&config, metrics.provider())?;
        let datakeys = Arc::new(DataKeys::new(Arc::new(keyring), config.data_keys));
        let backend = Backend::new(
            Arc::new(Envelope::new(datakeys)),
            Arc::new(Health::new()),
            metrics,
            ApiSettings {
                kms_v2_version: config.kms_v2_version.clone(),
            },
        );
        Ok(Arc::new(Self {
            config: RwLock::new(Arc::new(config)),
            backend,
        }))
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What the gRPC services run on.
    pub fn backend(&self) -> Backend {
        self.backend.clone()
    }

    /// Seals and opens.
    pub fn envelope(&self) -> &Envelope {
        &self.backend.envelope
    }

    /// The data keys (for the prober and `check`).
    pub fn datakeys(&self) -> Arc<DataKeys> {
        self.backend.envelope.datakeys().clone()
    }

    /// The background key round trip's state.
    pub fn health(&self) -> Arc<Health> {
        self.backend.health.clone()
    }

    /// Counts a connection the KMS socket closed without serving it (`reason`: the accept loop's label).
    pub fn record_connection_refused(&self, reason: &'static str) {
        self.backend.metrics.record_connection_refused(reason);
    }

    /// Whether the config in force lets a peer of `uid` use the KMS socket (`AllowedPeerUids`).
    pub fn allows_peer(&self, uid: u32) -> bool {
        self.config().allowed_peer_uids.contains(&uid)
    }

    /// The plugin's state now, for `/metrics`.
    pub fn snapshot(&self) -> Snapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let dks = self.backend.envelope.datakeys();
        let stats = dks.stats();
        let keyring = dks.keyring();
        let primary = keyring.primary();
        Snapshot {
            rotations: stats.rotations.load(Relaxed),
            wrap_failures: stats.wrap_failures.load(Relaxed),
            cache_hits: stats.cache_hits.load(Relaxed),
            cache_misses: stats.cache_misses.load(Relaxed),
            unwraps: stats.unwraps.load(Relaxed),
            unwrap_failures: stats.unwrap_failures.load(Relaxed),
            legacy_reads: stats.legacy_reads.load(Relaxed),
            cache_size: dks.cache_len(),
            current_uses: dks.peek_current().map_or(0, |c| c.uses()),
            degraded: dks.degraded(),
            healthy: self.backend.health.status(dks).is_ok(),
            primary_key_id: primary.kek_id().to_string(),
            primary_provider: primary.kind(),
            keys: keyring.ids().len(),
            process: metrics::ProcessStats::current(),
        }
    }

    /// Re-reads the config file and its keys. On any error nothing changes.
    /// Returns the new primary KEK id. Every attempt is counted in the metrics.
    pub fn reload(&self) -> Result<String, LoadError> {
        let r = self.try_reload();
        self.backend.metrics.record_reload(r.is_ok());
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
        let keyring = Keyring::from_config_metered(&new, self.backend.metrics.provider())?;
        let primary = keyring.primary().kek_id().to_string();
        self.datakeys()
            .replace_state(Arc::new(keyring), new.data_keys);
        self.backend.set_settings(ApiSettings {
            kms_v2_version: new.kms_v2_version.clone(),
        });
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        Ok(primary)
    }
}

impl Probes for Plugin {
    fn health(&self) -> Result<(), String> {
        self.backend.health.status(self.backend.envelope.datakeys())
    }

    fn metrics(&self, format: Format) -> String {
        metrics::render(&self.backend.metrics, self.snapshot(), format)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn plugin() -> (tempfile::TempDir, Arc<Plugin>) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/dev-sm2-key.pem"),
            &key,
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("config.json");
        let text = serde_json::json!({"Sm2PrivateKeyFile": key, "HealthAddr": ""}).to_string();
        let config = Config::parse(&text, &path).unwrap();
        (dir, Plugin::load(config).unwrap())
    }

    #[tokio::test]
    async fn probes_report_the_plugin_state() {
        let (_dir, p) = plugin();
        let err = Probes::health(p.as_ref()).unwrap_err();
        assert!(err.contains("starting"), "{err}");
        p.health().probe(&p.datakeys()).await.unwrap();
        assert_eq!(Probes::health(p.as_ref()), Ok(()));

        let text = Probes::metrics(p.as_ref(), Format::Prometheus);
        for want in [
            "# TYPE gm_kms_reloads_total counter",
            "gm_kms_healthy 1",
            "gm_kms_primary_key_info{key_id=\"sm2-",
            "gm_kms_keys 1",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        let text = Probes::metrics(p.as_ref(), Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE gm_kms_reloads counter"), "{text}");
    }
}
