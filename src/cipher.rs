//! The payload cipher seam. A [`Cipher`] is an AEAD keyed with one data key; the envelope picks it by the
//! cipher id byte of the ciphertext header. SM4-GCM (GB/T 32907 block cipher in NIST SP 800-38D GCM, as
//! RFC 8998 specifies for TLS) is the one we ship, built from RustCrypto's `sm4` and the generic GCM of
//! `aes-gcm`: no hand-written cryptography.

use aes_gcm::aead::array::Array;
use aes_gcm::aead::consts::U12;
use aes_gcm::{AeadInOut, AesGcm, KeyInit};
use sm4::Sm4;

use crate::secret::DataKey;

/// Nonce length of every cipher format 1 knows (96 bits, the GCM default).
pub const NONCE_LEN: usize = 12;
/// Authentication tag length (128 bits).
pub const TAG_LEN: usize = 16;

/// No data key seals more messages than this, whatever the config says: the bound under which random
/// 96-bit GCM nonces stay safe (NIST SP 800-38D §8.3). It belongs to the cipher, not to the policy that
/// obeys it.
pub const HARD_MAX_USES: u64 = 1 << 32;

/// Cipher id byte of SM4-GCM in the ciphertext header.
pub const SM4_GCM: u8 = 0x01;

/// The AEAD refused: on open, the tag did not verify (tampered data, wrong key, wrong header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authenticated decryption failed")]
pub struct CipherError;

/// An authenticated cipher keyed with one data key.
pub trait Cipher: Send + Sync {
    /// The id byte this cipher is recorded under in ciphertext headers.
    fn id(&self) -> u8;

    /// Encrypts `plaintext` and appends ciphertext then tag to `out`, leaving what `out` held before.
    fn seal_append(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CipherError>;

    /// Verifies and decrypts `sealed` (ciphertext then tag).
    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, CipherError>;
}

/// A keyed cipher for a header's cipher id, or `None` for an id this build does not know.
pub fn for_id(id: u8, key: &DataKey) -> Option<Box<dyn Cipher>> {
    match id {
        SM4_GCM => Some(Box::new(Sm4Gcm::new(key))),
        _ => None,
    }
}

/// SM4-GCM with a 96-bit nonce and a 128-bit tag. Holds the expanded key schedule and GHASH key, so one
/// instance per data key serves every message under it; both are zeroized on drop.
pub struct Sm4Gcm(AesGcm<Sm4, U12>);

impl Sm4Gcm {
    /// The cipher keyed with `key`.
    pub fn new(key: &DataKey) -> Self {
        // The cipher keeps its own (zeroized) key schedule; this copy is wiped as soon as it is built.
        let key = zeroize::Zeroizing::new(Array::from(*key.as_bytes()));
        Self(AesGcm::new(&key))
    }

    /// From raw key bytes (known-answer tests and the oracle cross-check).
    pub fn from_key_bytes(key: [u8; 16]) -> Self {
        Self::new(&DataKey::from_bytes(key))
    }
}

impl Cipher for Sm4Gcm {
    fn id(&self) -> u8 {
        SM4_GCM
    }

    fn seal_append(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CipherError> {
        let start = out.len();
        out.reserve(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let body = out.get_mut(start..).ok_or(CipherError)?;
        let tag = self
            .0
            .encrypt_inout_detached(&Array::from(*nonce), aad, body.into())
            .map_err(|_| CipherError)?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, CipherError> {
        let split = sealed.len().checked_sub(TAG_LEN).ok_or(CipherError)?;
        let (ct, tag) = sealed.split_at(split);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| CipherError)?;
        let mut buf = ct.to_vec();
        match self.0.decrypt_inout_detached(
            &Array::from(*nonce),
            aad,
            buf.as_mut_slice().into(),
            &Array::from(tag),
        ) {
            Ok(()) => Ok(buf),
            Err(_) => {
                // GCM decrypts before it compares; scrub what would be unauthenticated plaintext.
                zeroize::Zeroize::zeroize(&mut buf);
                Err(CipherError)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 8998 Appendix A.1 (SM4-GCM).
    #[test]
    fn rfc8998_a1_sm4_gcm() {
        let key: [u8; 16] = h("0123456789ABCDEFFEDCBA9876543210").try_into().unwrap();
        let nonce: [u8; 12] = h("00001234567800000000ABCD").try_into().unwrap();
        let aad = h("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2");
        let pt = h(concat!(
            "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD",
            "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
        ));
        let expected_ct = h(concat!(
            "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735",
            "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
        ));
        let expected_tag = h("83DE3541E4C2B58177E065A9BF7B62EC");
        let c = Sm4Gcm::from_key_bytes(key);
        let mut out = b"prefix".to_vec();
        c.seal_append(&nonce, &aad, &pt, &mut out).unwrap();
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(&out[6..6 + pt.len()], &expected_ct[..]);
        assert_eq!(&out[6 + pt.len()..], &expected_tag[..]);
        assert_eq!(c.open(&nonce, &aad, &out[6..]).unwrap(), pt);
    }

    #[test]
    fn tampering_anywhere_is_rejected() {
        let c = Sm4Gcm::from_key_bytes([7; 16]);
        let nonce = [9; 12];
        let mut sealed = Vec::new();
        c.seal_append(&nonce, b"aad", b"payload", &mut sealed)
            .unwrap();
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert_eq!(c.open(&nonce, b"aad", &t), Err(CipherError), "byte {i}");
        }
        assert_eq!(c.open(&nonce, b"aaD", &sealed), Err(CipherError));
        assert_eq!(c.open(&[8; 12], b"aad", &sealed), Err(CipherError));
        assert_eq!(
            c.open(&nonce, b"aad", &sealed[..TAG_LEN - 1]),
            Err(CipherError)
        );
        let other = Sm4Gcm::from_key_bytes([6; 16]);
        assert_eq!(other.open(&nonce, b"aad", &sealed), Err(CipherError));
    }

    #[test]
    fn unknown_cipher_id_has_no_cipher() {
        let k = DataKey::from_bytes([1; 16]);
        assert!(for_id(SM4_GCM, &k).is_some());
        assert!(for_id(0x02, &k).is_none());
        assert!(for_id(0x00, &k).is_none());
    }
}
