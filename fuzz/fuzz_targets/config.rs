//! Config parsing and validation on arbitrary UTF-8 text: a `Config` or a `ConfigError`, never a panic.
//!
//! Note: a `SecretKeyFile` field makes `Config::parse` open that (owner-only, ≤ 64 KiB, regular) file;
//! the fuzzer may name real paths, which is harmless (read-only) on a fuzzing box.
#![no_main]

use std::path::Path;

use gm_kms_plugin::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, Path::new("/fuzz/config.json")) {
        // Accepted configs are fully formed: something to listen on and a primary key.
        assert_eq!(config.path, Path::new("/fuzz/config.json"));
        assert!(config.data_keys.max_uses > 0);
        assert!(config.data_keys.cache_size > 0);
        assert!(!config.data_keys.max_age.is_zero());
        assert!(config.kms_v2_version == "v2" || config.kms_v2_version == "v2beta1");
        let _ = format!("{config:?}");
    }
});
