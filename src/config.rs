//! The plugin's JSON configuration (DESIGN §5): parsing, defaults and validation.
//!
//! Field names are PascalCase so that the config file of JD Cloud's own plugin works unchanged. Every
//! error names the file and the field at fault. Secrets referenced by path (`SecretKeyFile`) are read here,
//! through [`crate::keyfile`], so permission checks apply to every secret file alike; key files and the
//! `sdf` password file are read, through the same module, when their provider loads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::keyfile;
use crate::secret::SecretString;

/// Default socket path, the one JD Cloud's plugin and its static-pod manifests use.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/k8s-kms-plugin/kms-plugin.sock";
/// `HealthAddr` when the config has none.
pub const DEFAULT_HEALTH_ADDR: &str = "127.0.0.1:8787";
/// `DataKeyMaxUses` default (DESIGN §3).
pub const DEFAULT_DATA_KEY_MAX_USES: u64 = 1 << 20;
/// `DataKeyMaxAgeSeconds` default.
pub const DEFAULT_DATA_KEY_MAX_AGE_SECONDS: u64 = 3600;
/// `DataKeyCacheSize` default.
pub const DEFAULT_DATA_KEY_CACHE_SIZE: usize = 1024;
/// `KmsTimeoutMs` default.
pub const DEFAULT_KMS_TIMEOUT_MS: u64 = 2000;
/// Default size of an `sdf` key's session pool (`SdfSessions`).
pub const DEFAULT_SDF_SESSIONS: u32 = 4;
/// Largest `SdfSessions`: a cipher machine serves many clients, and wrap/unwrap are rare (DESIGN §3).
pub const MAX_SDF_SESSIONS: u32 = 64;

/// A configuration problem, always naming the file and, where there is one, the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: cannot read: {source}")]
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    /// The file is not a valid config.
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// Where the gRPC socket lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec {
    /// A socket file on disk.
    Path(PathBuf),
    /// A Linux abstract socket (`@name` or `unix:///@name`), which has no file.
    Abstract(String),
}

impl std::fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketSpec::Path(p) => write!(f, "{}", p.display()),
            SocketSpec::Abstract(name) => write!(f, "@{name}"),
        }
    }
}

/// A local SM2 key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sm2Spec {
    /// `Sm2PrivateKeyFile`.
    pub private_key_file: PathBuf,
    /// Explicit KEK id; derived from the public key when absent (DESIGN §4).
    pub key_id: Option<String>,
}

/// JD Cloud request-signing scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignVersion {
    /// `JDCLOUD2-HMAC-SHA256`, what JD Cloud's Go SDK sends.
    V2,
    /// `JDCLOUD3-HMAC-SHA256`, what JD Cloud's Python SDK sends today.
    V3,
}

/// A JD Cloud KMS key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JdCloudSpec {
    /// `AccessKey`.
    pub access_key: SecretString,
    /// `SecretKey` (or the contents of `SecretKeyFile`).
    pub secret_key: SecretString,
    /// `host[:port]`, no scheme.
    pub endpoint: String,
    /// `KmsKeyId`.
    pub key_id: String,
    /// `https` or `http`.
    pub schema: String,
    /// `KmsTimeoutMs`.
    pub timeout: Duration,
    /// `KmsSignVersion`.
    pub sign_version: SignVersion,
    /// Also read ciphertexts written by JD Cloud's own plugin (no header).
    pub legacy_ciphertexts: bool,
}

/// An SM2 key-encryption key inside a GM/T 0018 cipher machine, reached through the vendor's SDF library
/// (DESIGN §4, issue 12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdfSpec {
    /// Absolute path of the vendor's SDF shared library.
    pub library: PathBuf,
    /// The device's internal SM2 encryption key pair, 1-based as in GM/T 0018.
    pub key_index: u32,
    /// The file holding the private-key access password (`SdfPinFile`), read with the secret-file rules
    /// when the provider loads, as key files are; `None` when the device needs none.
    pub pin_file: Option<PathBuf>,
    /// Struct layouts, algorithm ids and signatures the library uses.
    pub profile: gm_sdf::Profile,
    /// Session pool size.
    pub sessions: u32,
    /// Explicit KEK id; derived from the device key's public key when absent, exactly as for `sm2`.
    pub key_id: Option<String>,
}

/// One key-encryption key of the keyring, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    /// A local SM2 key file.
    Sm2(Sm2Spec),
    /// A JD Cloud KMS key.
    JdCloud(JdCloudSpec),
    /// A key inside a cipher machine (`Provider: sdf`).
    Sdf(SdfSpec),
}

