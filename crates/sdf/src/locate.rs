//! Finding the soft device's shared library from a test (feature `locate-soft-device`).
//!
//! Tests of this crate and of the plugin call [`soft_device_library`]; it runs
//! `cargo build -p gm-sdf-soft --message-format=json` once per process, in the same target directory
//! and profile as the running test binary, and returns the `cdylib` path from cargo's artifact
//! message.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub use crate::soft_names::{DEVICE_NAME, DIR_ENV, ISSUER, PROFILE_ENV, SERIAL};

/// Environment variable that, when set, names the soft device library and skips the build.
pub const LIBRARY_ENV: &str = "GM_SDF_SOFT_LIB";

/// The package that builds the soft device.
const PACKAGE: &str = "gm-sdf-soft";

/// The path of the soft device's shared library (`libgm_sdf_soft.so`), built on first use.
///
/// `GM_SDF_SOFT_LIB`, if set, is returned as it is. Otherwise the library is built with the cargo that
/// runs the tests (`$CARGO`, else `cargo`) from this workspace, honouring `CARGO_TARGET_DIR`; when the
/// test binary lives in `<target>/<profile>/deps/`, the same `--target-dir` and `--profile` are passed
/// (and `--target <triple>` for a `<target>/<triple>/<profile>/deps/` layout), so nothing is rebuilt
/// for another profile. The result is cached for the process.
///
/// # Panics
///
/// If the build fails or cargo reports no `cdylib` for `gm-sdf-soft`: a test cannot go on without it.
pub fn soft_device_library() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(path) = std::env::var_os(LIBRARY_ENV) {
            return PathBuf::from(path);
        }
        match build() {
            Ok(path) => path,
            Err(message) => panic!("cannot build the soft SDF device ({PACKAGE}): {message}"),
        }
    })
    .clone()
}

/// Target directory, profile and target triple of the running test binary, when its path says so.
fn build_layout() -> (Option<PathBuf>, Option<String>, Option<String>) {
    let Ok(exe) = std::env::current_exe() else {
        return (None, None, None);
    };
    let Some(deps) = exe.parent().filter(|d| d.ends_with("deps")) else {
        return (None, None, None);
    };
    let Some(profile_dir) = deps.parent() else {
        return (None, None, None);
    };
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| if n == "debug" { "dev" } else { n }.to_owned());
    let is_target_dir = |d: &Path| d.join("CACHEDIR.TAG").is_file();
    match profile_dir.parent() {
        Some(t) if is_target_dir(t) => (Some(t.to_owned()), profile, None),
        Some(triple_dir) => match triple_dir.parent() {
            Some(t) if is_target_dir(t) => {
                let triple = triple_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned);
                (Some(t.to_owned()), profile, triple)
            }
            _ => (None, None, None),
        },
        None => (None, None, None),
    }
}

fn build() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", PACKAGE, "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let (target_dir, profile, triple) = build_layout();
    if std::env::var_os("CARGO_TARGET_DIR").is_none()
        && let Some(dir) = target_dir
    {
        cmd.arg("--target-dir").arg(dir);
    }
    if let Some(profile) = profile {
        cmd.args(["--profile", &profile]);
    }
    if let Some(triple) = triple {
        cmd.args(["--target", &triple]);
    }
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    cdylib_path(&stdout).ok_or_else(|| "cargo reported no cdylib artifact".to_owned())
}

/// The last `cdylib` file of `gm-sdf-soft` in cargo's JSON messages.
fn cdylib_path(messages: &str) -> Option<PathBuf> {
    let mut found = None;
    for line in messages.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg.get("reason").and_then(|r| r.as_str()) != Some("compiler-artifact") {
            continue;
        }
        let Some(target) = msg.get("target") else {
            continue;
        };
        let is_cdylib = target
            .get("kind")
            .and_then(|k| k.as_array())
            .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        let name = target.get("name").and_then(|n| n.as_str());
        if !is_cdylib || name != Some(PACKAGE.replace('-', "_").as_str()) {
            continue;
        }
        let lib =
            msg.get("filenames")
                .and_then(|f| f.as_array())
                .and_then(|files| {
                    files.iter().filter_map(|f| f.as_str()).find(|f| {
                        f.ends_with(".so") || f.ends_with(".dylib") || f.ends_with(".dll")
                    })
                });
        if let Some(lib) = lib {
            found = Some(PathBuf::from(lib));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_cdylib_artifact() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"gm_sdf"},"filenames":["/t/debug/deps/libgm_sdf-1.rlib"]}"#,
            "\n",
            "not json\n",
            r#"{"reason":"compiler-artifact","target":{"kind":["cdylib"],"name":"gm_sdf_soft"},"filenames":["/t/debug/libgm_sdf_soft.so"]}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\n"
        );
        assert_eq!(
            cdylib_path(messages),
            Some(PathBuf::from("/t/debug/libgm_sdf_soft.so"))
        );
        assert_eq!(cdylib_path(""), None);
    }
}
