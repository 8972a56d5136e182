//! The table file: the last table a gateway applied, so that it serves at
//! once on start while it connects (static stability). It holds the cookie
//! keys, so it is created 0600, and it is replaced atomically: written to a
//! temporary file, synced, then renamed over the old one, so that a crash
//! leaves the old file or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{wire, Message, Snapshot};

/// The file's name in the gateway's data dir.
pub const TABLE_FILE: &str = "gateway-table.json";

/// Why the table file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        source: wire::WireError,
    },
    #[error("{path}: not a snapshot")]
    NotSnapshot { path: PathBuf },
}

/// Writes `snapshot` to `path`: temp file (0600), fsync, rename, fsync of
/// the directory.
pub fn save(path: &Path, snapshot: &Arc<Snapshot>) -> Result<(), FileError> {
    let io = |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = wire::encode(&Message::Snapshot(Arc::clone(snapshot)));
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        // The rename is durable once the directory is.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The snapshot in `path`; `Ok(None)` when there is no file.
pub fn load(path: &Path) -> Result<Option<Snapshot>, FileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FileError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    match wire::decode(&bytes) {
        Ok(Message::Snapshot(s)) => Ok(Some(Snapshot::clone(&s))),
        Ok(_) => Err(FileError::NotSnapshot {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(FileError::Invalid {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{KeyRing, SigningKey};
    use crate::table::{test_spec, TableSettings};

    #[test]
    fn a_saved_table_loads_back_and_is_private() {
        let dir = std::env::temp_dir().join(format!("sg-table-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(TABLE_FILE);
        assert!(load(&path).unwrap().is_none());
        let snapshot = Arc::new(Snapshot {
            epoch: 3,
            version: 9,
            watermark: 5,
            settings: TableSettings::default(),
            routes: vec![test_spec("a")],
            keys: Arc::new(KeyRing::new(SigningKey::new("k", &[1; 32]).unwrap(), None)),
        });
        save(&path, &snapshot).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!((back.epoch, back.version, back.watermark), (3, 9, 5));
        assert_eq!(&*back.routes[0].id, "a");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"{\"type\":\"heartbeat\",\"version\":1}").unwrap();
        assert!(matches!(load(&path), Err(FileError::NotSnapshot { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
