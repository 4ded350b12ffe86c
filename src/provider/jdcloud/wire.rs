//! JD Cloud KMS JSON: the request bodies we send and a total reading of the answers. Nothing here indexes
//! or unwraps remote data; every answer becomes a value or a [`Problem`].
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The longest `ciphertextBlob` we accept, the limit of a wrapped data key in our header (DESIGN §2).
pub(crate) const MAX_BLOB_LEN: usize = 4096;
/// How much of a remote error message goes into our own error text.
const MAX_MESSAGE_CHARS: usize = 200;

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);

/// Base64 as JD Cloud's APIs write it (standard alphabet with padding).
pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes base64 in the standard or URL-safe alphabet, padded or not; `None` if it is neither.
#[doc(hidden)]
pub fn b64_decode(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    STANDARD_LENIENT
        .decode(text)
        .or_else(|_| URL_SAFE_LENIENT.decode(text))
        .ok()
        .map(Zeroizing::new)
}

/// `{"keyId": …, "plaintext": base64}` (Encrypt). The buffer is zeroized on drop: it holds the data key.
pub(crate) fn encrypt_body(key_id: &str, plaintext: &[u8]) -> Zeroizing<Vec<u8>> {
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "keyId")]
        key_id: &'a str,
        plaintext: &'a str,
    }
    let encoded = Zeroizing::new(b64_encode(plaintext));
    to_json(&Body {
        key_id,
        plaintext: &encoded,
    })
}

/// `{"keyId": …, "ciphertextBlob": …}` (Decrypt).
pub(crate) fn decrypt_body(key_id: &str, blob: &str) -> Zeroizing<Vec<u8>> {
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "keyId")]
        key_id: &'a str,
        #[serde(rename = "ciphertextBlob")]
        ciphertext_blob: &'a str,
    }
    to_json(&Body {
        key_id,
        ciphertext_blob: blob,
    })
}

fn to_json<T: Serialize>(value: &T) -> Zeroizing<Vec<u8>> {
    // Sized up front so the buffer holding a key is not reallocated (leaving copies behind).
    let mut out = Zeroizing::new(Vec::with_capacity(512));
    // Serialising a struct of strings into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.clear();
    }
    out
}

/// The error object of a JD Cloud answer: `{"code": <http status>, "status": "NAME", "message": "…"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[doc(hidden)]
pub struct RemoteError {
    pub code: Option<i64>,
    pub status: String,
    pub message: String,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.status.is_empty(), self.message.is_empty()) {
            (true, true) => f.write_str("(no error details)"),
            (false, true) => f.write_str(&self.status),
            (true, false) => f.write_str(&self.message),
            (false, false) => write!(f, "{}: {}", self.status, self.message),
        }
    }
}

