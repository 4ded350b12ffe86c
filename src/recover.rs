//! `gm-kms-plugin recover`: opens one value exactly as kube-apiserver stored it in etcd, without
//! kube-apiserver — its layer here, ours through the envelope (docs/disaster-recovery.md).
//!
//! A stored value is kube-apiserver's envelope around ours:
//!
//! - KMS v1: `k8s:enc:kms:v1:<provider>:`, a 2-byte big-endian length, the plugin's ciphertext of that
//!   length (our format 1; it opens to a 32-byte AES key, the DEK), then the data: AES-GCM (12-byte nonce,
//!   ciphertext, 16-byte tag; written by Kubernetes 1.25 and later) or AES-CBC (16-byte IV, ciphertext
//!   with PKCS#7 padding; written up to 1.24) under the DEK. kube-apiserver reads both, GCM first.
//! - KMS v2: `k8s:enc:kms:v2:<provider>:` and a protobuf `EncryptedObject`: `encryptedData` (1), `keyID`
//!   (2), `encryptedDEKSource` (3, the plugin's ciphertext), `annotations` (4), `encryptedDEKSourceType`
//!   (5). Type 0 (`AES_GCM_KEY`): the plugin's plaintext is the AES key and `encryptedData` is nonce,
//!   ciphertext and tag. Type 1 (`HKDF_SHA256_XNONCE_AES_GCM_SEED`, the default from 1.29): the
//!   plaintext is a seed, `encryptedData` starts with 32 bytes of `info`, and the AES-256 key is
//!   HKDF-SHA256-Expand(PRK = seed, info, 32 bytes) — no extract step, no salt; the nonce, ciphertext and
//!   tag follow the info.
//! - The AES-GCM additional data is the value's etcd key (`/registry/secrets/NS/NAME`): a value opens only
//!   under the key it was stored under. AES-CBC authenticates nothing, so a CBC reading is accepted only
//!   when it is a Kubernetes object (protobuf `k8s\0…` or JSON `{…`), which is all kube-apiserver ≤ 1.24
//!   ever stored.
//!
//! The byte parsing here reads untrusted input: it is total (an error for any input, never a panic), as
//! the lints below make the compiler check.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::array::Array;
use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::{AeadInOut, AesGcm, KeyInit};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, KeyIvInit};
use zeroize::Zeroizing;

use crate::config::{Config, DataKeyPolicy};
use crate::datakeys::DataKeys;
use crate::envelope::Envelope;
use crate::error::{Error, ProviderError};
use crate::keyring::Keyring;
use crate::provider::KeyProvider;
use crate::provider::sm2::{Sm2Provider, parse_private_key_pem};

/// Prefix of a KMS v1 value; the provider name and `:` follow.
pub(crate) const KMS_V1_PREFIX: &[u8] = b"k8s:enc:kms:v1:";
/// Prefix of a KMS v2 value; the provider name and `:` follow.
pub(crate) const KMS_V2_PREFIX: &[u8] = b"k8s:enc:kms:v2:";
/// kube-apiserver's AES-GCM nonce (it refuses to run with any other).
const GCM_NONCE_LEN: usize = 12;
/// kube-apiserver's AES-GCM tag.
const GCM_TAG_LEN: usize = 16;
/// The `info` in front of an extended-nonce value, and the length of the key HKDF derives from it.
const XNONCE_INFO_LEN: usize = 32;
/// The smallest seed kube-apiserver accepts (and HKDF-SHA256's PRK length).
const MIN_SEED_LEN: usize = 32;
/// AES block, and CBC's IV.
const AES_BLOCK: usize = 16;
/// `EncryptedObject.encryptedDEKSourceType` values.
const AES_GCM_KEY: i32 = 0;
const HKDF_SHA256_XNONCE_AES_GCM_SEED: i32 = 1;

