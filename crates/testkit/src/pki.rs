//! A test PKI made at test time with `rcgen`: a CA of its own and server certificates it issues, valid
//! now or expired, for any DNS name or IP address. Nothing here is stored in the repository; every run
//! makes fresh keys (ECDSA P-256), so no test depends on a certificate that will one day expire.
//!
//! Certificates and keys are handed out as PEM (what `KmsCaFile` and the docs use) and DER (what
//! rustls takes).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// A certificate authority for tests.
pub struct TestCa {
    name: String,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A server certificate (with its issuer's chain) and its private key.
#[derive(Clone)]
pub struct ServerIdentity {
    /// Leaf first; the CA itself is not included (a server need not send its root).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's PKCS#8 private key, DER.
    pub key_pkcs8: Vec<u8>,
    /// The leaf in PEM.
    pub cert_pem: String,
    /// The names (DNS names or IP addresses) the leaf is valid for.
    pub names: Vec<String>,
    /// The leaf's `notAfter`.
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// The private key as rustls takes it.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

impl TestCa {
    /// A fresh CA whose subject is `CN=<name>, O=gm-kms-plugin tests`, valid from a day ago for ten years.
    ///
    /// # Panics
    /// If rcgen cannot make a key or a certificate (no OS random numbers).
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .expect("a CA without subject alternative names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "gm-kms-plugin tests");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate().expect("CA key");
        let cert = params
            .self_signed(&key)
            .expect("self-signed CA certificate");
        TestCa {
            name: name.to_string(),
            cert_pem: pem("CERTIFICATE", cert.der()),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate in PEM (a `KmsCaFile`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Writes the CA certificate to `dir/<file>` (mode as the umask makes it: it is no secret) and
    /// returns the path.
    ///
    /// # Panics
    /// If the file cannot be written.
    pub fn write_pem(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, &self.cert_pem)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid from an hour ago for 30 days,
    /// with subject `CN=<first name>`.
    pub fn server(&self, names: &[&str]) -> ServerIdentity {
        let now = OffsetDateTime::now_utc();
        self.server_valid(names, now - Duration::hours(1), now + Duration::days(30))
    }

    /// A server certificate for `names` that expired a day ago (valid for the 30 days before).
    pub fn expired_server(&self, names: &[&str]) -> ServerIdentity {
        let now = OffsetDateTime::now_utc();
        self.server_valid(names, now - Duration::days(31), now - Duration::days(1))
    }

    /// A server certificate for `names` valid from `not_before` to `not_after`.
    ///
    /// # Panics
    /// If a name is neither an IP address nor a valid DNS name, or rcgen cannot make the key.
    pub fn server_valid(
        &self,
        names: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> ServerIdentity {
        let owned: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(owned.clone()).expect("valid server names");
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params
            .distinguished_name
            .push(DnType::OrganizationName, "fake JD Cloud KMS");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        ServerIdentity {
            chain: vec![cert.der().clone()],
            key_pkcs8: key.serialize_der(),
            cert_pem: pem("CERTIFICATE", cert.der()),
            names: owned,
            not_after,
        }
    }
}

/// RFC 7468 text: base64 in lines of 64 between the BEGIN and END lines.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_and_leaves_are_distinct_pem_certificates() {
        let ca = TestCa::new("gm-kms test CA");
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let a = ca.server(&["127.0.0.1"]);
        let b = ca.expired_server(&["kms.example.test"]);
        assert_ne!(a.cert_pem, b.cert_pem);
        assert!(b.not_after < OffsetDateTime::now_utc());
        assert!(a.not_after > OffsetDateTime::now_utc());
        assert_eq!(a.chain.len(), 1);
        let shown = format!("{a:?} {ca:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
    }
}