/// Why an answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[doc(hidden)]
pub enum Problem {
    /// The body is not the JSON we expect.
    Garbage(String),
    /// A well-formed answer without the value we asked for (no result, an empty or undecodable field).
    Empty(String),
    /// The answer carries an error object.
    Remote(RemoteError),
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
struct RawEnvelope<T> {
    #[serde(default)]
    result: Option<T>,
    #[serde(default)]
    error: Option<RawError>,
}

#[derive(Deserialize)]
struct RawError {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    status: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<serde_json::Value>,
}

fn text_of(v: Option<serde_json::Value>) -> String {
    let raw = match v {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    sanitize(&raw)
}

/// Keeps a remote message printable and short for our logs and errors.
fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if s.chars().count() > MAX_MESSAGE_CHARS {
        out.push('…');
    }
    out
}

impl From<RawError> for RemoteError {
    fn from(e: RawError) -> Self {
        let code = match e.code {
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        RemoteError {
            code,
            status: text_of(e.status),
            message: text_of(e.message),
        }
    }
}

/// Reads an answer envelope, which must be a JSON object (serde would also take an array for a struct).
fn envelope<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<RawEnvelope<T>, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if !value.is_object() {
        return Err("not a JSON object".into());
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// The error object of an answer, if it has one (any HTTP status).
#[doc(hidden)]
pub fn error_of(body: &[u8]) -> Option<RemoteError> {
    let env: RawEnvelope<serde_json::Value> = envelope(body).ok()?;
    env.error.map(RemoteError::from)
}

/// The `result` of a success answer; an `error` object in it wins.
fn result_of<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Problem> {
    let env: RawEnvelope<T> = envelope(body)
        .map_err(|e| Problem::Garbage(format!("answer is not the expected JSON ({e})")))?;
    if let Some(err) = env.error {
        return Err(Problem::Remote(err.into()));
    }
    env.result
        .ok_or_else(|| Problem::Empty("answer has no result".into()))
}

/// `result.ciphertextBlob` of an Encrypt answer: non-empty base64 text of at most [`MAX_BLOB_LEN`] bytes.
#[doc(hidden)]
pub fn encrypt_result(body: &[u8]) -> Result<String, Problem> {
    #[derive(Deserialize)]
    struct R {
        #[serde(default, rename = "ciphertextBlob")]
        ciphertext_blob: Option<String>,
    }
    let r: R = result_of(body)?;
    let blob = r.ciphertext_blob.unwrap_or_default();
    check_blob(&blob).map_err(Problem::Empty)?;
    Ok(blob)
}

/// Checks that `blob` looks like a ciphertextBlob: 1..=MAX_BLOB_LEN base64 characters that decode to at
/// least one byte.
#[doc(hidden)]
pub fn check_blob(blob: &str) -> Result<(), String> {
    if blob.is_empty() {
        return Err("ciphertextBlob is empty".into());
    }
    if blob.len() > MAX_BLOB_LEN {
        return Err(format!(
            "ciphertextBlob is {} bytes, over {MAX_BLOB_LEN}",
            blob.len()
        ));
    }
    match b64_decode(blob) {
        Some(bytes) if !bytes.is_empty() => Ok(()),
        _ => Err("ciphertextBlob is not base64".into()),
    }
}

/// `result.plaintext` of a Decrypt answer, base64-decoded: at least one byte.
#[doc(hidden)]
pub fn decrypt_result(body: &[u8]) -> Result<Zeroizing<Vec<u8>>, Problem> {
    #[derive(Deserialize)]
    struct R {
        #[serde(default)]
        plaintext: Option<String>,
    }
    let r: R = result_of(body)?;
    let text = Zeroizing::new(r.plaintext.unwrap_or_default());
    if text.is_empty() {
        return Err(Problem::Empty("plaintext is empty".into()));
    }
    let bytes =
        b64_decode(&text).ok_or_else(|| Problem::Empty("plaintext is not base64".into()))?;
    if bytes.is_empty() {
        return Err(Problem::Empty("plaintext is empty".into()));
    }
    Ok(bytes)
}

/// `result.keyInfo` of a DescribeKey answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[doc(hidden)]
pub struct KeyInfo {
    pub key_id: String,
    pub key_name: String,
    /// 0 enabled, 1 disabled, 2 pending deletion.
    pub key_status: i64,
}

#[doc(hidden)]
pub fn describe_result(body: &[u8]) -> Result<KeyInfo, Problem> {
    #[derive(Deserialize)]
    struct R {
        #[serde(default, rename = "keyInfo")]
        key_info: Option<RawKeyInfo>,
    }
    #[derive(Deserialize)]
    struct RawKeyInfo {
        #[serde(default, rename = "keyId")]
        key_id: Option<serde_json::Value>,
        #[serde(default, rename = "keyName")]
        key_name: Option<serde_json::Value>,
        #[serde(default, rename = "keyStatus")]
        key_status: Option<serde_json::Value>,
    }
    let r: R = result_of(body)?;
    let info = r
        .key_info
        .ok_or_else(|| Problem::Empty("answer has no keyInfo".into()))?;
    let key_status = match info.key_status {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| Problem::Empty("keyInfo has no keyStatus".into()))?;
    Ok(KeyInfo {
        key_id: text_of(info.key_id),
        key_name: text_of(info.key_name),
        key_status,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_are_the_documented_json() {
        let b = encrypt_body("k-1", &[0u8, 1, 2, 255]);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"keyId": "k-1", "plaintext": "AAEC/w=="})
        );
        let b = decrypt_body("k-1", "QUJD");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"keyId": "k-1", "ciphertextBlob": "QUJD"})
        );
    }

    #[test]
    fn encrypt_answers() {
        let ok = br#"{"requestId":"r","result":{"ciphertextBlob":"QUJDRA=="}}"#;
        assert_eq!(encrypt_result(ok).unwrap(), "QUJDRA==");
        for (body, want_garbage) in [
            (&b"<html>oops</html>"[..], true),
            (b"", true),
            (b"[]", true),
            (b"null", true),
            (br#"{"result":{"ciphertextBlob":5}}"#, true),
            (br#"{"requestId":"r"}"#, false),
            (br#"{"requestId":"r","result":null}"#, false),
            (br#"{"requestId":"r","result":{}}"#, false),
            (br#"{"result":{"ciphertextBlob":""}}"#, false),
            (br#"{"result":{"ciphertextBlob":"***"}}"#, false),
        ] {
            match encrypt_result(body) {
                Err(Problem::Garbage(_)) if want_garbage => {}
                Err(Problem::Empty(_)) if !want_garbage => {}
                other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(body)),
            }
        }
        let long = format!(
            r#"{{"result":{{"ciphertextBlob":"{}"}}}}"#,
            "A".repeat(4100)
        );
        assert!(matches!(
            encrypt_result(long.as_bytes()),
            Err(Problem::Empty(_))
        ));
        let with_error = br#"{"requestId":"r","result":{"ciphertextBlob":"QUJD"},"error":{"code":500,"status":"INTERNAL","message":"x"}}"#;
        assert!(
            matches!(encrypt_result(with_error), Err(Problem::Remote(e)) if e.code == Some(500))
        );
    }

    #[test]
    fn decrypt_answers() {
        let ok = br#"{"requestId":"r","result":{"plaintext":"AAECAwQFBgcICQoLDA0ODw=="}}"#;
        assert_eq!(
            decrypt_result(ok).unwrap().as_slice(),
            &(0u8..16).collect::<Vec<_>>()[..]
        );
        let unpadded = br#"{"result":{"plaintext":"AAEC"}}"#;
        assert_eq!(decrypt_result(unpadded).unwrap().as_slice(), &[0, 1, 2]);
        for body in [
            &br#"{"result":{"plaintext":""}}"#[..],
            br#"{"result":{"plaintext":null}}"#,
            br#"{"result":{}}"#,
            br#"{"result":{"plaintext":"!!!"}}"#,
            br#"{"result":{"plaintext":"="}}"#,
        ] {
            assert!(
                matches!(decrypt_result(body), Err(Problem::Empty(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn describe_answers() {
        let ok =
            br#"{"result":{"keyInfo":{"keyId":"k","keyName":"n","keyStatus":1,"createTime":"x"}}}"#;
        assert_eq!(
            describe_result(ok).unwrap(),
            KeyInfo {
                key_id: "k".into(),
                key_name: "n".into(),
                key_status: 1
            }
        );
        assert!(matches!(
            describe_result(br#"{"result":{}}"#),
            Err(Problem::Empty(_))
        ));
        assert!(matches!(
            describe_result(br#"{"result":{"keyInfo":{"keyId":"k"}}}"#),
            Err(Problem::Empty(_))
        ));
    }

    #[test]
    fn error_objects() {
        let body = br#"{"requestId":"r","error":{"code":401,"status":"ACCESS_ERROR","message":"sign result is not same"}}"#;
        let e = error_of(body).unwrap();
        assert_eq!(e.code, Some(401));
        assert_eq!(e.status, "ACCESS_ERROR");
        assert_eq!(e.to_string(), "ACCESS_ERROR: sign result is not same");
        let long = format!(
            r#"{{"error":{{"code":"404","status":"NOT_FOUND","message":"{}\u0007"}}}}"#,
            "m".repeat(500)
        );
        let e = error_of(long.as_bytes()).unwrap();
        assert_eq!(e.code, Some(404));
        assert!(e.message.chars().count() <= MAX_MESSAGE_CHARS + 1);
        assert!(!e.message.contains('\u{7}'));
        assert_eq!(error_of(b"not json"), None);
        assert_eq!(error_of(br#"{"result":{}}"#), None);
    }
}