/// Why a value could not be recovered. Each message is one line that names what is wrong.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoverError {
    /// Not a KMS value at all (another provider, or not encrypted).
    #[error("not a KMS value: {0}")]
    NotKms(String),
    /// A KMS value of another EncryptionConfiguration provider than the one asked for.
    #[error(
        "the value belongs to KMS provider {found:?}, not {expected:?} (--provider-name): it was not written through this provider"
    )]
    OtherProvider {
        /// `--provider-name`.
        expected: String,
        /// The name in the value's prefix.
        found: String,
    },
    /// The kube-apiserver layer does not parse.
    #[error("malformed KMS {api} value: {what}")]
    Malformed {
        /// `v1` or `v2`.
        api: &'static str,
        /// What is wrong.
        what: String,
    },
    /// The plugin's ciphertext inside the value names a key that the keys given do not have.
    #[error(
        "the value's DEK was sealed under key {kek_id}, which {origin} does not have (it has {have}); find the key with that id in the backups"
    )]
    UnknownKey {
        /// The key named by the plugin's ciphertext.
        kek_id: String,
        /// `config FILE`.
        origin: String,
        /// The ids the config has.
        have: String,
    },
    /// `--sm2-key` is another key than the one that sealed the DEK.
    #[error(
        "wrong key: the value's DEK was sealed under key {kek_id}; {path} is key {given} and does not open it"
    )]
    WrongKey {
        /// The key named by the plugin's ciphertext.
        kek_id: String,
        /// `--sm2-key`.
        path: PathBuf,
        /// Its derived id.
        given: String,
    },
    /// The plugin's ciphertext inside the value did not open for another reason.
    #[error("cannot open the DEK inside the value (the plugin's ciphertext): {0}")]
    Dek(String),
    /// The keys could not be loaded.
    #[error("{0}")]
    Keys(String),
    /// The DEK is right but the data does not open: the etcd key is not the one it was stored under.
    #[error(
        "the value does not open under etcd key {etcd_key:?}: {how} failed authentication (wrong --etcd-key: it must be the exact key the value was read from; or the value is damaged)"
    )]
    EtcdKey {
        /// `--etcd-key`.
        etcd_key: String,
        /// What failed.
        how: &'static str,
    },
    /// A KMS v1 value whose data is neither AES-GCM under this etcd key nor AES-CBC.
    #[error(
        "the value does not open under etcd key {etcd_key:?}: not AES-GCM under that key (wrong --etcd-key? it must be the exact key the value was read from), and not a Kubernetes object in AES-CBC either ({cbc}); or the value is damaged"
    )]
    V1Data {
        /// `--etcd-key`.
        etcd_key: String,
        /// Why the CBC reading failed.
        cbc: &'static str,
    },
    /// The plugin's plaintext is not what kube-apiserver seals.
    #[error("the DEK inside the value is {len} bytes, not {want}")]
    DekLength {
        /// Its length.
        len: usize,
        /// What it should be.
        want: &'static str,
    },
    /// Failed as given, and again without the trailing newline it ends with.
    #[error(
        "{0} (the value ends with a newline, which `etcdctl get --print-value-only` adds: it failed without it too)"
    )]
    TrailingNewline(Box<RecoverError>),
}

/// Which kube-apiserver layout a value had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// KMS v1, AES-GCM under the DEK (Kubernetes ≥ 1.25).
    V1Gcm,
    /// KMS v1, AES-CBC under the DEK (Kubernetes ≤ 1.24).
    V1Cbc,
    /// KMS v2, the plugin sealed the AES-GCM key itself.
    V2Key,
    /// KMS v2, the plugin sealed a seed; the key is derived per value.
    V2Seed,
}

impl Shape {
    fn describe(self) -> &'static str {
        match self {
            Shape::V1Gcm => "KMS v1, AES-GCM under the DEK",
            Shape::V1Cbc => {
                "KMS v1, AES-CBC under the DEK (written by Kubernetes <= 1.24; CBC is not bound to the etcd key)"
            }
            Shape::V2Key => "KMS v2, AES-GCM under the DEK (encryptedDEKSourceType AES_GCM_KEY)",
            Shape::V2Seed => {
                "KMS v2, AES-GCM under a key derived from the DEK seed with HKDF-SHA256 (HKDF_SHA256_XNONCE_AES_GCM_SEED)"
            }
        }
    }
}

/// What the plugin's plaintext is, and what the data is sealed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DekSource {
    /// KMS v1: an AES key; the data is AES-GCM or AES-CBC.
    V1,
    /// KMS v2 `AES_GCM_KEY`.
    V2Key,
    /// KMS v2 `HKDF_SHA256_XNONCE_AES_GCM_SEED`.
    V2Seed,
}

/// A stored value taken apart; nothing decrypted yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredValue {
    /// The EncryptionConfiguration provider name from the prefix.
    pub provider: String,
    /// The plugin's ciphertext: what Encrypt returned for the DEK or seed.
    pub plugin_ciphertext: Vec<u8>,
    /// KMS v2 `keyID` (what Encrypt returned as `key_id`).
    pub key_id: Option<String>,
    /// How the plugin's plaintext becomes the data key.
    pub source: DekSource,
    /// The sealed object.
    pub data: Vec<u8>,
}

/// The KMS v2 `EncryptedObject` (k8s.io/apiserver …/envelope/kmsv2/v2/api.proto), decoded with prost.
#[derive(Clone, PartialEq, prost::Message)]
struct EncryptedObject {
    #[prost(bytes = "vec", tag = "1")]
    encrypted_data: Vec<u8>,
    #[prost(string, tag = "2")]
    key_id: String,
    #[prost(bytes = "vec", tag = "3")]
    encrypted_dek_source: Vec<u8>,
    #[prost(map = "string, bytes", tag = "4")]
    annotations: HashMap<String, Vec<u8>>,
    /// An enum on the wire is an int32 varint; unknown values must stay visible, so no prost enum here.
    #[prost(int32, tag = "5")]
    encrypted_dek_source_type: i32,
}

