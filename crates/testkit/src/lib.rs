//! Test doubles of gm-kms-plugin, used by its unit tests, integration tests and benchmarks and by nothing
//! that ships: the plugin has this crate as a dev-dependency only, and this crate does not depend on the
//! plugin. What the doubles need of the plugin's world (SM4-GCM, JD Cloud request signatures) they do
//! themselves, written from the specifications, so that they check the plugin rather than echo it.
//!
//! - [`fake_jdcloud`]: a faithful fake of JD Cloud KMS, a real HTTP/1.1 server on `127.0.0.1`, plain or
//!   over TLS.
//! - [`pki`]: a test CA and the server certificates it issues (valid, expired, for any name).
//! - [`tinyproxy`]: runs Debian's `tinyproxy`, a real HTTP forward proxy, and counts what went through it.
//! - [`jdcloud_sig`]: the fake gateway's verifier of `JDCLOUD3`/`JDCLOUD2-HMAC-SHA256` signatures.
//! - [`client`]: a gRPC channel over a unix socket, as the tests dial the plugin.

pub mod client;
pub mod fake_jdcloud;
pub mod jdcloud_sig;
pub mod pki;
pub mod tinyproxy;
