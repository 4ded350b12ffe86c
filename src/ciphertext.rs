//! The ciphertext layout, format 1 (DESIGN §2): where ciphertexts are parsed and headers written.
//!
//! ```text
//! "GMK" | 0x01 | cipher id | n | kek_id (n) | m (u16 BE) | wrapped DK (m) | nonce (12) | ciphertext | tag (16)
//! ```
//! The header is everything before the nonce and is the AAD of the payload seal, so no header byte can
//! change undetected. The parser is total: any input yields a [`Parsed`] or a [`FormatError`], it never
//! panics and never allocates.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use crate::cipher::{NONCE_LEN, TAG_LEN};

/// Bytes 0..3 of every format-1 ciphertext.
pub const MAGIC: [u8; 3] = *b"GMK";
/// The format version this build writes.
pub const FORMAT_1: u8 = 0x01;
/// Upper bound of the wrapped data key length field.
pub const MAX_WRAPPED_LEN: usize = 4096;
/// Upper bound of the KEK id length (one length byte).
pub const MAX_KEK_ID_LEN: usize = 255;

/// Why bytes are not a format-1 ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The first three bytes are not `GMK`.
    #[error("not a gm-kms-plugin ciphertext (no GMK magic)")]
    BadMagic,
    /// A format version this build does not read.
    #[error("unsupported ciphertext format version {0}")]
    UnsupportedVersion(u8),
    /// A cipher id this build does not know.
    #[error("unknown cipher id {0}")]
    UnknownCipher(u8),
    /// The bytes end before the named field.
    #[error("truncated ciphertext: {0} missing")]
    Truncated(&'static str),
    /// The key id length byte is zero.
    #[error("key id length must be 1..=255")]
    EmptyKekId,
    /// The key id is not UTF-8.
    #[error("key id is not UTF-8")]
    KekIdNotUtf8,
    /// The wrapped key length is zero or over the format's bound.
    #[error("wrapped data key length {0} is outside 1..=4096")]
    WrappedKeyLength(usize),
    /// Nothing after the nonce but the tag.
    #[error("ciphertext carries no payload")]
    EmptyPayload,
}

/// A parsed format-1 ciphertext, borrowing from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// Bytes `[0, 8+n+m)`: the AAD of the payload seal.
    pub header: &'a [u8],
    /// The cipher the payload is sealed with.
    pub cipher_id: u8,
    /// The key-encryption key that wrapped the data key.
    pub kek_id: &'a str,
    /// The wrapped data key, in the provider's format.
    pub wrapped_dk: &'a [u8],
    /// The payload seal's nonce.
    pub nonce: &'a [u8; NONCE_LEN],
    /// Payload ciphertext followed by the tag.
    pub sealed: &'a [u8],
}

/// Whether a cipher id is one this build can open. Checked while parsing, so that an unknown id is a
/// malformed ciphertext and never reaches a key provider.
fn known_cipher(id: u8) -> bool {
    id == crate::cipher::SM4_GCM
}

/// True when `bytes` begin like a format-1 ciphertext (magic only; [`parse`] decides the rest).
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// Splits `n` bytes off the front of `rest`, naming the field if they are missing.
fn take<'a>(rest: &mut &'a [u8], n: usize, field: &'static str) -> Result<&'a [u8], FormatError> {
    let (head, tail) = rest
        .split_at_checked(n)
        .ok_or(FormatError::Truncated(field))?;
    *rest = tail;
    Ok(head)
}

fn take_u8(rest: &mut &[u8], field: &'static str) -> Result<u8, FormatError> {
    let (first, tail) = rest.split_first().ok_or(FormatError::Truncated(field))?;
    *rest = tail;
    Ok(*first)
}

/// Parses a format-1 ciphertext.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, FormatError> {
    let mut rest = bytes;
    if take(&mut rest, MAGIC.len(), "magic").map_err(|_| FormatError::BadMagic)? != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = take_u8(&mut rest, "format version")?;
    if version != FORMAT_1 {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let cipher_id = take_u8(&mut rest, "cipher id")?;
    if !known_cipher(cipher_id) {
        return Err(FormatError::UnknownCipher(cipher_id));
    }
    let n = usize::from(take_u8(&mut rest, "key id length")?);
    if n == 0 {
        return Err(FormatError::EmptyKekId);
    }
    let kek_id = std::str::from_utf8(take(&mut rest, n, "key id")?)
        .map_err(|_| FormatError::KekIdNotUtf8)?;
    let m_bytes: [u8; 2] = take(&mut rest, 2, "wrapped key length")?
        .try_into()
        .map_err(|_| FormatError::Truncated("wrapped key length"))?;
    let m = usize::from(u16::from_be_bytes(m_bytes));
    if m == 0 || m > MAX_WRAPPED_LEN {
        return Err(FormatError::WrappedKeyLength(m));
    }
    let wrapped_dk = take(&mut rest, m, "wrapped key")?;
    let header_len = bytes.len().saturating_sub(rest.len());
    let header = bytes
        .get(..header_len)
        .ok_or(FormatError::Truncated("header"))?;
    let nonce: &[u8; NONCE_LEN] = take(&mut rest, NONCE_LEN, "nonce")?
        .try_into()
        .map_err(|_| FormatError::Truncated("nonce"))?;
    if rest.len() < TAG_LEN {
        return Err(FormatError::Truncated("tag"));
    }
    // Encrypt refuses empty plaintexts, so a tag alone was never written by us.
    if rest.len() == TAG_LEN {
        return Err(FormatError::EmptyPayload);
    }
    Ok(Parsed {
        header,
        cipher_id,
        kek_id,
        wrapped_dk,
        nonce,
        sealed: rest,
    })
}

