//! The `sm2` provider: a local SM2 key pair wraps data keys with SM2 public-key encryption
//! (GB/T 32918.4), encoded as the GM/T 0009 DER `SM2Cipher` (C1C3C2) that `openssl pkeyutl` reads and
//! writes. No network: this is the provider for offline and air-gapped clusters.

use async_trait::async_trait;
use sm2::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use sm2::pke::{DecryptingKey, EncryptingKey, Mode};
use sm2::{PublicKey, SecretKey};
use sm3::{Digest, Sm3};
use zeroize::Zeroizing;

use super::{KeyProvider, ProviderError};
use crate::config::Sm2Spec;
use crate::keyfile;
use crate::secret::DataKey;

/// A loaded SM2 key-encryption key.
pub struct Sm2Provider {
    kek_id: String,
    encrypting: EncryptingKey,
    /// Kept as the `SecretKey`, which wipes itself when dropped (a reload drops the old one).
    /// RustCrypto's `DecryptingKey` does not, so one is made per unwrap (rare: once per data key) and
    /// lives only for that call.
    secret: SecretKey,
}

impl std::fmt::Debug for Sm2Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sm2Provider")
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

impl Sm2Provider {
    /// Loads the private key named by the config (owner-only permissions required).
    pub fn load(spec: &Sm2Spec) -> Result<Self, ProviderError> {
        let path = &spec.private_key_file;
        let bytes = keyfile::read_secret_file(path)
            .map_err(|e| ProviderError::Config(format!("Sm2PrivateKeyFile: {e}").into()))?;
        let pem = std::str::from_utf8(&bytes).map_err(|_| {
            ProviderError::Config(
                format!("Sm2PrivateKeyFile: {} is not a PEM file", path.display()).into(),
            )
        })?;
        let secret = parse_private_key_pem(pem).map_err(|why| {
            ProviderError::Config(format!("Sm2PrivateKeyFile: {}: {why}", path.display()).into())
        })?;
        Self::from_secret_key(secret, spec.key_id.clone())
    }

    /// Builds a provider from a key already in memory; the id is derived unless given.
    pub fn from_secret_key(
        secret: SecretKey,
        key_id: Option<String>,
    ) -> Result<Self, ProviderError> {
        let public = secret.public_key();
        let kek_id = match key_id {
            Some(id) => id,
            None => derive_kek_id(&public)?,
        };
        Ok(Self {
            kek_id,
            encrypting: EncryptingKey::new_with_mode(public, Mode::C1C3C2),
            secret,
        })
    }
}

/// Key ids of the public development keys of `keys/` (`dev-sm2-key.pem`, `dev-sm2-key-previous.pem`):
/// anything they seal anyone can open, so the plugin warns when it serves with one and `check` says so.
pub const DEVELOPMENT_KEY_IDS: [&str; 2] = ["sm2-fa4d77b77e3ff144", "sm2-bfed59c3470d40da"];

/// Whether `kek_id` is one of [`DEVELOPMENT_KEY_IDS`].
pub fn is_development_key(kek_id: &str) -> bool {
    DEVELOPMENT_KEY_IDS.contains(&kek_id)
}

/// The SM2 curve's OID, 1.2.156.10197.1.301: the `parameters` of an SM2 key's algorithm.
const SM2_CURVE_OID: &str = "1.2.156.10197.1.301";
/// `id-ecPublicKey`, the algorithm OpenSSL 3 writes for an SM2 key (with the SM2 curve as parameter).
const EC_PUBLIC_KEY_OID: &str = "1.2.840.10045.2.1";

