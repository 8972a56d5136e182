//! The certificates directory: `NAME.crt` + `NAME.key` pairs, loaded at start
//! and reloaded when the files change.
//!
//! Reload policy, pair by pair:
//!
//! - a pair that loads is taken (new files replace the old certificate);
//! - a pair whose files are bad (half-written, garbage, key mismatch, one file
//!   missing) keeps its **last good** certificate, and the error is logged;
//! - a pair whose two files are gone goes away;
//! - a directory that cannot be read at all changes nothing (an unmounted
//!   volume must not take every certificate down).
//!
//! Change detection is a poll of `stat` on each `*.crt`/`*.key` file (size,
//! modification time, inode), so it costs one `readdir` and a handful of
//! `stat` calls per interval, needs no inotify, and follows the symlink swaps
//! of Kubernetes secret volumes. Files are parsed only when something changed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::{CertError, CertStore, LoadedCert, SniResolver};

/// The shortest poll interval [`spawn_reloader`] uses (a zero interval would
/// spin, and Tokio refuses it).
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Reading a certificates directory (see the module docs for the layout).
#[derive(Debug)]
pub struct CertDir;

impl CertDir {
    /// Loads every `NAME.crt` + `NAME.key` pair in `dir`. A bad pair is
    /// reported in the returned errors and skipped; the others load. The
    /// default certificate is the pair named `default_name`, if given and
    /// loaded.
    ///
    /// CA certificates are not served and are skipped without error: the
    /// development CA (`ca.crt` + `ca.key`, see [`crate::dev`]) may live in the
    /// same directory.
    pub fn load(dir: &Path, default_name: Option<&str>) -> (CertStore, Vec<CertError>) {
        let scan = scan(dir);
        let mut errors: Vec<CertError> = scan.dir_error.into_iter().collect();
        errors.extend(scan.failed.into_iter().map(|(_, e)| e));
        (CertStore::new(scan.loaded, default_name), errors)
    }
}

/// What one pass over the directory found.
struct Scan {
    loaded: Vec<LoadedCert>,
    /// Pair name and what is wrong with it.
    failed: Vec<(String, CertError)>,
    /// The directory itself could not be listed.
    dir_error: Option<CertError>,
}

/// The two halves of a pair, as present in the directory.
#[derive(Default)]
struct PairFiles {
    crt: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// `NAME.crt` or `NAME.key` → (`NAME`, is the key). Hidden files are skipped:
/// editors' and our own temporary files, and Kubernetes' `..data` links.
fn pair_member(file_name: &str) -> Option<(&str, bool)> {
    if file_name.starts_with('.') {
        return None;
    }
    let (stem, is_key) = if let Some(stem) = file_name.strip_suffix(".crt") {
        (stem, false)
    } else {
        (file_name.strip_suffix(".key")?, true)
    };
    (!stem.is_empty()).then_some((stem, is_key))
}

fn scan(dir: &Path) -> Scan {
    let mut result = Scan {
        loaded: Vec::new(),
        failed: Vec::new(),
        dir_error: None,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            result.dir_error = Some(CertError::io(dir, e));
            return result;
        }
    };
    let mut pairs: BTreeMap<String, PairFiles> = BTreeMap::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                result.dir_error = Some(CertError::io(dir, e));
                return result;
            }
        };
        let file_name = entry.file_name();
        // A name that is not UTF-8 cannot be named in configuration either.
        let Some((stem, is_key)) = file_name.to_str().and_then(pair_member) else {
            continue;
        };
        let files = pairs.entry(stem.to_string()).or_default();
        if is_key {
            files.key = Some(entry.path());
        } else {
            files.crt = Some(entry.path());
        }
    }
    for (name, files) in pairs {
        let outcome = match (&files.crt, &files.key) {
            (Some(crt), Some(key)) => LoadedCert::from_files(name.clone(), crt, key),
            (Some(present), None) => Err(CertError::IncompletePair {
                present: present.clone(),
                missing: dir.join(format!("{name}.key")),
            }),
            (None, Some(present)) => Err(CertError::IncompletePair {
                present: present.clone(),
                missing: dir.join(format!("{name}.crt")),
            }),
            (None, None) => continue,
        };
        match outcome {
            Ok(cert) if cert.is_ca() => {
                tracing::debug!(pair = %name, "CA certificate in the certificates directory: not served");
            }
            Ok(cert) => result.loaded.push(cert),
            Err(e) => result.failed.push((name, e)),
        }
    }
    result
}

