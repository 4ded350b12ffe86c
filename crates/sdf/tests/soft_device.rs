//! The safe API against the soft SDF device (the `gm-sdf-soft` cdylib, loaded like a vendor library),
//! once per profile, plus a cross-check with the `openssl` CLI.
//!
//! The device reads its key directory and profile from the environment at `SDF_OpenDevice`, and a
//! process loads the library once, so each profile runs in a child process: the `per_profile_*` tests
//! re-run this test binary with the environment set and one `#[ignore]`d `scenario_*` test selected.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers: a panic is a failed test"
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gm_sdf::locate::{
    DEVICE_NAME, DIR_ENV, ISSUER, LIBRARY_ENV, PROFILE_ENV, SERIAL, soft_device_library,
};
use gm_sdf::{
    Device, EccCipher, ErrorKind, Library, Profile, REQUIRED_SYMBOLS, SDR_PARDENY, SDR_PRKRERR,
};

/// Set in the child process.
const CHILD_ENV: &str = "GM_SDF_TEST_CHILD";
const PIN_1: &[u8] = b"1234";
const PIN_2: &[u8] = b"second key's password";

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI (OpenSSL 3) must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A key directory: `sm2-enc-1.pem` with `pin-1`, `sm2-enc-2.pem` with `pin-2`, `sm2-enc-3.pem`
/// without a password file.
fn key_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=3 {
        let key = dir.path().join(format!("sm2-enc-{i}.pem"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "SM2",
            "-out",
            key.to_str().unwrap(),
        ]);
    }
    fs::write(dir.path().join("pin-1"), [PIN_1, b"\n"].concat()).unwrap();
    fs::write(dir.path().join("pin-2"), PIN_2).unwrap();
    dir
}

/// Runs `scenario` in a child process against a fresh key directory in `profile`.
fn run_in_child(scenario: &str, profile: Profile) {
    let library = soft_device_library();
    let dir = key_dir();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            scenario,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env(DIR_ENV, dir.path())
        .env(PROFILE_ENV, profile.as_str())
        .env(LIBRARY_ENV, &library)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{scenario} ({profile}) failed:\n{stdout}\n{stderr}"
    );
}

/// The child's setting: the library, the key directory and the profile.
struct Child {
    library: PathBuf,
    dir: PathBuf,
    profile: Profile,
}

impl Child {
    fn from_env() -> Option<Child> {
        std::env::var_os(CHILD_ENV)?;
        Some(Child {
            library: soft_device_library(),
            dir: PathBuf::from(std::env::var_os(DIR_ENV).unwrap()),
            profile: std::env::var(PROFILE_ENV).unwrap().parse().unwrap(),
        })
    }

