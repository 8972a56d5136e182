//! A real OpenID Connect provider for tests: panva's oidc-provider (npm,
//! OpenID certified) run by node on a loopback port from
//! `testkit/oidc-provider.mjs`, with one client (`sessiongate`, secret
//! [`SECRET`]) and users in a JSON file that [`Provider::set`] rewrites:
//! who signs in next (there is no login form) and everyone's groups.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::json;

/// The client secret of the provider's `sessiongate` client.
pub const SECRET: &str = "test-client-secret-0123456789";

/// Where `npm install oidc-provider` put its `node_modules` (ESM imports
/// resolve from the script's directory, so the script is copied there).
pub fn provider_dir() -> PathBuf {
    std::env::var_os("SESSIONGATE_OIDC_PROVIDER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/sessiongate-oidc")
        })
}

/// The provider, killed when dropped.
pub struct Provider {
    child: Child,
    users: PathBuf,
}

impl Provider {
    pub fn start(root: &Path, port: u16, callback: &str) -> Provider {
        let dir = provider_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed in {} (npm install --prefix {} oidc-provider@9)",
            dir.display(),
            dir.display()
        );
        let script = dir.join("sessiongate-test-provider.mjs");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc-provider.mjs"),
            &script,
        )
        .unwrap();
        let users = root.join("oidc-users.json");
        let p = Provider {
            child: Command::new("node")
                .arg(&script)
                .args([&port.to_string(), callback])
                .arg(&users)
                .arg(SECRET)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("node runs"),
            users,
        };
        p.set("alice", &[("alice", &["physics"]), ("bob", &["chemistry"])]);
        let end = std::time::Instant::now() + crate::DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < end,
                "oidc-provider did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        p
    }

    /// Who signs in next, and every user's groups.
    pub fn set(&self, next: &str, users: &[(&str, &[&str])]) {
        let users: serde_json::Map<String, serde_json::Value> = users
            .iter()
            .map(|(u, g)| {
                (
                    u.to_string(),
                    json!({"email": format!("{u}@example.com"), "groups": g}),
                )
            })
            .collect();
        std::fs::write(
            &self.users,
            json!({"next": next, "users": users}).to_string(),
        )
        .unwrap();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
