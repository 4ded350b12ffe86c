//! The whole open path (`Envelope::open`: format-1 parse, KEK lookup, SM2 unwrap, unwrap cache, SM4-GCM
//! open, the legacy fallback decision) on arbitrary bytes, with a real SM2 keyring (the dev keys under
//! keys/). Any `Result` is fine; a panic is a bug, and so is an `Ok` with an empty plaintext.
#![no_main]

use std::sync::{Arc, OnceLock};

use gm_kms_plugin::config::DataKeyPolicy;
use gm_kms_plugin::DataKeys;
use gm_kms_plugin::Envelope;
use gm_kms_plugin::Keyring;
use gm_kms_plugin::provider::KeyProvider;
use gm_kms_plugin::provider::sm2::{Sm2Provider, parse_private_key_pem};
use libfuzzer_sys::fuzz_target;

const PRIMARY_PEM: &str = include_str!("../../keys/dev-sm2-key.pem");
const PREVIOUS_PEM: &str = include_str!("../../keys/dev-sm2-key-previous.pem");

struct World {
    rt: tokio::runtime::Runtime,
    envelope: Envelope,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let provider = |pem: &str| -> Arc<dyn KeyProvider> {
            let secret = parse_private_key_pem(pem).expect("dev key parses");
            Arc::new(Sm2Provider::from_secret_key(secret, None).expect("dev key loads"))
        };
        let ring = Keyring::new(vec![provider(PRIMARY_PEM), provider(PREVIOUS_PEM)])
            .expect("two distinct keys");
        let datakeys = DataKeys::new(Arc::new(ring), DataKeyPolicy::default());
        World {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            envelope: Envelope::new(Arc::new(datakeys)),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    if let Ok(plain) = w.rt.block_on(w.envelope.open(data)) {
        assert!(!plain.is_empty(), "open returned an empty plaintext");
    }
});
