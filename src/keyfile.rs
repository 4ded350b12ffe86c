//! Secret files (SM2 private keys, `SecretKeyFile`, `SdfPinFile`, a config file that holds an inline
//! `SecretKey`) and the directories that hold them (DESIGN §5; docs/threat-model.md).
//!
//! The secret-file rule, checked on the opened descriptor so that a swap between check and read cannot
//! slip through:
//! - the file is opened with `O_NOFOLLOW | O_NONBLOCK`: a symbolic link at the path is refused, and a FIFO
//!   or a device at the path fails at once instead of hanging `check`, the start or a `SIGHUP` reload;
//! - it is a regular file owned by root or by the plugin's (effective) uid, with no permission bit for group
//!   or others (as ssh refuses a loose private key);
//! - its directory is owned by root or the plugin's uid and group and others cannot write it: whoever can
//!   write a directory can replace the files in it ([`check_trusted_dir`], which the KMS socket's directory
//!   passes too).
//!
//! New files (`keygen`) are created with `O_CREAT | O_EXCL | O_NOFOLLOW`: never through a link, never over
//! an existing file.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;
use zeroize::Zeroizing;

/// Secret files are small; a larger one is a wrong path, not a key.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// A secret or configuration file failed a check; every message names the file and the rule.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyFileError {
    /// The file (or directory) could not be opened or read.
    #[error("{path}: cannot read: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why (named in the message, so not a `source()`: the rule of crate::error).
        cause: std::io::Error,
    },
    /// A symbolic link where a secret file was expected.
    #[error(
        "{path}: is a symbolic link; a secret file is opened without following links (name the file \
         itself, e.g. the path `readlink -f` prints)"
    )]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A FIFO, device, socket or directory where a regular file was expected.
    #[error("{path}: is {kind}, not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The file belongs to a uid that is neither root nor the plugin's.
    #[error(
        "{path}: owned by uid {uid}; a secret file must be owned by root or by the plugin's uid {own} \
         (`chown`), or whoever owns it can read and change the key"
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The plugin's effective uid.
        own: u32,
    },
    /// Group or others have a permission bit on a secret file.
    #[error(
        "{path}: permissions {mode:04o} let group or others access a secret; run `chmod 600 {path}`"
    )]
    LoosePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The directory is writable by group or others.
    #[error(
        "{dir}: directory permissions {mode:04o} let group or others write it, so they could replace \
         {holds}; run `chmod go-w {dir}`"
    )]
    DirWritable {
        /// The directory.
        dir: PathBuf,
        /// What it holds, for the message.
        holds: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The directory belongs to a uid that is neither root nor the plugin's.
    #[error(
        "{dir}: directory owned by uid {uid}, who could replace {holds}; it must be owned by root or by \
         the plugin's uid {own}"
    )]
    DirOwner {
        /// The directory.
        dir: PathBuf,
        /// What it holds, for the message.
        holds: String,
        /// Its owner.
        uid: u32,
        /// The plugin's effective uid.
        own: u32,
    },
    /// The file is larger than any key or configuration.
    #[error("{path}: larger than {max} bytes, not a {what}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
        /// What the file should have been.
        what: &'static str,
    },
}

/// The plugin's effective uid: besides root, the only owner a secret file or its directory may have.
pub(crate) fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == own_uid()
}

/// `open(2)` flags as `OpenOptionsExt::custom_flags` takes them.
fn custom(flags: OFlags) -> i32 {
    flags.bits() as i32
}

/// What a non-regular file is, for messages.
fn kind(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        return None;
    }
    Some(if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a unix socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a file"
    })
}

/// A file read whole, with what the secret-file rule needs to judge it afterwards
/// ([`ReadFile::check_secret_rule`]): a configuration file is read first and judged as a secret only when
/// it turns out to hold one.
pub(crate) struct ReadFile {
    path: PathBuf,
    /// Metadata of the descriptor the bytes came from.
    meta: Metadata,
    /// The path was (or, by the time it was opened, had become) a symbolic link.
    via_link: bool,
    bytes: Zeroizing<Vec<u8>>,
}

impl ReadFile {
    /// The contents.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Applies the secret-file rule to the file these bytes came from.
    pub(crate) fn check_secret_rule(&self) -> Result<(), KeyFileError> {
        if self.via_link {
            return Err(KeyFileError::Symlink {
                path: self.path.clone(),
            });
        }
        check_secret_meta(&self.path, &self.meta)?;
        check_parent_dir(&self.path)
    }
}

