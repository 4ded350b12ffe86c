//! The C structs of each profile, declared here from the facts listed in [`crate::profile`] (our own
//! declarations; no vendor header is copied), and their conversion to and from the safe types.
//!
//! Packing: GmSSL's transcription of GM/T 0018 declares the structs under `#pragma pack(1)`, Sansec's
//! `swsds.h` declares them without a pragma. In every struct below each field's offset is already a
//! multiple of its alignment (byte arrays, then `u32`s at offsets divisible by 4), so the packed and the
//! natural C layouts are the same bytes; we use `#[repr(C)]` (references to fields stay sound) and
//! check every size and offset at compile time.
//!
//! Coordinates: the standard's `ECCref_MAX_LEN` is 64 bytes; a 256-bit SM2 value sits right-aligned
//! (big-endian, 32 leading zero bytes). Reading refuses non-zero leading bytes (a left-aligned vendor
//! or a longer curve) instead of misreading the key.

use std::mem::{offset_of, size_of};

use crate::types::{DeviceInfo, EccCipher, EccPublicKey};

/// `ECCref_MAX_LEN` of the GM/T 0018 2012/2023 layout.
pub(crate) const STD_COORD: usize = 64;
/// `ECCref_MAX_LEN` of the Sansec layout.
pub(crate) const SANSEC_COORD: usize = 32;
/// Room for `C[L]` behind a standard `ECCCipher` that this crate allocates (the standard's `C` is a
/// flexible array; a 16-byte data key needs 16).
pub(crate) const STD_C_CAPACITY: usize = 1024;
/// Sansec's fixed `C[ECCref_MAX_CIPHER_LEN]`.
pub(crate) const SANSEC_C_LEN: usize = 136;
/// Bytes of slack behind every output struct this crate hands to a library, so that a library whose
/// idea of a layout is larger than ours still writes into memory we own.
pub(crate) const SLACK: usize = 1024;
/// `bits` of a 256-bit SM2 key.
pub(crate) const SM2_BITS: u32 = 256;

/// `ECCrefPublicKey`, 2012/2023: `{ bits, x[64], y[64] }`.
#[repr(C)]
pub(crate) struct StdPublicKey {
    pub(crate) bits: u32,
    pub(crate) x: [u8; STD_COORD],
    pub(crate) y: [u8; STD_COORD],
}

/// `ECCrefPublicKey`, Sansec: `{ bits, x[32], y[32] }`.
#[repr(C)]
pub(crate) struct SansecPublicKey {
    pub(crate) bits: u32,
    pub(crate) x: [u8; SANSEC_COORD],
    pub(crate) y: [u8; SANSEC_COORD],
}

/// The fixed head of `ECCCipher`, 2012/2023: `{ x[64], y[64], M[32], L }`, followed in memory by
/// `C[L]`.
#[repr(C)]
pub(crate) struct StdCipherHead {
    pub(crate) x: [u8; STD_COORD],
    pub(crate) y: [u8; STD_COORD],
    pub(crate) m: [u8; 32],
    pub(crate) l: u32,
}

/// A whole standard `ECCCipher` with room for [`STD_C_CAPACITY`] bytes of `C`.
#[repr(C)]
pub(crate) struct StdCipher {
    pub(crate) head: StdCipherHead,
    pub(crate) c: [u8; STD_C_CAPACITY],
}

/// `ECCCipher`, Sansec: `{ clength, x[32], y[32], C[136], M[32] }`.
#[repr(C)]
pub(crate) struct SansecCipher {
    pub(crate) clength: u32,
    pub(crate) x: [u8; SANSEC_COORD],
    pub(crate) y: [u8; SANSEC_COORD],
    pub(crate) c: [u8; SANSEC_C_LEN],
    pub(crate) m: [u8; 32],
}

/// `DEVICEINFO` (identical in all three profiles).
#[repr(C)]
pub(crate) struct RawDeviceInfo {
    pub(crate) issuer_name: [u8; 40],
    pub(crate) device_name: [u8; 16],
    pub(crate) device_serial: [u8; 16],
    pub(crate) device_version: u32,
    pub(crate) standard_version: u32,
    pub(crate) asym_alg_ability: [u32; 2],
    pub(crate) sym_alg_ability: u32,
    pub(crate) hash_alg_ability: u32,
    pub(crate) buffer_size: u32,
}

/// An output struct followed by [`SLACK`] spare bytes.
#[repr(C)]
pub(crate) struct WithSlack<T> {
    pub(crate) value: T,
    slack: [u8; SLACK],
}

impl<T> WithSlack<T> {
    pub(crate) fn new(value: T) -> Box<Self> {
        Box::new(WithSlack {
            value,
            slack: [0; SLACK],
        })
    }
}