/// When the current data key is replaced (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataKeyPolicy {
    /// `DataKeyMaxUses`.
    pub max_uses: u64,
    /// `DataKeyMaxAgeSeconds`.
    pub max_age: Duration,
    /// `DataKeyCacheSize`.
    pub cache_size: usize,
}

impl Default for DataKeyPolicy {
    fn default() -> Self {
        Self {
            max_uses: DEFAULT_DATA_KEY_MAX_USES,
            max_age: Duration::from_secs(DEFAULT_DATA_KEY_MAX_AGE_SECONDS),
            cache_size: DEFAULT_DATA_KEY_CACHE_SIZE,
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file this came from (reloads re-read it).
    pub path: PathBuf,
    /// `GRPCSocketPath`.
    pub socket: SocketSpec,
    /// The top-level key: it wraps new data keys.
    pub primary: KeySpec,
    /// `PreviousKeys`: decrypt-only.
    pub previous: Vec<KeySpec>,
    /// `None` when `HealthAddr` is `""`.
    pub health_addr: Option<SocketAddr>,
    /// Data-key reuse and cache.
    pub data_keys: DataKeyPolicy,
    /// What KMS v2 `Status.version` answers.
    pub kms_v2_version: String,
    /// `DebugMode`.
    pub debug: bool,
}

/// Fields that describe one key; accepted at the top level (the primary key) and in `PreviousKeys`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawKey {
    provider: Option<String>,
    sm2_private_key_file: Option<PathBuf>,
    sm2_key_id: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
    secret_key_file: Option<PathBuf>,
    kms_endpoint: Option<String>,
    kms_key_id: Option<String>,
    kms_schema: Option<String>,
    kms_timeout_ms: Option<u64>,
    kms_sign_version: Option<u8>,
    legacy_ciphertexts: Option<bool>,
    // The `Sdf*` fields are JSON values checked by hand: a type error inside this flattened struct would
    // otherwise be reported without the field's name.
    sdf_library: Option<serde_json::Value>,
    sdf_key_index: Option<serde_json::Value>,
    sdf_pin_file: Option<serde_json::Value>,
    sdf_profile: Option<serde_json::Value>,
    sdf_sessions: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawKeyEntry {
    #[serde(flatten)]
    key: RawKey,
    /// Whatever `RawKey` did not claim: each entry here is an unknown field.
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    #[serde(rename = "GRPCSocketPath")]
    grpc_socket_path: Option<String>,
    previous_keys: Option<Vec<RawKeyEntry>>,
    health_addr: Option<String>,
    data_key_max_uses: Option<u64>,
    data_key_max_age_seconds: Option<u64>,
    data_key_cache_size: Option<usize>,
    #[serde(rename = "KmsV2Version")]
    kms_v2_version: Option<String>,
    debug_mode: Option<bool>,
    #[serde(flatten)]
    key: RawKey,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_json::Value>,
}

impl Config {
    /// Reads, parses and validates a config file, including any `SecretKeyFile` it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` names the file in errors and anchors relative key paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            if e.inner().is_syntax() || e.inner().is_eof() {
                invalid(format!("not valid JSON: {}", e.inner()))
            } else if field == "." || field.is_empty() {
                invalid(format!("not a JSON object of config fields: {}", e.inner()))
            } else {
                invalid(format!("field {field}: {}", e.inner()))
            }
        })?;
        de.end()
            .map_err(|e| invalid(format!("trailing data after the JSON object: {e}")))?;
        reject_unknown(&raw.unknown, "").map_err(invalid)?;

        let base = path.parent().unwrap_or(Path::new("."));
        let has_provider_field = raw.key.provider.is_some();
        let primary = key_spec(raw.key, base, "", !has_provider_field).map_err(invalid)?;
        let mut previous = Vec::new();
        for (i, entry) in raw
            .previous_keys
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let at = format!("PreviousKeys[{i}].");
            reject_unknown(&entry.unknown, &at).map_err(invalid)?;
            previous.push(key_spec(entry.key, base, &at, false).map_err(invalid)?);
        }

        let socket = socket_spec(raw.grpc_socket_path.as_deref()).map_err(invalid)?;
        let health_addr = match raw.health_addr.as_deref() {
            None => Some(DEFAULT_HEALTH_ADDR.parse().expect("default address parses")),
            Some("") => None,
            Some(s) => Some(s.parse().map_err(|_| {
                invalid(format!(
                    "field HealthAddr: {s:?} is not an IP:port address (use \"\" to disable)"
                ))
            })?),
        };
        let data_keys = DataKeyPolicy {
            max_uses: positive(
                raw.data_key_max_uses,
                DEFAULT_DATA_KEY_MAX_USES,
                "DataKeyMaxUses",
            )
            .map_err(invalid)?,
            max_age: Duration::from_secs(
                positive(
                    raw.data_key_max_age_seconds,
                    DEFAULT_DATA_KEY_MAX_AGE_SECONDS,
                    "DataKeyMaxAgeSeconds",
                )
                .map_err(invalid)?,
            ),
            cache_size: positive(
                raw.data_key_cache_size.map(|n| n as u64),
                DEFAULT_DATA_KEY_CACHE_SIZE as u64,
                "DataKeyCacheSize",
            )
            .map_err(invalid)? as usize,
        };
        if data_keys.max_uses > crate::cipher::HARD_MAX_USES {
            return Err(invalid(format!(
                "field DataKeyMaxUses: {} is above the hard limit of 2^32 encryptions per data key",
                data_keys.max_uses
            )));
        }
        let kms_v2_version = match raw.kms_v2_version.as_deref() {
            None => "v2".to_string(),
            Some(v @ ("v2" | "v2beta1")) => v.to_string(),
            Some(other) => {
                return Err(invalid(format!(
                    "field KmsV2Version: {other:?} must be \"v2\" or \"v2beta1\""
                )));
            }
        };

        let config = Config {
            path: path.to_path_buf(),
            socket,
            primary,
            previous,
            health_addr,
            data_keys,
            kms_v2_version,
            debug: raw.debug_mode.unwrap_or(false),
        };
        config.check_unique_ids().map_err(invalid)?;
        Ok(config)
    }

    /// Every configured key, primary first.
    pub fn keys(&self) -> impl Iterator<Item = &KeySpec> {
        std::iter::once(&self.primary).chain(self.previous.iter())
    }

    /// Two JD Cloud entries for one key id would be ambiguous in the keyring; SM2 ids are only known once
    /// the key is loaded, so the keyring checks those.
    fn check_unique_ids(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for k in self.keys() {
            if let KeySpec::JdCloud(j) = k
                && !seen.insert(j.key_id.as_str())
            {
                return Err(format!("KmsKeyId {:?} is configured twice", j.key_id));
            }
        }
        Ok(())
    }
}