/// Reads a secret file under the secret-file rule (module docs).
pub(crate) fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let f = read_file(path, false, MAX_SECRET_FILE, "key file")?;
    check_secret_meta(path, &f.meta)?;
    check_parent_dir(path)?;
    Ok(f.bytes)
}

/// Reads a regular file of at most `max` bytes, following a symbolic link at the path (a config file may
/// be one); a FIFO or device fails at once. Judge it with [`ReadFile::check_secret_rule`] if it holds a
/// secret.
pub(crate) fn read_regular_file(
    path: &Path,
    max: u64,
    what: &'static str,
) -> Result<ReadFile, KeyFileError> {
    read_file(path, true, max, what)
}

fn read_file(
    path: &Path,
    follow: bool,
    max: u64,
    what: &'static str,
) -> Result<ReadFile, KeyFileError> {
    let io = |cause| KeyFileError::Io {
        path: path.to_path_buf(),
        cause,
    };
    // What sits at the path itself, before anything is opened: a device or FIFO is refused without being
    // opened at all. The descriptor's own metadata below is what counts; this only spares the open.
    let at_path = std::fs::symlink_metadata(path).map_err(io)?;
    let via_link = at_path.file_type().is_symlink();
    if via_link && !follow {
        return Err(KeyFileError::Symlink {
            path: path.to_path_buf(),
        });
    }
    if !via_link && let Some(kind) = kind(&at_path) {
        return Err(KeyFileError::NotAFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    let mut flags = OFlags::NONBLOCK | OFlags::NOCTTY;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(custom(flags))
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) && !follow {
                KeyFileError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                io(e)
            }
        })?;
    let meta = file.metadata().map_err(io)?;
    if let Some(kind) = kind(&meta) {
        return Err(KeyFileError::NotAFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    // Replaced by a link between the look and the open: judged as a link.
    let via_link = via_link || (at_path.dev(), at_path.ino()) != (meta.dev(), meta.ino());
    if meta.len() > max {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
            max,
            what,
        });
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0)));
    Read::by_ref(&mut file)
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
            max,
            what,
        });
    }
    Ok(ReadFile {
        path: path.to_path_buf(),
        meta,
        via_link,
        bytes,
    })
}

