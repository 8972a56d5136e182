//! The data directory and the key material in it: made private by the
//! binary itself, and checked at every start.
//!
//! The database holds the cookie signing keys and every session; the
//! admin token's hash and the certificates' private keys sit beside it.
//! So the data dir is created with mode 0700 and the files sessiongate
//! creates with 0600, whatever the umask it was started under (a service
//! manager's, a container's, or `umask 000` in a shell). Files that exist
//! already are the operator's: sessiongate does not change their modes, but
//! names each one that other users can read in a warning at start.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Modes for what sessiongate creates.
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and any missing parent) with mode 0700. An existing
/// directory is left as it is.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Creates the empty file `path` with mode 0600 unless it exists, so that
/// a program that creates it otherwise (SQLite, whose default is 0644 less
/// the umask) opens this one; SQLite gives its `-wal` and `-shm` files the
/// database file's mode.
pub fn create_private_file(path: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// A file or directory that users other than the owner can access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposed {
    pub path: PathBuf,
    /// The permission bits (`0o644`).
    pub mode: u32,
    pub dir: bool,
}

impl std::fmt::Display for Exposed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (want, what) = if self.dir {
            ("700", "directory")
        } else {
            ("600", "file")
        };
        write!(
            f,
            "{what} {} is readable by other users (mode {:04o}); it holds key material: chmod {want} {}",
            self.path.display(),
            self.mode,
            self.path.display()
        )
    }
}

/// Those of `paths` that exist and that users other than the owner can
/// access; missing ones are skipped.
pub fn exposed(paths: impl IntoIterator<Item = PathBuf>) -> Vec<Exposed> {
    paths
        .into_iter()
        .filter_map(|path| {
            let meta = std::fs::metadata(&path).ok()?;
            let mode = meta.permissions().mode() & 0o777;
            (mode & 0o077 != 0).then(|| Exposed {
                path,
                mode,
                dir: meta.is_dir(),
            })
        })
        .collect()
}

/// The private keys (`*.key`) in a certificates directory, sorted.
pub fn key_files(dir: &Path) -> Vec<PathBuf> {
    let mut keys: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "key"))
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

/// `db` and the `-wal` and `-shm` files SQLite keeps beside it.
pub fn database_files(db: &Path) -> Vec<PathBuf> {
    let mut files = vec![db.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sg-datadir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn created_private_and_exposed_ones_named() {
        let root = scratch("modes");
        let dir = root.join("data");
        create_private_dir(&dir).unwrap();
        let db = dir.join("sessiongate.db");
        create_private_file(&db).unwrap();
        std::fs::write(&db, b"kept").unwrap();
        create_private_file(&db).unwrap();
        assert_eq!(
            std::fs::read(&db).unwrap(),
            b"kept",
            "an existing file is kept"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        let key = dir.join("a.key");
        std::fs::write(&key, b"k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(dir.join("a.crt"), b"c").unwrap();
        assert_eq!(key_files(&dir), vec![key.clone()]);
        let mut paths = database_files(&db);
        paths.push(dir.clone());
        paths.extend(key_files(&dir));
        let found = exposed(paths);
        assert_eq!(
            found,
            vec![Exposed {
                path: key.clone(),
                mode: 0o640,
                dir: false
            }]
        );
        assert!(found[0].to_string().contains("chmod 600"), "{}", found[0]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
