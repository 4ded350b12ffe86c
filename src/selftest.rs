//! Power-on self-tests (DESIGN §7): known-answer tests of every primitive, run before the socket opens and
//! by `check`. A build or CPU that computes any of them wrongly must never seal a Secret.
//!
//! The vectors are the published ones: GB/T 32905 (SM3) Appendix A, GB/T 32907 (SM4) Appendix A,
//! RFC 8998 Appendix A.1 (SM4-GCM), GM/T 0003.5 Annex C (SM2 encryption on the recommended curve with its
//! fixed random k).

use std::convert::Infallible;

use sm2::elliptic_curve::rand_core::{TryCryptoRng, TryRng};
use sm2::pke::{DecryptingKey, Mode};
use sm3::{Digest, Sm3};
use sm4::Sm4;
use sm4::cipher::{BlockCipherEncrypt, KeyInit};

use crate::cipher::{Cipher, Sm4Gcm};

/// GB/T 32905 Appendix A example 1: SM3("abc").
pub(crate) const SM3_ABC: &str = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0";
/// GB/T 32905 Appendix A example 2: SM3 of "abcd" repeated 16 times (512 bits).
pub(crate) const SM3_ABCD16: &str =
    "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732";
/// GB/T 32907 Appendix A: key = plaintext = this value.
pub(crate) const SM4_KEY_AND_PLAINTEXT: &str = "0123456789abcdeffedcba9876543210";
/// GB/T 32907 Appendix A example 1: one encryption.
pub(crate) const SM4_ONCE: &str = "681edf34d206965e86b3e94f536e4246";
/// GB/T 32907 Appendix A example 2: the block encrypted 1,000,000 times under the same key.
pub(crate) const SM4_MILLION: &str = "595298c7c6fd271f0402f804c33d3f66";

/// RFC 8998 Appendix A.1.
pub(crate) mod sm4_gcm {
    pub(crate) const KEY: &str = "0123456789ABCDEFFEDCBA9876543210";
    pub(crate) const IV: &str = "00001234567800000000ABCD";
    pub(crate) const AAD: &str = "FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2";
    pub(crate) const PLAINTEXT: &str = concat!(
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD",
        "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
    );
    pub(crate) const CIPHERTEXT: &str = concat!(
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735",
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
    );
    pub(crate) const TAG: &str = "83DE3541E4C2B58177E065A9BF7B62EC";
}

/// GM/T 0003.5 Annex C: SM2 encryption of "encryption standard" on sm2p256v1.
pub(crate) mod sm2_enc {
    pub(crate) const PRIVATE_KEY: &str =
        "3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8";
    pub(crate) const PUBLIC_X: &str =
        "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020";
    pub(crate) const PUBLIC_Y: &str =
        "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13";
    pub(crate) const K: &str = "59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21";
    pub(crate) const MESSAGE: &[u8] = b"encryption standard";
    pub(crate) const C1_X: &str =
        "04EBFC718E8D1798620432268E77FEB6415E2EDE0E073C0F4F640ECD2E149A73";
    pub(crate) const C1_Y: &str =
        "E858F9D81E5430A57B36DAAB8F950A3C64E6EE6A63094D99283AFF767E124DF0";
    pub(crate) const C3: &str = "59983C18F809E262923C53AEC295D30383B54E39D609D160AFCB1908D0BD8766";
    pub(crate) const C2: &str = "21886CA989CA9C7D58087307CA93092D651EFA";
}

/// A self-test that did not give the published answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("power-on self-test failed: {0}")]
pub struct SelfTestError(pub &'static str);

fn unhex(s: &str) -> Vec<u8> {
    // Vectors are compile-time constants above; a typo there is caught by the unit tests.
    hex::decode(s).unwrap_or_default()
}

/// An RNG that yields one fixed value, to reproduce the standard's SM2 example with its k.
struct FixedRng(Vec<u8>);

impl TryRng for FixedRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(0)
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(0)
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for (d, s) in dst.iter_mut().zip(self.0.iter().cycle()) {
            *d = *s;
        }
        Ok(())
    }
}
impl TryCryptoRng for FixedRng {}

pub(crate) fn sm3_kat() -> Result<(), SelfTestError> {
    let ok1 = Sm3::digest(b"abc").as_slice() == unhex(SM3_ABC).as_slice();
    let ok2 = Sm3::digest(b"abcd".repeat(16)).as_slice() == unhex(SM3_ABCD16).as_slice();
    if ok1 && ok2 {
        Ok(())
    } else {
        Err(SelfTestError("SM3"))
    }
}

/// SM4 single-block encryption; `iterations` is 1 at power-on and 1,000,000 in the test suite.
pub(crate) fn sm4_kat(iterations: u32) -> Result<(), SelfTestError> {
    let key = unhex(SM4_KEY_AND_PLAINTEXT);
    let cipher = Sm4::new_from_slice(&key).map_err(|_| SelfTestError("SM4 key"))?;
    let mut block = sm4::cipher::Block::<Sm4>::try_from(key.as_slice())
        .map_err(|_| SelfTestError("SM4 block"))?;
    for _ in 0..iterations {
        cipher.encrypt_block(&mut block);
    }
    let expected = match iterations {
        1 => SM4_ONCE,
        1_000_000 => SM4_MILLION,
        _ => {
            return Err(SelfTestError(
                "SM4: no published answer for that iteration count",
            ));
        }
    };
    if block.as_slice() == unhex(expected).as_slice() {
        Ok(())
    } else {
        Err(SelfTestError("SM4"))
    }
}

