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
    #[error("config file {path}: cannot read: {cause}")]
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why (named in the message, so not a `source()`: the rule of crate::error).
        cause: std::io::Error,
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
    /// How the endpoint is reached: proxy and TLS trust (`KmsProxy`, `KmsCaFile`, …).
    pub network: KmsNetwork,
}

/// How a JD Cloud key reaches its endpoint (issue 15). The default is what a config without these fields
/// gets: the proxy environment variables decide, the system's (else Mozilla's) roots are trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KmsNetwork {
    /// `KmsProxy` (and its credentials); `None`: `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` decide.
    pub proxy: Option<ProxySpec>,
    /// `KmsCaFile`: a PEM bundle of extra roots, read when the provider loads.
    pub ca_file: Option<PathBuf>,
    /// `KmsCaFileOnly`: trust only `KmsCaFile`'s roots.
    pub ca_file_only: bool,
}

/// An explicit HTTP forward proxy (`KmsProxy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySpec {
    /// `http://host:port`, without credentials.
    pub url: String,
    /// From `KmsProxyCredentialsFile`, for HTTP Basic proxy authentication.
    pub credentials: Option<ProxyCredentials>,
}

/// A proxy user and password (`KmsProxyCredentialsFile`, `user:password`); never printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyCredentials {
    /// The user name.
    pub user: SecretString,
    /// The password.
    pub password: SecretString,
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
    /// `LogLevel`: the serving plugin's log level, ahead of `DebugMode`; a reload applies it at once.
    pub log_level: Option<LogLevel>,
    /// `AllowedPeerUids`: the uids whose connections the KMS socket serves (`SO_PEERCRED`), sorted,
    /// without duplicates; by default root and the plugin's own (effective) uid. A reload applies it to
    /// new connections.
    pub allowed_peer_uids: Vec<u32>,
}

/// A log level (`LogLevel` in the config, `--log-level` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Nothing at all.
    Off,
    /// Failures only.
    Error,
    /// Failures and what may become one.
    Warn,
    /// What the plugin does (start, reloads, rotations, failed calls); the default for `serve`.
    Info,
    /// Also each step, for finding a fault (never secrets).
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The accepted spellings, in order of verbosity.
    pub const NAMES: [&'static str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

    /// Parses one of [`LogLevel::NAMES`].
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            other => {
                return Err(format!(
                    "{other:?} is not a log level (one of {})",
                    Self::NAMES.join(", ")
                ));
            }
        })
    }

    /// The level's name, as [`LogLevel::parse`] reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Values of the example configs (deploy/) that must be replaced: a field still holding one is refused,
/// by name, before anything else happens (no remote call with a placeholder credential).
pub const PLACEHOLDER_PREFIX: &str = "REPLACE-WITH-";

/// Fields that describe one key; accepted at the top level (the primary key) and in `PreviousKeys`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", expecting = "a JSON object of key fields")]
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
    // The network fields of a jdcloud key, checked by hand (named in type errors) as the `Sdf*` ones.
    kms_proxy: Option<serde_json::Value>,
    kms_proxy_credentials_file: Option<serde_json::Value>,
    kms_ca_file: Option<serde_json::Value>,
    kms_ca_file_only: Option<serde_json::Value>,
    // The `Sdf*` fields are JSON values checked by hand: a type error inside this flattened struct would
    // otherwise be reported without the field's name.
    sdf_library: Option<serde_json::Value>,
    sdf_key_index: Option<serde_json::Value>,
    sdf_pin_file: Option<serde_json::Value>,
    sdf_profile: Option<serde_json::Value>,
    sdf_sessions: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object of key fields")]
struct RawKeyEntry {
    #[serde(flatten)]
    key: RawKey,
    /// Whatever `RawKey` did not claim: each entry here is an unknown field.
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(
    rename_all = "PascalCase",
    expecting = "a JSON object of config fields"
)]
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
    log_level: Option<String>,
    allowed_peer_uids: Option<Vec<u32>>,
    #[serde(flatten)]
    key: RawKey,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_json::Value>,
}

