//! Reading secret files (SM2 private keys, `SecretKeyFile`). A file that group or others may read or write
//! is refused, as ssh refuses a loose private key: on a shared control-plane node that is a leak waiting
//! to happen, and failing loudly at start is cheaper than finding out later.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Secret files are small; a larger one is a wrong path, not a key.
const MAX_SECRET_FILE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyFileError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "{path}: permissions {mode:04o} let group or others access a secret; run `chmod 600 {path}`"
    )]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("{path}: larger than {MAX_SECRET_FILE} bytes, not a key file")]
    TooLarge { path: PathBuf },
}

/// Reads a secret file after checking that only its owner can access it.
pub(crate) fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    // Check the opened file, not the path, so a swap between check and read cannot slip through.
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::LoosePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    file.by_ref()
        .take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    Ok(buf)
}

/// Writes a secret file readable only by its owner; refuses to overwrite.
pub(crate) fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_permissions_are_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        std::fs::write(&p, b"secret").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret_file(&p).unwrap_err().to_string();
        assert!(e.contains("k.pem") && e.contains("0644"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(&read_secret_file(&p).unwrap()[..], b"secret");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(&read_secret_file(&p).unwrap()[..], b"secret");
    }

    #[test]
    fn missing_and_directory_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_secret_file(&dir.path().join("none.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.pem"), "{e}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(
            read_secret_file(dir.path()),
            Err(KeyFileError::NotAFile { .. })
        ));
    }

    #[test]
    fn write_creates_owner_only_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.pem");
        write_secret_file(&p, b"x").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(write_secret_file(&p, b"y").is_err());
    }
}
