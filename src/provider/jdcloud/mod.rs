//! JD Cloud KMS provider: a data key is wrapped by KMS `Encrypt` under a JD Cloud master key and
//! unwrapped by `Decrypt`. The wrapped data key in our ciphertext header is the `ciphertextBlob` text JD
//! Cloud returned (DESIGN §2). Requests are signed `JDCLOUD3-HMAC-SHA256` (or `JDCLOUD2-…`, [`sign`]),
//! sent over HTTP or HTTPS ([`client`]), directly or through an HTTP forward proxy with the TLS roots
//! the config names ([`net`]), and their answers read totally ([`wire`]).
//!
//! Error kinds (DESIGN §6): no answer, timeout, 5xx, 429, an unreadable or empty answer → `Unavailable`;
//! 401/403 → `PermissionDenied`; a Decrypt the KMS rejects as a bad ciphertext → `InvalidWrappedKey`; any
//! other 4xx (unknown or disabled key, bad request) → `Refused`. An error or empty answer never becomes
//! an empty ciphertext or key.

use async_trait::async_trait;
use http::StatusCode;
use zeroize::Zeroizing;

use super::{KeyProvider, ProviderError};
use crate::config::JdCloudSpec;
use crate::secret::{DATA_KEY_LEN, DataKey};

pub mod client;
mod net;
pub mod sign;
#[doc(hidden)]
pub mod wire; // pub for the fuzz targets (fuzz/), not an API

pub use client::RetryPolicy;
use client::{KmsClient, Op};
use wire::Problem;

/// State of a JD Cloud KMS key as DescribeKey reports it (`keyStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// `0`: usable.
    Enabled,
    /// `1`: Encrypt and Decrypt are refused until it is enabled again.
    Disabled,
    /// `2`: scheduled for deletion; refused like a disabled key.
    PendingDeletion,
    /// A status this version does not know.
    Other(i64),
}

impl KeyState {
    fn from_status(status: i64) -> Self {
        match status {
            0 => KeyState::Enabled,
            1 => KeyState::Disabled,
            2 => KeyState::PendingDeletion,
            n => KeyState::Other(n),
        }
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyState::Enabled => f.write_str("enabled"),
            KeyState::Disabled => f.write_str("disabled"),
            KeyState::PendingDeletion => f.write_str("pending deletion"),
            KeyState::Other(n) => write!(f, "unknown status {n}"),
        }
    }
}

/// A JD Cloud KMS key used as a key-encryption key.
pub struct JdCloudProvider {
    kek_id: String,
    key_id: String,
    legacy_ciphertexts: bool,
    client: KmsClient,
}

impl std::fmt::Debug for JdCloudProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JdCloudProvider")
            .field("kek_id", &self.kek_id)
            .field("legacy_ciphertexts", &self.legacy_ciphertexts)
            .field("client", &self.client)
            .finish()
    }
}

impl JdCloudProvider {
    /// Builds the provider with the retry policy of the spec's timeout ([`RetryPolicy::for_timeout`]).
    /// Makes no remote call (that is [`KeyProvider::describe`]'s job); does not need a runtime.
    pub fn new(spec: &JdCloudSpec) -> Result<Self, ProviderError> {
        Self::with_policy(spec, RetryPolicy::for_timeout(spec.timeout))
    }

    /// Builds the provider with an explicit retry policy (tests, benchmarks).
    pub fn with_policy(spec: &JdCloudSpec, policy: RetryPolicy) -> Result<Self, ProviderError> {
        Self::with_env(spec, policy, &|name| std::env::var(name).ok())
    }

    /// Builds the provider reading the proxy variables (`HTTPS_PROXY`, `NO_PROXY`, …) from `env`
    /// instead of the process environment.
    pub(crate) fn with_env(
        spec: &JdCloudSpec,
        policy: RetryPolicy,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ProviderError> {
        let key_id = spec.key_id.trim();
        if key_id.is_empty() || key_id.chars().any(char::is_control) || key_id != spec.key_id {
            return Err(ProviderError::Config(
                "KmsKeyId must be a non-empty key id without spaces around it".into(),
            ));
        }
        if spec.access_key.expose().trim().is_empty() {
            return Err(ProviderError::Config("AccessKey is empty".into()));
        }
        if spec.secret_key.expose().trim().is_empty() {
            return Err(ProviderError::Config("SecretKey is empty".into()));
        }
        if policy.attempt_timeout.is_zero() || policy.deadline.is_zero() {
            return Err(ProviderError::Config("KmsTimeoutMs must be above 0".into()));
        }
        let kek_id = format!("jdcloud-{key_id}");
        if kek_id.len() > 255 {
            return Err(ProviderError::Config(
                format!(
                    "KmsKeyId is {} bytes; the key id in a ciphertext header allows 247",
                    key_id.len()
                )
                .into(),
            ));
        }
        let client = KmsClient::new(
            &spec.schema,
            &spec.endpoint,
            spec.access_key.clone(),
            spec.secret_key.clone(),
            spec.sign_version,
            policy,
            &spec.network,
            env,
        )
        .map_err(|e| ProviderError::Config(e.into()))?;
        tracing::info!(
            key = %kek_id,
            endpoint = %client.base_url(),
            route = %client.route(),
            "jdcloud KMS client ready"
        );
        Ok(Self {
            kek_id,
            key_id: key_id.to_string(),
            legacy_ciphertexts: spec.legacy_ciphertexts,
            client,
        })
    }

    /// The JD Cloud key id (`KmsKeyId`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether this key also reads JD Cloud plugin ciphertexts (`LegacyCiphertexts`).
    pub fn legacy_ciphertexts(&self) -> bool {
        self.legacy_ciphertexts
    }

    /// The retry policy in force.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.client.policy()
    }

