//! Smoke test of the whole harness against the real service: start `sms-ingress serve` on
//! ephemeral loopback ports, then `sms-loadtest setup`, a few seconds of `run` (HTTP/1.1
//! closed loop with every fault share, h2 open loop), and `verify` — bounded in time; and
//! delivery through `sms-loadtest sink-server` failing a share of first attempts, checked
//! with `run --delivered` and `verify --delivered`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const ADMIN_TOKEN: &str = "smoke-admin-token";

/// The `sms-ingress` binary beside this test's profile directory (`target/<profile>/`).
fn ingress_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("sms-ingress");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p sms-ingress` first (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let key = sms_ingress::model::crypto::MasterKey::generate_base64().unwrap();
    std::fs::write(dir.join("master.key"), key).unwrap();
    // The server refuses a master key file others may read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("master.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let hash = ring_sha256(ADMIN_TOKEN);
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "https://sms.smoke.example"
region = "us-east-1"
[metrics]
listen = "127.0.0.1:0"
[control]
state_file = "{d}/state.json"
admin_socket = "{d}/admin.sock"
master_key_file = "{d}/master.key"
vendor_checks = false
audit_log = "{d}/audit.log"
[[control.admin_tokens]]
org = "smoke-org"
token_sha256 = "{hash}"
permissions = ["integration:add", "sms_number:all"]
[sink]
dir = "{d}/spool"
[dead_letters]
dir = "{d}/dead-letters"
[log]
format = "json"
level = "info"
{extra}
"#,
        d = dir.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn ring_sha256(s: &str) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    digest.as_ref().iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Starts the server and returns it with its webhook address (from "sms-ingress serving").
fn start(config: &Path) -> (Server, String) {
    let mut child = Command::new(ingress_binary())
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("SMS_INGRESS_MASTER_KEY")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sms-ingress");
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("sms-ingress did not start in 20 s");
        if line.contains("sms-ingress serving") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            // Keep draining stderr so that the server never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (server, v["listen"].as_str().unwrap().to_string());
        }
    }
}

fn loadtest(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_sms-loadtest"))
        .args(args)
        .env("SMS_LOADTEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    eprintln!(
        "sms-loadtest {}:\n{}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `sms-loadtest <cmd> --plan P --target T --acked A --json --quiet <extra>`, its JSON.
fn loadtest_json(cmd: &str, [plan, target, acked]: [&str; 3], extra: &[&str]) -> Output {
    let mut args = vec![cmd, "--plan", plan, "--target", target, "--acked", acked];
    args.extend(["--json", "--quiet"]);
    args.extend_from_slice(extra);
    loadtest(&args)
}

/// Runs `verify` and asserts it found every acknowledged key exactly once.
fn verify_ok(plan: &str, acked: &str) -> Output {
    let out = loadtest(&["verify", "--plan", plan, "--acked", acked]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json output")
}

#[test]
fn setup_run_verify_against_the_real_service() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (_server, addr) = start(&config);
    let (plan, acked) = (dir.path().join("plan.json"), dir.path().join("acked.txt"));
    let (plan_s, acked_s) = (plan.to_str().unwrap(), acked.to_str().unwrap());

    let out = loadtest(&[
        "setup",
        "--config",
        config.to_str().unwrap(),
        "--numbers",
        "40",
        "--queues",
        "2",
        "--plan",
        plan_s,
        "--shared-key",
    ]);
    assert!(out.status.success(), "setup failed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("imported 40 numbers in"));
    let planned: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plan).unwrap()).unwrap();
    assert_eq!(planned["shared_key"]["id"], "loadtest-key", "{planned}");

    // HTTP/1.1, closed loop, every kind of request and fault.
    let plot = dir.path().join("plot.svg");
    let out = loadtest_json(
        "run",
        [plan_s, &addr, acked_s],
        &[
            "--connections",
            "4",
            "--duration",
            "2",
            "--mms",
            "0.2",
            "--status",
            "0.3",
            "--bad-signature",
            "0.05",
            "--unknown-number",
            "0.05",
            "--retry",
            "0.1",
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    let v = json_of(&out);
    assert!(v["answered"].as_u64().unwrap() > 50, "{v}");
    assert_eq!(
        (v["errors"].as_u64(), v["unexpected"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    assert!(v["statuses"]["403"].as_u64().unwrap() > 0, "{v}");
    assert!(v["acked"].as_u64().unwrap() > 0, "{v}");
    assert!(std::fs::read_to_string(&plot)
        .unwrap()
        .contains("<polyline"));
    let out = verify_ok(plan_s, acked_s);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("lost=0 duplicated=0"));

    // Half signed with the SharedKey (HMAC-SHA256 and the settings header), forgeries
    // of both kinds among them: each answered as expected and stored once.
    let out = loadtest_json(
        "run",
        [plan_s, &addr, acked_s],
        &[
            "--connections",
            "2",
            "--requests",
            "300",
            "--shared-key-share",
            "0.5",
            "--bad-signature",
            "0.1",
        ],
    );
    let v = json_of(&out);
    assert_eq!(v["answered"].as_u64(), Some(300), "{v}");
    assert_eq!(
        (v["errors"].as_u64(), v["unexpected"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    assert!(v["statuses"]["403"].as_u64().unwrap() > 0, "{v}");
    verify_ok(plan_s, acked_s);

    // h2, open loop at a modest rate: latency measured from the intended times.
    let out = loadtest_json(
        "run",
        [plan_s, &addr, acked_s],
        &[
            "--protocol",
            "h2",
            "--connections",
            "2",
            "--duration",
            "1",
            "--rate",
            "100",
            "--retry",
            "0.2",
        ],
    );
    let v = json_of(&out);
    assert_eq!(v["mode"], "open");
    assert_eq!(v["answered"].as_u64(), Some(100), "{v}");
    assert_eq!(
        (
            v["errors"].as_u64(),
            v["unexpected"].as_u64(),
            v["unsent"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{v}"
    );
    verify_ok(plan_s, acked_s);

    // ratio, with the open-loop rounds at half of sms-ingress's measured throughput.
    let out = loadtest_json(
        "ratio",
        [plan_s, &addr, acked_s],
        &[
            "--connections",
            "2",
            "--duration",
            "1",
            "--rounds",
            "1",
            "--half-rate",
        ],
    );
    let v = json_of(&out);
    let rows = v["rounds"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{v}");
    assert_eq!(
        (rows[2]["mode"].as_str(), rows[3]["mode"].as_str()),
        (Some("open"), Some("open")),
        "{v}"
    );
    let half = v["ingress_rps_median"].as_f64().unwrap() / 2.0;
    let rate = v["open_loop"]["rate"].as_f64().unwrap();
    assert!((rate - half).abs() < 1e-6, "{v}");
    assert!(
        v["open_loop"]["ingress_p99_ms_median"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    assert!(
        v["open_loop"]["baseline_p99_ms_median"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    verify_ok(plan_s, acked_s);

    // A planted loss is caught: a key acknowledged that was never stored.
    std::fs::write(&acked, "SM00000000000000000000000000000000\n").unwrap();
    let out = loadtest(&["verify", "--plan", plan_s, "--acked", acked_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("lost=1 duplicated=0"));
}

/// Starts `sms-loadtest sink-server` and returns it with the URL it printed.
fn sink_server(secret_file: &Path, out: &Path) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sms-loadtest"))
        .args([
            "sink-server",
            "--listen",
            "127.0.0.1:0",
            "--fail-first",
            "0.3",
            "--secret-file",
        ])
        .arg(secret_file)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start sink-server");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line.split('"').nth(1).expect("url = \"...\"").to_string();
    (server, url)
}

#[test]
fn delivery_through_the_sink_server_loses_nothing_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let secret = sms_ingress_testkit::receiver::new_secret();
    let secret_file = dir.path().join("route.whsec");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let delivered = dir.path().join("delivered.ndjson");
    let (_sink, url) = sink_server(&secret_file, &delivered);
    let route = format!(
        "[delivery]\ndir = \"{d}/delivery\"\n[[delivery.routes]]\nname = \"routing\"\nqueue = \"smoke-org/*\"\nurl = \"{url}\"\nsecret_file = \"{s}\"\nretry_initial_ms = 20\nretry_max_ms = 200\n",
        d = dir.path().display(),
        s = secret_file.display()
    );
    let config = write_config(dir.path(), &route);
    let (_server, addr) = start(&config);
    let (plan, acked) = (dir.path().join("plan.json"), dir.path().join("acked.txt"));
    let (plan_s, acked_s) = (plan.to_str().unwrap(), acked.to_str().unwrap());
    let out = loadtest(&[
        "setup",
        "--config",
        config.to_str().unwrap(),
        "--numbers",
        "20",
        "--queues",
        "2",
        "--plan",
        plan_s,
    ]);
    assert!(out.status.success(), "setup failed");
    let out = loadtest_json(
        "run",
        [plan_s, &addr, acked_s],
        &[
            "--connections",
            "4",
            "--duration",
            "2",
            "--delivered",
            delivered.to_str().unwrap(),
            "--delivery-wait",
            "30",
        ],
    );
    let v = json_of(&out);
    assert_eq!(v["delivery"]["lost"], 0, "{v}");
    assert_eq!(v["delivery"]["out_of_order"], 0, "{v}");
    assert!(v["delivery"]["e2e_ms"]["p99"].as_u64().unwrap() > 0, "{v}");
    let out = loadtest(&[
        "verify",
        "--plan",
        plan_s,
        "--acked",
        acked_s,
        "--delivered",
        delivered.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("delivered: lost=0 out_of_order=0"), "{text}");
    // A planted loss is caught.
    std::fs::write(&acked, "SM00000000000000000000000000000000\n").unwrap();
    let out = loadtest(&[
        "verify",
        "--plan",
        plan_s,
        "--acked",
        acked_s,
        "--delivered",
        delivered.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
}
