//! JD Cloud API request signing: `JDCLOUD3-HMAC-SHA256` (what the official Python SDK sends) and
//! `JDCLOUD2-HMAC-SHA256` (what the official Go SDK sends). Both are the AWS SigV4 pattern with JD Cloud's
//! constants: a canonical request (method, URI, query, headers, SHA-256 of the body) is hashed into a
//! string to sign, which is MACed with a key derived from the secret key, the date, the region and the
//! service.
//!
//! The two versions differ in their constants and in how the canonical request is normalised:
//!
//! | step | v3 (Python SDK) | v2 (Go SDK) |
//! |---|---|---|
//! | URI | percent-decoded (`+` as space), runs of `/` collapsed, re-encoded (everything but `A-Za-z0-9-._~/`) | the path as sent (already encoded, `:` as `%3A`) |
//! | query | each `k=v` decoded and re-encoded, sorted, pairs without `=` or with an empty key dropped | the raw query as sent |
//! | header values | surrounding white space trimmed | surrounding spaces trimmed, inner runs of spaces collapsed |
//!
//! Everything here is a pure function of its inputs (the date and nonce are parameters), so tests sign with
//! a fixed date and nonce and compare byte for byte with the official SDK. The verify side here
//! (`parse_authorization`, `verify`) is compiled for this module's tests only; the fake JD Cloud gateway
//! has its own, independent verifier (`gm_kms_testkit::jdcloud_sig`).

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::config::SignVersion;

/// Region used in the credential scope of requests that have no region (KMS is one of them).
pub const REGION: &str = "jdcloud-api";
/// Service name of JD Cloud KMS in the credential scope.
pub const SERVICE: &str = "kms";
/// Header carrying the signing time, `YYYYMMDDTHHMMSSZ` (UTC).
pub const HEADER_DATE: &str = "x-jdcloud-date";
/// Header carrying the per-request nonce (the gateway rejects a nonce it has seen).
pub const HEADER_NONCE: &str = "x-jdcloud-nonce";
/// Header the Python SDK adds after signing: hex SHA-256 of the body (not itself signed).
pub const HEADER_CONTENT_SHA256: &str = "x-jdcloud-content-sha256";

/// The headers never signed, as both SDKs skip them.
const IGNORED_HEADERS: [&str; 2] = ["authorization", "user-agent"];

/// Per-version constants.
struct Constants {
    algorithm: &'static str,
    key_prefix: &'static str,
    terminator: &'static str,
}

fn constants(version: SignVersion) -> Constants {
    match version {
        SignVersion::V3 => Constants {
            algorithm: "JDCLOUD3-HMAC-SHA256",
            key_prefix: "JDCLOUD3",
            terminator: "jdcloud3_request",
        },
        SignVersion::V2 => Constants {
            algorithm: "JDCLOUD2-HMAC-SHA256",
            key_prefix: "JDCLOUD2",
            terminator: "jdcloud2_request",
        },
    }
}

/// The algorithm name that starts the `Authorization` header of a version.
pub fn algorithm(version: SignVersion) -> &'static str {
    constants(version).algorithm
}

/// One HTTP request as the signature sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The `Host` header value: `host` or `host:port` (without a default port).
    pub host: &'a str,
    /// The path as sent on the wire, percent-encoded.
    pub path: &'a str,
    /// The raw query string without `?` (empty when there is none).
    pub query: &'a str,
    /// Every header to sign except `Host`: for JD Cloud `content-type`, [`HEADER_DATE`] and [`HEADER_NONCE`].
    /// Names are matched case-insensitively; a name given twice is signed once with its values joined
    /// by `,` (as Go's `http.Header` does). `authorization` and `user-agent` are skipped.
    pub headers: &'a [(&'a str, &'a str)],
    /// The request body (empty for `GET`).
    pub body: &'a [u8],
}