/// Accepts what OpenSSL writes for an SM2 key: PKCS#8 `PRIVATE KEY` (`openssl genpkey -algorithm SM2`),
/// SEC1 `EC PRIVATE KEY`, and either after an `SM2 PARAMETERS` or `EC PARAMETERS` block (what
/// `openssl ecparam -genkey -name SM2` writes). Exactly one private key; the error names what the file
/// holds instead.
pub fn parse_private_key_pem(pem: &str) -> Result<SecretKey, String> {
    const ENCRYPTED: &str =
        "an encrypted (password-protected) key; store it unencrypted with mode 0600";
    if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(ENCRYPTED.into());
    }
    let blocks = pem_blocks(pem)?;
    let mut keys = Vec::new();
    for (label, text) in &blocks {
        match *label {
            // The curve's parameters, written before the key; the key names its curve itself.
            "SM2 PARAMETERS" | "EC PARAMETERS" => {}
            "PRIVATE KEY" | "EC PRIVATE KEY" | "SM2 PRIVATE KEY" => keys.push((*label, *text)),
            _ => {}
        }
    }
    let found = || {
        let labels: Vec<&str> = blocks.iter().map(|(l, _)| *l).collect();
        if labels.is_empty() {
            "no PEM block".to_string()
        } else {
            format!("only {}", labels.join(", "))
        }
    };
    match keys.as_slice() {
        [] => Err(format!(
            "no private key in the file ({}); an SM2 private key is a PEM `PRIVATE KEY` block, as \
             `openssl genpkey -algorithm SM2` or `gm-kms-plugin keygen` write",
            found()
        )),
        [("PRIVATE KEY", text)] => {
            SecretKey::from_pkcs8_pem(text).map_err(|e| pkcs8_mismatch(text, e))
        }
        // SEC1 `ECPrivateKey`: OpenSSL 3 labels it `SM2 PRIVATE KEY` (`openssl ec`), others `EC PRIVATE KEY`.
        [(label, text)] => sm2::pkcs8::SecretDocument::from_pem(text)
            .ok()
            .and_then(|(_, der)| SecretKey::from_sec1_der(der.as_bytes()).ok())
            .ok_or_else(|| {
                format!("the {label} block is not an SEC1 private key on the SM2 curve")
            }),
        _ => Err(format!(
            "{} private keys in one file; put one key in each file",
            keys.len()
        )),
    }
}

/// The PEM blocks of a text, in order: each block's label and its text from `-----BEGIN` to the end of
/// its `-----END` line. Text between blocks (comments, blank lines) is ignored, as OpenSSL does.
fn pem_blocks(pem: &str) -> Result<Vec<(&str, &str)>, String> {
    const BEGIN: &str = "-----BEGIN ";
    let mut blocks = Vec::new();
    let mut rest = pem;
    let mut offset = 0;
    while let Some(at) = rest.find(BEGIN) {
        let start = offset + at;
        let after = &pem[start + BEGIN.len()..];
        let label = after
            .find("-----")
            .and_then(|n| after.get(..n))
            .filter(|l| !l.contains('\n'))
            .ok_or_else(|| "a malformed PEM BEGIN line".to_string())?;
        let end_line = format!("-----END {label}-----");
        let end = pem[start..]
            .find(&end_line)
            .map(|n| start + n + end_line.len())
            .ok_or_else(|| format!("the {label} block has no END line"))?;
        blocks.push((label, &pem[start..end]));
        offset = end;
        rest = &pem[end..];
    }
    Ok(blocks)
}

/// Why a PKCS#8 `PRIVATE KEY` block is not an SM2 key, naming the algorithm or curve it holds.
fn pkcs8_mismatch(text: &str, e: sm2::pkcs8::Error) -> String {
    use sm2::pkcs8::{PrivateKeyInfoRef, SecretDocument};
    let oids = SecretDocument::from_pem(text).ok().and_then(|(_, doc)| {
        PrivateKeyInfoRef::try_from(doc.as_bytes())
            .ok()
            .and_then(|info| info.algorithm.oids().ok())
            .map(|(alg, param)| (alg.to_string(), param.map(|p| p.to_string())))
    });
    match oids {
        Some((alg, Some(curve))) if alg == EC_PUBLIC_KEY_OID && curve != SM2_CURVE_OID => {
            format!(
                "an EC key on curve {curve}{}, not SM2 ({SM2_CURVE_OID})",
                match curve.as_str() {
                    "1.2.840.10045.3.1.7" => " (P-256)",
                    "1.3.132.0.34" => " (P-384)",
                    "1.3.132.0.35" => " (P-521)",
                    _ => "",
                }
            )
        }
        Some((alg, _)) if alg != EC_PUBLIC_KEY_OID && alg != SM2_CURVE_OID => format!(
            "a PKCS#8 key of algorithm {alg}{}, not SM2",
            if alg == "1.2.840.113549.1.1.1" {
                " (RSA)"
            } else {
                ""
            }
        ),
        _ => format!("the PRIVATE KEY block is not a PKCS#8 SM2 private key ({e})"),
    }
}