/// Takes a stored value apart. `provider`: refuse a value of another provider than this one (and split
/// the prefix at exactly this name, which matters only for a name with a `:` in it).
pub(crate) fn parse(value: &[u8], provider: Option<&str>) -> Result<StoredValue, RecoverError> {
    let (api, rest) = if let Some(rest) = value.strip_prefix(KMS_V1_PREFIX) {
        ("v1", rest)
    } else if let Some(rest) = value.strip_prefix(KMS_V2_PREFIX) {
        ("v2", rest)
    } else {
        return Err(RecoverError::NotKms(not_kms(value)));
    };
    let (name, body) = split_provider(api, rest, provider)?;
    if let Some(expected) = provider
        && expected != name
    {
        return Err(RecoverError::OtherProvider {
            expected: expected.to_string(),
            found: name,
        });
    }
    if api == "v1" {
        parse_v1(name, body)
    } else {
        parse_v2(name, body)
    }
}

/// `<name>:` then the body; the name as text.
fn split_provider<'a>(
    api: &'static str,
    rest: &'a [u8],
    expected: Option<&str>,
) -> Result<(String, &'a [u8]), RecoverError> {
    let malformed = |what: String| RecoverError::Malformed { api, what };
    if let Some(e) = expected
        && let Some(body) = rest
            .strip_prefix(e.as_bytes())
            .and_then(|r| r.strip_prefix(b":"))
    {
        return Ok((e.to_string(), body));
    }
    let colon = rest
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| malformed("no ':' after the provider name".into()))?;
    let (name, body) = rest.split_at(colon);
    let body = body.get(1..).unwrap_or_default();
    let name = std::str::from_utf8(name)
        .map_err(|_| malformed("the provider name is not UTF-8".into()))?;
    if name.is_empty() {
        return Err(malformed("empty provider name".into()));
    }
    Ok((name.to_string(), body))
}

fn parse_v1(provider: String, body: &[u8]) -> Result<StoredValue, RecoverError> {
    let malformed = |what: String| RecoverError::Malformed { api: "v1", what };
    let (len, rest) = body.split_first_chunk::<2>().ok_or_else(|| {
        malformed("truncated: the 2-byte length of the DEK's ciphertext is missing".into())
    })?;
    let len = usize::from(u16::from_be_bytes(*len));
    if len == 0 {
        return Err(malformed("the DEK's ciphertext has length 0".into()));
    }
    let (ciphertext, data) = rest.split_at_checked(len).ok_or_else(|| {
        malformed(format!(
            "truncated: the DEK's ciphertext is {len} bytes, only {} follow",
            rest.len()
        ))
    })?;
    if data.is_empty() {
        return Err(malformed(
            "truncated: no data after the DEK's ciphertext".into(),
        ));
    }
    Ok(StoredValue {
        provider,
        plugin_ciphertext: ciphertext.to_vec(),
        key_id: None,
        source: DekSource::V1,
        data: data.to_vec(),
    })
}

fn parse_v2(provider: String, body: &[u8]) -> Result<StoredValue, RecoverError> {
    let malformed = |what: String| RecoverError::Malformed { api: "v2", what };
    let o = <EncryptedObject as prost::Message>::decode(body)
        .map_err(|e| malformed(format!("not a protobuf EncryptedObject ({e})")))?;
    let source = match o.encrypted_dek_source_type {
        AES_GCM_KEY => DekSource::V2Key,
        HKDF_SHA256_XNONCE_AES_GCM_SEED => DekSource::V2Seed,
        other => {
            return Err(malformed(format!(
                "unknown encryptedDEKSourceType {other} (known: 0 AES_GCM_KEY, 1 HKDF_SHA256_XNONCE_AES_GCM_SEED)"
            )));
        }
    };
    if o.encrypted_dek_source.is_empty() {
        return Err(malformed(
            "encryptedDEKSource (the plugin's ciphertext) is empty".into(),
        ));
    }
    if o.encrypted_data.is_empty() {
        return Err(malformed("encryptedData is empty".into()));
    }
    Ok(StoredValue {
        provider,
        plugin_ciphertext: o.encrypted_dek_source,
        key_id: Some(o.key_id),
        source,
        data: o.encrypted_data,
    })
}

/// What a value without a KMS prefix is, in words.
fn not_kms(value: &[u8]) -> String {
    if value.starts_with(b"k8s:enc:") {
        let rest = value.get(8..).unwrap_or_default();
        let provider: String = rest
            .iter()
            .take_while(|&&b| b != b':')
            .take(32)
            .map(|&b| char::from(b))
            .collect();
        return format!(
            "it was encrypted by kube-apiserver's {provider:?} provider (prefix k8s:enc:{provider}:), not through a KMS plugin; that provider's own key opens it"
        );
    }
    if value.starts_with(b"k8s\0") || value.starts_with(b"{") {
        return "it is not encrypted (written with the identity provider): the value is the object itself"
            .into();
    }
    if value.is_empty() {
        return "the value is empty".into();
    }
    format!(
        "no k8s:enc:kms:v1: or k8s:enc:kms:v2: prefix (it starts with {:?})",
        String::from_utf8_lossy(value.get(..value.len().min(24)).unwrap_or_default())
    )
}