/// Access key id and secret key.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// The access key id, sent in the `Credential` of the `Authorization` header.
    pub access_key: &'a str,
    /// The secret key; only MACs derived from it leave the process.
    pub secret_key: &'a str,
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// Computes the `Authorization` header value of `req`.
///
/// `date` is the [`HEADER_DATE`] value (`YYYYMMDDTHHMMSSZ`), which must also be among `req.headers`
/// together with the nonce: the signature covers them, which is what makes a replay detectable.
pub fn authorization(
    version: SignVersion,
    req: &Request<'_>,
    date: &str,
    region: &str,
    service: &str,
    creds: &Credentials<'_>,
) -> String {
    let c = constants(version);
    let headers = collect_headers(req.headers);
    let (canonical, signed_headers) = canonical_request(version, req, &headers);
    let scope = credential_scope(&c, date, region, service);
    let signature = signature_hex(
        &c,
        &canonical,
        date,
        &scope,
        region,
        service,
        creds.secret_key,
    );
    format!(
        "{} Credential={}/{}, SignedHeaders={}, Signature={}",
        c.algorithm, creds.access_key, scope, signed_headers, signature
    )
}

/// Hex SHA-256 of a body, the value of [`HEADER_CONTENT_SHA256`].
pub fn content_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// A parsed `Authorization` header (the verify side; the plugin only signs, so this is test code).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The signing version its algorithm name stands for.
    pub version: SignVersion,
    /// The access key id of the `Credential`.
    pub access_key: String,
    /// `YYYYMMDD` from the credential scope.
    pub short_date: String,
    /// Region of the credential scope.
    pub region: String,
    /// Service of the credential scope.
    pub service: String,
    /// Lower-case header names, in the order given (sorted when the signer made them).
    pub signed_headers: Vec<String>,
    /// Lower-case hex.
    pub signature: String,
}

/// Parses `ALG Credential=AK/DATE/REGION/SERVICE/TERMINATOR, SignedHeaders=a;b, Signature=HEX`.
/// Anything else is `None`.
#[cfg(test)]
pub fn parse_authorization(value: &str) -> Option<Authorization> {
    let (alg, rest) = value.trim().split_once(' ')?;
    let version = [SignVersion::V3, SignVersion::V2]
        .into_iter()
        .find(|v| constants(*v).algorithm == alg)?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => return None,
        }
    }
    let mut cred = credential?.split('/');
    let access_key = cred.next()?.to_string();
    let short_date = cred.next()?.to_string();
    let region = cred.next()?.to_string();
    let service = cred.next()?.to_string();
    if cred.next()? != constants(version).terminator || cred.next().is_some() {
        return None;
    }
    let signature = signature?;
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let signed_headers: Vec<String> = signed?.split(';').map(str::to_string).collect();
    if access_key.is_empty() || signed_headers.iter().any(String::is_empty) {
        return None;
    }
    Some(Authorization {
        version,
        access_key,
        short_date,
        region,
        service,
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

/// Recomputes the signature of a received request and compares it (in constant time) with the one in
/// `auth`. `req.headers` must hold the received values of the headers `auth.signed_headers` names (other
/// than `host`, taken from `req.host`); `date` is the received [`HEADER_DATE`].
#[cfg(test)]
pub fn verify(auth: &Authorization, req: &Request<'_>, date: &str, secret_key: &str) -> bool {
    let c = constants(auth.version);
    let headers = collect_headers(req.headers);
    let (canonical, signed_headers) = canonical_request(auth.version, req, &headers);
    if signed_headers != auth.signed_headers.join(";") {
        return false;
    }
    if date.get(..8) != Some(auth.short_date.as_str()) {
        return false;
    }
    let scope = credential_scope(&c, date, &auth.region, &auth.service);
    let expected = signature_hex(
        &c,
        &canonical,
        date,
        &scope,
        &auth.region,
        &auth.service,
        secret_key,
    );
    constant_time_eq(expected.as_bytes(), auth.signature.as_bytes())
}

#[cfg(test)]
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lower-cased names with their values; a repeated name keeps one entry with the values in order.
fn collect_headers(headers: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if IGNORED_HEADERS.contains(&lower.as_str()) || lower == "host" {
            continue;
        }
        match out.iter_mut().find(|(n, _)| *n == lower) {
            Some((_, values)) => values.push((*value).to_string()),
            None => out.push((lower, vec![(*value).to_string()])),
        }
    }
    out
}

/// The canonical request and the `SignedHeaders` list.
fn canonical_request(
    version: SignVersion,
    req: &Request<'_>,
    headers: &[(String, Vec<String>)],
) -> (String, String) {
    let mut names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    names.push("host");
    names.sort_unstable();
    let signed_headers = names.join(";");

    let mut canonical_headers = String::new();
    for name in &names {
        let line = if *name == "host" {
            match version {
                SignVersion::V3 => format!("host:{}", py_strip(req.host)),
                SignVersion::V2 => format!("host:{}", req.host),
            }
        } else {
            let values = headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
                .unwrap_or_default();
            match version {
                SignVersion::V3 => {
                    let stripped: Vec<&str> = values.iter().map(|v| py_strip(v)).collect();
                    format!("{name}:{}", stripped.join(","))
                }
                SignVersion::V2 => format!("{name}:{}", values.join(",")),
            }
        };
        let line = match version {
            SignVersion::V3 => line,
            SignVersion::V2 => go_strip_excess_spaces(&line),
        };
        canonical_headers.push_str(&line);
        canonical_headers.push('\n');
    }

    let (uri, query) = match version {
        SignVersion::V3 => (canonical_uri_v3(req.path), canonical_query_v3(req.query)),
        SignVersion::V2 => {
            let uri = if req.path.is_empty() {
                "/".to_string()
            } else {
                req.path.to_string()
            };
            (uri, req.query.to_string())
        }
    };

    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        uri,
        query,
        canonical_headers,
        signed_headers,
        content_sha256(req.body)
    );
    (canonical, signed_headers)
}