fn reject_unknown(unknown: &BTreeMap<String, serde_json::Value>, at: &str) -> Result<(), String> {
    match unknown.keys().next() {
        None => Ok(()),
        Some(name) => Err(format!(
            "unknown field {at}{name} (field names are case-sensitive PascalCase, see docs/configuration.md)"
        )),
    }
}

fn positive(v: Option<u64>, default: u64, field: &str) -> Result<u64, String> {
    match v {
        None => Ok(default),
        Some(0) => Err(format!("field {field}: must be greater than 0")),
        Some(n) => Ok(n),
    }
}

fn socket_spec(raw: Option<&str>) -> Result<SocketSpec, String> {
    let s = raw.unwrap_or(DEFAULT_SOCKET_PATH);
    let s = s.strip_prefix("unix://").unwrap_or(s);
    // kube-apiserver writes an abstract socket as `unix:///@name`: the URL path is `/@name`.
    if let Some(name) = s.strip_prefix('@').or_else(|| s.strip_prefix("/@")) {
        if name.is_empty() || name.len() > 107 {
            return Err(
                "field GRPCSocketPath: an abstract socket name must be 1 to 107 bytes".into(),
            );
        }
        return Ok(SocketSpec::Abstract(name.to_string()));
    }
    if s.is_empty() {
        return Err("field GRPCSocketPath: empty".into());
    }
    let p = PathBuf::from(s);
    if !p.is_absolute() {
        return Err(format!(
            "field GRPCSocketPath: {s:?} must be an absolute path (kube-apiserver dials it as written)"
        ));
    }
    // sun_path holds 108 bytes including the terminating NUL.
    if s.len() > 107 {
        return Err(format!(
            "field GRPCSocketPath: {s:?} is longer than the 107 bytes a unix socket path may have"
        ));
    }
    Ok(SocketSpec::Path(p))
}

fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { base.join(p) }
}