impl Config {
    /// Reads, parses and validates a config file, including any `SecretKeyFile` it names.
    ///
    /// A FIFO or device at the path fails at once. A file that holds an inline `SecretKey` must itself
    /// pass the secret-file rule of [`crate::keyfile`] (as `SecretKeyFile` would), else it is refused.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = keyfile::read_regular_file(path, MAX_CONFIG_FILE, "config file").map_err(
            |e| match e {
                keyfile::KeyFileError::Io { cause, .. } => ConfigError::Read {
                    path: path.to_path_buf(),
                    cause,
                },
                other => ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: other.to_string(),
                },
            },
        )?;
        let text = std::str::from_utf8(file.bytes()).map_err(|_| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: "not UTF-8 text".into(),
        })?;
        let config = Self::parse(text, path)?;
        if let Some(field) = inline_secret_field(text) {
            file.check_secret_rule().map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "field {field} is inline, so this file must pass the secret-file rule (or move \
                     the secret to SecretKeyFile): {e}"
                ),
            })?;
        }
        Ok(config)
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
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
            reject_placeholders(&value, "").map_err(invalid)?;
        }
        let log_level = raw
            .log_level
            .as_deref()
            .map(LogLevel::parse)
            .transpose()
            .map_err(|e| invalid(format!("field LogLevel: {e}")))?;

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
        let allowed_peer_uids = allowed_peer_uids(raw.allowed_peer_uids).map_err(invalid)?;

        let config = Config {
            path: path.to_path_buf(),
            socket,
            primary,
            previous,
            health_addr,
            data_keys,
            kms_v2_version,
            debug: raw.debug_mode.unwrap_or(false),
            log_level,
            allowed_peer_uids,
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

/// Largest config file read: a few keys' fields; anything larger is a wrong path.
const MAX_CONFIG_FILE: u64 = 1 << 20;

/// The first inline `SecretKey` of a config text (`SecretKey` or `PreviousKeys[i].SecretKey`), found
/// without copying its value.
fn inline_secret_field(text: &str) -> Option<String> {
    use serde::de::IgnoredAny;
    #[derive(Deserialize)]
    struct Key {
        #[serde(rename = "SecretKey")]
        secret_key: Option<IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct Top {
        #[serde(rename = "SecretKey")]
        secret_key: Option<IgnoredAny>,
        #[serde(rename = "PreviousKeys")]
        previous_keys: Option<Vec<Key>>,
    }
    let top: Top = serde_json::from_str(text).ok()?;
    if top.secret_key.is_some() {
        return Some("SecretKey".into());
    }
    top.previous_keys?
        .iter()
        .position(|k| k.secret_key.is_some())
        .map(|i| format!("PreviousKeys[{i}].SecretKey"))
}

/// Refuses a string value that is still an example's placeholder, naming its field (not its value).
fn reject_placeholders(value: &serde_json::Value, at: &str) -> Result<(), String> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.starts_with(PLACEHOLDER_PREFIX) => Err(format!(
            "field {at} still holds the example's placeholder {PLACEHOLDER_PREFIX}…; put the real value in"
        )),
        Value::Object(fields) => fields.iter().try_for_each(|(name, v)| {
            let dot = if at.is_empty() { "" } else { "." };
            reject_placeholders(v, &format!("{at}{dot}{name}"))
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| reject_placeholders(v, &format!("{at}[{i}]"))),
        _ => Ok(()),
    }
}

/// `AllowedPeerUids`, or its default: root (kube-apiserver) and the plugin's own uid.
fn allowed_peer_uids(raw: Option<Vec<u32>>) -> Result<Vec<u32>, String> {
    let mut uids = raw.unwrap_or_else(|| vec![0, keyfile::own_uid()]);
    if uids.is_empty() {
        return Err(
            "field AllowedPeerUids: empty, so no process could use the KMS socket; list kube-apiserver's \
             uid (0 when it runs as root), or leave the field out for [0, the plugin's uid]"
                .into(),
        );
    }
    uids.sort_unstable();
    uids.dedup();
    Ok(uids)
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
    // Which provider each provider-specific field belongs to: one table, so a field added for one provider
    // is refused on the others without touching their code.
    const SM2: &[&str] = &["sm2"];
    const SM2_KEYS: &[&str] = &["sm2", "sdf"];
    const JD: &[&str] = &["jdcloud"];
    const SDF: &[&str] = &["sdf"];
    let owned: [(&str, bool, &[&str]); 20] = [
        ("Sm2PrivateKeyFile", raw.sm2_private_key_file.is_some(), SM2),
        ("Sm2KeyId", raw.sm2_key_id.is_some(), SM2_KEYS),
        ("AccessKey", raw.access_key.is_some(), JD),
        ("SecretKey", raw.secret_key.is_some(), JD),
        ("SecretKeyFile", raw.secret_key_file.is_some(), JD),
        ("KmsEndpoint", raw.kms_endpoint.is_some(), JD),
        ("KmsKeyId", raw.kms_key_id.is_some(), JD),
        ("KmsSchema", raw.kms_schema.is_some(), JD),
        ("KmsTimeoutMs", raw.kms_timeout_ms.is_some(), JD),
        ("KmsSignVersion", raw.kms_sign_version.is_some(), JD),
        ("LegacyCiphertexts", raw.legacy_ciphertexts.is_some(), JD),
        ("KmsProxy", raw.kms_proxy.is_some(), JD),
        (
            "KmsProxyCredentialsFile",
            raw.kms_proxy_credentials_file.is_some(),
            JD,
        ),
        ("KmsCaFile", raw.kms_ca_file.is_some(), JD),
        ("KmsCaFileOnly", raw.kms_ca_file_only.is_some(), JD),
        ("SdfLibrary", raw.sdf_library.is_some(), SDF),
        ("SdfKeyIndex", raw.sdf_key_index.is_some(), SDF),
        ("SdfPinFile", raw.sdf_pin_file.is_some(), SDF),
        ("SdfProfile", raw.sdf_profile.is_some(), SDF),
        ("SdfSessions", raw.sdf_sessions.is_some(), SDF),
    ];
    let stray = |provider: &str| -> Result<(), String> {
        match owned
            .iter()
            .find(|(_, set, owners)| *set && !owners.contains(&provider))
        {
            Some((name, ..)) => Err(format!(
                "field {at}{name} does not apply to Provider {provider:?}"
            )),
            None => Ok(()),
        }
    };
    match provider.as_str() {
        "sm2" => {
            stray("sm2")?;
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
            stray("jdcloud")?;
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
            let network = kms_network(
                raw.kms_proxy,
                raw.kms_proxy_credentials_file,
                raw.kms_ca_file,
                raw.kms_ca_file_only,
                &schema,
                base,
                at,
            )?;
            Ok(KeySpec::JdCloud(JdCloudSpec {
                access_key: SecretString::new(access_key),
                secret_key: SecretString::new(secret_key),
                endpoint,
                key_id,
                schema,
                timeout: Duration::from_millis(timeout_ms),
                sign_version,
                legacy_ciphertexts: raw.legacy_ciphertexts.unwrap_or(legacy_default),
                network,
            }))
        }
        "sdf" => {
            stray("sdf")?;
            sdf_spec(raw, base, at).map(KeySpec::Sdf)
        }
        other => Err(format!(
            "field {at}Provider: {other:?} is not a provider; use \"sm2\", \"jdcloud\" or \"sdf\""
        )),
    }
}

/// The network fields of a `jdcloud` key (issue 15): `KmsProxy` (`http://host:port`; credentials only
/// from the secret file `KmsProxyCredentialsFile`, `user:password`), `KmsCaFile`, `KmsCaFileOnly`.
fn kms_network(
    proxy: Option<serde_json::Value>,
    credentials_file: Option<serde_json::Value>,
    ca_file: Option<serde_json::Value>,
    ca_file_only: Option<serde_json::Value>,
    schema: &str,
    base: &Path,
    at: &str,
) -> Result<KmsNetwork, String> {
    let string = |v: Option<serde_json::Value>, field: &str| -> Result<Option<String>, String> {
        match v {
            None => Ok(None),
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            // The value is not echoed: it might be a proxy URL with a password in it.
            Some(_) => Err(format!("field {at}{field}: must be a non-empty string")),
        }
    };
    let proxy = string(proxy, "KmsProxy")?;
    let credentials_file = string(credentials_file, "KmsProxyCredentialsFile")?.map(PathBuf::from);
    let ca_file = string(ca_file, "KmsCaFile")?.map(PathBuf::from);
    let ca_file_only = match ca_file_only {
        None => None,
        Some(serde_json::Value::Bool(b)) => Some(b),
        Some(other) => {
            return Err(format!(
                "field {at}KmsCaFileOnly: {other} is not true or false"
            ));
        }
    };
    let credentials = match credentials_file {
        None => None,
        Some(_) if proxy.is_none() => {
            return Err(format!(
                "field {at}KmsProxyCredentialsFile needs {at}KmsProxy (credentials for a proxy from the environment go in its URL)"
            ));
        }
        Some(f) => {
            let f = resolve(base, f);
            let bytes = keyfile::read_secret_file(&f)
                .map_err(|e| format!("field {at}KmsProxyCredentialsFile: {e}"))?;
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                format!(
                    "field {at}KmsProxyCredentialsFile: {} is not UTF-8 text",
                    f.display()
                )
            })?;
            let (user, password) = text
                .trim_end_matches(['\r', '\n'])
                .split_once(':')
                .filter(|(user, _)| !user.is_empty() && !user.contains(char::is_whitespace))
                .ok_or_else(|| {
                    format!(
                        "field {at}KmsProxyCredentialsFile: {} must hold one line user:password",
                        f.display()
                    )
                })?;
            if password.contains(['\r', '\n']) {
                return Err(format!(
                    "field {at}KmsProxyCredentialsFile: {} must hold one line user:password",
                    f.display()
                ));
            }
            Some(ProxyCredentials {
                user: SecretString::new(user.to_string()),
                password: SecretString::new(password.to_string()),
            })
        }
    };
    let proxy = match proxy {
        None => None,
        Some(url) => Some(ProxySpec {
            url: proxy_url(&url).map_err(|e| format!("field {at}KmsProxy: {e}"))?,
            credentials,
        }),
    };
    let ca_file_only = ca_file_only.unwrap_or(false);
    if ca_file_only && ca_file.is_none() {
        return Err(format!("field {at}KmsCaFileOnly: true needs {at}KmsCaFile"));
    }
    if schema != "https" {
        if ca_file.is_some() {
            return Err(format!(
                "field {at}KmsCaFile applies to KmsSchema \"https\" only (this key uses {schema:?})"
            ));
        }
        if ca_file_only {
            return Err(format!(
                "field {at}KmsCaFileOnly applies to KmsSchema \"https\" only (this key uses {schema:?})"
            ));
        }
    }
    Ok(KmsNetwork {
        proxy,
        ca_file: ca_file.map(|f| resolve(base, f)),
        ca_file_only,
    })
}