/// The public key as `openssl pkey -pubout -outform DER` writes it: SubjectPublicKeyInfo with
/// `id-ecPublicKey`, the SM2 curve OID as parameter, and the uncompressed point.
pub fn public_key_der(public: &PublicKey) -> Result<Vec<u8>, ProviderError> {
    public
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| ProviderError::Config(format!("cannot encode SM2 public key: {e}").into()))
}

/// `sm2-` + hex of the first 8 bytes of SM3(SPKI DER) (DESIGN §4): every master holding the same key
/// derives the same id.
pub fn derive_kek_id(public: &PublicKey) -> Result<String, ProviderError> {
    let digest = Sm3::digest(public_key_der(public)?);
    Ok(format!(
        "sm2-{}",
        hex::encode(digest.get(..8).unwrap_or_default())
    ))
}

/// An SM2 ciphertext (GB/T 32918.4) in its parts: C1 = (`x`, `y`), C3 = `hash`, C2 = `ciphertext`.
///
/// This is the bridge between the wrapped data key of the `sm2` provider (the GM/T 0009 DER `SM2Cipher`)
/// and a cipher machine's `ECCCipher` struct (the `sdf` provider): one SM2 key has one ciphertext format
/// wherever it sits (DESIGN §4). Both directions go through the same RustCrypto `Cipher` type that
/// [`Sm2Provider`] encrypts and decrypts with, so the DER is byte-identical to what it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sm2CipherParts {
    /// C1 x coordinate, big-endian, 32 bytes.
    pub x: [u8; 32],
    /// C1 y coordinate, big-endian, 32 bytes.
    pub y: [u8; 32],
    /// C3 = SM3(x2 || M || y2).
    pub hash: [u8; 32],
    /// C2, as long as the plaintext.
    pub ciphertext: Vec<u8>,
}

type SmCipher<'a> = sm2::pke::Cipher<'a, sm2::Sm2, Sm3>;

// Untrusted bytes in (a wrapped key from a ciphertext, or a device's answer): no panicking operations.
#[deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]
impl Sm2CipherParts {
    /// The GM/T 0009 DER `SM2Cipher` SEQUENCE { x INTEGER, y INTEGER, hash OCTET STRING,
    /// ciphertext OCTET STRING }. Errs if C1 is not a point of the curve or C2 is empty.
    pub fn to_der(&self) -> Result<Vec<u8>, String> {
        use sm2::pkcs8::der::Encode;
        if self.ciphertext.is_empty() {
            return Err("empty C2".into());
        }
        // C1 || C3 || C2 with C1 as the uncompressed point: the form `Cipher::from_slice` reads, which
        // checks that C1 is on the curve.
        let mut raw = Zeroizing::new(Vec::with_capacity(1 + 32 * 3 + self.ciphertext.len()));
        raw.push(0x04);
        raw.extend_from_slice(&self.x);
        raw.extend_from_slice(&self.y);
        raw.extend_from_slice(&self.hash);
        raw.extend_from_slice(&self.ciphertext);
        let cipher = SmCipher::from_slice(&raw, sm2::pke::Mode::C1C3C2)
            .map_err(|_| "C1 is not a point of the SM2 curve".to_string())?;
        cipher
            .to_der()
            .map_err(|e| format!("cannot encode SM2Cipher: {e}"))
    }

