//! The gRPC edge: KMS API v1beta1 and v2, served on one socket. Handlers are thin: they call the
//! [`crate::envelope::Envelope`], bound the work by the caller's deadline, and map errors to status codes
//! in one place ([`status`]).

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::Status;

use crate::envelope::Envelope;
use crate::error::Error;
use crate::health::Health;
use crate::metrics::{Api, Metrics};

pub(crate) mod failures;
pub(crate) mod status;
pub(crate) mod v1;
pub(crate) mod v2;

/// Settings the API layer reads on every call; replaced whole on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// What KMS v2 `Status.version` answers.
    pub kms_v2_version: String,
}

/// What both services work with. The running plugin builds it and keeps a clone to update the settings
/// on reload; the services know nothing else of the plugin.
#[derive(Clone)]
pub struct Backend {
    /// Seals and opens.
    pub envelope: Arc<Envelope>,
    /// The background key round trip's verdict (v2 `Status.healthz`).
    pub health: Arc<Health>,
    /// Where every request is counted.
    pub metrics: Arc<Metrics>,
    settings: Arc<RwLock<ApiSettings>>,
    /// Failed Decrypts, logged at INFO, rate-limited.
    decrypt_failures: Arc<failures::DecryptFailures>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("settings", &self.settings())
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// A backend with the given parts.
    pub fn new(
        envelope: Arc<Envelope>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        settings: ApiSettings,
    ) -> Self {
        Self {
            envelope,
            health,
            metrics,
            settings: Arc::new(RwLock::new(settings)),
            decrypt_failures: Arc::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> ApiSettings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the settings (reload).
    pub fn set_settings(&self, settings: ApiSettings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
    }
}

/// Work on a call never runs past this, even if the caller sent no deadline.
const MAX_CALL_TIME: Duration = Duration::from_secs(30);

/// Both services, sharing one backend.
pub fn services(
    backend: Backend,
) -> (
    crate::proto::v1beta1::key_management_service_server::KeyManagementServiceServer<v1::V1>,
    crate::proto::v2::key_management_service_server::KeyManagementServiceServer<v2::V2>,
) {
    (
        crate::proto::v1beta1::key_management_service_server::KeyManagementServiceServer::new(
            v1::V1::new(backend.clone()),
        ),
        crate::proto::v2::key_management_service_server::KeyManagementServiceServer::new(
            v2::V2::new(backend),
        ),
    )
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`, gRPC over HTTP/2 spec).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Runs a handler's `work` and records the request (API, method, gRPC code, latency) in the metrics: the
/// one place every handler of both services goes through.
async fn observed<T>(
    backend: &Backend,
    api: Api,
    method: &'static str,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let timer = backend.metrics.request(api, method);
    let r = work.await;
    timer.finish(r.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok));
    r
}

/// Seals within the caller's deadline, refusing a result over the API's ciphertext `limit`.
async fn seal(
    backend: &Backend,
    metadata: &tonic::metadata::MetadataMap,
    plaintext: &[u8],
    limit: usize,
    api: &'static str,
) -> Result<crate::envelope::Sealed, Status> {
    within_deadline(metadata, async {
        let sealed = backend
            .envelope
            .seal(plaintext)
            .await
            .map_err(|e| status::to_status(&e))?;
        let len = sealed.ciphertext.len();
        if len > limit {
            // The plaintext is the caller's input, the rest (header, wrapped key, tag) the provider's: only
            // when even one byte of payload could not fit is the fault ours rather than the caller's.
            let overhead = len.saturating_sub(plaintext.len());
            let e = if overhead < limit {
                Error::PlaintextTooLong {
                    plaintext: plaintext.len(),
                    len,
                    limit,
                    api,
                }
            } else {
                Error::TooLong { len, limit, api }
            };
            return Err(status::to_status(&e));
        }
        Ok(sealed)
    })
    .await
}

/// Opens within the caller's deadline. A failure is logged (rate-limited, [`failures`]).
async fn open(
    backend: &Backend,
    metadata: &tonic::metadata::MetadataMap,
    ciphertext: &[u8],
    api: &'static str,
) -> Result<Vec<u8>, Status> {
    let r = within_deadline(metadata, async {
        let plain = backend.envelope.open(ciphertext).await.map_err(|e| {
            backend.decrypt_failures.record(api, failures::kind(&e), &e);
            status::to_status(&e)
        })?;
        Ok(plain.to_vec())
    })
    .await;
    if let Err(s) = &r
        && s.code() == tonic::Code::DeadlineExceeded
    {
        backend
            .decrypt_failures
            .record(api, "deadline_exceeded", &s.message());
    }
    r
}

/// Runs `work` within the caller's deadline: past it the call answers `DeadlineExceeded` promptly instead
/// of leaving kube-apiserver waiting on a slow provider.
async fn within_deadline<T>(
    metadata: &tonic::metadata::MetadataMap,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let limit = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(MAX_CALL_TIME, |d| d.min(MAX_CALL_TIME));
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "plugin could not finish within the call's {} ms deadline",
            limit.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_grpc_timeout("2999m"),
            Some(Duration::from_millis(2999))
        );
        assert_eq!(parse_grpc_timeout("100u"), Some(Duration::from_micros(100)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("é"), None);
    }
}