// The layouts, byte for byte.
const _: () = {
    assert!(size_of::<StdPublicKey>() == 4 + 64 + 64);
    assert!(offset_of!(StdPublicKey, x) == 4);
    assert!(offset_of!(StdPublicKey, y) == 68);
    assert!(size_of::<SansecPublicKey>() == 4 + 32 + 32);
    assert!(offset_of!(SansecPublicKey, y) == 36);
    assert!(size_of::<StdCipherHead>() == 64 + 64 + 32 + 4);
    assert!(offset_of!(StdCipherHead, m) == 128);
    assert!(offset_of!(StdCipherHead, l) == 160);
    assert!(offset_of!(StdCipher, c) == 164);
    assert!(size_of::<StdCipher>() == 164 + STD_C_CAPACITY);
    assert!(size_of::<SansecCipher>() == 4 + 32 + 32 + 136 + 32);
    assert!(offset_of!(SansecCipher, x) == 4);
    assert!(offset_of!(SansecCipher, c) == 68);
    assert!(offset_of!(SansecCipher, m) == 204);
    assert!(size_of::<RawDeviceInfo>() == 40 + 16 + 16 + 7 * 4);
    assert!(offset_of!(RawDeviceInfo, device_version) == 72);
    assert!(offset_of!(RawDeviceInfo, buffer_size) == 96);
    assert!(offset_of!(WithSlack<StdCipher>, value) == 0);
};

/// Writes a 256-bit value right-aligned into an `N`-byte field (`N` ≥ 32).
fn put_coord<const N: usize>(v: &[u8; 32]) -> [u8; N] {
    let mut out = [0u8; N];
    let (_, tail) = out.split_at_mut(N - 32);
    tail.copy_from_slice(v);
    out
}

/// Reads a 256-bit value from an `N`-byte field; the leading `N - 32` bytes must be zero.
fn get_coord<const N: usize>(field: &[u8; N]) -> Result<[u8; 32], &'static str> {
    let (lead, tail) = field.split_at(N - 32);
    if lead.iter().any(|&b| b != 0) {
        return Err("coordinate wider than 256 bits or not right-aligned");
    }
    tail.try_into()
        .map_err(|_| "coordinate field shorter than 32 bytes")
}

/// A coordinate of all zeros: never part of a real key or ciphertext, but exactly what the upper half of
/// a right-aligned 64-byte field looks like, i.e. a 2012/2023 library read with the Sansec profile.
fn check_nonzero(v: &[u8; 32]) -> Result<[u8; 32], &'static str> {
    if v.iter().all(|&b| b == 0) {
        Err("coordinate is zero (a 64-byte-coordinate library read with the sansec profile?)")
    } else {
        Ok(*v)
    }
}

fn check_bits(bits: u32) -> Result<(), &'static str> {
    if bits == SM2_BITS {
        Ok(())
    } else {
        Err("public key is not a 256-bit key")
    }
}

impl StdPublicKey {
    pub(crate) const ZERO: Self = StdPublicKey {
        bits: 0,
        x: [0; STD_COORD],
        y: [0; STD_COORD],
    };

    pub(crate) fn from_key(k: &EccPublicKey) -> Self {
        StdPublicKey {
            bits: SM2_BITS,
            x: put_coord(&k.x),
            y: put_coord(&k.y),
        }
    }

    pub(crate) fn to_key(&self) -> Result<EccPublicKey, &'static str> {
        check_bits(self.bits)?;
        Ok(EccPublicKey {
            x: check_nonzero(&get_coord(&self.x)?)?,
            y: check_nonzero(&get_coord(&self.y)?)?,
        })
    }
}

impl SansecPublicKey {
    pub(crate) const ZERO: Self = SansecPublicKey {
        bits: 0,
        x: [0; SANSEC_COORD],
        y: [0; SANSEC_COORD],
    };

    pub(crate) fn from_key(k: &EccPublicKey) -> Self {
        SansecPublicKey {
            bits: SM2_BITS,
            x: k.x,
            y: k.y,
        }
    }

    pub(crate) fn to_key(&self) -> Result<EccPublicKey, &'static str> {
        check_bits(self.bits)?;
        Ok(EccPublicKey {
            x: check_nonzero(&self.x)?,
            y: check_nonzero(&self.y)?,
        })
    }
}

impl StdCipherHead {
    pub(crate) const ZERO: Self = StdCipherHead {
        x: [0; STD_COORD],
        y: [0; STD_COORD],
        m: [0; 32],
        l: 0,
    };

    /// The head for `c`; `None` if `C` is longer than a `u32` can say.
    pub(crate) fn from_cipher(c: &EccCipher) -> Option<Self> {
        Some(StdCipherHead {
            x: put_coord(&c.x),
            y: put_coord(&c.y),
            m: c.hash,
            l: u32::try_from(c.ciphertext.len()).ok()?,
        })
    }