    fn device(&self) -> Device {
        Device::open(Library::load(&self.library, self.profile).unwrap()).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Lines of `calls.log` that start with `function` and contain `rest`.
    fn calls(&self, function: &str, rest: &str) -> usize {
        fs::read_to_string(self.path("calls.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').next() == Some(function) && l.contains(rest))
            .count()
    }
}

/// The uncompressed point of a PEM key's SubjectPublicKeyInfo, as OpenSSL writes it.
fn openssl_public_point(pem: &Path) -> Vec<u8> {
    let spki = openssl(&[
        "pkey",
        "-in",
        pem.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ]);
    spki[spki.len() - 65..].to_vec()
}

fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if body.len() < 0x80 {
        out.push(body.len() as u8);
    } else {
        let len = body.len().to_be_bytes();
        let len = &len[len.iter().position(|&b| b != 0).unwrap()..];
        out.push(0x80 | len.len() as u8);
        out.extend_from_slice(len);
    }
    out.extend_from_slice(body);
    out
}

fn der_uint(v: &[u8; 32]) -> Vec<u8> {
    let first = v.iter().position(|&b| b != 0).unwrap_or(31);
    let mut body = v[first..].to_vec();
    if body[0] & 0x80 != 0 {
        body.insert(0, 0);
    }
    der_tlv(0x02, &body)
}

/// GM/T 0009 `SM2Cipher ::= SEQUENCE { x INTEGER, y INTEGER, hash OCTET STRING, ciphertext OCTET
/// STRING }` (C1C3C2), what `openssl pkeyutl` reads.
fn sm2_cipher_der(c: &EccCipher) -> Vec<u8> {
    let body = [
        der_uint(&c.x),
        der_uint(&c.y),
        der_tlv(0x04, &c.hash),
        der_tlv(0x04, &c.ciphertext),
    ]
    .concat();
    der_tlv(0x30, &body)
}

#[test]
fn der_helper_encodes_integers_and_lengths() {
    let mut x = [0u8; 32];
    x[31] = 5;
    assert_eq!(der_uint(&x), [0x02, 0x01, 0x05]);
    assert_eq!(der_uint(&[0; 32]), [0x02, 0x01, 0x00]);
    assert_eq!(der_uint(&[0x80; 32])[..3], [0x02, 33, 0x00]);
    assert_eq!(der_tlv(0x04, &[7; 200])[..3], [0x04, 0x81, 200]);
}

#[test]
fn cdylib_exports_every_required_symbol() {
    let library = soft_device_library();
    // dlopen + dlsym of all of them is what a vendor library gets:
    Library::load(&library, Profile::default()).unwrap();
    // and the dynamic symbol table says the same, when binutils is there.
    match Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&library)
        .output()
    {
        Ok(out) if out.status.success() => {
            let table = String::from_utf8_lossy(&out.stdout);
            for name in REQUIRED_SYMBOLS {
                assert!(
                    table.lines().any(|l| l.ends_with(&format!(" T {name}"))),
                    "{name} not exported by {}",
                    library.display()
                );
            }
        }
        _ => eprintln!("nm not available: dynamic symbol table not inspected"),
    }
}

#[test]
fn per_profile_round_trip_gmt0018_2012() {
    run_in_child("scenario_round_trip", Profile::Gmt0018_2012);
}

#[test]
fn per_profile_round_trip_gmt0018_2023() {
    run_in_child("scenario_round_trip", Profile::Gmt0018_2023);
}

#[test]
fn per_profile_round_trip_sansec() {
    run_in_child("scenario_round_trip", Profile::Sansec);
}

#[test]
fn per_profile_faults_gmt0018_2012() {
    run_in_child("scenario_faults", Profile::Gmt0018_2012);
}

#[test]
fn per_profile_faults_gmt0018_2023() {
    run_in_child("scenario_faults", Profile::Gmt0018_2023);
}

#[test]
fn per_profile_faults_sansec() {
    run_in_child("scenario_faults", Profile::Sansec);
}

#[test]
#[ignore = "run by the per_profile_round_trip_* tests in a child process"]
fn scenario_round_trip() {
    let Some(child) = Child::from_env() else {
        return;
    };
    let device = child.device();
    assert_eq!(device.profile(), child.profile);

    let info = device.info().unwrap();
    assert_eq!(info.issuer, ISSUER);
    assert_eq!(ISSUER, "gm-kms-plugin soft device");
    assert_eq!(info.device_name, DEVICE_NAME);
    assert_eq!(info.serial, SERIAL);

    let mut s = device.open_session().unwrap();

    // The exported public key is the PEM file's.
    let public = s.export_enc_public_key(1).unwrap();
    assert_eq!(
        public.to_sec1_uncompressed().to_vec(),
        openssl_public_point(&child.path("sm2-enc-1.pem"))
    );
    let absent = s.export_enc_public_key(9).unwrap_err();
    assert_eq!(absent.kind(), ErrorKind::KeyNotFound, "{absent}");

    let r1 = s.generate_random(32).unwrap();
    let r2 = s.generate_random(32).unwrap();
    assert_eq!(r1.len(), 32);
    assert_ne!(*r1, *r2);
    assert!(s.generate_random(0).unwrap().is_empty());

    // Wrap a data key in the device.
    let dk = s.generate_random(16).unwrap();
    let wrapped = s.external_encrypt(&public, &dk).unwrap();
    assert_eq!(wrapped.ciphertext.len(), 16);
    assert_eq!(
        s.external_encrypt(&public, &[]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );

    // Unwrapping needs the access right, in this session.
    let no_right = s.internal_decrypt(1, &wrapped).unwrap_err();
    assert_eq!(no_right.kind(), ErrorKind::PermissionDenied, "{no_right}");
    assert_eq!(no_right.return_code(), Some(SDR_PARDENY));
    let wrong = s.get_private_key_access_right(1, b"wrong").unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::PermissionDenied, "{wrong}");
    assert!(
        wrong
            .to_string()
            .starts_with("SDF_GetPrivateKeyAccessRight returned 0x0100")
    );
    assert!(!s.has_private_key_access_right(1));
    s.get_private_key_access_right(1, PIN_1).unwrap();
    assert!(s.has_private_key_access_right(1));
    let unwrapped = s.internal_decrypt(1, &wrapped).unwrap();
    assert_eq!(*unwrapped, *dk);

    // Another session does not share the right.
    let mut other = device.open_session().unwrap();
    assert_eq!(
        other.internal_decrypt(1, &wrapped).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );

    // OpenSSL opens the device's ciphertext with the PEM copy of the key.
    let der_file = child.path("wrapped.der");
    fs::write(&der_file, sm2_cipher_der(&wrapped)).unwrap();
    let key = child.path("sm2-enc-1.pem");
    let opened = openssl(&[
        "pkeyutl",
        "-decrypt",
        "-inkey",
        key.to_str().unwrap(),
        "-in",
        der_file.to_str().unwrap(),
    ]);
    assert_eq!(opened, *dk);

    // A tampered ciphertext, or another key, is refused as a decryption failure.
    let mut tampered = wrapped.clone();
    tampered.hash[0] ^= 1;
    let refused = s.internal_decrypt(1, &tampered).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Decrypt, "{refused}");
    s.get_private_key_access_right(2, PIN_2).unwrap();
    let refused = s.internal_decrypt(2, &wrapped).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Decrypt, "{refused}");

    // A key without a password file takes any password; longer plaintexts round-trip.
    other.get_private_key_access_right(3, b"").unwrap();
    let public3 = other.export_enc_public_key(3).unwrap();
    let long = vec![0xa5; 100];
    let c = other.external_encrypt(&public3, &long).unwrap();
    assert_eq!(*other.internal_decrypt(3, &c).unwrap(), long);

    // Releasing the right ends it.
    s.release_private_key_access_right(1).unwrap();
    assert!(!s.has_private_key_access_right(1));
    assert_eq!(
        s.internal_decrypt(1, &wrapped).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );

    // Dropping a session releases what it holds (key 2 here) and closes it.
    drop(s);
    drop(other);
    assert_eq!(
        child.calls("SDF_ReleasePrivateKeyAccessRight", "index=2 rc=0x00000000"),
        1
    );
    assert_eq!(
        child.calls("SDF_ReleasePrivateKeyAccessRight", "index=3 rc=0x00000000"),
        1
    );
    assert_eq!(child.calls("SDF_CloseSession", "rc=0x00000000"), 3); // info's, s, other
    assert_eq!(
        child.calls("SDF_InternalDecrypt_ECC", "index=1 rc=0x00000000"),
        1
    );
    assert_eq!(child.calls("SDF_GetPrivateKeyAccessRight", "index=1"), 2);
    drop(device);
    assert_eq!(child.calls("SDF_CloseDevice", "rc=0x00000000"), 1);

    // The library spoken to in the wrong profile: refused, not misread.
    let wrong = match child.profile {
        Profile::Sansec => Profile::Gmt0018_2012,
        _ => Profile::Sansec,
    };
    let device = Device::open(Library::load(&child.library, wrong).unwrap()).unwrap();
    let mut s = device.open_session().unwrap();
    let e = s.export_enc_public_key(1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadResponse, "{e}");
}

