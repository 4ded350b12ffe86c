//! Health (DESIGN §7): a background task seals and opens a fresh data key through the primary KEK at start
//! and then every few seconds; KMS v2 `Status` and the HTTP probes read the stored result and never call a
//! remote service inline.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::datakeys::DataKeys;
use crate::error::{ErrorKind, ProviderError};
use crate::secret::DataKey;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    result: Result<(), ProbeFailure>,
    at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProbeFailure {
    reason: String,
    /// The provider could not be reached (as opposed to refusing or answering wrongly).
    unreachable: bool,
}

/// The last probe's outcome.
#[derive(Debug)]
pub struct Health {
    last: RwLock<Option<Probe>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            last: RwLock::new(None),
        }
    }

    /// Wraps a fresh data key with the primary KEK and unwraps it again; stores the outcome.
    pub async fn probe(&self, datakeys: &DataKeys) -> Result<(), String> {
        let primary = datakeys.primary();
        let result = async {
            let dk = DataKey::generate()
                .map_err(|e| ProviderError::Unavailable(format!("RNG: {e}").into()))?;
            let wrapped = primary.wrap(&dk).await?;
            let back = primary.unwrap(&wrapped).await?;
            if back != dk {
                return Err(ProviderError::InvalidWrappedKey(
                    "unwrap returned a different key than was wrapped".into(),
                ));
            }
            Ok(())
        }
        .await
        .map_err(|e: ProviderError| ProbeFailure {
            unreachable: e.kind() == ErrorKind::Unavailable,
            reason: format!("key {}: {e}", primary.kek_id()),
        });
        let ok = result.is_ok();
        let reason = result.as_ref().err().map(|f| f.reason.clone());
        *self.last.write().unwrap_or_else(|p| p.into_inner()) = Some(Probe {
            result,
            at: Instant::now(),
        });
        match reason {
            None if ok => Ok(()),
            r => Err(r.unwrap_or_default()),
        }
    }

    /// `Ok` when the plugin can seal and open with its primary key. A provider that is briefly unreachable
    /// does not fail health while a data key it wrapped earlier is still within its policy (sealing works
    /// on it; DESIGN §3).
    pub fn status(&self, datakeys: &DataKeys) -> Result<(), String> {
        let last = self.last.read().unwrap_or_else(|p| p.into_inner()).clone();
        match last {
            None => Err("starting: first key round trip not done yet".into()),
            Some(Probe { result: Ok(()), .. }) => Ok(()),
            Some(Probe { result: Err(f), .. }) => {
                let primary = datakeys.primary().kek_id().to_string();
                let sealing = datakeys
                    .peek_current()
                    .is_some_and(|c| **c.kek_id() == *primary);
                if f.unreachable && sealing && !datakeys.degraded() {
                    Ok(())
                } else {
                    Err(f.reason)
                }
            }
        }
    }

    /// Age of the last probe (for `/healthz` detail and metrics).
    pub fn last_probe_age(&self) -> Option<Duration> {
        self.last
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|p| p.at.elapsed())
    }
}

/// Probes now, then at the primary key's [`KeyProvider::probe_interval`](crate::provider::KeyProvider::probe_interval),
/// until the returned handle is aborted.
pub(crate) fn spawn_prober(
    datakeys: Arc<DataKeys>,
    health: Arc<Health>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut was_ok = None;
        loop {
            let r = health.probe(&datakeys).await;
            let ok = r.is_ok();
            if was_ok != Some(ok) {
                match &r {
                    Ok(()) => tracing::info!("key round trip ok"),
                    Err(reason) => tracing::warn!(%reason, "key round trip failed"),
                }
                was_ok = Some(ok);
            }
            let interval = datakeys.primary().probe_interval();
            tokio::time::sleep(interval).await;
        }
    })
}
