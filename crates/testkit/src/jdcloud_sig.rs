//! The fake gateway's verifier of JD Cloud API request signatures: `JDCLOUD3-HMAC-SHA256` (what JD Cloud's
//! Python SDK sends) and `JDCLOUD2-HMAC-SHA256` (its Go SDK). Written from the wire format alone, without
//! the plugin's signer, so that a mistake there is a refused request here rather than one echoed back.
//!
//! The wire format, as a gateway sees it. The `Authorization` header reads
//! `ALGORITHM Credential=AK/YYYYMMDD/REGION/SERVICE/TERMINATOR, SignedHeaders=a;b;c, Signature=HEX`, and
//! the signature is
//!
//! ```text
//! canonical = METHOD \n URI \n QUERY \n (name:value \n for each signed header) \n a;b;c \n hex(SHA-256(body))
//! string    = ALGORITHM \n x-jdcloud-date \n YYYYMMDD/REGION/SERVICE/TERMINATOR \n hex(SHA-256(canonical))
//! key       = HMAC(HMAC(HMAC(HMAC(PREFIX || secret key, YYYYMMDD), REGION), SERVICE), TERMINATOR)
//! signature = hex(HMAC(key, string))                                   (HMAC = HMAC-SHA-256)
//! ```
//!
//! | | `JDCLOUD3` | `JDCLOUD2` |
//! |---|---|---|
//! | PREFIX, TERMINATOR | `JDCLOUD3`, `jdcloud3_request` | `JDCLOUD2`, `jdcloud2_request` |
//! | URI | path percent-decoded (`+` is a space), runs of `/` made one, encoded again (all but `A-Za-z0-9_.-~/`) | the path as sent, `/` if empty |
//! | QUERY | `k=v` pairs decoded and encoded again, sorted; a pair without `=` or with an empty key left out | the query as sent |
//! | header line | `name:` + each value with white space trimmed, joined by `,` | `name:` + values joined by `,`, then spaces trimmed at both ends of the line and runs of spaces made one |
//!
//! Signed header names are lower case and sorted; `host` is always among them, `authorization` and
//! `user-agent` never.

use std::time::SystemTime;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The header with the signing time, `YYYYMMDDTHHMMSSZ` in UTC.
pub const DATE_HEADER: &str = "x-jdcloud-date";
/// The header with the request's nonce.
pub const NONCE_HEADER: &str = "x-jdcloud-nonce";

/// Headers that no signer signs.
const NEVER_SIGNED: [&str; 2] = ["authorization", "user-agent"];

type HmacSha256 = Hmac<Sha256>;

/// A signature version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `JDCLOUD3-HMAC-SHA256`.
    V3,
    /// `JDCLOUD2-HMAC-SHA256`.
    V2,
}

impl Version {
    /// The name that starts the `Authorization` header.
    pub fn algorithm(self) -> &'static str {
        match self {
            Version::V3 => "JDCLOUD3-HMAC-SHA256",
            Version::V2 => "JDCLOUD2-HMAC-SHA256",
        }
    }

    fn key_prefix(self) -> &'static str {
        match self {
            Version::V3 => "JDCLOUD3",
            Version::V2 => "JDCLOUD2",
        }
    }

    fn terminator(self) -> &'static str {
        match self {
            Version::V3 => "jdcloud3_request",
            Version::V2 => "jdcloud2_request",
        }
    }
}

/// What an `Authorization` header claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// From the algorithm name.
    pub version: Version,
    /// The access key id of the credential.
    pub access_key: String,
    /// `YYYYMMDD` of the credential scope.
    pub scope_date: String,
    /// Region of the credential scope (`jdcloud-api` for KMS).
    pub region: String,
    /// Service of the credential scope (`kms`).
    pub service: String,
    /// `SignedHeaders`, in the order given.
    pub signed_headers: Vec<String>,
    /// The signature.
    pub signature: [u8; 32],
}