    /// The endpoint, the route to it and, over https, the certificate the last TLS handshake saw
    /// (subject, issuer, expiry), in words: what `check` prints after the key's state.
    pub fn connection_line(&self) -> String {
        let mut line = format!("{} {}", self.client.base_url(), self.client.route());
        match self.client.last_tls_peer() {
            Some(Ok(peer)) => line.push_str(&format!("; TLS peer {peer}")),
            Some(Err(e)) => line.push_str(&format!("; TLS peer certificate unreadable: {e}")),
            None => {}
        }
        line
    }

    /// DescribeKey: the key's state.
    pub async fn key_state(&self) -> Result<KeyState, ProviderError> {
        let body = self
            .settle(Op::DescribeKey, Zeroizing::new(Vec::new()))
            .await?;
        let info = wire::describe_result(&body).map_err(|p| self.problem(Op::DescribeKey, p))?;
        Ok(KeyState::from_status(info.key_status))
    }

    /// Decrypts a ciphertextBlob (base64 text) written by JD Cloud's own plugin and returns the raw
    /// plaintext, of any length but never empty (DESIGN §2, legacy form). Errors as for `unwrap`.
    pub async fn decrypt_legacy(
        &self,
        blob_b64: &str,
    ) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        wire::check_blob(blob_b64).map_err(|m| {
            ProviderError::InvalidWrappedKey(format!("jdcloud legacy ciphertext: {m}").into())
        })?;
        self.decrypt(blob_b64).await
    }

    async fn decrypt(&self, blob: &str) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        let body = self
            .settle(Op::Decrypt, wire::decrypt_body(&self.key_id, blob))
            .await?;
        wire::decrypt_result(&body).map_err(|p| self.problem(Op::Decrypt, p))
    }

    /// Runs a call and turns every answer that is not a 2xx into the error kind it stands for; returns the
    /// body of a 2xx.
    async fn settle(
        &self,
        op: Op,
        body: Zeroizing<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        match self.client.call(op, &self.key_id, body).await {
            Ok(answer) if answer.status.is_success() => {
                if answer.attempts > 1 {
                    tracing::info!(
                        op = op.name(),
                        key = %self.kek_id,
                        attempts = answer.attempts,
                        "jdcloud KMS call succeeded after retrying"
                    );
                }
                Ok(answer.body)
            }
            Ok(answer) => Err(self.refusal(op, answer.status, &answer.body)),
            Err(failure) => {
                let attempts = client::attempts_of(&failure);
                let detail = client::describe_failure(&failure);
                tracing::warn!(
                    op = op.name(),
                    key = %self.kek_id,
                    attempts,
                    "jdcloud KMS unavailable: {detail}"
                );
                Err(ProviderError::Unavailable(
                    format!(
                        "jdcloud {} at {} failed after {attempts} attempt(s): {detail}",
                        op.name(),
                        self.client.target()
                    )
                    .into(),
                ))
            }
        }
    }

    /// The error kind of a final non-2xx answer.
    fn refusal(&self, op: Op, status: StatusCode, body: &[u8]) -> ProviderError {
        let remote = wire::error_of(body);
        let what = match &remote {
            Some(e) => format!("HTTP {} {e}", status.as_u16()),
            None => format!("HTTP {}", status.as_u16()),
        };
        let msg = format!("jdcloud {} of key {}: {what}", op.name(), self.key_id);
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                ProviderError::PermissionDenied(msg.into())
            }
            s if s.is_client_error() => {
                if op == Op::Decrypt && remote.as_ref().is_some_and(is_bad_ciphertext) {
                    ProviderError::InvalidWrappedKey(msg.into())
                } else {
                    ProviderError::Refused(msg.into())
                }
            }
            // 1xx/3xx (and anything else not retried): not an answer we can use.
            _ => ProviderError::Unavailable(msg.into()),
        }
    }

    /// The error kind of an unusable 2xx answer.
    fn problem(&self, op: Op, p: Problem) -> ProviderError {
        match p {
            Problem::Garbage(m) | Problem::Empty(m) => ProviderError::Unavailable(
                format!("jdcloud {} of key {}: {m}", op.name(), self.key_id).into(),
            ),
            // An error object inside a 200: classify by the code it carries.
            Problem::Remote(e) => {
                let status = e
                    .code
                    .and_then(|c| u16::try_from(c).ok())
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .filter(|s| s.is_client_error())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                if status.is_client_error() {
                    let body = format!(
                        r#"{{"error":{{"code":{},"status":{},"message":{}}}}}"#,
                        status.as_u16(),
                        serde_json::Value::String(e.status.clone()),
                        serde_json::Value::String(e.message.clone())
                    );
                    self.refusal(op, status, body.as_bytes())
                } else {
                    ProviderError::Unavailable(
                        format!(
                            "jdcloud {} of key {}: error in a success answer: {e}",
                            op.name(),
                            self.key_id
                        )
                        .into(),
                    )
                }
            }
        }
    }
}

