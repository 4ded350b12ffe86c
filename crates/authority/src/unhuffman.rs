//! A speed-up in front of the HPACK decoder: turns every Huffman-coded string literal of a header
//! block into a raw literal, leaving all else byte for byte.
//!
//! `loona-hpack`'s decoder builds a fresh Huffman decoding table for every Huffman-coded string it
//! meets (~30 µs each), and every request from grpc-go or tonic carries at least one such string
//! (`grpc-timeout` changes each call; tonic's `h2` never indexes `:path`). This pass decodes them
//! with one [`HuffmanDecoder`] per thread and a small cache, and hands the HPACK decoder a block whose
//! strings are all raw, which decodes to exactly the same fields with the same dynamic-table effects
//! (the table holds decoded strings).
//!
//! Only the representation layout is walked here (RFC 7541 §6: which octets are integers and which
//! are strings); Huffman decoding, table handling and all validation stay with the crate. The walk
//! accepts a superset of what the decoder accepts (integers up to 6 octets), so it never refuses a
//! block the decoder would take; anything it cannot walk is an error the decoder would raise too.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;

use loona_hpack::encoder::encode_integer_into;
use loona_hpack::huffman::HuffmanDecoder;

use crate::rewrite::malformed;

thread_local! {
    static HUFFMAN: RefCell<Option<Huffman>> = const { RefCell::new(None) };
}

/// Strings up to this long are remembered once decoded.
const CACHE_MAX_LEN: usize = 128;
/// The cache is emptied when it reaches this many strings.
const CACHE_ENTRIES: usize = 256;

/// One thread's Huffman decoder, and the strings it decoded recently: clients send the same
/// Huffman-coded values over and over (h2, hence tonic, never indexes `:path`), and the crate's
/// decoder walks its code table bit by bit (~0.3 µs a byte). The mapping is a pure function of the
/// coded bytes, so sharing it between connections leaks nothing.
struct Huffman {
    decoder: HuffmanDecoder,
    cache: HashMap<Vec<u8>, Vec<u8>>,
}

/// Writes `block` with its Huffman-coded strings decoded into `out` and returns true, or returns
/// false (leaving `out` empty) when `block` has no Huffman-coded string.
pub(crate) fn unhuffman(block: &[u8], out: &mut Vec<u8>) -> io::Result<bool> {
    out.clear();
    let mut pos = 0usize;
    // block[copied..pos] is walked but not yet written to `out`.
    let mut copied = 0usize;
    while let Some(&first) = block.get(pos) {
        let (prefix, strings) = if first & 0x80 != 0 {
            (7, 0) // indexed field
        } else if first & 0x40 != 0 {
            (6, 1) // literal with incremental indexing
        } else if first & 0x20 != 0 {
            (5, 0) // dynamic table size update
        } else {
            (4, 1) // literal without indexing / never indexed
        };
        let (index, n) = integer(block.get(pos..).unwrap_or_default(), prefix)?;
        pos = pos.saturating_add(n);
        // A literal with index 0 has a literal name before its value.
        let strings = if strings == 1 && index == 0 {
            2
        } else {
            strings
        };
        for _ in 0..strings {
            let rest = block.get(pos..).unwrap_or_default();
            let (huffman, header_len, body) = string(rest)?;
            let end = pos.saturating_add(header_len).saturating_add(body.len());
            if huffman {
                out.extend_from_slice(block.get(copied..pos).unwrap_or_default());
                huffman_decode(body, out)?;
                copied = end;
            }
            pos = end;
        }
    }
    if copied == 0 {
        return Ok(false);
    }
    out.extend_from_slice(block.get(copied..).unwrap_or_default());
    Ok(true)
}

/// An HPACK integer with a `prefix`-bit prefix (RFC 7541 §5.1) at the start of `b`: its value and
/// how many octets it took.
fn integer(b: &[u8], prefix: u8) -> io::Result<(u64, usize)> {
    let mask = u8::MAX >> (8u8.saturating_sub(prefix));
    let first = b
        .first()
        .ok_or_else(|| malformed("HPACK: truncated integer"))?;
    let value = u64::from(first & mask);
    if value < u64::from(mask) {
        return Ok((value, 1));
    }
    let mut value = value;
    for (i, &octet) in b.iter().enumerate().skip(1) {
        if i > 6 {
            return Err(malformed("HPACK: integer too long"));
        }
        let shift = 7 * (i as u32 - 1);
        value = value.saturating_add(u64::from(octet & 0x7f) << shift);
        if octet & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(malformed("HPACK: truncated integer"))
}

/// An HPACK string literal (RFC 7541 §5.2) at the start of `b`: whether it is Huffman-coded, the
/// length of its length prefix, and its octets.
fn string(b: &[u8]) -> io::Result<(bool, usize, &[u8])> {
    let huffman = b.first().is_some_and(|first| first & 0x80 != 0);
    let (len, n) = integer(b, 7)?;
    let body = usize::try_from(len)
        .ok()
        .and_then(|len| b.get(n..n.checked_add(len)?))
        .ok_or_else(|| malformed("HPACK: truncated string"))?;
    Ok((huffman, n, body))
}

/// Appends the Huffman-coded string `body` to `out` as a raw string literal.
fn huffman_decode(body: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    HUFFMAN.with(|cell| {
        let mut slot = cell
            .try_borrow_mut()
            .map_err(|_| malformed("HPACK: Huffman decoder busy"))?;
        let huffman = slot.get_or_insert_with(|| Huffman {
            decoder: HuffmanDecoder::new(),
            cache: HashMap::new(),
        });
        if let Some(decoded) = huffman.cache.get(body) {
            encode_integer_into(decoded.len(), 7, 0x00, out)?;
            out.extend_from_slice(decoded);
            return Ok(());
        }
        let decoded = huffman
            .decoder
            .decode(body)
            .map_err(|e| malformed(format!("HPACK: {e}")))?;
        encode_integer_into(decoded.len(), 7, 0x00, out)?;
        out.extend_from_slice(&decoded);
        if body.len() <= CACHE_MAX_LEN {
            if huffman.cache.len() >= CACHE_ENTRIES {
                huffman.cache.clear();
            }
            huffman.cache.insert(body.to_vec(), decoded);
        }
        Ok(())
    })
}