    /// Parses a DER `SM2Cipher` (total: any bytes give parts or an error). C1 must be a point of the
    /// curve and C3 32 bytes; trailing bytes are refused.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        use sm2::elliptic_curve::sec1::{Coordinates, ToSec1Point};
        use sm2::pkcs8::der::Decode;
        let cipher = SmCipher::from_der(der).map_err(|e| format!("not a DER SM2Cipher: {e}"))?;
        let point = cipher.c1().to_sec1_point(false);
        let (x, y) = match point.coordinates() {
            Coordinates::Uncompressed { x, y } => (x, y),
            _ => return Err("C1 is not an uncompressed point".into()),
        };
        let field = |b: &[u8]| -> Result<[u8; 32], String> {
            b.try_into()
                .map_err(|_| format!("a 32-byte field is {} bytes", b.len()))
        };
        Ok(Self {
            x: field(x)?,
            y: field(y)?,
            hash: field(cipher.c3())?,
            ciphertext: cipher.c2().to_vec(),
        })
    }
}

/// A new key pair as PEM texts (PKCS#8 private, SPKI public), and the derived KEK id.
pub fn generate_pem() -> Result<(Zeroizing<String>, String, String), ProviderError> {
    let mut rng = getrandom::SysRng;
    let secret = <SecretKey as sm2::elliptic_curve::Generate>::try_generate_from_rng(&mut rng)
        .map_err(|e| ProviderError::Config(format!("operating system RNG failed: {e}").into()))?;
    let private = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| ProviderError::Config(format!("cannot encode private key: {e}").into()))?;
    let public = secret
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| ProviderError::Config(format!("cannot encode public key: {e}").into()))?;
    let id = derive_kek_id(&secret.public_key())?;
    Ok((Zeroizing::new(private.to_string()), public, id))
}

impl Sm2Provider {
    fn wrap_sync(&self, dk: &DataKey) -> Result<Vec<u8>, ProviderError> {
        self.encrypting
            .encrypt_der(&mut getrandom::SysRng, dk.as_bytes())
            .map_err(|_| ProviderError::Unavailable("SM2 encryption failed (RNG)".into()))
    }

    fn unwrap_sync(&self, wrapped: &[u8]) -> Result<DataKey, ProviderError> {
        let plain = Zeroizing::new(
            DecryptingKey::new_with_mode(self.secret.to_nonzero_scalar(), Mode::C1C3C2)
                .decrypt_der(wrapped)
                .map_err(|_| {
                    ProviderError::InvalidWrappedKey(
                        format!(
                            "SM2 decryption under {} failed (corrupted, or wrapped by another key)",
                            self.kek_id
                        )
                        .into(),
                    )
                })?,
        );
        DataKey::from_slice(&plain).ok_or_else(|| {
            ProviderError::InvalidWrappedKey(
                format!(
                    "SM2-wrapped key under {} is {} bytes, not 16",
                    self.kek_id,
                    plain.len()
                )
                .into(),
            )
        })
    }
}

#[async_trait]
impl KeyProvider for Sm2Provider {
    fn kek_id(&self) -> &str {
        &self.kek_id
    }