/// Whether a 4xx error of a Decrypt says the ciphertext itself is bad (rather than the key or the
/// caller). JD Cloud documents no code for this; its messages name the ciphertext.
fn is_bad_ciphertext(e: &wire::RemoteError) -> bool {
    let text = format!("{} {}", e.status, e.message).to_ascii_lowercase();
    let about_ciphertext = text.contains("cipher") || text.contains("密文");
    let not_key_state =
        !(text.contains("disabled") || text.contains("not found") || text.contains("deletion"));
    e.code.is_none_or(|c| c == 400) && about_ciphertext && not_key_state
}

#[async_trait]
impl KeyProvider for JdCloudProvider {
    fn kek_id(&self) -> &str {
        &self.kek_id
    }

    fn kind(&self) -> &'static str {
        "jdcloud"
    }

    async fn wrap(&self, dk: &DataKey) -> Result<Vec<u8>, ProviderError> {
        let body = self
            .settle(Op::Encrypt, wire::encrypt_body(&self.key_id, dk.as_bytes()))
            .await?;
        let blob = wire::encrypt_result(&body).map_err(|p| self.problem(Op::Encrypt, p))?;
        Ok(blob.into_bytes())
    }

    async fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, ProviderError> {
        let blob = std::str::from_utf8(wrapped).map_err(|_| {
            ProviderError::InvalidWrappedKey("jdcloud wrapped key is not base64 text".into())
        })?;
        wire::check_blob(blob).map_err(|m| {
            ProviderError::InvalidWrappedKey(format!("jdcloud wrapped key: {m}").into())
        })?;
        let plaintext = self.decrypt(blob).await?;
        DataKey::from_slice(&plaintext).ok_or_else(|| {
            ProviderError::Unavailable(format!(
                "jdcloud Decrypt of key {} returned {} bytes, not a {DATA_KEY_LEN}-byte data key",
                self.key_id,
                plaintext.len()
            ).into())
        })
    }

    /// `jdcloud key <id>: <state>`, then how the endpoint was reached: the route (direct, or which proxy
    /// from which setting) and, over https, the certificate the endpoint presented.
    async fn describe(&self) -> Result<String, ProviderError> {
        let state = self.key_state().await?;
        let line = format!(
            "jdcloud key {}: {state}; {}",
            self.key_id,
            self.connection_line()
        );
        match state {
            KeyState::Enabled => Ok(line),
            // A key that cannot seal is a failed check, not a description.
            _ => Err(ProviderError::Refused(line.into())),
        }
    }

    fn probe_interval(&self) -> std::time::Duration {
        REMOTE_PROBE_INTERVAL
    }

    fn legacy_reads(&self) -> bool {
        self.legacy_ciphertexts
    }

    /// JD Cloud's plugin stored the base64-decoded `ciphertextBlob`; KMS Decrypt wants it encoded again.
    async fn open_legacy(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        if !self.legacy_ciphertexts {
            return Err(ProviderError::InvalidWrappedKey(
                format!(
                    "key {} does not read legacy ciphertexts (LegacyCiphertexts is off)",
                    self.key_id
                )
                .into(),
            ));
        }
        self.decrypt_legacy(&wire::b64_encode(blob)).await
    }
}

/// JD Cloud bills and rate-limits calls: the health round trip (two calls) runs once a minute, the rate
/// at which kube-apiserver polls v2 Status.
const REMOTE_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
mod tests;