/// Decides the provider of one key entry (DESIGN §5) and validates its fields.
///
/// `legacy_default` is true only for the primary key of a file without `Provider`: that is JD Cloud's plugin
/// config as it is, whose existing ciphertexts we must keep reading.
fn key_spec(raw: RawKey, base: &Path, at: &str, legacy_default: bool) -> Result<KeySpec, String> {
    let provider = match raw.provider.as_deref() {
        Some(p) => p.to_string(),
        None if raw.kms_key_id.is_some() => "jdcloud".into(),
        None if raw.sm2_private_key_file.is_some() => "sm2".into(),
        None => {
            return Err(format!(
                "{at}Provider is missing and cannot be inferred: set Provider, or Sm2PrivateKeyFile (sm2), or KmsKeyId (jdcloud); an sdf key needs \"Provider\": \"sdf\""
            ));
        }
    };
    let stray = |fields: &[(&str, bool)], provider: &str| -> Result<(), String> {
        match fields.iter().find(|(_, present)| *present) {
            Some((name, _)) => Err(format!(
                "field {at}{name} does not apply to Provider {provider:?}"
            )),
            None => Ok(()),
        }
    };
    match provider.as_str() {
        "sm2" => {
            stray(
                &[
                    ("AccessKey", raw.access_key.is_some()),
                    ("SecretKey", raw.secret_key.is_some()),
                    ("SecretKeyFile", raw.secret_key_file.is_some()),
                    ("KmsEndpoint", raw.kms_endpoint.is_some()),
                    ("KmsKeyId", raw.kms_key_id.is_some()),
                    ("KmsSchema", raw.kms_schema.is_some()),
                    ("KmsTimeoutMs", raw.kms_timeout_ms.is_some()),
                    ("KmsSignVersion", raw.kms_sign_version.is_some()),
                    ("LegacyCiphertexts", raw.legacy_ciphertexts.is_some()),
                    ("SdfLibrary", raw.sdf_library.is_some()),
                    ("SdfKeyIndex", raw.sdf_key_index.is_some()),
                    ("SdfPinFile", raw.sdf_pin_file.is_some()),
                    ("SdfProfile", raw.sdf_profile.is_some()),
                    ("SdfSessions", raw.sdf_sessions.is_some()),
                ],
                "sm2",
            )?;
            let file = raw.sm2_private_key_file.ok_or_else(|| {
                format!("field {at}Sm2PrivateKeyFile is required for Provider \"sm2\"")
            })?;
            if let Some(id) = &raw.sm2_key_id {
                validate_key_id(id).map_err(|e| format!("field {at}Sm2KeyId: {e}"))?;
            }
            Ok(KeySpec::Sm2(Sm2Spec {
                private_key_file: resolve(base, file),
                key_id: raw.sm2_key_id,
            }))
        }
        "jdcloud" => {
            stray(
                &[
                    ("Sm2PrivateKeyFile", raw.sm2_private_key_file.is_some()),
                    ("Sm2KeyId", raw.sm2_key_id.is_some()),
                    ("SdfLibrary", raw.sdf_library.is_some()),
                    ("SdfKeyIndex", raw.sdf_key_index.is_some()),
                    ("SdfPinFile", raw.sdf_pin_file.is_some()),
                    ("SdfProfile", raw.sdf_profile.is_some()),
                    ("SdfSessions", raw.sdf_sessions.is_some()),
                ],
                "jdcloud",
            )?;
            let need = |v: Option<String>, name: &str| {
                v.filter(|s| !s.is_empty())
                    .ok_or_else(|| format!("field {at}{name} is required for Provider \"jdcloud\""))
            };
            let access_key = need(raw.access_key, "AccessKey")?;
            let secret_key = match (raw.secret_key, raw.secret_key_file) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "fields {at}SecretKey and {at}SecretKeyFile are both set; keep one"
                    ));
                }
                (Some(s), None) if !s.is_empty() => s,
                (None, Some(f)) => {
                    let f = resolve(base, f);
                    let bytes = keyfile::read_secret_file(&f)
                        .map_err(|e| format!("field {at}SecretKeyFile: {e}"))?;
                    let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                        format!("field {at}SecretKeyFile: {} is not UTF-8 text", f.display())
                    })?;
                    let trimmed = text.trim();
                    if trimmed.is_empty() {
                        return Err(format!("field {at}SecretKeyFile: {} is empty", f.display()));
                    }
                    trimmed.to_string()
                }
                _ => {
                    return Err(format!(
                        "field {at}SecretKey (or {at}SecretKeyFile) is required for Provider \"jdcloud\""
                    ));
                }
            };
            let endpoint = need(raw.kms_endpoint, "KmsEndpoint")?;
            if endpoint.contains("://") || endpoint.contains('/') {
                return Err(format!(
                    "field {at}KmsEndpoint: {endpoint:?} must be host[:port] only; the scheme goes in KmsSchema"
                ));
            }
            let key_id = need(raw.kms_key_id, "KmsKeyId")?;
            validate_key_id(&format!("jdcloud-{key_id}"))
                .map_err(|e| format!("field {at}KmsKeyId: {e}"))?;
            let schema = match raw.kms_schema.as_deref() {
                None | Some("") => "https".to_string(),
                Some(s @ ("https" | "http")) => s.to_string(),
                Some(other) => {
                    return Err(format!(
                        "field {at}KmsSchema: {other:?} must be \"https\" or \"http\""
                    ));
                }
            };
            let timeout_ms = raw.kms_timeout_ms.unwrap_or(DEFAULT_KMS_TIMEOUT_MS);
            if timeout_ms == 0 || timeout_ms > 60_000 {
                return Err(format!(
                    "field {at}KmsTimeoutMs: {timeout_ms} must be between 1 and 60000"
                ));
            }
            let sign_version = match raw.kms_sign_version {
                None | Some(3) => SignVersion::V3,
                Some(2) => SignVersion::V2,
                Some(other) => {
                    return Err(format!("field {at}KmsSignVersion: {other} must be 2 or 3"));
                }
            };
            Ok(KeySpec::JdCloud(JdCloudSpec {
                access_key: SecretString::new(access_key),
                secret_key: SecretString::new(secret_key),
                endpoint,
                key_id,
                schema,
                timeout: Duration::from_millis(timeout_ms),
                sign_version,
                legacy_ciphertexts: raw.legacy_ciphertexts.unwrap_or(legacy_default),
            }))
        }
        "sdf" => {
            stray(
                &[
                    ("Sm2PrivateKeyFile", raw.sm2_private_key_file.is_some()),
                    ("AccessKey", raw.access_key.is_some()),
                    ("SecretKey", raw.secret_key.is_some()),
                    ("SecretKeyFile", raw.secret_key_file.is_some()),
                    ("KmsEndpoint", raw.kms_endpoint.is_some()),
                    ("KmsKeyId", raw.kms_key_id.is_some()),
                    ("KmsSchema", raw.kms_schema.is_some()),
                    ("KmsTimeoutMs", raw.kms_timeout_ms.is_some()),
                    ("KmsSignVersion", raw.kms_sign_version.is_some()),
                    ("LegacyCiphertexts", raw.legacy_ciphertexts.is_some()),
                ],
                "sdf",
            )?;
            sdf_spec(raw, base, at).map(KeySpec::Sdf)
        }
        other => Err(format!(
            "field {at}Provider: {other:?} is not a provider; use \"sm2\", \"jdcloud\" or \"sdf\""
        )),
    }
}