/// Reloads `dir` into `resolver` now, with the policy of the module docs, and
/// returns what was wrong (each error is also logged with `tracing::warn!`).
///
/// The poller calls it when the directory changes; call it directly on
/// SIGHUP, or in tests. Blocking (it reads files): from async code, run it
/// with `tokio::task::spawn_blocking`.
pub fn reload_now(
    dir: &Path,
    default_name: Option<&str>,
    resolver: &SniResolver,
) -> Vec<CertError> {
    let _reloading = resolver.reload_guard();
    let old = resolver.store();
    let scan = scan(dir);
    if let Some(e) = scan.dir_error {
        tracing::warn!(error = %e, "certificates directory unreadable; keeping every certificate as it was");
        return vec![e];
    }

    let mut certs: Vec<Arc<LoadedCert>> = scan.loaded.into_iter().map(Arc::new).collect();
    let mut errors = Vec::with_capacity(scan.failed.len());
    for (name, error) in scan.failed {
        match old.get(&name) {
            Some(last_good) => {
                tracing::warn!(pair = %name, %error, "certificate pair not reloaded; still serving its last good certificate");
                certs.push(last_good.clone());
            }
            None => tracing::warn!(pair = %name, %error, "certificate pair not loaded"),
        }
        errors.push(error);
    }
    let new = CertStore::new(certs, default_name);
    for gone in old.loaded().iter().filter(|c| new.get(c.name()).is_none()) {
        tracing::info!(pair = %gone.name(), "certificate pair removed");
    }
    tracing::info!(
        dir = %dir.display(),
        certificates = new.len(),
        default = new.default_name().unwrap_or(""),
        "certificates reloaded"
    );
    resolver.replace(new);
    errors
}

/// Polls `dir` every `interval` and calls [`reload_now`] when a `*.crt` or
/// `*.key` file appears, disappears or changes size, modification time or
/// inode. The first poll, right away, reloads unconditionally, so a change
/// made between the initial [`CertDir::load`] and this call is not missed
/// (bad pairs are logged once more then).
///
/// Runs until the returned handle is aborted. Needs a Tokio runtime; the
/// file system work runs on the blocking pool. An `interval` under
/// [`MIN_POLL_INTERVAL`] is raised to it.
pub fn spawn_reloader(
    dir: impl Into<PathBuf>,
    default_name: Option<String>,
    resolver: Arc<SniResolver>,
    interval: Duration,
) -> JoinHandle<()> {
    let dir: Arc<Path> = dir.into().into();
    let default_name: Option<Arc<str>> = default_name.map(Into::into);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval.max(MIN_POLL_INTERVAL));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<DirSnapshot> = None;
        loop {
            ticker.tick().await;
            let (dir, default_name, resolver) =
                (dir.clone(), default_name.clone(), resolver.clone());
            let previous = last.take();
            let polled = tokio::task::spawn_blocking(move || {
                // Taken before reading the files: a write that lands during
                // the reload changes the stamps again and is seen next time.
                let now = DirSnapshot::take(&dir);
                if previous.as_ref() != Some(&now) {
                    reload_now(&dir, default_name.as_deref(), &resolver);
                }
                now
            })
            .await;
            match polled {
                Ok(snapshot) => last = Some(snapshot),
                // A panic in a reload: try again from scratch next tick.
                Err(e) => tracing::error!(error = %e, "certificate reload failed"),
            }
        }
    })
}

/// What changes when a certificate file is replaced, by any means.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    /// A rename over the file (atomic replacement, a Kubernetes secret
    /// update) may keep size and even mtime; it never keeps the inode.
    inode: u64,
}

/// The stamps of every pair file, or why the directory could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DirSnapshot {
    Files(Vec<(OsString, Option<FileStamp>)>),
    Unreadable(std::io::ErrorKind),
}