pub(crate) fn sm4_gcm_kat() -> Result<(), SelfTestError> {
    use sm4_gcm::*;
    let key: [u8; 16] = unhex(KEY)
        .try_into()
        .map_err(|_| SelfTestError("SM4-GCM key"))?;
    let nonce: [u8; 12] = unhex(IV)
        .try_into()
        .map_err(|_| SelfTestError("SM4-GCM nonce"))?;
    let aad = unhex(AAD);
    let c = Sm4Gcm::from_key_bytes(key);
    let mut sealed = Vec::new();
    c.seal_append(&nonce, &aad, &unhex(PLAINTEXT), &mut sealed)
        .map_err(|_| SelfTestError("SM4-GCM seal"))?;
    let mut expected = unhex(CIPHERTEXT);
    expected.extend(unhex(TAG));
    if sealed != expected {
        return Err(SelfTestError("SM4-GCM seal"));
    }
    if c.open(&nonce, &aad, &sealed).ok() != Some(unhex(PLAINTEXT)) {
        return Err(SelfTestError("SM4-GCM open"));
    }
    // The tag check itself must work: a changed byte must be refused.
    if let Some(last) = sealed.last_mut() {
        *last ^= 1;
    }
    if c.open(&nonce, &aad, &sealed).is_ok() {
        return Err(SelfTestError("SM4-GCM accepted a forged tag"));
    }
    Ok(())
}

/// The standard's ciphertext C1 ‖ C3 ‖ C2 (uncompressed C1).
pub(crate) fn sm2_expected_c1c3c2() -> Vec<u8> {
    use sm2_enc::*;
    let mut v = vec![0x04];
    for part in [C1_X, C1_Y, C3, C2] {
        v.extend(unhex(part));
    }
    v
}

pub(crate) fn sm2_kat() -> Result<(), SelfTestError> {
    use sm2_enc::*;
    let dk = DecryptingKey::from_slice(&unhex(PRIVATE_KEY))
        .map_err(|_| SelfTestError("SM2 private key"))?;
    let dk = DecryptingKey::new_with_mode(*dk.as_nonzero_scalar(), Mode::C1C3C2);
    let mut public = vec![0x04];
    public.extend(unhex(PUBLIC_X));
    public.extend(unhex(PUBLIC_Y));
    if dk.encrypting_key().to_sec1_bytes().as_ref() != public.as_slice() {
        return Err(SelfTestError("SM2 public key derivation"));
    }
    let public_key = sm2::PublicKey::from_affine(*dk.encrypting_key().as_affine())
        .map_err(|_| SelfTestError("SM2 public key"))?;
    let ek = sm2::pke::EncryptingKey::new_with_mode(public_key, Mode::C1C3C2);
    let ct = ek
        .encrypt(&mut FixedRng(unhex(K)), MESSAGE)
        .map_err(|_| SelfTestError("SM2 encrypt"))?;
    let expected = sm2_expected_c1c3c2();
    if ct != expected {
        return Err(SelfTestError("SM2 encrypt"));
    }
    if dk.decrypt(&expected).ok().as_deref() != Some(MESSAGE) {
        return Err(SelfTestError("SM2 decrypt"));
    }
    let mut forged = expected;
    if let Some(b) = forged.get_mut(1 + 64 + 32) {
        *b ^= 1;
    }
    if dk.decrypt(&forged).is_ok() {
        return Err(SelfTestError("SM2 accepted a forged ciphertext"));
    }
    Ok(())
}

/// All power-on known-answer tests (a few milliseconds).
pub(crate) fn run_all() -> Result<(), SelfTestError> {
    sm3_kat()?;
    sm4_kat(1)?;
    sm4_gcm_kat()?;
    sm2_kat()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_on_self_tests_pass() {
        run_all().unwrap();
    }

    #[test]
    fn sm4_one_million_iterations() {
        sm4_kat(1_000_000).unwrap();
    }

    #[test]
    fn vectors_decode() {
        for v in [
            SM3_ABC,
            SM3_ABCD16,
            SM4_ONCE,
            SM4_MILLION,
            sm4_gcm::KEY,
            sm2_enc::K,
            sm2_enc::C2,
        ] {
            assert!(hex::decode(v).is_ok(), "{v}");
        }
        assert_eq!(
            sm2_expected_c1c3c2().len(),
            1 + 64 + 32 + sm2_enc::MESSAGE.len()
        );
    }

    #[test]
    fn sm2_decryption_of_c1c2c3_order_fails_in_c1c3c2_mode() {
        // The same standard ciphertext in the other component order must not decrypt as C1C3C2:
        // proves the mode is honoured rather than guessed.
        use sm2_enc::*;
        let dk = DecryptingKey::from_slice(&unhex(PRIVATE_KEY)).unwrap();
        let dk = DecryptingKey::new_with_mode(*dk.as_nonzero_scalar(), Mode::C1C3C2);
        let mut c1c2c3 = vec![0x04];
        for part in [C1_X, C1_Y, C2, C3] {
            c1c2c3.extend(unhex(part));
        }
        assert!(dk.decrypt(&c1c2c3).is_err());
    }
}