/// Owner and permission bits of an opened secret file.
fn check_secret_meta(path: &Path, meta: &Metadata) -> Result<(), KeyFileError> {
    if !trusted_owner(meta.uid()) {
        return Err(KeyFileError::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
            own: own_uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::LoosePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// The directory a file sits in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn check_parent_dir(file: &Path) -> Result<(), KeyFileError> {
    check_dir(parent_of(file), file.display().to_string())
}

/// Checks that `dir` is a directory owned by root or the plugin's uid that group and others cannot write,
/// so nobody else can replace, add or remove what it holds. Secret files' directories must pass it, and so
/// must the KMS socket's directory (DESIGN §7). A link to a directory is judged by the directory.
pub(crate) fn check_trusted_dir(dir: &Path) -> Result<(), KeyFileError> {
    check_dir(dir, "what it holds".into())
}

fn check_dir(dir: &Path, holds: String) -> Result<(), KeyFileError> {
    let meta = std::fs::metadata(dir).map_err(|cause| KeyFileError::Io {
        path: dir.to_path_buf(),
        cause,
    })?;
    if !meta.is_dir() {
        return Err(KeyFileError::NotAFile {
            path: dir.to_path_buf(),
            kind: "not a directory",
        });
    }
    if !trusted_owner(meta.uid()) {
        return Err(KeyFileError::DirOwner {
            dir: dir.to_path_buf(),
            holds,
            uid: meta.uid(),
            own: own_uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(KeyFileError::DirWritable {
            dir: dir.to_path_buf(),
            holds,
            mode,
        });
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700, then checks it with [`check_trusted_dir`]: a
/// directory that existed already must pass the rule the plugin will apply to the keys written into it.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), KeyFileError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|cause| KeyFileError::Io {
            path: dir.to_path_buf(),
            cause,
        })?;
    check_trusted_dir(dir)
}

/// Writes a new secret file readable only by its owner (mode 0600).
pub(crate) fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_new_file(path, contents, 0o600)
}

/// Creates `path` with `mode` and writes `contents`. Refuses to overwrite anything, and never follows a
/// link: a file, a link (dangling or not) or anything else at the path is an error, `EEXIST`.
pub(crate) fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(custom(OFlags::NOFOLLOW))
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn loose_permissions_are_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        std::fs::write(&p, b"secret").unwrap();
        chmod(&p, 0o644);
        let e = read_secret_file(&p).unwrap_err().to_string();
        assert!(e.contains("k.pem") && e.contains("0644"), "{e}");
        chmod(&p, 0o600);
        assert_eq!(&read_secret_file(&p).unwrap()[..], b"secret");
        chmod(&p, 0o400);
        assert_eq!(&read_secret_file(&p).unwrap()[..], b"secret");
    }

    #[test]
    fn missing_and_directory_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_secret_file(&dir.path().join("none.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.pem"), "{e}");
        chmod(dir.path(), 0o700);
        assert!(matches!(
            read_secret_file(dir.path()),
            Err(KeyFileError::NotAFile { .. })
        ));
    }

    #[test]
    fn a_fifo_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        rustix::fs::mkfifoat(rustix::fs::CWD, &p, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        let t = Instant::now();
        let e = read_secret_file(&p).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(
            matches!(&e, KeyFileError::NotAFile { kind, .. } if kind.contains("FIFO")),
            "{e}"
        );
        assert!(e.to_string().contains("k.pem"), "{e}");
        let t = Instant::now();
        assert!(read_regular_file(&p, 1024, "config file").is_err());
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_symlink_is_refused_for_a_secret_and_followed_for_a_config() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.pem");
        write_secret_file(&real, b"secret").unwrap();
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = read_secret_file(&link).unwrap_err();
        assert!(matches!(e, KeyFileError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains("link.pem"), "{e}");
        let f = read_regular_file(&link, 1024, "config file").unwrap();
        assert_eq!(f.bytes(), b"secret");
        assert!(matches!(
            f.check_secret_rule(),
            Err(KeyFileError::Symlink { .. })
        ));
        let f = read_regular_file(&real, 1024, "config file").unwrap();
        f.check_secret_rule().unwrap();
    }

    #[test]
    fn a_group_or_other_writable_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_secret_file(&p, b"secret").unwrap();
        // tempfile's directories (0700 or 0755, by version and umask) pass the rule.
        assert_eq!(std::fs::metadata(dir.path()).unwrap().mode() & 0o022, 0);
        read_secret_file(&p).unwrap();
        check_trusted_dir(dir.path()).unwrap();
        for mode in [0o770, 0o757, 0o1777] {
            chmod(dir.path(), mode);
            let e = read_secret_file(&p).unwrap_err();
            assert!(matches!(e, KeyFileError::DirWritable { .. }), "{e}");
            let text = e.to_string();
            assert!(
                text.contains(&dir.path().display().to_string())
                    && text.contains("k.pem")
                    && text.contains("chmod go-w"),
                "{text}"
            );
            assert!(check_trusted_dir(dir.path()).is_err());
        }
        chmod(dir.path(), 0o755);
        read_secret_file(&p).unwrap();
    }

    #[test]
    fn a_bare_file_name_is_judged_by_the_working_directory() {
        assert_eq!(parent_of(Path::new("k.pem")), Path::new("."));
        assert_eq!(parent_of(Path::new("/k.pem")), Path::new("/"));
        assert_eq!(parent_of(Path::new("a/k.pem")), Path::new("a"));
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        write_secret_file(&p, &vec![b'x'; MAX_SECRET_FILE as usize + 1]).unwrap();
        assert!(matches!(
            read_secret_file(&p),
            Err(KeyFileError::TooLarge { .. })
        ));
    }

    #[test]
    fn write_creates_owner_only_and_never_overwrites_or_follows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.pem");
        write_secret_file(&p, b"x").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(write_secret_file(&p, b"y").is_err());
        // A dangling link: the write fails and nothing appears at its target.
        let target = dir.path().join("elsewhere.pem");
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(write_new_file(&link, b"z", 0o644).is_err());
        assert!(!target.exists());
    }

    #[test]
    fn create_private_dir_makes_0700_and_checks_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        create_private_dir(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        chmod(&d, 0o777);
        assert!(matches!(
            create_private_dir(&d),
            Err(KeyFileError::DirWritable { .. })
        ));
    }
}