impl DirSnapshot {
    fn take(dir: &Path) -> DirSnapshot {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => return DirSnapshot::Unreadable(e.kind()),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return DirSnapshot::Unreadable(e.kind()),
            };
            let name = entry.file_name();
            if name.to_str().and_then(pair_member).is_none() {
                continue;
            }
            // `metadata` follows symlinks: a swapped link target shows.
            let stamp = std::fs::metadata(entry.path()).ok().map(|m| FileStamp {
                len: m.len(),
                modified: m.modified().ok(),
                inode: inode(&m),
            });
            files.push((name, stamp));
        }
        files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        DirSnapshot::Files(files)
    }
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{
        handshake, insecure_client, leaf_names, self_signed, write_pair, TempDir,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn write_new(dir: &Path, name: &str, names: &[&str]) {
        let (cert, key) = self_signed(names);
        write_pair(dir, name, &cert, &key);
    }

    fn served_names(store: &CertStore) -> Vec<(String, Vec<String>)> {
        store
            .loaded()
            .iter()
            .map(|c| (c.name().to_string(), c.dns_names().to_vec()))
            .collect()
    }

    #[test]
    fn pair_members_are_crt_and_key_files_with_a_stem() {
        assert_eq!(pair_member("site.crt"), Some(("site", false)));
        assert_eq!(pair_member("a.b.key"), Some(("a.b", true)));
        assert_eq!(pair_member(".crt"), None);
        assert_eq!(pair_member(".site.crt.tmp"), None);
        assert_eq!(pair_member(".hidden.crt"), None);
        assert_eq!(pair_member("README"), None);
        assert_eq!(pair_member("site.pem"), None);
    }

    #[test]
    fn bad_pairs_are_reported_and_the_others_load() {
        let dir = TempDir::new("dir-bad");
        let d = dir.path();
        write_new(d, "good", &["good.test"]);
        write_pair(d, "garbage", "not a certificate\n", "not a key either\n");
        let (cert, _) = self_signed(&["mismatch.test"]);
        let (_, other_key) = self_signed(&["mismatch.test"]);
        write_pair(d, "mismatch", &cert, &other_key);
        std::fs::write(d.join("lonely.crt"), &cert).unwrap();
        std::fs::write(d.join("notes.txt"), "unrelated").unwrap();

        let (store, errors) = CertDir::load(d, Some("good"));
        assert_eq!(
            served_names(&store),
            [("good".to_string(), vec!["good.test".to_string()])]
        );
        assert_eq!(store.default_name(), Some("good"));
        let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert!(
            messages
                .iter()
                .any(|m| m.contains("garbage.crt") && m.contains("no certificate")),
            "{messages:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| matches!(e, CertError::KeyMismatch { .. })),
            "{messages:#?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("lonely.crt") && m.contains("lonely.key")),
            "{messages:#?}"
        );
    }

    #[test]
    fn default_is_none_unless_the_named_pair_loads() {
        let dir = TempDir::new("dir-default");
        write_new(dir.path(), "site", &["site.test"]);
        assert_eq!(CertDir::load(dir.path(), None).0.default_name(), None);
        assert_eq!(
            CertDir::load(dir.path(), Some("absent")).0.default_name(),
            None
        );
    }

    #[test]
    fn unreadable_directory_is_one_error_naming_it() {
        let dir = TempDir::new("dir-missing");
        let missing = dir.path().join("nope");
        let (store, errors) = CertDir::load(&missing, None);
        assert!(store.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("nope"), "{}", errors[0]);
    }

    #[tokio::test]
    async fn reload_serves_the_new_certificate_and_open_connections_keep_working() {
        let dir = TempDir::new("dir-reload");
        let d = dir.path();
        write_new(d, "site", &["old.test"]);
        let (store, errors) = CertDir::load(d, Some("site"));
        assert!(errors.is_empty(), "{errors:?}");
        let resolver = Arc::new(SniResolver::new(store));
        let server = Arc::new(crate::server_config(resolver.clone()));
        let client = insecure_client();

        let (mut before_c, mut before_s) =
            handshake(&server, &client, Some("x.test")).await.unwrap();
        assert_eq!(leaf_names(&before_c), ["old.test"]);

        write_new(d, "site", &["new.test"]);
        let errors = reload_now(d, Some("site"), &resolver);
        assert!(errors.is_empty(), "{errors:?}");

        let (after, _s) = handshake(&server, &client, Some("x.test")).await.unwrap();
        assert_eq!(leaf_names(&after), ["new.test"]);

        // The connection made before the reload still carries data both ways.
        before_c.write_all(b"still here").await.unwrap();
        before_c.flush().await.unwrap();
        let mut buf = [0u8; 10];
        before_s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
        before_s.write_all(b"ack").await.unwrap();
        before_s.flush().await.unwrap();
        let mut ack = [0u8; 3];
        before_c.read_exact(&mut ack).await.unwrap();
        assert_eq!(&ack, b"ack");
        assert_eq!(leaf_names(&before_c), ["old.test"]);
    }

    #[tokio::test]
    async fn garbage_over_a_pair_keeps_the_last_good_certificate() {
        let dir = TempDir::new("dir-lastgood");
        let d = dir.path();
        write_new(d, "site", &["good.test"]);
        write_new(d, "other", &["other.test"]);
        let resolver = Arc::new(SniResolver::new(CertDir::load(d, Some("site")).0));
        let server = Arc::new(crate::server_config(resolver.clone()));

        std::fs::write(d.join("site.crt"), "-----BEGIN CERTIFICATE-----\ngarbage").unwrap();
        write_new(d, "other", &["other2.test"]);
        let errors = reload_now(d, Some("site"), &resolver);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("site.crt"), "{}", errors[0]);

        let (tls, _s) = handshake(&server, &insecure_client(), Some("good.test"))
            .await
            .unwrap();
        assert_eq!(leaf_names(&tls), ["good.test"]);
        let store = resolver.store();
        assert_eq!(store.default_name(), Some("site"));
        // The good pair beside it did reload.
        assert_eq!(store.get("other").unwrap().dns_names(), ["other2.test"]);

        // A key deleted mid-rotation: still the last good certificate.
        std::fs::remove_file(d.join("other.key")).unwrap();
        let errors = reload_now(d, Some("site"), &resolver);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            resolver.store().get("other").unwrap().dns_names(),
            ["other2.test"]
        );
    }

    #[test]
    fn a_deleted_pair_goes_away() {
        let dir = TempDir::new("dir-deleted");
        let d = dir.path();
        write_new(d, "stays", &["stays.test"]);
        write_new(d, "goes", &["goes.test"]);
        let resolver = SniResolver::new(CertDir::load(d, None).0);
        assert_eq!(resolver.store().len(), 2);

        std::fs::remove_file(d.join("goes.crt")).unwrap();
        std::fs::remove_file(d.join("goes.key")).unwrap();
        assert!(reload_now(d, None, &resolver).is_empty());
        let store = resolver.store();
        assert!(store.get("goes").is_none());
        assert!(store.lookup(Some("goes.test")).is_none());
        assert!(store.get("stays").is_some());
    }

    #[test]
    fn an_unreadable_directory_keeps_everything() {
        let dir = TempDir::new("dir-vanish");
        let d = dir.path().join("certs");
        std::fs::create_dir(&d).unwrap();
        write_new(&d, "site", &["site.test"]);
        let resolver = SniResolver::new(CertDir::load(&d, None).0);
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(reload_now(&d, None, &resolver).len(), 1);
        assert!(resolver.store().get("site").is_some());
    }

    #[test]
    fn snapshot_changes_with_pair_files_only() {
        let dir = TempDir::new("dir-snapshot");
        let d = dir.path();
        write_new(d, "site", &["site.test"]);
        let first = DirSnapshot::take(d);
        assert_eq!(DirSnapshot::take(d), first);

        std::fs::write(d.join("notes.txt"), "unrelated").unwrap();
        assert_eq!(DirSnapshot::take(d), first);

        write_new(d, "site", &["site.test"]);
        let second = DirSnapshot::take(d);
        assert_ne!(second, first);

        std::fs::remove_file(d.join("site.key")).unwrap();
        assert_ne!(DirSnapshot::take(d), second);
    }

    #[tokio::test]
    async fn the_reloader_picks_up_a_replaced_pair() {
        let dir = TempDir::new("dir-poller");
        let d = dir.path();
        write_new(d, "site", &["before.test"]);
        let resolver = Arc::new(SniResolver::new(CertDir::load(d, Some("site")).0));
        let task = spawn_reloader(
            d.to_path_buf(),
            Some("site".into()),
            resolver.clone(),
            Duration::from_millis(10),
        );

        write_new(d, "site", &["after.test"]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let names = resolver.store().get("site").map(|c| c.dns_names().to_vec());
            if names.as_deref() == Some(&["after.test".to_string()][..]) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "reloader did not pick up the change: {names:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
    }
}