/// Writes a format-1 header into `out` (cleared first), with room reserved for the rest of the message.
pub fn write_header(
    out: &mut Vec<u8>,
    cipher_id: u8,
    kek_id: &str,
    wrapped_dk: &[u8],
    payload_len: usize,
) -> Result<(), FormatError> {
    let n = u8::try_from(kek_id.len()).map_err(|_| FormatError::EmptyKekId)?;
    if n == 0 {
        return Err(FormatError::EmptyKekId);
    }
    if wrapped_dk.is_empty() || wrapped_dk.len() > MAX_WRAPPED_LEN {
        return Err(FormatError::WrappedKeyLength(wrapped_dk.len()));
    }
    let m = u16::try_from(wrapped_dk.len())
        .map_err(|_| FormatError::WrappedKeyLength(wrapped_dk.len()))?;
    out.clear();
    out.reserve(
        (8usize)
            .saturating_add(kek_id.len())
            .saturating_add(wrapped_dk.len())
            .saturating_add(NONCE_LEN)
            .saturating_add(payload_len)
            .saturating_add(TAG_LEN),
    );
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_1);
    out.push(cipher_id);
    out.push(n);
    out.extend_from_slice(kek_id.as_bytes());
    out.extend_from_slice(&m.to_be_bytes());
    out.extend_from_slice(wrapped_dk);
    Ok(())
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        write_header(&mut out, 1, "kek-1", &[0xAA; 5], 3).unwrap();
        out.extend_from_slice(&[0x11; NONCE_LEN]);
        out.extend_from_slice(&[0x22; 3 + TAG_LEN]);
        out
    }

    #[test]
    fn layout_is_exactly_design_section_2() {
        let c = sample();
        assert_eq!(&c[0..3], b"GMK");
        assert_eq!(c[3], 1);
        assert_eq!(c[4], 1);
        assert_eq!(c[5], 5);
        assert_eq!(&c[6..11], b"kek-1");
        assert_eq!(&c[11..13], &[0, 5]);
        assert_eq!(&c[13..18], &[0xAA; 5]);
        let p = parse(&c).unwrap();
        assert_eq!(p.header, &c[..18]);
        assert_eq!(p.kek_id, "kek-1");
        assert_eq!(p.wrapped_dk, &[0xAA; 5]);
        assert_eq!(p.nonce, &[0x11; 12]);
        assert_eq!(p.sealed.len(), 3 + TAG_LEN);
    }

    #[test]
    fn every_truncation_into_the_fixed_fields_is_an_error() {
        // Shorter payloads still parse; the tag check of the open path rejects them.
        let c = sample();
        let minimum = 18 + NONCE_LEN + 1 + TAG_LEN;
        for len in 0..minimum {
            assert!(parse(&c[..len]).is_err(), "prefix of {len} bytes parsed");
        }
    }

    #[test]
    fn bad_fields_are_typed_errors() {
        let c = sample();
        let mut t = c.clone();
        t[0] = b'X';
        assert_eq!(parse(&t), Err(FormatError::BadMagic));
        let mut t = c.clone();
        t[3] = 2;
        assert_eq!(parse(&t), Err(FormatError::UnsupportedVersion(2)));
        let mut t = c.clone();
        t[4] = 9;
        assert_eq!(parse(&t), Err(FormatError::UnknownCipher(9)));
        let mut t = c.clone();
        t[5] = 0;
        assert_eq!(parse(&t), Err(FormatError::EmptyKekId));
        let mut t = c.clone();
        t[6] = 0xFF;
        assert_eq!(parse(&t), Err(FormatError::KekIdNotUtf8));
        let mut t = c.clone();
        t[11] = 0x10;
        t[12] = 0x01;
        assert_eq!(parse(&t), Err(FormatError::WrappedKeyLength(4097)));
        let mut t = c.clone();
        t[11] = 0;
        t[12] = 0;
        assert_eq!(parse(&t), Err(FormatError::WrappedKeyLength(0)));
        // A length field pointing past the end is a truncation, not an allocation.
        let mut t = c.clone();
        t[11] = 0x0F;
        t[12] = 0xFF;
        assert!(matches!(parse(&t), Err(FormatError::Truncated(_))));
        let mut t = c[..c.len() - 3].to_vec();
        assert_eq!(parse(&t), Err(FormatError::EmptyPayload));
        t.pop();
        assert_eq!(parse(&t), Err(FormatError::Truncated("tag")));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic xorshift stream: reproducible, no dependency.
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let base = sample();
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 {
                // Keep a valid prefix so the deeper fields get exercised too.
                let keep = (next() as usize) % base.len();
                v.splice(0..0, base[..keep].iter().copied());
            }
            let _ = parse(&v);
        }
    }

    #[test]
    fn header_writer_checks_lengths() {
        let mut out = Vec::new();
        assert!(write_header(&mut out, 1, "", &[1], 0).is_err());
        assert!(write_header(&mut out, 1, &"k".repeat(256), &[1], 0).is_err());
        assert!(write_header(&mut out, 1, "k", &[], 0).is_err());
        assert!(write_header(&mut out, 1, "k", &[0; 4097], 0).is_err());
        assert!(write_header(&mut out, 1, &"k".repeat(255), &[0; 4096], 0).is_ok());
    }
}