impl Authorization {
    /// Reads an `Authorization` header value; `None` for anything that is not exactly the three
    /// parameters `Credential`, `SignedHeaders` and `Signature` (any order, each once) of a known algorithm.
    pub fn parse(value: &str) -> Option<Authorization> {
        let (algorithm, params) = value.trim().split_once(' ')?;
        let version = [Version::V3, Version::V2]
            .into_iter()
            .find(|v| v.algorithm() == algorithm)?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for param in params.split(',') {
            let (name, v) = param.trim().split_once('=')?;
            let slot = match name {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed,
                "Signature" => &mut signature,
                _ => return None,
            };
            if slot.replace(v).is_some() {
                return None;
            }
        }
        let scope: Vec<&str> = credential?.split('/').collect();
        let [access_key, scope_date, region, service, terminator] = scope.as_slice() else {
            return None;
        };
        if access_key.is_empty() || *terminator != version.terminator() {
            return None;
        }
        let mut sig = [0u8; 32];
        hex::decode_to_slice(signature?, &mut sig).ok()?;
        let signed_headers: Vec<String> = signed?.split(';').map(str::to_owned).collect();
        if signed_headers.iter().any(String::is_empty) {
            return None;
        }
        Some(Authorization {
            version,
            access_key: (*access_key).to_owned(),
            scope_date: (*scope_date).to_owned(),
            region: (*region).to_owned(),
            service: (*service).to_owned(),
            signed_headers,
            signature: sig,
        })
    }
}

/// A request as the gateway received it.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The path as sent, still percent-encoded.
    pub path: &'a str,
    /// The query as sent, without `?` (empty when there is none).
    pub query: &'a str,
    /// Every header received, `host` included, names in any case, a name as often as it came.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub body: &'a [u8],
}

impl<'a> Received<'a> {
    /// The values of header `name` (any case), in the order received.
    fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.values(name).next()
    }
}

/// Whether `auth.signature` is the signature of `req` under `secret_key`: the signed headers are well
/// formed and present, the `x-jdcloud-date` header agrees with the scope's date, and the HMAC matches
/// (compared in constant time). Date freshness and nonce reuse are the caller's to check.
pub fn verify(auth: &Authorization, req: &Received<'_>, secret_key: &str) -> bool {
    signing_mac(auth, req, secret_key).is_some_and(|mac| mac.verify_slice(&auth.signature).is_ok())
}

/// The MAC, fed with the string to sign, that `auth` should carry; `None` if the request cannot carry a
/// valid signature at all.
fn signing_mac(auth: &Authorization, req: &Received<'_>, secret_key: &str) -> Option<HmacSha256> {
    let version = auth.version;
    let date = req.header(DATE_HEADER)?;
    if date.get(..8)? != auth.scope_date {
        return None;
    }
    let canonical = canonical_request(version, &auth.signed_headers, req)?;
    let scope = [
        auth.scope_date.as_str(),
        &auth.region,
        &auth.service,
        version.terminator(),
    ]
    .join("/");
    let string_to_sign = [
        version.algorithm(),
        date,
        &scope,
        &hex::encode(Sha256::digest(canonical.as_bytes())),
    ]
    .join("\n");

    let first_key = format!("{}{secret_key}", version.key_prefix());
    let mut key = hmac(first_key.as_bytes(), auth.scope_date.as_bytes());
    for part in [
        auth.region.as_str(),
        auth.service.as_str(),
        version.terminator(),
    ] {
        key = hmac(&key, part.as_bytes());
    }
    let mut mac = new_mac(&key);
    mac.update(string_to_sign.as_bytes());
    Some(mac)
}