/// Checks a `KmsProxy` value and returns it as `http://host:port`. The value is never echoed: it might
/// hold a password.
fn proxy_url(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "not a URL; use http://host:port".to_string())?;
    if uri.scheme_str() != Some("http") {
        return Err(
            "must start with http:// (an HTTP forward proxy; it tunnels https with CONNECT)".into(),
        );
    }
    let authority = uri
        .authority()
        .ok_or_else(|| "has no host; use http://host:port".to_string())?;
    if authority.as_str().contains('@') {
        return Err(
            "credentials in the URL are not accepted; put user:password in the file named by KmsProxyCredentialsFile".into(),
        );
    }
    if authority.host().is_empty() || authority.port_u16().is_none() {
        return Err("needs a host and a port: http://host:port".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must be http://host:port, without a path or query".into());
    }
    Ok(format!("http://{authority}"))
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
    fn allowed_peer_uids_default_to_root_and_own_uid() {
        let c = parse(r#"{"Sm2PrivateKeyFile": "k.pem"}"#).unwrap();
        let mut want = vec![0, keyfile::own_uid()];
        want.dedup();
        assert_eq!(c.allowed_peer_uids, want);
        let c =
            parse(r#"{"Sm2PrivateKeyFile": "k.pem", "AllowedPeerUids": [1000, 0, 1000]}"#).unwrap();
        assert_eq!(c.allowed_peer_uids, [0, 1000]);
        let e = parse(r#"{"Sm2PrivateKeyFile": "k.pem", "AllowedPeerUids": []}"#).unwrap_err();
        assert!(e.contains("field AllowedPeerUids: empty"), "{e}");
        let e = parse(r#"{"Sm2PrivateKeyFile": "k.pem", "AllowedPeerUids": [-1]}"#).unwrap_err();
        assert!(e.contains("AllowedPeerUids"), "{e}");
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
    fn placeholders_are_refused_by_field_name_before_any_file_is_read() {
        let e = parse(
            r#"{"AccessKey": "REPLACE-WITH-THE-ACCESS-KEY", "SecretKeyFile": "/nonexistent",
                "KmsEndpoint": "kms.example", "KmsKeyId": "k"}"#,
        )
        .unwrap_err();
        assert!(
            e.contains("field AccessKey still holds the example's placeholder"),
            "{e}"
        );
        assert!(
            !e.contains("THE-ACCESS-KEY") && !e.contains("nonexistent"),
            "{e}"
        );
        let e = parse(
            r#"{"Sm2PrivateKeyFile": "k.pem", "PreviousKeys": [{"KmsKeyId": "REPLACE-WITH-ID"}]}"#,
        )
        .unwrap_err();
        assert!(
            e.contains("field PreviousKeys[0].KmsKeyId still holds"),
            "{e}"
        );
    }

    #[test]
    fn a_config_that_is_not_an_object_names_no_internal_type() {
        for text in [
            "[]",
            "\"x\"",
            "1",
            r#"{"Sm2PrivateKeyFile": "k.pem", "PreviousKeys": [1]}"#,
        ] {
            let e = parse(text).unwrap_err();
            assert!(!e.contains("Raw"), "{text}: {e}");
            assert!(e.contains("a JSON object of"), "{text}: {e}");
        }
    }

    #[test]
    fn log_level_is_parsed_and_checked() {
        let c = parse(r#"{"Sm2PrivateKeyFile": "k.pem", "LogLevel": "debug"}"#).unwrap();
        assert_eq!(c.log_level, Some(LogLevel::Debug));
        assert_eq!(
            parse(r#"{"Sm2PrivateKeyFile": "k.pem"}"#)
                .unwrap()
                .log_level,
            None
        );
        let e = parse(r#"{"Sm2PrivateKeyFile": "k.pem", "LogLevel": "loud"}"#).unwrap_err();
        assert!(e.contains("field LogLevel") && e.contains("trace"), "{e}");
        for name in LogLevel::NAMES {
            assert_eq!(LogLevel::parse(name).unwrap().as_str(), name);
        }
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
    fn inline_secret_keys_are_found() {
        assert_eq!(
            inline_secret_field(r#"{"Sm2PrivateKeyFile": "k.pem"}"#),
            None
        );
        assert_eq!(
            inline_secret_field(r#"{"KmsKeyId": "k", "SecretKeyFile": "s"}"#),
            None
        );
        assert_eq!(
            inline_secret_field(r#"{"KmsKeyId": "k", "SecretKey": "s"}"#).as_deref(),
            Some("SecretKey")
        );
        assert_eq!(
            inline_secret_field(
                r#"{"Sm2PrivateKeyFile": "k.pem", "PreviousKeys": [{"Sm2PrivateKeyFile": "o.pem"}, {"SecretKey": "s"}]}"#
            )
            .as_deref(),
            Some("PreviousKeys[1].SecretKey")
        );
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