/// The fields of an `sdf` key (DESIGN §5).
fn sdf_spec(raw: RawKey, base: &Path, at: &str) -> Result<SdfSpec, String> {
    let string = |v: &serde_json::Value, field: &str| -> Result<String, String> {
        match v.as_str() {
            Some(s) if !s.is_empty() => Ok(s.to_owned()),
            _ => Err(format!("field {at}{field}: {v} is not a non-empty string")),
        }
    };
    let library = PathBuf::from(string(
        raw.sdf_library
            .as_ref()
            .ok_or_else(|| format!("field {at}SdfLibrary is required for Provider \"sdf\""))?,
        "SdfLibrary",
    )?);
    // Absolute only: the loader would otherwise search LD_LIBRARY_PATH and the system directories, and
    // which vendor code runs inside the plugin must not depend on the environment.
    if !library.is_absolute() {
        return Err(format!(
            "field {at}SdfLibrary: {:?} must be an absolute path (the vendor library is loaded from exactly there)",
            library.display().to_string()
        ));
    }
    let key_index = match &raw.sdf_key_index {
        None => {
            return Err(format!(
                "field {at}SdfKeyIndex is required for Provider \"sdf\""
            ));
        }
        Some(v) => bounded_u32(v, 1, u32::MAX).map_err(|e| {
            format!("field {at}SdfKeyIndex: {e} (the device's internal SM2 key pair, 1-based)")
        })?,
    };
    let sessions = match &raw.sdf_sessions {
        None => DEFAULT_SDF_SESSIONS,
        Some(v) => bounded_u32(v, 1, MAX_SDF_SESSIONS)
            .map_err(|e| format!("field {at}SdfSessions: {e}"))?,
    };
    let profile = match &raw.sdf_profile {
        None => gm_sdf::Profile::default(),
        Some(v) => string(v, "SdfProfile")?
            .parse::<gm_sdf::Profile>()
            .map_err(|e| format!("field {at}SdfProfile: {e}"))?,
    };
    let pin_file = match &raw.sdf_pin_file {
        None => None,
        Some(v) => Some(resolve(base, PathBuf::from(string(v, "SdfPinFile")?))),
    };
    if let Some(id) = &raw.sm2_key_id {
        validate_key_id(id).map_err(|e| format!("field {at}Sm2KeyId: {e}"))?;
    }
    Ok(SdfSpec {
        library,
        key_index,
        pin_file,
        profile,
        sessions,
        key_id: raw.sm2_key_id,
    })
}

