//! Vendor profiles: which struct layouts, algorithm identifiers and `SDF_InternalDecrypt_ECC` argument
//! meaning a library uses.
//!
//! Sources (public headers published by open-source projects; the declarations in this crate are our
//! own, no header is copied):
//!
//! - GM/T 0018-2012 as transcribed by GmSSL: `guanzhi/GmSSL` `src/sdf/sdf.h` (structs under
//!   `#pragma pack(1)`, `ECCCipher {x, y, M[32], L, C[1]}`, the `SDR_*` codes up to `SDR_OUTARGERR`,
//!   `SDF_InternalDecrypt_ECC(hSession, uiISKIndex, uiAlgID, ECCCipher*, pucData, puiDataLength)`) and
//!   `src/sgd.h` ("based on the standard GM/T 0006-2012": `ECCref_MAX_BITS` 512 so `ECCref_MAX_LEN`
//!   64, `SGD_SM2_3` = `0x00020800`).
//! - GM/T 0018-2023 as transcribed by openHiTLS: `openHiTLS/sdf4j`
//!   `sdf4j/src/main/native/include/sdf_types.h` (same `ECCref_MAX_LEN` 64 and `ECCCipher` layout,
//!   `SGD_SM2_3` = `0x00020800`) and `sdf4j/src/main/native/include/sdf.h` §6.4.10
//!   `SDF_InternalDecrypt_ECC(hSession, uiISKIndex, uiECCKeyType, ECCCipher*, pucData, puiDataLength)`:
//!   the third argument is now the private-key *type* (`SDF.java` documents it as "algorithm ID such as
//!   SGD_SM2_1"), not the algorithm; an old vendor header with the same parameter (`uiKeyUsage`) lists
//!   `SGD_SM2_1` = signing key, `SGD_SM2_3` = encryption key, so the encryption key pair is selected
//!   with `SGD_SM2_3`.
//! - Sansec (三未信安) SDK: `livenowhy/sansec_test` `swsds.h` ("Copyright (c) SWXA 2009":
//!   `ECCref_MAX_BITS` 256 so `ECCref_MAX_LEN` 32, `ECCCipher {clength, x[32], y[32],
//!   C[ECCref_MAX_CIPHER_LEN = 136], M[32]}`, `SGD_SM2_1` = `0x00020100`, `SGD_SM2_3` = `0x00020400`,
//!   `SDF_InternalDecrypt_ECC(hSession, uiISKIndex, uiAlgID, ECCCipher*, pucData, puiDataLength)`);
//!   GmSSL's converter `guanzhi/GmSSL` `src/sdf/sdf_sansec.h` declares the same field order
//!   (`clength, x, y, C[136], M`). Newer Sansec SDKs (`Hyperledger-TWGC/sdf-go` `sansec/swsds.h`,
//!   `ECCref_MAX_BITS` 512, `SGD_SM2_3` = `0x00020800`) follow the standard layout: use
//!   `gmt0018-2012` for them.

use std::fmt;
use std::str::FromStr;

/// GM/T 0006 `SGD_SM2_1` (SM2 signature), the standard value.
pub const SGD_SM2_1: u32 = 0x0002_0200;
/// GM/T 0006 `SGD_SM2_3` (SM2 public-key encryption), the standard value used by the 2012 and 2023
/// profiles.
pub const SGD_SM2_3: u32 = 0x0002_0800;
/// Sansec's `SGD_SM2_3` (older SDK headers number the SM2 family one bit lower than GM/T 0006).
pub const SANSEC_SGD_SM2_3: u32 = 0x0002_0400;