#[test]
#[ignore = "run by the per_profile_faults_* tests in a child process"]
fn scenario_faults() {
    let Some(child) = Child::from_env() else {
        return;
    };
    let device = child.device();
    let mut s = device.open_session().unwrap();
    let public = s.export_enc_public_key(1).unwrap();

    // Communication failure: every call, including opening sessions and devices.
    fs::write(child.path("fault-commfail"), "").unwrap();
    let e = s.generate_random(16).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Communication, "{e}");
    assert_eq!(
        e.to_string(),
        "SDF_GenerateRandom returned 0x01000003 (SDR_COMMFAIL)"
    );
    assert_eq!(
        device.open_session().unwrap_err().kind(),
        ErrorKind::Communication
    );
    let lib = Library::load(&child.library, child.profile).unwrap();
    assert_eq!(
        Device::open(lib).unwrap_err().kind(),
        ErrorKind::Communication
    );
    fs::remove_file(child.path("fault-commfail")).unwrap();
    s.generate_random(16).unwrap();

    // Slow calls.
    fs::write(child.path("fault-slow-ms"), "150\n").unwrap();
    let start = Instant::now();
    s.generate_random(16).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(150));
    fs::remove_file(child.path("fault-slow-ms")).unwrap();

    // A decryption that returns a wrong-length plaintext is caught.
    let dk = s.generate_random(16).unwrap();
    let wrapped = s.external_encrypt(&public, &dk).unwrap();
    s.get_private_key_access_right(1, PIN_1).unwrap();
    fs::write(child.path("fault-badlen"), "").unwrap();
    let e = s.internal_decrypt(1, &wrapped).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadResponse, "{e}");
    fs::remove_file(child.path("fault-badlen")).unwrap();
    assert_eq!(*s.internal_decrypt(1, &wrapped).unwrap(), *dk);

    // Wrong passwords lock the key after `lockout-after` tries, until the lock file goes.
    fs::write(child.path("lockout-after"), "3").unwrap();
    let wrong_code = match child.profile {
        Profile::Sansec => SDR_PARDENY,
        _ => SDR_PRKRERR,
    };
    for _ in 0..2 {
        let e = s.get_private_key_access_right(2, b"guess").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert_eq!(e.return_code(), Some(wrong_code));
        assert!(!child.path("locked-2").exists());
    }
    let e = s.get_private_key_access_right(2, b"guess").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert!(child.path("locked-2").exists());
    let locked = s.get_private_key_access_right(2, PIN_2).unwrap_err();
    assert_eq!(locked.kind(), ErrorKind::PermissionDenied);
    assert_eq!(locked.return_code(), Some(SDR_PARDENY));
    assert_eq!(child.calls("SDF_GetPrivateKeyAccessRight", "index=2"), 4);
    // Key 1 is unaffected.
    s.get_private_key_access_right(1, PIN_1).unwrap();
    fs::remove_file(child.path("locked-2")).unwrap();
    s.get_private_key_access_right(2, PIN_2).unwrap();
    assert!(s.has_private_key_access_right(2));
}