/// A JSON integer in `min..=max`.
fn bounded_u32(v: &serde_json::Value, min: u32, max: u32) -> Result<u32, String> {
    let n = v
        .as_u64()
        .ok_or_else(|| format!("{v} is not a whole number from {min} to {max}"))?;
    u32::try_from(n)
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("{n} is not from {min} to {max}"))
}

/// A KEK id is stored in a 1-byte length field and sent to kube-apiserver as `key_id`.
pub fn validate_key_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 255 {
        return Err(format!("key id must be 1 to 255 bytes, got {}", id.len()));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("key id must not contain whitespace or control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/gm-kms/config.json")).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_sm2_config_gets_defaults() {
        let c = parse(r#"{"Sm2PrivateKeyFile": "keys/k.pem"}"#).unwrap();
        assert_eq!(c.socket, SocketSpec::Path(DEFAULT_SOCKET_PATH.into()));
        assert_eq!(
            c.primary,
            KeySpec::Sm2(Sm2Spec {
                private_key_file: "/etc/gm-kms/keys/k.pem".into(),
                key_id: None
            })
        );
        assert_eq!(c.health_addr, Some("127.0.0.1:8787".parse().unwrap()));
        assert_eq!(c.data_keys, DataKeyPolicy::default());
        assert_eq!(c.kms_v2_version, "v2");
    }

    #[test]
    fn jd_cloud_seed_config_is_accepted_with_legacy_reads() {
        let c = parse(
            r#"{"AccessKey": "ak", "SecretKey": "sk", "KmsEndpoint": "kms.internal.cn-north-1.jdcloud-api.com",
                "KmsKeyId": "key-1", "KmsSchema": "http", "GRPCSocketPath": "/var/run/k8s-kms-plugin/kms-plugin.sock"}"#,
        )
        .unwrap();
        let KeySpec::JdCloud(j) = &c.primary else {
            panic!("expected jdcloud")
        };
        assert_eq!(j.schema, "http");
        assert!(j.legacy_ciphertexts);
        assert_eq!(j.sign_version, SignVersion::V3);
        assert_eq!(j.secret_key.expose(), "sk");
        // With an explicit Provider the legacy default is off.
        let c = parse(
            r#"{"Provider": "jdcloud", "AccessKey": "ak", "SecretKey": "sk", "KmsEndpoint": "h", "KmsKeyId": "k"}"#,
        )
        .unwrap();
        let KeySpec::JdCloud(j) = &c.primary else {
            panic!("expected jdcloud")
        };
        assert!(!j.legacy_ciphertexts);
        assert_eq!(j.schema, "https");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse(r#"{"Sm2PrivateKeyFile": "k.pem", "SocketPath": "/x"}"#).unwrap_err();
        assert!(e.contains("unknown field SocketPath"), "{e}");
        assert!(e.contains("/etc/gm-kms/config.json"), "{e}");
        let e = parse(
            r#"{"Sm2PrivateKeyFile": "k.pem", "PreviousKeys": [{"Sm2PrivateKeyFile": "o.pem", "Colour": 1}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("unknown field PreviousKeys[0].Colour"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_name_the_field() {
        let e = parse(r#"{"Sm2PrivateKeyFile": "k.pem", "DataKeyMaxUses": "many"}"#).unwrap_err();
        assert!(e.contains("DataKeyMaxUses"), "{e}");
        let e = parse(r#"{"Sm2PrivateKeyFile": "k.pem", "DataKeyMaxUses": 0}"#).unwrap_err();
        assert!(e.contains("DataKeyMaxUses"), "{e}");
        let e = parse(r#"{"Sm2PrivateKeyFile": "k.pem", "KmsV2Version": "v3"}"#).unwrap_err();
        assert!(e.contains("KmsV2Version"), "{e}");
        let e = parse(r#"{"Sm2PrivateKeyFile": "k.pem", "HealthAddr": "nope"}"#).unwrap_err();
        assert!(e.contains("HealthAddr"), "{e}");
        let e = parse(r#"{"Provider": "vault"}"#).unwrap_err();
        assert!(e.contains("Provider"), "{e}");
        let e = parse(r#"{"Provider": "sm2"}"#).unwrap_err();
        assert!(e.contains("Sm2PrivateKeyFile"), "{e}");
        let e = parse(r#"{"Sm2PrivateKeyFile": "k.pem", "KmsSchema": "http"}"#).unwrap_err();
        assert!(e.contains("KmsSchema"), "{e}");
        let e =
            parse(r#"{"Sm2PrivateKeyFile": "k.pem", "GRPCSocketPath": "rel.sock"}"#).unwrap_err();
        assert!(e.contains("GRPCSocketPath"), "{e}");
        let e = parse(r#"{"KmsKeyId": "k", "AccessKey": "a", "SecretKey": "s"}"#).unwrap_err();
        assert!(e.contains("KmsEndpoint"), "{e}");
    }

    #[test]
    fn bad_json_is_reported_with_the_file() {
        let e = parse(r#"{"Sm2PrivateKeyFile": "#).unwrap_err();
        assert!(e.contains("/etc/gm-kms/config.json"), "{e}");
        let e = parse(r#"{"Sm2PrivateKeyFile": "k.pem"} {}"#).unwrap_err();
        assert!(e.contains("trailing"), "{e}");
    }

    #[test]
    fn socket_forms() {
        assert_eq!(
            socket_spec(Some("unix:///run/k.sock")).unwrap(),
            SocketSpec::Path("/run/k.sock".into())
        );
        assert_eq!(
            socket_spec(Some("@kms")).unwrap(),
            SocketSpec::Abstract("kms".into())
        );
        assert_eq!(
            socket_spec(Some("unix:///@kms")).unwrap(),
            SocketSpec::Abstract("kms".into())
        );
        assert!(socket_spec(Some("@")).is_err());
        assert!(socket_spec(Some(&format!("/{}", "a".repeat(120)))).is_err());
    }

    #[test]
    fn health_addr_can_be_disabled() {
        let c = parse(r#"{"Sm2PrivateKeyFile": "k.pem", "HealthAddr": ""}"#).unwrap();
        assert_eq!(c.health_addr, None);
    }

    #[test]
    fn previous_keys_infer_their_provider() {
        let c = parse(
            r#"{"Sm2PrivateKeyFile": "new.pem", "PreviousKeys": [{"Sm2PrivateKeyFile": "/k/old.pem", "Sm2KeyId": "old"},
                {"KmsKeyId": "jd", "AccessKey": "a", "SecretKey": "s", "KmsEndpoint": "h", "LegacyCiphertexts": true}]}"#,
        )
        .unwrap();
        assert_eq!(c.previous.len(), 2);
        assert!(matches!(&c.previous[0], KeySpec::Sm2(s) if s.key_id.as_deref() == Some("old")));
        assert!(matches!(&c.previous[1], KeySpec::JdCloud(j) if j.legacy_ciphertexts));
    }

    const SDF: &str = r#""Provider": "sdf", "SdfLibrary": "/opt/vendor/libsdf.so""#;

    fn sdf(extra: &str) -> Result<SdfSpec, String> {
        let c = parse(&format!("{{{SDF}{extra}}}"))?;
        match c.primary {
            KeySpec::Sdf(s) => Ok(s),
            other => panic!("expected sdf, got {other:?}"),
        }
    }

    #[test]
    fn sdf_minimal_config_gets_defaults() {
        let s = sdf(r#", "SdfKeyIndex": 1"#).unwrap();
        assert_eq!(
            s,
            SdfSpec {
                library: "/opt/vendor/libsdf.so".into(),
                key_index: 1,
                pin_file: None,
                profile: gm_sdf::Profile::Gmt0018_2012,
                sessions: DEFAULT_SDF_SESSIONS,
                key_id: None,
            }
        );
    }

    #[test]
    fn sdf_all_fields() {
        let s = sdf(
            r#", "SdfKeyIndex": 7, "SdfPinFile": "keys/pin", "SdfProfile": "sansec", "SdfSessions": 64,
                "Sm2KeyId": "hsm-2026""#,
        )
        .unwrap();
        assert_eq!(s.key_index, 7);
        // Relative to the config file, as key files are; read when the provider loads.
        assert_eq!(
            s.pin_file.as_deref(),
            Some(Path::new("/etc/gm-kms/keys/pin"))
        );
        assert_eq!(s.profile, gm_sdf::Profile::Sansec);
        assert_eq!(s.sessions, 64);
        assert_eq!(s.key_id.as_deref(), Some("hsm-2026"));
        let s = sdf(r#", "SdfKeyIndex": 2, "SdfProfile": "gmt0018-2023""#).unwrap();
        assert_eq!(s.profile, gm_sdf::Profile::Gmt0018_2023);
        assert_eq!(s.sessions, DEFAULT_SDF_SESSIONS);
    }

    #[test]
    fn sdf_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("", "SdfKeyIndex"),
            (r#", "SdfKeyIndex": 0"#, "SdfKeyIndex"),
            (r#", "SdfKeyIndex": -1"#, "SdfKeyIndex"),
            (r#", "SdfKeyIndex": 1.5"#, "SdfKeyIndex"),
            (r#", "SdfKeyIndex": "1""#, "SdfKeyIndex"),
            (r#", "SdfKeyIndex": 4294967296"#, "SdfKeyIndex"),
            (r#", "SdfKeyIndex": 1, "SdfSessions": 0"#, "SdfSessions"),
            (r#", "SdfKeyIndex": 1, "SdfSessions": 65"#, "SdfSessions"),
            (r#", "SdfKeyIndex": 1, "SdfSessions": "4""#, "SdfSessions"),
            (
                r#", "SdfKeyIndex": 1, "SdfProfile": "GMT0018-2012""#,
                "SdfProfile",
            ),
            (r#", "SdfKeyIndex": 1, "SdfProfile": 2012"#, "SdfProfile"),
            (r#", "SdfKeyIndex": 1, "SdfPinFile": """#, "SdfPinFile"),
            (
                r#", "SdfKeyIndex": 1, "SdfLibrary": ["/x.so"]"#,
                "SdfLibrary",
            ),
            (r#", "SdfKeyIndex": 1, "SdfPinFile": 7"#, "SdfPinFile"),
            (r#", "SdfKeyIndex": 1, "Sm2KeyId": "a b""#, "Sm2KeyId"),
            (
                r#", "SdfKeyIndex": 1, "Sm2PrivateKeyFile": "k.pem""#,
                "Sm2PrivateKeyFile",
            ),
            (r#", "SdfKeyIndex": 1, "KmsKeyId": "k""#, "KmsKeyId"),
            (r#", "SdfKeyIndex": 1, "SdfLibary": "/x""#, "SdfLibary"),
        ];
        for (extra, field) in cases {
            let e = sdf(extra).unwrap_err();
            assert!(e.contains(field), "{extra}: {e}");
            assert!(e.contains("/etc/gm-kms/config.json"), "{e}");
        }
        let e = parse(r#"{"Provider": "sdf", "SdfKeyIndex": 1}"#).unwrap_err();
        assert!(e.contains("field SdfLibrary is required"), "{e}");
        let e = parse(r#"{"Provider": "sdf", "SdfLibrary": "libsdf.so", "SdfKeyIndex": 1}"#)
            .unwrap_err();
        assert!(
            e.contains("field SdfLibrary") && e.contains("absolute"),
            "{e}"
        );
        // Sdf fields on other providers.
        let e = parse(r#"{"Sm2PrivateKeyFile": "k.pem", "SdfKeyIndex": 1}"#).unwrap_err();
        assert!(e.contains("SdfKeyIndex does not apply"), "{e}");
        let e = parse(
            r#"{"KmsKeyId": "k", "AccessKey": "a", "SecretKey": "s", "KmsEndpoint": "h", "SdfLibrary": "/x"}"#,
        )
        .unwrap_err();
        assert!(e.contains("SdfLibrary does not apply"), "{e}");
        // No inference: an sdf key says so.
        let e = parse(r#"{"SdfLibrary": "/x.so", "SdfKeyIndex": 1}"#).unwrap_err();
        assert!(e.contains("\"Provider\": \"sdf\""), "{e}");
    }

    #[test]
    fn sdf_keys_in_previous_keys() {
        let c = parse(
            r#"{"Sm2PrivateKeyFile": "new.pem", "PreviousKeys": [
                {"Provider": "sdf", "SdfLibrary": "/opt/v/libsdf.so", "SdfKeyIndex": 3, "SdfSessions": 2}]}"#,
        )
        .unwrap();
        assert!(matches!(&c.previous[0], KeySpec::Sdf(s) if s.key_index == 3 && s.sessions == 2));
        let e = parse(
            r#"{"Sm2PrivateKeyFile": "new.pem", "PreviousKeys": [
                {"Provider": "sdf", "SdfLibrary": "/opt/v/libsdf.so", "SdfKeyIndex": 0}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("field PreviousKeys[0].SdfKeyIndex"), "{e}");
        let e = parse(
            r#"{"Sm2PrivateKeyFile": "new.pem", "PreviousKeys": [
                {"Provider": "sdf", "SdfLibrary": "/opt/v/libsdf.so", "SdfKeyIndex": 1, "SdfPin": "x"}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("unknown field PreviousKeys[0].SdfPin"), "{e}");
    }

    #[test]
    fn debug_output_hides_credentials() {
        let c = parse(
            r#"{"AccessKey": "AKID-visible-nowhere", "SecretKey": "SK-visible-nowhere", "KmsEndpoint": "h", "KmsKeyId": "k"}"#,
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("visible-nowhere"), "{shown}");
    }
}