/// Which vendor dialect of GM/T 0018 a library speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Profile {
    /// GM/T 0018-2012: `ECCref_MAX_LEN` 64 (256-bit coordinates right-aligned),
    /// `ECCCipher {x[64], y[64], M[32], L, C[L]}`, `SDF_InternalDecrypt_ECC` third argument = algorithm
    /// id `SGD_SM2_3` (`0x00020800`).
    #[default]
    Gmt0018_2012,
    /// GM/T 0018-2023: the 2012 layouts; `SDF_InternalDecrypt_ECC` third argument = private-key type
    /// (`SGD_SM2_3`, the encryption key pair).
    Gmt0018_2023,
    /// Sansec SDK (older `swsds.h`): `ECCref_MAX_LEN` 32, `ECCCipher {clength, x[32], y[32], C[136],
    /// M[32]}`, `SGD_SM2_3` = `0x00020400`.
    Sansec,
}

impl Profile {
    /// Every profile, in the order of the config documentation.
    pub const ALL: [Profile; 3] = [
        Profile::Gmt0018_2012,
        Profile::Gmt0018_2023,
        Profile::Sansec,
    ];

    /// The config spelling: `gmt0018-2012`, `gmt0018-2023` or `sansec`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Profile::Gmt0018_2012 => "gmt0018-2012",
            Profile::Gmt0018_2023 => "gmt0018-2023",
            Profile::Sansec => "sansec",
        }
    }

    /// The algorithm id passed to `SDF_ExternalEncrypt_ECC` (SM2 encryption).
    pub const fn sm2_encrypt_alg_id(self) -> u32 {
        match self {
            Profile::Gmt0018_2012 | Profile::Gmt0018_2023 => SGD_SM2_3,
            Profile::Sansec => SANSEC_SGD_SM2_3,
        }
    }

    /// The third argument of `SDF_InternalDecrypt_ECC`: the algorithm id (2012, Sansec) or the
    /// private-key type (2023); the value selects the SM2 encryption key pair in every profile.
    pub const fn internal_decrypt_third_arg(self) -> u32 {
        match self {
            Profile::Gmt0018_2012 | Profile::Gmt0018_2023 => SGD_SM2_3,
            Profile::Sansec => SANSEC_SGD_SM2_3,
        }
    }

    /// Bytes per coordinate in this profile's `ECCrefPublicKey`/`ECCCipher` (`ECCref_MAX_LEN`).
    pub const fn ecc_ref_max_len(self) -> usize {
        match self {
            Profile::Gmt0018_2012 | Profile::Gmt0018_2023 => 64,
            Profile::Sansec => 32,
        }
    }

    /// The longest SM2 ciphertext body (`C`, equal to the plaintext length) this crate passes through
    /// the profile's `ECCCipher`: the fixed `C[136]` for Sansec, the crate's own buffer otherwise.
    pub const fn max_ciphertext_len(self) -> usize {
        match self {
            Profile::Gmt0018_2012 | Profile::Gmt0018_2023 => crate::layout::STD_C_CAPACITY,
            Profile::Sansec => crate::layout::SANSEC_C_LEN,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile name that is none of `gmt0018-2012`, `gmt0018-2023`, `sansec`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseProfileError(String);

impl fmt::Display for ParseProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown SDF profile {:?} (expected gmt0018-2012, gmt0018-2023 or sansec)",
            self.0
        )
    }
}

impl std::error::Error for ParseProfileError {}

impl FromStr for Profile {
    type Err = ParseProfileError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ParseProfileError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_names_and_nothing_else() {
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
        }
        assert_eq!(Profile::default(), Profile::Gmt0018_2012);
        for bad in ["", "GMT0018-2012", "gmt0018", "sansec ", "2012"] {
            let err = bad.parse::<Profile>().unwrap_err();
            assert!(err.to_string().contains("gmt0018-2023"), "{err}");
        }
    }

    #[test]
    fn algorithm_ids() {
        assert_eq!(Profile::Gmt0018_2012.sm2_encrypt_alg_id(), 0x0002_0800);
        assert_eq!(
            Profile::Gmt0018_2023.internal_decrypt_third_arg(),
            0x0002_0800
        );
        assert_eq!(Profile::Sansec.sm2_encrypt_alg_id(), 0x0002_0400);
        assert_eq!(Profile::Sansec.ecc_ref_max_len(), 32);
        assert_eq!(Profile::Gmt0018_2023.ecc_ref_max_len(), 64);
    }
}
