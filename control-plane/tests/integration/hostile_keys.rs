//! Issue 15, finding 9: key material is not readable by other users. The
//! real binary, started under `umask 000`, creates its data dir 0700 and
//! the database (with its `-wal` and `-shm`), the admin token's hash and
//! the development certificates' keys 0600; and a start that finds any of
//! them readable by others names each in a warning.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use testkit::temp_dir;

use crate::common::{wait_log, Sessiongate};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn files(data: &Path) -> Vec<(PathBuf, u32)> {
    vec![
        (data.to_path_buf(), 0o700),
        (data.join("certs"), 0o700),
        (data.join("admin-token"), 0o600),
        (data.join("sessiongate.db"), 0o600),
        (data.join("sessiongate.db-wal"), 0o600),
        (data.join("sessiongate.db-shm"), 0o600),
        (data.join("certs/ca.key"), 0o600),
        (data.join("certs/localhost.key"), 0o600),
    ]
}

#[tokio::test]
async fn key_material_is_private_whatever_the_umask() {
    let dir = temp_dir("hostile-keys-umask");
    // No SESSIONGATE_ADMIN_TOKEN: the binary generates the token and writes
    // its hash; the HTTPS listener makes it write a development CA.
    let sg = Sessiongate::start_with_umask(&dir, "", &[], "000").await;
    let wrong: Vec<String> = files(&dir.join("data"))
        .into_iter()
        .filter(|(p, want)| mode(p) != *want)
        .map(|(p, want)| format!("{} is {:04o}, not {want:04o}", p.display(), mode(&p)))
        .collect();
    assert!(wrong.is_empty(), "under umask 000: {wrong:#?}");
    drop(sg);
}

#[tokio::test]
async fn key_material_readable_by_others_is_named_in_a_warning() {
    let dir = temp_dir("hostile-keys-warn");
    let mut sg = Sessiongate::start(&dir, "", &[]).await;
    let data = dir.join("data");
    let token = data.join("admin-token");
    std::fs::write(&token, "sha256:".to_string() + &"0".repeat(64) + "\n").unwrap();
    let exposed = [
        (data.clone(), 0o755, "directory"),
        (token, 0o644, "file"),
        (data.join("sessiongate.db"), 0o644, "file"),
        (data.join("certs/localhost.key"), 0o640, "file"),
    ];
    for (p, m, _) in &exposed {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(*m)).unwrap();
    }
    sg.restart().await;
    for (p, _, what) in &exposed {
        let line = wait_log(
            &sg.log,
            &format!("{what} {} is readable by other users", p.display()),
        )
        .await;
        assert!(line.contains("WARN"), "{line}");
    }
    // It warns and serves; it does not change the operator's modes.
    assert_eq!(mode(&data), 0o755);
}