fn new_mac(key: &[u8]) -> HmacSha256 {
    match <HmacSha256 as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC hashes a long key and pads a short one: every length is a valid key.
        Err(_) => unreachable!("HMAC-SHA-256 takes keys of any length"),
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = new_mac(key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The canonical request, or `None` when the signed header list is not what a signer makes or names a
/// header the request does not have.
fn canonical_request(version: Version, signed: &[String], req: &Received<'_>) -> Option<String> {
    let ascending = signed.iter().zip(signed.iter().skip(1)).all(|(a, b)| a < b);
    let well_formed = signed.iter().all(|name| {
        !name.bytes().any(|b| b.is_ascii_uppercase()) && !NEVER_SIGNED.contains(&name.as_str())
    });
    if !ascending || !well_formed || !signed.iter().any(|name| name == "host") {
        return None;
    }

    let (uri, query) = match version {
        Version::V3 => (v3_uri(req.path), v3_query(req.query)),
        Version::V2 => {
            let uri = if req.path.is_empty() { "/" } else { req.path };
            (uri.to_owned(), req.query.to_owned())
        }
    };
    let mut out = format!("{}\n{uri}\n{query}\n", req.method);
    for name in signed {
        let values: Vec<&str> = req.values(name).collect();
        if values.is_empty() {
            return None;
        }
        let line = match version {
            Version::V3 => {
                let trimmed: Vec<&str> = values.into_iter().map(trim_py_whitespace).collect();
                format!("{name}:{}", trimmed.join(","))
            }
            Version::V2 => collapse_spaces(&format!("{name}:{}", values.join(","))),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed.join(";"));
    out.push('\n');
    out.push_str(&hex::encode(Sha256::digest(req.body)));
    Some(out)
}

/// The v3 canonical URI.
fn v3_uri(path: &str) -> String {
    let decoded = percent_decode(path, true);
    let mut single = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        if !(c == '/' && single.ends_with('/')) {
            single.push(c);
        }
    }
    if single.is_empty() {
        return "/".to_owned();
    }
    let encoded = percent_encode(&single, b"/");
    if encoded.starts_with('/') {
        encoded
    } else {
        format!("/{encoded}")
    }
}

/// The v3 canonical query.
fn v3_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = percent_encode(&percent_decode(k, true), b"");
            let v = percent_encode(&percent_decode(v, true), b"");
            (!k.is_empty()).then_some((k, v))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Trims what Python's `str.strip()` trims: Unicode white space and the separators U+001C..U+001F.
fn trim_py_whitespace(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Trims spaces (only U+0020) at both ends and makes every run of spaces inside one space.
fn collapse_spaces(line: &str) -> String {
    line.split(' ')
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decodes `%XX` escapes (either case of hex digit) and, if `plus_is_space`, `+`; an escape that is not
/// one stays as it is. The bytes are read as UTF-8, an invalid sequence becoming U+FFFD.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => match tail {
                [h, l, after @ ..] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    out.push(hex_digit(*h) << 4 | hex_digit(*l));
                    rest = after;
                }
                _ => out.push(b'%'),
            },
            _ => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(h: u8) -> u8 {
    match h {
        b'0'..=b'9' => h - b'0',
        b'a'..=b'f' => h - b'a' + 10,
        b'A'..=b'F' => h - b'A' + 10,
        _ => 0,
    }
}

/// `%XX` (upper-case hex) for every UTF-8 byte except `A-Za-z0-9_.-~` and the bytes of `keep`.
fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads an `x-jdcloud-date` value, exactly `YYYYMMDDTHHMMSSZ` (UTC); `None` for anything else, an
/// impossible date (30 February) included.
pub fn parse_date(s: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let t = time::PrimitiveDateTime::parse(s, format).ok()?;
    Some(SystemTime::from(t.assume_utc()))
}

/// A signer built from the verifier's own pieces, for the fake's tests: it proves nothing about
/// signatures (the vectors below do that), only lets the tests talk to the fake.
#[cfg(test)]
pub(crate) fn test_authorization(
    version: Version,
    req: &Received<'_>,
    access_key: &str,
    secret_key: &str,
) -> String {
    let mut signed: Vec<String> = req
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .filter(|n| !NEVER_SIGNED.contains(&n.as_str()))
        .collect();
    signed.sort();
    signed.dedup();
    let date = req.header(DATE_HEADER).expect("a date header");
    let mut auth = Authorization {
        version,
        access_key: access_key.to_owned(),
        scope_date: date.get(..8).expect("a date").to_owned(),
        region: "jdcloud-api".to_owned(),
        service: "kms".to_owned(),
        signed_headers: signed,
        signature: [0; 32],
    };
    let mac = signing_mac(&auth, req, secret_key).expect("a signable request");
    auth.signature = mac.finalize().into_bytes().into();
    format!(
        "{} Credential={}/{}/{}/{}/{}, SignedHeaders={}, Signature={}",
        version.algorithm(),
        auth.access_key,
        auth.scope_date,
        auth.region,
        auth.service,
        version.terminator(),
        auth.signed_headers.join(";"),
        hex::encode(auth.signature)
    )
}

#[cfg(test)]
#[path = "jdcloud_sig_tests.rs"]
mod tests;
