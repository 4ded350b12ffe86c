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
    decrypting: DecryptingKey,
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
            .map_err(|e| ProviderError::Config(format!("Sm2PrivateKeyFile: {e}")))?;
        let pem = std::str::from_utf8(&bytes).map_err(|_| {
            ProviderError::Config(format!(
                "Sm2PrivateKeyFile: {} is not a PEM file",
                path.display()
            ))
        })?;
        let secret = parse_private_key_pem(pem).map_err(|why| {
            ProviderError::Config(format!("Sm2PrivateKeyFile: {}: {why}", path.display()))
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
            decrypting: DecryptingKey::new_with_mode(secret.to_nonzero_scalar(), Mode::C1C3C2),
        })
    }
}

/// Accepts what OpenSSL writes: PKCS#8 (`openssl genpkey -algorithm SM2`) or SEC1
/// (`openssl ecparam -genkey -name SM2`).
pub fn parse_private_key_pem(pem: &str) -> Result<SecretKey, String> {
    if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(
            "an encrypted (password-protected) key; store it unencrypted with mode 0600".into(),
        );
    }
    if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
        return SecretKey::from_sec1_pem(pem)
            .map_err(|_| "not an SM2 SEC1 private key".to_string());
    }
    SecretKey::from_pkcs8_pem(pem).map_err(|_| {
        "not a PKCS#8 PEM SM2 private key (openssl genpkey -algorithm SM2 writes one)".into()
    })
}

/// The public key as `openssl pkey -pubout -outform DER` writes it: SubjectPublicKeyInfo with
/// `id-ecPublicKey`, the SM2 curve OID as parameter, and the uncompressed point.
pub fn public_key_der(public: &PublicKey) -> Result<Vec<u8>, ProviderError> {
    public
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| ProviderError::Config(format!("cannot encode SM2 public key: {e}")))
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

/// A new key pair as PEM texts (PKCS#8 private, SPKI public), and the derived KEK id.
pub fn generate_pem() -> Result<(Zeroizing<String>, String, String), ProviderError> {
    let mut rng = getrandom::SysRng;
    let secret = <SecretKey as sm2::elliptic_curve::Generate>::try_generate_from_rng(&mut rng)
        .map_err(|e| ProviderError::Config(format!("operating system RNG failed: {e}")))?;
    let private = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| ProviderError::Config(format!("cannot encode private key: {e}")))?;
    let public = secret
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| ProviderError::Config(format!("cannot encode public key: {e}")))?;
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
        let plain = Zeroizing::new(self.decrypting.decrypt_der(wrapped).map_err(|_| {
            ProviderError::InvalidWrappedKey(format!(
                "SM2 decryption under {} failed (corrupted, or wrapped by another key)",
                self.kek_id
            ))
        })?);
        DataKey::from_slice(&plain).ok_or_else(|| {
            ProviderError::InvalidWrappedKey(format!(
                "SM2-wrapped key under {} is {} bytes, not 16",
                self.kek_id,
                plain.len()
            ))
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

    #[test]
    fn garbage_pem_is_a_clear_error() {
        assert!(
            parse_private_key_pem("hello")
                .unwrap_err()
                .contains("PKCS#8")
        );
        assert!(
            parse_private_key_pem("-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
                .unwrap_err()
                .contains("encrypted")
        );
    }
}