/// Opens the plugin's ciphertext (our layer): what `recover` runs the DEK through.
pub(crate) trait DekOpener {
    /// The plaintext of the plugin's ciphertext.
    fn open_dek(
        &self,
        ciphertext: &[u8],
    ) -> impl std::future::Future<Output = Result<Zeroizing<Vec<u8>>, RecoverError>>;
}

/// A recovered object and how it was stored.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The object as kube-apiserver serialized it.
    pub object: Zeroizing<Vec<u8>>,
    /// The layout it was stored in.
    pub shape: Shape,
    /// The EncryptionConfiguration provider name.
    pub provider: String,
    /// The plugin key that sealed the DEK (from the header of our format 1).
    pub kek_id: Option<String>,
    /// The value ended with a newline that is not part of it (`etcdctl --print-value-only`).
    pub trimmed_newline: bool,
}

impl Recovered {
    /// One line for stderr: what was opened, how, with which key.
    pub(crate) fn summary(&self, etcd_key: &str) -> String {
        let kind = if self.object.starts_with(b"k8s\0") {
            "Kubernetes protobuf"
        } else if self.object.starts_with(b"{") {
            "JSON"
        } else if self.object.starts_with(&[0xd9, 0xd9, 0xf7]) {
            "CBOR"
        } else {
            "bytes"
        };
        let key = self
            .kek_id
            .as_deref()
            .map(|k| format!(", plugin key {k}"))
            .unwrap_or_default();
        let newline = if self.trimmed_newline {
            " (ignored the trailing newline that etcdctl added)"
        } else {
            ""
        };
        format!(
            "recovered {etcd_key}: {} bytes ({kind}); provider {:?}, {}{key}{newline}",
            self.object.len(),
            self.provider,
            self.shape.describe()
        )
    }
}

/// Opens `value` (read from etcd key `etcd_key`) through `opener`. A value that fails as given and ends
/// with a newline is tried once more without it: `etcdctl get --print-value-only` appends one.
pub(crate) async fn recover(
    value: &[u8],
    etcd_key: &str,
    provider: Option<&str>,
    opener: &impl DekOpener,
) -> Result<Recovered, RecoverError> {
    match recover_exact(value, etcd_key, provider, opener).await {
        Ok(r) => Ok(r),
        Err(first) => match value.strip_suffix(b"\n") {
            Some(trimmed) if retry_without_newline(&first) => {
                match recover_exact(trimmed, etcd_key, provider, opener).await {
                    Ok(r) => Ok(Recovered {
                        trimmed_newline: true,
                        ..r
                    }),
                    Err(_) => Err(RecoverError::TrailingNewline(Box::new(first))),
                }
            }
            _ => Err(first),
        },
    }
}

/// Whether a failure could be the newline's doing (and not a key or config problem that it cannot fix).
fn retry_without_newline(e: &RecoverError) -> bool {
    matches!(
        e,
        RecoverError::Malformed { .. } | RecoverError::EtcdKey { .. } | RecoverError::V1Data { .. }
    )
}

async fn recover_exact(
    value: &[u8],
    etcd_key: &str,
    provider: Option<&str>,
    opener: &impl DekOpener,
) -> Result<Recovered, RecoverError> {
    let stored = parse(value, provider)?;
    let dek = opener.open_dek(&stored.plugin_ciphertext).await?;
    let (shape, object) = open_data(&stored, &dek, etcd_key.as_bytes())?;
    let kek_id = crate::ciphertext::parse(&stored.plugin_ciphertext)
        .ok()
        .map(|p| p.kek_id.to_string());
    Ok(Recovered {
        object,
        shape,
        provider: stored.provider,
        kek_id,
        trimmed_newline: false,
    })
}