fn credential_scope(c: &Constants, date: &str, region: &str, service: &str) -> String {
    let short = date.get(..8).unwrap_or(date);
    format!("{short}/{region}/{service}/{}", c.terminator)
}

fn signature_hex(
    c: &Constants,
    canonical: &str,
    date: &str,
    scope: &str,
    region: &str,
    service: &str,
    secret_key: &str,
) -> String {
    let string_to_sign = format!(
        "{}\n{}\n{}\n{}",
        c.algorithm,
        date,
        scope,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let short = date.get(..8).unwrap_or(date);
    let mut first_key =
        zeroize::Zeroizing::new(String::with_capacity(c.key_prefix.len() + secret_key.len()));
    first_key.push_str(c.key_prefix);
    first_key.push_str(secret_key);
    let k_date = zeroize::Zeroizing::new(hmac_sha256(first_key.as_bytes(), short.as_bytes()));
    let k_region = zeroize::Zeroizing::new(hmac_sha256(k_date.as_slice(), region.as_bytes()));
    let k_service = zeroize::Zeroizing::new(hmac_sha256(k_region.as_slice(), service.as_bytes()));
    let k_signing =
        zeroize::Zeroizing::new(hmac_sha256(k_service.as_slice(), c.terminator.as_bytes()));
    hex::encode(hmac_sha256(k_signing.as_slice(), string_to_sign.as_bytes()))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Python's `str.strip()`: white space as `str.isspace` defines it (Rust's set plus U+001C..U+001F).
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Go SDK's `stripExcessSpaces` on one `name:value` line: spaces trimmed at both ends, runs of spaces
/// inside collapsed to one.
fn go_strip_excess_spaces(line: &str) -> String {
    let trimmed = line.trim_matches(' ');
    let mut out = String::with_capacity(trimmed.len());
    let mut prev_space = false;
    for ch in trimmed.chars() {
        if ch == ' ' {
            if !prev_space {
                out.push(ch);
            }
            prev_space = true;
        } else {
            out.push(ch);
            prev_space = false;
        }
    }
    out
}

/// Python's `urllib.parse.unquote_plus`: `+` is a space, valid `%XX` escapes are bytes, the result is
/// read as UTF-8 with invalid sequences replaced by U+FFFD.
fn unquote_plus(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'+' {
            out.push(b' ');
            i += 1;
            continue;
        }
        if b == b'%'
            && let (Some(h), Some(l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = (hex_val(*h), hex_val(*l))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Python's `urllib.parse.quote(s, safe)`: every UTF-8 byte except `A-Za-z0-9_.-~` and `safe` becomes
/// `%XX` (upper-case hex).
pub(crate) fn quote(s: &str, safe: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) || safe.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn canonical_uri_v3(path: &str) -> String {
    let decoded = unquote_plus(path);
    let mut collapsed = String::with_capacity(decoded.len());
    for ch in decoded.chars() {
        if ch == '/' && collapsed.ends_with('/') {
            continue;
        }
        collapsed.push(ch);
    }
    if collapsed.is_empty() {
        return "/".to_string();
    }
    let encoded = quote(&collapsed, b"/~");
    if encoded.starts_with('/') {
        encoded
    } else {
        format!("/{encoded}")
    }
}

fn canonical_query_v3(query: &str) -> String {
    let mut params: Vec<Vec<String>> = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.splitn(2, '=')
                .map(|v| quote(&unquote_plus(v), b"~"))
                .collect()
        })
        .collect();
    params.sort();
    let pairs: Vec<String> = params
        .iter()
        .filter_map(|p| match p.as_slice() {
            [k, v] if !k.is_empty() => Some(format!("{k}={v}")),
            _ => None,
        })
        .collect();
    pairs.join("&")
}

/// The [`HEADER_DATE`] layout, `YYYYMMDDTHHMMSSZ` (UTC), for writing and reading alike.
const DATE_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");

/// `YYYYMMDDTHHMMSSZ` in UTC, the [`HEADER_DATE`] format. Whole seconds (the fraction is dropped); a
/// time before 1970 is written as the epoch, one after 9999 as the last second of 9999.
pub fn format_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let at = i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(PrimitiveDateTime::MAX.assume_utc());
    // Cannot fail: `time` refuses to format only a component the value lacks, or on an I/O error.
    at.format(DATE_FORMAT).unwrap_or_default()
}

/// Reads a [`HEADER_DATE`] value back; `None` for anything not exactly `YYYYMMDDTHHMMSSZ` naming a real
/// UTC second from 1970 on. Stricter than the hand-written parser it replaced, which rolled a day past the
/// month's end or a second `60` over into the next day or minute: on 3,000,000 mutated date strings those
/// were the only differences (the formatting was identical on 2,000,000 times up to 9999-12-31T23:59:59Z).
/// Signers never write such dates; only tests read them.
#[cfg(test)]
pub fn parse_date(s: &str) -> Option<SystemTime> {
    // `time`'s `[year]` also reads a signed year (`+2024…`, 17 bytes), which no signer writes.
    if s.len() != 16 {
        return None;
    }
    let at = PrimitiveDateTime::parse(s, DATE_FORMAT).ok()?.assume_utc();
    let secs = u64::try_from(at.unix_timestamp()).ok()?;
    Some(UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// A random version-4 UUID in its usual text form, the nonce the SDKs send.
///
/// Not `Uuid::new_v4()`: that panics when the OS RNG fails, where this falls back to the clock.
pub fn new_nonce() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // The OS RNG failing is not recoverable for key handling either; fall back to time-derived
        // uniqueness so a request is still distinct (a nonce need not be secret).
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        b = t.as_nanos().to_le_bytes();
    }
    uuid::Builder::from_random_bytes(b)
        .into_uuid()
        .hyphenated()
        .to_string()
}

#[cfg(test)]
#[path = "sign_tests.rs"]
mod tests;
