//! JD Cloud KMS answer parsing (src/provider/jdcloud/wire.rs) on arbitrary bodies: every reader is total,
//! and what it accepts keeps its promises (no empty blob or plaintext, a blob within the header limit,
//! short printable error text).
#![no_main]

use gm_kms_plugin::provider::jdcloud::wire;
use libfuzzer_sys::fuzz_target;

/// `wire`'s own cap on remote text (MAX_MESSAGE_CHARS) plus the ellipsis it appends.
const MAX_TEXT_CHARS: usize = 200 + 1;

fn check_text(s: &str) {
    assert!(
        s.chars().count() <= MAX_TEXT_CHARS,
        "remote text not shortened"
    );
    assert!(!s.chars().any(char::is_control), "control character kept");
}

fn check_remote(e: &wire::RemoteError) {
    check_text(&e.status);
    check_text(&e.message);
    let _ = e.to_string();
}

fn check_problem(p: &wire::Problem) {
    if let wire::Problem::Remote(e) = p {
        check_remote(e);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(e) = wire::error_of(data) {
        check_remote(&e);
    }
    match wire::encrypt_result(data) {
        Ok(blob) => {
            assert!(!blob.is_empty() && blob.len() <= 4096);
            assert!(wire::check_blob(&blob).is_ok());
            let raw = wire::b64_decode(&blob).expect("accepted blob decodes");
            assert!(!raw.is_empty());
        }
        Err(p) => check_problem(&p),
    }
    match wire::decrypt_result(data) {
        Ok(plain) => assert!(!plain.is_empty(), "empty plaintext accepted"),
        Err(p) => check_problem(&p),
    }
    match wire::describe_result(data) {
        Ok(info) => {
            check_text(&info.key_id);
            check_text(&info.key_name);
        }
        Err(p) => check_problem(&p),
    }
    // The blob checker and the base64 reader on the raw bytes as text.
    if let Ok(text) = std::str::from_utf8(data) {
        if wire::check_blob(text).is_ok() {
            assert!(!text.is_empty() && text.len() <= 4096);
            assert!(wire::b64_decode(text).is_some_and(|b| !b.is_empty()));
        }
    }
});