    /// `L` as a length.
    pub(crate) fn len(&self) -> usize {
        usize::try_from(self.l).unwrap_or(usize::MAX)
    }

    /// The cipher made of this head and `c` (which the caller read as `C[L]`).
    pub(crate) fn to_cipher(&self, c: &[u8]) -> Result<EccCipher, &'static str> {
        if c.len() != self.len() {
            return Err("ECCCipher C does not have length L");
        }
        Ok(EccCipher {
            x: check_nonzero(&get_coord(&self.x)?)?,
            y: check_nonzero(&get_coord(&self.y)?)?,
            hash: self.m,
            ciphertext: c.to_vec(),
        })
    }
}

impl StdCipher {
    pub(crate) fn zeroed() -> Box<WithSlack<StdCipher>> {
        WithSlack::new(StdCipher {
            head: StdCipherHead::ZERO,
            c: [0; STD_C_CAPACITY],
        })
    }

    /// `c` in this layout; refuses a `C` longer than [`STD_C_CAPACITY`].
    pub(crate) fn from_cipher(c: &EccCipher) -> Result<Box<WithSlack<StdCipher>>, &'static str> {
        const TOO_LONG: &str = "ciphertext longer than this crate's ECCCipher buffer";
        let head = StdCipherHead::from_cipher(c).ok_or(TOO_LONG)?;
        let mut buf = StdCipher::zeroed();
        buf.value.head = head;
        buf.value
            .c
            .get_mut(..c.ciphertext.len())
            .ok_or(TOO_LONG)?
            .copy_from_slice(&c.ciphertext);
        Ok(buf)
    }

    /// Reads the cipher back, checking `L` against the buffer.
    pub(crate) fn to_cipher(&self) -> Result<EccCipher, &'static str> {
        let c = self
            .c
            .get(..self.head.len())
            .ok_or("ECCCipher L exceeds the buffer")?;
        self.head.to_cipher(c)
    }
}

impl SansecCipher {
    pub(crate) const ZERO: Self = SansecCipher {
        clength: 0,
        x: [0; SANSEC_COORD],
        y: [0; SANSEC_COORD],
        c: [0; SANSEC_C_LEN],
        m: [0; 32],
    };

    /// `c` in this layout; refuses a `C` longer than the fixed 136 bytes.
    pub(crate) fn from_cipher(c: &EccCipher) -> Result<Self, &'static str> {
        const TOO_LONG: &str = "ciphertext longer than the Sansec ECCCipher's C[136]";
        let mut out = SansecCipher::ZERO;
        out.clength = u32::try_from(c.ciphertext.len()).map_err(|_| TOO_LONG)?;
        out.x = c.x;
        out.y = c.y;
        out.m = c.hash;
        out.c
            .get_mut(..c.ciphertext.len())
            .ok_or(TOO_LONG)?
            .copy_from_slice(&c.ciphertext);
        Ok(out)
    }

    pub(crate) fn to_cipher(&self) -> Result<EccCipher, &'static str> {
        let len = usize::try_from(self.clength).unwrap_or(usize::MAX);
        let c = self
            .c
            .get(..len)
            .ok_or("ECCCipher clength exceeds C[136]")?;
        Ok(EccCipher {
            x: check_nonzero(&self.x)?,
            y: check_nonzero(&self.y)?,
            hash: self.m,
            ciphertext: c.to_vec(),
        })
    }
}

/// A fixed-size C string field as text: up to the first NUL, trailing spaces/NULs trimmed.
fn field_text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let text = field.get(..end).unwrap_or(field);
    String::from_utf8_lossy(text)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

/// `text` in an `N`-byte field, NUL-padded, cut at `N` bytes.
#[cfg(feature = "soft-device")]
fn text_field<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (dst, src) in out.iter_mut().zip(text.bytes()) {
        *dst = src;
    }
    out
}

impl RawDeviceInfo {
    pub(crate) const ZERO: Self = RawDeviceInfo {
        issuer_name: [0; 40],
        device_name: [0; 16],
        device_serial: [0; 16],
        device_version: 0,
        standard_version: 0,
        asym_alg_ability: [0; 2],
        sym_alg_ability: 0,
        hash_alg_ability: 0,
        buffer_size: 0,
    };

    pub(crate) fn to_info(&self) -> DeviceInfo {
        DeviceInfo {
            issuer: field_text(&self.issuer_name),
            device_name: field_text(&self.device_name),
            serial: field_text(&self.device_serial),
            device_version: self.device_version,
            standard_version: self.standard_version,
            asym_alg_ability: self.asym_alg_ability,
            sym_alg_ability: self.sym_alg_ability,
            hash_alg_ability: self.hash_alg_ability,
            buffer_size: self.buffer_size,
        }
    }