/// kube-apiserver's layer: the data under the DEK (or the key derived from the seed), AAD = `etcd_key`.
pub(crate) fn open_data(
    stored: &StoredValue,
    dek: &[u8],
    etcd_key: &[u8],
) -> Result<(Shape, Zeroizing<Vec<u8>>), RecoverError> {
    let key_error = |want| RecoverError::DekLength {
        len: dek.len(),
        want,
    };
    let etcd_key_error = |how| RecoverError::EtcdKey {
        etcd_key: String::from_utf8_lossy(etcd_key).into_owned(),
        how,
    };
    match stored.source {
        DekSource::V2Key => {
            let object = gcm_open(dek, &stored.data, etcd_key)
                .map_err(|_| key_error("an AES key (16, 24 or 32 bytes)"))?
                .ok_or_else(|| etcd_key_error("AES-GCM"))?;
            Ok((Shape::V2Key, object))
        }
        DekSource::V2Seed => {
            if dek.len() < MIN_SEED_LEN {
                return Err(key_error("a seed of at least 32 bytes"));
            }
            let (info, sealed) =
                stored
                    .data
                    .split_at_checked(XNONCE_INFO_LEN)
                    .ok_or_else(|| RecoverError::Malformed {
                        api: "v2",
                        what: format!(
                            "encryptedData of {} bytes is shorter than the 32-byte HKDF info",
                            stored.data.len()
                        ),
                    })?;
            // HKDF-Expand only, the seed as PRK: kube-apiserver's sha256KDFExpandOnly.
            let mut key = Zeroizing::new([0u8; XNONCE_INFO_LEN]);
            hkdf::Hkdf::<sha2::Sha256>::from_prk(dek)
                .map_err(|_| key_error("a seed of at least 32 bytes"))?
                .expand(info, key.as_mut_slice())
                .map_err(|_| key_error("a seed of at least 32 bytes"))?;
            let object = gcm_open(key.as_slice(), sealed, etcd_key)
                .map_err(|_| key_error("a seed of at least 32 bytes"))?
                .ok_or_else(|| etcd_key_error("AES-GCM under the key derived from the seed"))?;
            Ok((Shape::V2Seed, object))
        }
        DekSource::V1 => {
            if let Some(object) = gcm_open(dek, &stored.data, etcd_key)
                .map_err(|_| key_error("an AES key (16, 24 or 32 bytes)"))?
            {
                return Ok((Shape::V1Gcm, object));
            }
            match cbc_open(dek, &stored.data) {
                Ok(object) if is_kubernetes_object(&object) => Ok((Shape::V1Cbc, object)),
                Ok(_) => Err(RecoverError::V1Data {
                    etcd_key: String::from_utf8_lossy(etcd_key).into_owned(),
                    cbc: "its padding checks but it decrypts to no Kubernetes object",
                }),
                Err(cbc) => Err(RecoverError::V1Data {
                    etcd_key: String::from_utf8_lossy(etcd_key).into_owned(),
                    cbc,
                }),
            }
        }
    }
}

/// The DEK had a length AES does not take (the caller says which error that is).
struct BadKeyLength;

