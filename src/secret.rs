//! Secret-bearing value types. Each one zeroizes its bytes on drop and never prints them: `Debug` is
//! redacted so a stray `{:?}` in a log line or error cannot leak key material or credentials.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of a data key in bytes (SM4 has a 128-bit key).
pub(crate) const DATA_KEY_LEN: usize = 16;

/// A plaintext data key (DK): 16 random bytes that seal payloads with SM4-GCM.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct DataKey([u8; DATA_KEY_LEN]);

impl DataKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut key = [0u8; DATA_KEY_LEN];
        getrandom::fill(&mut key)?;
        Ok(Self(key))
    }

    /// Takes ownership of key bytes; the caller's copy should itself be zeroizing.
    pub fn from_bytes(bytes: [u8; DATA_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Accepts exactly 16 bytes, as unwrapped by a provider; anything else is `None`.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; DATA_KEY_LEN] = bytes.try_into().ok()?;
        Some(Self(arr))
    }

    /// The key bytes (to key a cipher; never to log).
    pub fn as_bytes(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// A credential or other secret text (JD Cloud `SecretKey`, `AccessKey`).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Takes ownership of `s`; it is zeroized when dropped.
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// The secret itself; call sites are the few places that must use it (request signing).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secret_bytes() {
        let dk = DataKey::from_bytes([0xAB; DATA_KEY_LEN]);
        let shown = format!("{dk:?}");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        let s = SecretString::new("hunter2-secret".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
    }

    #[test]
    fn data_key_length_is_enforced() {
        assert!(DataKey::from_slice(&[1u8; 15]).is_none());
        assert!(DataKey::from_slice(&[1u8; 17]).is_none());
        assert!(DataKey::from_slice(&[1u8; 16]).is_some());
    }

    #[test]
    fn generated_keys_differ() {
        let a = DataKey::generate().expect("os rng");
        let b = DataKey::generate().expect("os rng");
        assert_ne!(a, b);
    }
}