    #[cfg(feature = "soft-device")]
    pub(crate) fn from_info(info: &DeviceInfo) -> Self {
        RawDeviceInfo {
            issuer_name: text_field(&info.issuer),
            device_name: text_field(&info.device_name),
            device_serial: text_field(&info.serial),
            device_version: info.device_version,
            standard_version: info.standard_version,
            asym_alg_ability: info.asym_alg_ability,
            sym_alg_ability: info.sym_alg_ability,
            hash_alg_ability: info.hash_alg_ability,
            buffer_size: info.buffer_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> EccPublicKey {
        let mut x = [0u8; 32];
        let mut y = [0u8; 32];
        for i in 0..32 {
            x[i] = i as u8 + 1;
            y[i] = 0xff - i as u8;
        }
        EccPublicKey { x, y }
    }

    fn cipher(len: usize) -> EccCipher {
        EccCipher {
            x: [0x11; 32],
            y: [0x22; 32],
            hash: [0x33; 32],
            ciphertext: (0..len).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn std_public_key_is_right_aligned() {
        let raw = StdPublicKey::from_key(&key());
        assert_eq!(raw.bits, 256);
        assert_eq!(raw.x[..32], [0u8; 32]);
        assert_eq!(raw.x[32..], key().x);
        assert_eq!(raw.y[32..], key().y);
        assert_eq!(raw.to_key(), Ok(key()));
    }

    #[test]
    fn std_public_key_refuses_left_aligned_or_wrong_bits() {
        let mut raw = StdPublicKey::from_key(&key());
        raw.x = [0; 64];
        raw.x[..32].copy_from_slice(&key().x);
        assert!(raw.to_key().is_err());
        let mut raw = StdPublicKey::from_key(&key());
        raw.bits = 512;
        assert!(raw.to_key().is_err());
        assert!(StdPublicKey::ZERO.to_key().is_err());
    }

    #[test]
    fn sansec_public_key() {
        let raw = SansecPublicKey::from_key(&key());
        assert_eq!(raw.to_key(), Ok(key()));
        assert!(SansecPublicKey::ZERO.to_key().is_err());
    }

    #[test]
    fn a_standard_key_read_with_the_sansec_layout_is_refused() {
        let std = StdPublicKey::from_key(&key());
        let mut bytes = [0u8; 68];
        bytes[..4].copy_from_slice(&std.bits.to_ne_bytes());
        bytes[4..].copy_from_slice(&std.x); // what a 68-byte reader sees: bits, then x's 64 bytes
        let misread = SansecPublicKey {
            bits: u32::from_ne_bytes(bytes[..4].try_into().unwrap()),
            x: bytes[4..36].try_into().unwrap(),
            y: bytes[36..].try_into().unwrap(),
        };
        assert!(misread.to_key().is_err());
    }

    #[test]
    fn std_cipher_round_trip_and_bounds() {
        for len in [1, 16, 136, STD_C_CAPACITY] {
            let buf = StdCipher::from_cipher(&cipher(len)).unwrap();
            assert_eq!(buf.value.head.l as usize, len);
            assert_eq!(buf.value.to_cipher(), Ok(cipher(len)));
        }
        assert!(StdCipher::from_cipher(&cipher(STD_C_CAPACITY + 1)).is_err());
        let mut buf = StdCipher::from_cipher(&cipher(16)).unwrap();
        buf.value.head.l = STD_C_CAPACITY as u32 + 1;
        assert!(buf.value.to_cipher().is_err());
        buf.value.head.l = u32::MAX;
        assert!(buf.value.to_cipher().is_err());
    }

    #[test]
    fn sansec_cipher_round_trip_and_bounds() {
        for len in [1, 16, 136] {
            let raw = SansecCipher::from_cipher(&cipher(len)).unwrap();
            assert_eq!(raw.to_cipher(), Ok(cipher(len)));
        }
        assert!(SansecCipher::from_cipher(&cipher(137)).is_err());
        let mut raw = SansecCipher::from_cipher(&cipher(16)).unwrap();
        raw.clength = 137;
        assert!(raw.to_cipher().is_err());
    }

    #[test]
    fn device_info_strings_are_trimmed() {
        let mut raw = RawDeviceInfo::ZERO;
        raw.issuer_name[..6].copy_from_slice(b"Vendor");
        raw.issuer_name[6..10].copy_from_slice(b"    ");
        raw.device_name.copy_from_slice(b"HSM-1234        ");
        raw.device_serial[..4].copy_from_slice(b"0001");
        raw.device_serial[5] = b'x'; // after the first NUL: ignored
        raw.buffer_size = 7;
        let info = raw.to_info();
        assert_eq!(info.issuer, "Vendor");
        assert_eq!(info.device_name, "HSM-1234");
        assert_eq!(info.serial, "0001");
        assert_eq!(info.buffer_size, 7);
    }
}