    fn kind(&self) -> &'static str {
        "sm2"
    }

    async fn wrap(&self, dk: &DataKey) -> Result<Vec<u8>, ProviderError> {
        self.wrap_sync(dk)
    }

    async fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, ProviderError> {
        self.unwrap_sync(wrapped)
    }

    async fn describe(&self) -> Result<String, ProviderError> {
        Ok(format!("sm2 key {}: local key pair loaded", self.kek_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Sm2Provider {
        let (pem, _, id) = generate_pem().unwrap();
        let p = Sm2Provider::from_secret_key(parse_private_key_pem(&pem).unwrap(), None).unwrap();
        assert_eq!(p.kek_id(), id);
        p
    }

    #[tokio::test]
    async fn wrap_unwrap_round_trip_and_der_shape() {
        let p = provider();
        let dk = DataKey::generate().unwrap();
        let w = p.wrap(&dk).await.unwrap();
        assert_eq!(w[0], 0x30, "DER SEQUENCE");
        assert!(w.len() < 140, "wrapped DK is {} bytes", w.len());
        assert_eq!(p.unwrap(&w).await.unwrap(), dk);
        // Randomised: the same key wraps differently each time.
        assert_ne!(p.wrap(&dk).await.unwrap(), w);
    }

    #[tokio::test]
    async fn another_key_or_a_flipped_bit_is_rejected() {
        let p = provider();
        let q = provider();
        let w = p.wrap(&DataKey::generate().unwrap()).await.unwrap();
        assert!(matches!(
            q.unwrap(&w).await,
            Err(ProviderError::InvalidWrappedKey(_))
        ));
        for i in 0..w.len() {
            let mut t = w.clone();
            t[i] ^= 0x80;
            assert!(p.unwrap(&t).await.is_err(), "flip at {i} accepted");
        }
        assert!(p.unwrap(&[]).await.is_err());
    }

    #[test]
    fn kek_id_shape_and_explicit_id() {
        let p = provider();
        assert!(p.kek_id().starts_with("sm2-"));
        assert_eq!(p.kek_id().len(), 4 + 16);
        let (pem, _, _) = generate_pem().unwrap();
        let q = Sm2Provider::from_secret_key(
            parse_private_key_pem(&pem).unwrap(),
            Some("prod-2026".into()),
        )
        .unwrap();
        assert_eq!(q.kek_id(), "prod-2026");
        assert!(!format!("{q:?}").contains("decrypting"));
    }

    #[tokio::test]
    async fn cipher_parts_round_trip_byte_for_byte() {
        let p = provider();
        for _ in 0..32 {
            let w = p.wrap(&DataKey::generate().unwrap()).await.unwrap();
            let parts = Sm2CipherParts::from_der(&w).unwrap();
            assert_eq!(parts.ciphertext.len(), 16);
            // Short coordinates (a leading zero byte, 1 in 128 keys) come back as 32 bytes, and the DER
            // built from the parts is what the provider wrote.
            assert_eq!(parts.to_der().unwrap(), w);
        }
    }

    #[test]
    fn cipher_parts_refuse_garbage() {
        assert!(Sm2CipherParts::from_der(&[]).is_err());
        assert!(Sm2CipherParts::from_der(&[0x30, 0x00]).is_err());
        assert!(Sm2CipherParts::from_der(&[0x30, 0x81]).is_err());
        let bogus = Sm2CipherParts {
            x: [1; 32],
            y: [2; 32],
            hash: [3; 32],
            ciphertext: vec![4; 16],
        };
        assert!(bogus.to_der().unwrap_err().contains("curve"));
        let empty = Sm2CipherParts {
            ciphertext: Vec::new(),
            ..bogus
        };
        assert!(empty.to_der().is_err());
    }

    #[test]
    fn development_key_ids_are_those_of_the_keys_in_keys_dir() {
        for (pem, id) in [
            (
                include_str!("../../keys/dev-sm2-key.pem"),
                DEVELOPMENT_KEY_IDS[0],
            ),
            (
                include_str!("../../keys/dev-sm2-key-previous.pem"),
                DEVELOPMENT_KEY_IDS[1],
            ),
        ] {
            let p =
                Sm2Provider::from_secret_key(parse_private_key_pem(pem).unwrap(), None).unwrap();
            assert_eq!(p.kek_id(), id);
            assert!(is_development_key(id));
        }
        assert!(!is_development_key(provider().kek_id()));
    }

    #[test]
    fn garbage_pem_is_a_clear_error() {
        assert!(
            parse_private_key_pem("hello")
                .unwrap_err()
                .contains("no private key in the file (no PEM block)")
        );
        assert!(
            parse_private_key_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err()
                .contains("not a PKCS#8 SM2 private key")
        );
        let params =
            "-----BEGIN SM2 PARAMETERS-----\nBggqgRzPVQGCLQ==\n-----END SM2 PARAMETERS-----\n";
        let e = parse_private_key_pem(params).unwrap_err();
        assert!(e.contains("only SM2 PARAMETERS"), "{e}");
        let (_, public, _) = generate_pem().unwrap();
        let e = parse_private_key_pem(&public).unwrap_err();
        assert!(e.contains("only PUBLIC KEY"), "{e}");
        let (key, _, _) = generate_pem().unwrap();
        let e = parse_private_key_pem(&format!("{}{}", *key, *key)).unwrap_err();
        assert!(e.contains("2 private keys"), "{e}");
        let e = parse_private_key_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap_err();
        assert!(e.contains("no END line"), "{e}");
        assert!(
            parse_private_key_pem("-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
                .unwrap_err()
                .contains("encrypted")
        );
    }
}
