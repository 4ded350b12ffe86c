//! Profile-independent values that cross the safe API: 256-bit SM2 coordinates as plain byte arrays.

/// An SM2 public key as exported by `SDF_ExportEncPublicKey_ECC`: big-endian 256-bit coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EccPublicKey {
    /// x coordinate, big-endian.
    pub x: [u8; 32],
    /// y coordinate, big-endian.
    pub y: [u8; 32],
}

impl EccPublicKey {
    /// The SEC 1 uncompressed point `04 || x || y` (65 bytes), as it sits in a SubjectPublicKeyInfo.
    pub fn to_sec1_uncompressed(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        let (tag, rest) = out.split_at_mut(1);
        let (x, y) = rest.split_at_mut(32);
        tag.copy_from_slice(&[0x04]);
        x.copy_from_slice(&self.x);
        y.copy_from_slice(&self.y);
        out
    }

    /// Parses `04 || x || y`; `None` for any other length or tag. (Whether the point is on the curve is
    /// the SM2 implementation's business.)
    pub fn from_sec1_uncompressed(bytes: &[u8]) -> Option<Self> {
        let (&tag, rest) = bytes.split_first()?;
        if tag != 0x04 || rest.len() != 64 {
            return None;
        }
        let (x, y) = rest.split_at(32);
        Some(EccPublicKey {
            x: x.try_into().ok()?,
            y: y.try_into().ok()?,
        })
    }
}

/// An SM2 ciphertext (GB/T 32918.4) in its parts, as `SDF_ExternalEncrypt_ECC` returns it and
/// `SDF_InternalDecrypt_ECC` takes it: C1 = (x, y), C3 = `hash` (SM3), C2 = `ciphertext` (as long as the
/// plaintext). Converting to or from the GM/T 0009 DER `SM2Cipher` is the caller's business.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EccCipher {
    /// C1 x coordinate, big-endian.
    pub x: [u8; 32],
    /// C1 y coordinate, big-endian.
    pub y: [u8; 32],
    /// C3 = SM3(x2 || M || y2), the struct's `M` field.
    pub hash: [u8; 32],
    /// C2, the struct's `C[L]`.
    pub ciphertext: Vec<u8>,
}

/// What `SDF_GetDeviceInfo` reports, strings trimmed of trailing NUL and space (bytes that are not
/// UTF-8 are replaced, so a GBK vendor name stays printable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `IssuerName[40]`: the manufacturer.
    pub issuer: String,
    /// `DeviceName[16]`: the model.
    pub device_name: String,
    /// `DeviceSerial[16]`: the serial number.
    pub serial: String,
    /// `DeviceVersion`.
    pub device_version: u32,
    /// `StandardVersion`: the GM/T 0018 version the device claims.
    pub standard_version: u32,
    /// `AsymAlgAbility[2]`: asymmetric algorithm bits, modulus lengths.
    pub asym_alg_ability: [u32; 2],
    /// `SymAlgAbility`.
    pub sym_alg_ability: u32,
    /// `HashAlgAbility`.
    pub hash_alg_ability: u32,
    /// `BufferSize`: largest file the device stores.
    pub buffer_size: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec1_round_trip() {
        let k = EccPublicKey {
            x: [1; 32],
            y: [2; 32],
        };
        let b = k.to_sec1_uncompressed();
        assert_eq!(b[0], 4);
        assert_eq!(EccPublicKey::from_sec1_uncompressed(&b), Some(k));
        assert_eq!(EccPublicKey::from_sec1_uncompressed(&b[..64]), None);
        let mut c = b;
        c[0] = 2;
        assert_eq!(EccPublicKey::from_sec1_uncompressed(&c), None);
        assert_eq!(EccPublicKey::from_sec1_uncompressed(&[]), None);
    }
}