/// kube-apiserver's AES-GCM (`aes.go`, `gcm.TransformFromStorage`): nonce (12) ‖ ciphertext ‖ tag (16).
/// `Ok(None)`: the tag did not verify (or the data is too short to carry one).
fn gcm_open(
    key: &[u8],
    data: &[u8],
    aad: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>, BadKeyLength> {
    match key.len() {
        16 => Ok(gcm_open_with::<aes::Aes128>(key, data, aad)),
        24 => Ok(gcm_open_with::<aes::Aes192>(key, data, aad)),
        32 => Ok(gcm_open_with::<aes::Aes256>(key, data, aad)),
        _ => Err(BadKeyLength),
    }
}

fn gcm_open_with<C>(key: &[u8], data: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>>
where
    AesGcm<C, U12>: KeyInit + AeadInOut<NonceSize = U12, TagSize = U16>,
{
    let cipher = AesGcm::<C, U12>::new_from_slice(key).ok()?;
    let (nonce, rest) = data.split_first_chunk::<GCM_NONCE_LEN>()?;
    let (ct, tag) = rest.split_last_chunk::<GCM_TAG_LEN>()?;
    let mut buf = Zeroizing::new(ct.to_vec());
    cipher
        .decrypt_inout_detached(
            &Array::from(*nonce),
            aad,
            buf.as_mut_slice().into(),
            &Array::from(*tag),
        )
        .ok()?;
    Some(buf)
}

/// kube-apiserver's AES-CBC (`aes.go`, `cbc.TransformFromStorage`): IV (16) ‖ ciphertext, PKCS#7.
fn cbc_open(key: &[u8], data: &[u8]) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let (iv, ct) = data
        .split_first_chunk::<AES_BLOCK>()
        .ok_or("shorter than its 16-byte IV")?;
    if ct.is_empty() || ct.len() % AES_BLOCK != 0 {
        return Err("its length is not a whole number of AES blocks");
    }
    match key.len() {
        16 => cbc_open_with::<aes::Aes128>(key, iv, ct),
        24 => cbc_open_with::<aes::Aes192>(key, iv, ct),
        32 => cbc_open_with::<aes::Aes256>(key, iv, ct),
        _ => Err("the DEK is not an AES key"),
    }
}

fn cbc_open_with<C>(
    key: &[u8],
    iv: &[u8; AES_BLOCK],
    ct: &[u8],
) -> Result<Zeroizing<Vec<u8>>, &'static str>
where
    C: cbc::cipher::BlockCipherDecrypt,
    cbc::Decryptor<C>: KeyIvInit + BlockModeDecrypt,
{
    let dec =
        cbc::Decryptor::<C>::new_from_slices(key, iv).map_err(|_| "the DEK is not an AES key")?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let len = dec
        .decrypt_padded::<Pkcs7>(buf.as_mut_slice())
        .map_err(|_| "its PKCS#7 padding does not check")?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// What kube-apiserver stores: Kubernetes protobuf (`k8s\0` then a `runtime.Unknown`) or JSON.
fn is_kubernetes_object(bytes: &[u8]) -> bool {
    bytes.starts_with(b"k8s\0") || bytes.starts_with(b"{")
}

/// The plugin's own layer, through the envelope exactly as the server opens ciphertexts.
pub(crate) struct KeysOpener {
    keys: Keys,
}

enum Keys {
    /// Every key of a config (primary and `PreviousKeys`), legacy reads as configured.
    Config { envelope: Envelope, origin: String },
    /// One SM2 key file; its id is taken from the ciphertext's header, so a key that was configured with
    /// an explicit `Sm2KeyId` opens too (SM2 decryption checks its own integrity hash).
    Sm2 { path: PathBuf, derived_id: String },
}

impl KeysOpener {
    /// Runs the power-on self-tests and loads every key of `config`.
    pub(crate) fn from_config(config: &Config) -> Result<Self, RecoverError> {
        crate::selftest::run_all().map_err(|e| RecoverError::Keys(e.to_string()))?;
        let keyring =
            Keyring::from_config(config).map_err(|e| RecoverError::Keys(e.to_string()))?;
        Ok(Self {
            keys: Keys::Config {
                envelope: Envelope::new(Arc::new(DataKeys::new(
                    Arc::new(keyring),
                    config.data_keys,
                ))),
                origin: format!("config {}", config.path.display()),
            },
        })
    }

    /// Runs the power-on self-tests and loads the SM2 private key at `path` (owner-only permissions, as
    /// for `Sm2PrivateKeyFile`).
    pub(crate) fn from_sm2_key(path: &Path) -> Result<Self, RecoverError> {
        crate::selftest::run_all().map_err(|e| RecoverError::Keys(e.to_string()))?;
        let derived_id = load_sm2(path, None)?.kek_id().to_string();
        Ok(Self {
            keys: Keys::Sm2 {
                path: path.to_path_buf(),
                derived_id,
            },
        })
    }
}

fn load_sm2(path: &Path, key_id: Option<String>) -> Result<Sm2Provider, RecoverError> {
    let bad = |why: String| RecoverError::Keys(format!("--sm2-key {}: {why}", path.display()));
    let bytes = crate::keyfile::read_secret_file(path).map_err(|e| bad(e.to_string()))?;
    let pem = std::str::from_utf8(&bytes).map_err(|_| bad("not a PEM file".into()))?;
    let secret = parse_private_key_pem(pem).map_err(bad)?;
    Sm2Provider::from_secret_key(secret, key_id).map_err(|e| bad(e.to_string()))
}

fn envelope_of(provider: Arc<dyn KeyProvider>) -> Result<Envelope, RecoverError> {
    let keyring = Keyring::new(vec![provider])
        .map_err(|id| RecoverError::Keys(format!("duplicate key id {id}")))?;
    Ok(Envelope::new(Arc::new(DataKeys::new(
        Arc::new(keyring),
        DataKeyPolicy::default(),
    ))))
}

impl DekOpener for KeysOpener {
    async fn open_dek(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, RecoverError> {
        match &self.keys {
            Keys::Config { envelope, origin } => {
                envelope.open(ciphertext).await.map_err(|e| match e {
                    Error::UnknownKek(kek_id) => RecoverError::UnknownKey {
                        kek_id,
                        origin: origin.clone(),
                        have: envelope.datakeys().keyring().ids().join(", "),
                    },
                    e => dek_error(e),
                })
            }
            Keys::Sm2 { path, derived_id } => {
                let header_id = crate::ciphertext::parse(ciphertext)
                    .map_err(|e| dek_error(Error::Malformed(e)))?
                    .kek_id
                    .to_string();
                let provider = load_sm2(path, Some(header_id.clone()))?;
                let envelope = envelope_of(Arc::new(provider))?;
                envelope.open(ciphertext).await.map_err(|e| match e {
                    // SM2 decryption checks its own hash: another key fails here, not later.
                    Error::Provider(ProviderError::InvalidWrappedKey(_))
                        if header_id != *derived_id =>
                    {
                        RecoverError::WrongKey {
                            kek_id: header_id.clone(),
                            path: path.clone(),
                            given: derived_id.clone(),
                        }
                    }
                    e => dek_error(e),
                })
            }
        }
    }
}

fn dek_error(e: Error) -> RecoverError {
    match e {
        Error::Malformed(crate::ciphertext::FormatError::BadMagic) => RecoverError::Dek(
            "it is not a gm-kms-plugin ciphertext (no GMK magic): the value was written through another KMS plugin"
                .into(),
        ),
        e => RecoverError::Dek(e.to_string()),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    //! The parsing and kube-apiserver's layer, with values built here by RustCrypto's encrypting side.
    //! The independent check (values built by Python `cryptography` as kube-apiserver does, the real
    //! plugin's DEK ciphertexts) is tests/it/recover.rs.

    use aes_gcm::aead::Aead;
    use aes_gcm::aead::Payload;
    use cbc::cipher::BlockModeEncrypt;

    use super::*;

    const ETCD_KEY: &str = "/registry/secrets/default/db";
    const OBJECT: &[u8] = b"k8s\0\n\x0c\n\x02v1\x12\x06Secret\x12\x04data";

    fn gcm_seal(key: &[u8], nonce: [u8; 12], plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let c = AesGcm::<aes::Aes256, U12>::new_from_slice(key).unwrap();
        let mut out = nonce.to_vec();
        out.extend(
            c.encrypt(&Array::from(nonce), Payload { msg: plain, aad })
                .unwrap(),
        );
        out
    }

    fn cbc_seal(key: &[u8], iv: [u8; 16], plain: &[u8]) -> Vec<u8> {
        let enc = cbc::Encryptor::<aes::Aes256>::new_from_slices(key, &iv).unwrap();
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + 16, 0);
        let n = enc
            .encrypt_padded::<Pkcs7>(&mut buf, plain.len())
            .unwrap()
            .len();
        buf.truncate(n);
        let mut out = iv.to_vec();
        out.extend(buf);
        out
    }

    fn v1_value(provider: &str, plugin_ct: &[u8], data: &[u8]) -> Vec<u8> {
        let mut v = format!("k8s:enc:kms:v1:{provider}:").into_bytes();
        v.extend((plugin_ct.len() as u16).to_be_bytes());
        v.extend(plugin_ct);
        v.extend(data);
        v
    }

    fn v2_value(provider: &str, plugin_ct: &[u8], data: &[u8], source_type: i32) -> Vec<u8> {
        let o = EncryptedObject {
            encrypted_data: data.to_vec(),
            key_id: "sm2-0011223344556677".into(),
            encrypted_dek_source: plugin_ct.to_vec(),
            annotations: HashMap::from([("a.example.com".to_string(), b"x".to_vec())]),
            encrypted_dek_source_type: source_type,
        };
        let mut v = format!("k8s:enc:kms:v2:{provider}:").into_bytes();
        v.extend(prost::Message::encode_to_vec(&o));
        v
    }

    fn seed_key(seed: &[u8], info: &[u8]) -> Vec<u8> {
        let mut k = vec![0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::from_prk(seed)
            .unwrap()
            .expand(info, &mut k)
            .unwrap();
        k
    }

    /// The four shapes, each with its DEK.
    fn values() -> Vec<(Shape, Vec<u8>, Vec<u8>)> {
        let dek = [7u8; 32];
        let info = [9u8; 32];
        let mut seeded = info.to_vec();
        seeded.extend(gcm_seal(
            &seed_key(&dek, &info),
            [2; 12],
            OBJECT,
            ETCD_KEY.as_bytes(),
        ));
        vec![
            (
                Shape::V1Gcm,
                v1_value(
                    "gm",
                    b"GMK-ct",
                    &gcm_seal(&dek, [1; 12], OBJECT, ETCD_KEY.as_bytes()),
                ),
                dek.to_vec(),
            ),
            (
                Shape::V1Cbc,
                v1_value("gm", b"GMK-ct", &cbc_seal(&dek, [3; 16], OBJECT)),
                dek.to_vec(),
            ),
            (
                Shape::V2Key,
                v2_value(
                    "gm",
                    b"GMK-ct",
                    &gcm_seal(&dek, [4; 12], OBJECT, ETCD_KEY.as_bytes()),
                    0,
                ),
                dek.to_vec(),
            ),
            (
                Shape::V2Seed,
                v2_value("gm", b"GMK-ct", &seeded, 1),
                dek.to_vec(),
            ),
        ]
    }

    struct Fixed(Vec<u8>);

    impl DekOpener for Fixed {
        async fn open_dek(&self, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>, RecoverError> {
            assert_eq!(ct, b"GMK-ct");
            Ok(Zeroizing::new(self.0.clone()))
        }
    }

    fn run(value: &[u8], etcd_key: &str, dek: &[u8]) -> Result<Recovered, RecoverError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(recover(value, etcd_key, None, &Fixed(dek.to_vec())))
    }

    #[test]
    fn every_shape_opens_under_its_etcd_key_only() {
        for (shape, value, dek) in values() {
            let r = run(&value, ETCD_KEY, &dek).unwrap();
            assert_eq!((r.shape, r.object.as_slice()), (shape, OBJECT));
            assert_eq!(r.provider, "gm");
            assert!(!r.trimmed_newline);
            let wrong = run(&value, "/registry/secrets/default/other", &dek);
            match &wrong {
                // CBC authenticates nothing: kube-apiserver never bound those values to their key.
                Ok(r) => assert_eq!((shape, r.object.as_slice()), (Shape::V1Cbc, OBJECT)),
                Err(e @ RecoverError::V1Data { .. }) if shape == Shape::V1Gcm => {
                    assert!(e.to_string().contains("--etcd-key"), "{e}")
                }
                Err(e @ RecoverError::EtcdKey { .. }) if shape != Shape::V1Cbc => {
                    assert!(e.to_string().contains("--etcd-key"), "{e}")
                }
                Err(e) => panic!("{shape:?}: {e}"),
            }
        }
    }

    #[test]
    fn a_trailing_newline_is_tolerated() {
        for (shape, mut value, dek) in values() {
            value.push(b'\n');
            let r = run(&value, ETCD_KEY, &dek).unwrap();
            assert_eq!(r.object.as_slice(), OBJECT, "{shape:?}");
            // CBC: the newline makes the length no whole number of blocks, so the retry is taken too.
            assert!(r.trimmed_newline, "{shape:?}");
        }
    }

    #[test]
    fn wrong_dek_lengths_are_named() {
        let (_, value, _) = values().remove(2);
        let e = run(&value, ETCD_KEY, &[1; 20]).unwrap_err();
        assert!(matches!(e, RecoverError::DekLength { len: 20, .. }), "{e}");
        let (_, value, _) = values().remove(3);
        let e = run(&value, ETCD_KEY, &[1; 16]).unwrap_err();
        assert!(matches!(e, RecoverError::DekLength { len: 16, .. }), "{e}");
    }

    #[test]
    fn cbc_garbage_is_not_an_object() {
        let dek = [7u8; 32];
        let value = v1_value("gm", b"GMK-ct", &cbc_seal(&dek, [3; 16], b"not an object"));
        let e = run(&value, ETCD_KEY, &dek).unwrap_err();
        assert!(matches!(e, RecoverError::V1Data { .. }), "{e}");
    }

    #[test]
    fn other_values_say_what_they_are() {
        let cases: [(&[u8], &str); 6] = [
            (b"k8s:enc:aescbc:v1:key1:\x01\x02", "\"aescbc\" provider"),
            (b"k8s:enc:secretbox:v1:key1:xx", "\"secretbox\" provider"),
            (b"k8s\0\n\x0c", "not encrypted"),
            (b"{\"kind\":\"Secret\"}", "not encrypted"),
            (b"", "empty"),
            (b"hello", "no k8s:enc:kms:v1: or k8s:enc:kms:v2: prefix"),
        ];
        for (value, want) in cases {
            let e = parse(value, None).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let (_, value, _) = values().remove(0);
        let e = parse(&value, Some("other")).unwrap_err();
        assert!(
            matches!(&e, RecoverError::OtherProvider { found, .. } if found == "gm"),
            "{e}"
        );
        assert!(parse(&value, Some("gm")).is_ok());
    }

    #[test]
    fn a_provider_name_with_a_colon_splits_where_told() {
        let v = v1_value("a:b", b"GMK-ct", &[0; 40]);
        assert_eq!(parse(&v, Some("a:b")).unwrap().provider, "a:b");
        assert!(parse(&v, Some("a")).is_err());
    }

    #[test]
    fn v2_source_types_other_than_0_and_1_are_refused() {
        let (_, mut value, _) = values().remove(2);
        // A repeated scalar field: the last one wins, as in every protobuf decoder.
        value.extend([0x28, 0x07]);
        let e = parse(&value, None).unwrap_err().to_string();
        assert!(e.contains("unknown encryptedDEKSourceType 7"), "{e}");
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_never_a_panic() {
        for (shape, value, dek) in values() {
            for n in 0..value.len() {
                // Some truncations still parse. One that opens has cut only whole trailing protobuf
                // fields (a shorter valid message, v2) or CBC blocks; none opens to other bytes.
                if let Ok(s) = parse(&value[..n], None)
                    && let Ok((_, object)) = open_data(&s, &dek, ETCD_KEY.as_bytes())
                {
                    assert!(
                        shape == Shape::V1Cbc || object.as_slice() == OBJECT,
                        "{shape:?} truncated to {n} opened"
                    );
                }
            }
            for i in 0..value.len() * 8 {
                let mut v = value.clone();
                v[i / 8] ^= 1 << (i % 8);
                if let Ok(s) = parse(&v, None)
                    && let Ok((_, object)) = open_data(&s, &dek, ETCD_KEY.as_bytes())
                {
                    // Only CBC (unauthenticated) or a flip outside the sealed bytes can open.
                    assert!(
                        shape == Shape::V1Cbc || object.as_slice() == OBJECT,
                        "{shape:?} bit {i}"
                    );
                }
            }
        }
        // Arbitrary bytes after each prefix.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..300 {
            for prefix in [KMS_V1_PREFIX, KMS_V2_PREFIX] {
                let mut v = prefix.to_vec();
                v.extend(b"gm:");
                for _ in 0..len {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    v.push(state as u8);
                }
                if let Ok(s) = parse(&v, None) {
                    let _ = open_data(&s, &[7; 32], ETCD_KEY.as_bytes());
                }
            }
        }
    }
}
