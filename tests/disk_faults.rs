//! Disk faults under the spool: a full filesystem and an unwritable one. Webhooks get 503 and
//! nothing is acknowledged, `/readyz` is 503, and both recover by themselves when the disk
//! does; no record is corrupt. Needs root (CI runs as root) to mount a small tmpfs.

use crate::support::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "disk-token";
const ACCOUNT: &str = "AC22222222222222222222222222222222";
const OURS: &str = "+14155550122";

/// A tmpfs mounted for the test's lifetime.
struct Mount(PathBuf);

impl Mount {
    fn new(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn start_on_tmpfs(size: &str) -> (TestServer, Mount) {
    let dir = tempfile::tempdir().unwrap().keep();
    let mount = Mount::new(&dir.join("spoolfs"), size);
    let opts = Options {
        sink_toml: Some(format!(
            "[sink]\nkind = \"spool\"\ndir = \"{}\"\n",
            mount.0.display()
        )),
        ..Options::default()
    };
    let config = write_config(&dir, &opts);
    let s = TestServer::start_in(dir, config);
    let number = json!({"sender_id": OURS, "type": "local", "country": "US", "queue": "disk"});
    setup_number(&s, ACCOUNT, TOKEN, number);
    (s, mount)
}

fn send(s: &TestServer, i: usize) -> (String, u16) {
    let sid = format!("SM{i:032}");
    let body = inbound_body(OURS, "+14155559999", ACCOUNT, &sid, &"d".repeat(300));
    (sid.clone(), s.post_signed("mo", &body, TOKEN).status)
}

fn wait_ready(s: &TestServer, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.request("GET", "/readyz", &[], b"").status != want {
        assert!(Instant::now() < deadline, "/readyz never became {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every acknowledged sid is in the spool exactly once and every record decodes.
fn assert_all_acked_stored(s: &TestServer, acked: &[String]) {
    let records = s.spool_tail("disk");
    let sids: Vec<&str> = records
        .iter()
        .map(|r| r["message_sid"].as_str().unwrap())
        .collect();
    for sid in acked {
        assert_eq!(
            sids.iter().filter(|s| **s == sid).count(),
            1,
            "{sid} not stored exactly once"
        );
    }
}

#[test]
fn full_disk_answers_503_and_recovers_when_space_returns() {
    let (s, mount) = start_on_tmpfs("512k");
    let mut acked = Vec::new();
    let (sid, status) = send(&s, 0);
    assert_eq!(status, 200);
    acked.push(sid);
    // fill the filesystem
    let filler = mount.0.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"])
        .output();
    let mut saw_503 = false;
    for i in 1..40 {
        let (sid, status) = send(&s, i);
        match status {
            200 => acked.push(sid),
            503 => saw_503 = true,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(saw_503, "a full disk never answered 503");
    wait_ready(&s, 503);
    assert!(s.metric(r#"sms_ingress_rejected_total{reason="sink_unavailable"}"#) >= 1.0);
    std::fs::remove_file(&filler).unwrap();
    wait_ready(&s, 200);
    let (sid, status) = send(&s, 100);
    assert_eq!(status, 200);
    acked.push(sid);
    assert_all_acked_stored(&s, &acked);
}

/// Sets or clears the immutable attribute (writes then fail with EPERM, even on open files).
fn chattr(flag: &str, paths: &[PathBuf]) {
    for p in paths {
        let out = Command::new("chattr")
            .arg(flag)
            .arg(p)
            .output()
            .expect("run chattr");
        assert!(
            out.status.success(),
            "chattr {flag} {} needs root on ext4/xfs (CI runs as root): {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Clears the immutable attribute even when an assertion fails.
struct Unlock(Vec<PathBuf>);

impl Drop for Unlock {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(p).status();
        }
    }
}

#[test]
fn unwritable_spool_answers_503_and_recovers_when_writable() {
    // `mount -o remount,ro` is refused while the spool holds files open for writing, so a
    // read-only disk is played by the immutable attribute on the queue's directory and files.
    let s = TestServer::start(Options::default());
    setup_number(
        &s,
        ACCOUNT,
        TOKEN,
        json!({"sender_id": OURS, "type": "local", "country": "US", "queue": "disk"}),
    );
    let (first, status) = send(&s, 0);
    assert_eq!(status, 200);
    let qdir = s.dir.join("spool").join("org-a").join("disk");
    let mut locked: Vec<PathBuf> = std::fs::read_dir(&qdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    locked.push(qdir.clone());
    chattr("+i", &locked);
    let _unlock_on_panic = Unlock(locked.clone());
    let (_, status) = send(&s, 1);
    assert_eq!(status, 503);
    wait_ready(&s, 503);
    chattr("-i", &locked);
    wait_ready(&s, 200);
    let (last, status) = send(&s, 2);
    assert_eq!(status, 200);
    assert_all_acked_stored(&s, &[first, last]);
}
