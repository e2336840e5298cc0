//! The plan: the small JSON file `setup` writes and `run`/`verify` read, so that a run
//! signs with the right token for numbers that are really in the inventory.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Everything a run needs to behave like the tenant's Twilio account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Scheme, host and port Twilio "calls": the signed URL is `public_url + path`.
    pub public_url: String,
    /// The region key in the webhook path.
    pub region_key: String,
    /// The integration's Twilio account SID (`AccountSid` of every webhook).
    pub account_sid: String,
    /// The integration's Auth Token: the HMAC key. A test secret, written 0600.
    pub auth_token: String,
    /// The integration created by `setup`.
    pub integration_id: String,
    /// Where to connect by default (the server's `server.listen`).
    pub target: String,
    /// The spool root (`sink.dir`) that `verify` reads.
    pub sink_dir: PathBuf,
    /// Our numbers, all imported and active.
    pub numbers: Vec<String>,
    /// The integration's SharedKey, when `setup --shared-key` created one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_key: Option<PlanKey>,
}

/// A Twilio SharedKey as the integration holds it: the id Twilio names in
/// `X-Twilio-Webhooks-Signature-Settings` and the secret it signs with (HMAC-SHA256).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanKey {
    /// The key id.
    pub id: String,
    /// The secret: a test secret of this run, written 0600 with the plan.
    pub secret: String,
}

impl Plan {
    /// Writes the plan readable by its owner only (it carries the Auth Token).
    pub fn write(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing plan {}", path.display()))?;
        serde_json::to_writer(&mut f, self)?;
        f.write_all(b"\n")?;
        Ok(())
    }

    /// Reads a plan written by `setup`.
    pub fn read(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading plan {} (run `sms-loadtest setup` first)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing plan {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/plan.json");
        let plan = Plan {
            public_url: "https://sms.example".into(),
            region_key: "k".into(),
            account_sid: "AC1".into(),
            auth_token: "t".into(),
            integration_id: "i".into(),
            target: "127.0.0.1:1".into(),
            sink_dir: "data/spool".into(),
            numbers: vec!["+14152000000".into()],
            shared_key: Some(PlanKey {
                id: "loadtest-key".into(),
                secret: "s".into(),
            }),
        };
        plan.write(&path).unwrap();
        assert_eq!(Plan::read(&path).unwrap(), plan);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_plan_from_before_shared_keys_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.json");
        std::fs::write(&path, r#"{"public_url":"https://sms.example","region_key":"k","account_sid":"AC1","auth_token":"t","integration_id":"i","target":"127.0.0.1:1","sink_dir":"spool","numbers":[]}"#).unwrap();
        assert_eq!(Plan::read(&path).unwrap().shared_key, None);
    }
}
