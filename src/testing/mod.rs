//! Test doubles shared by unit tests, integration tests and benchmarks. Not part of the plugin's
//! behaviour: nothing in the running plugin uses this module.

pub mod client;
pub mod fake_jdcloud;
