//! The format-1 parser on arbitrary bytes: `parse` is total; what it accepts re-serialises to the same
//! header through `write_header`, and opening it under a fixed key is an `Err` (the tag cannot verify),
//! never a panic.
#![no_main]

use gm_kms_plugin::cipher::{Cipher, NONCE_LEN, Sm4Gcm};
use gm_kms_plugin::ciphertext::{self, MAGIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = ciphertext::parse(data) else {
        return;
    };
    // What parse returned is a consistent view of the input.
    assert!(data.starts_with(&MAGIC));
    assert!(!p.kek_id.is_empty() && p.kek_id.len() <= ciphertext::MAX_KEK_ID_LEN);
    assert!(!p.wrapped_dk.is_empty() && p.wrapped_dk.len() <= ciphertext::MAX_WRAPPED_LEN);
    assert!(p.sealed.len() > gm_kms_plugin::cipher::TAG_LEN);
    assert_eq!(
        p.header.len() + NONCE_LEN + p.sealed.len(),
        data.len(),
        "header + nonce + sealed must cover the input exactly"
    );

    // write_header round-trips: the same fields give back the very header bytes parse saw.
    let mut out = Vec::new();
    let payload_len = p.sealed.len() - gm_kms_plugin::cipher::TAG_LEN;
    ciphertext::write_header(&mut out, p.cipher_id, p.kek_id, p.wrapped_dk, payload_len)
        .expect("write_header refused fields that parse accepted");
    assert_eq!(
        out.as_slice(),
        p.header,
        "write_header differs from the parsed header"
    );
    out.extend_from_slice(p.nonce);
    out.extend_from_slice(p.sealed);
    assert_eq!(out.as_slice(), data);
    assert_eq!(ciphertext::parse(&out), Ok(p));

    // A fixed key never made these bytes (except with 2^-128 luck): open must refuse, not panic.
    let cipher = Sm4Gcm::from_key_bytes([0x42; 16]);
    assert!(
        cipher.open(p.nonce, p.header, p.sealed).is_err(),
        "a forged tag verified"
    );
});
