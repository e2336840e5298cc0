//! The SRE kit against the real binary: the alert rules and their unit tests (promtool),
//! the systemd unit (systemd-analyze verify), a live scrape that `promtool check metrics`
//! passes, and every metric name the rules and the Grafana dashboard use exported by a
//! running server (one on the spool with a route, one on NATS with the KV store).

use crate::delivery::{eventually, send, server, Routing, Setup, ACCOUNT, OURS, TOKEN};
use crate::support::nats::Nats;
use crate::support::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A tool on PATH, or a clear failure naming the package.
fn tool(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is needed: apt-get install {package} (.ci/run installs it)")
        })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

#[test]
fn alert_rules_pass_promtool_and_every_alert_has_a_unit_test_and_a_runbook() {
    let promtool = tool("promtool", "prometheus");
    let rules = repo("config/prometheus/alerts.yml");
    let tests = repo("config/prometheus/alerts.test.yml");
    run(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules));
    let out = run(Command::new(&promtool).arg("test").arg("rules").arg(&tests));
    assert!(out.contains("SUCCESS"), "{out}");
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let tests_text = std::fs::read_to_string(&tests).unwrap();
    let operations = std::fs::read_to_string(repo("docs/OPERATIONS.md")).unwrap();
    let alerts: Vec<&str> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 12, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests_text.contains(&format!("alertname: {alert}\n")),
            "{alert} has no firing test in alerts.test.yml"
        );
        let anchor = alert.to_lowercase();
        assert!(
            rules_text.contains(&format!("docs/OPERATIONS.md#{anchor}\"")),
            "{alert} has no runbook annotation"
        );
        assert!(
            operations.contains(&format!("### {alert}\n")),
            "docs/OPERATIONS.md has no section for {alert}"
        );
    }
}

#[test]
fn the_systemd_unit_verifies() {
    let analyze = tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo("config/systemd/sms-ingress.service")).unwrap();
    for needed in [
        "User=sms-ingress",
        "StateDirectory=sms-ingress",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "TimeoutStopSec=15s",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = unit.replace(
        "/usr/local/bin/sms-ingress",
        env!("CARGO_BIN_EXE_sms-ingress"),
    );
    let path = dir.path().join("sms-ingress.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

/// Every `sms_ingress_…` and `sms_ingress:…` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("sms_ingress") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == ':')
            .collect();
        if name.starts_with("sms_ingress_") || name.starts_with("sms_ingress:") {
            out.insert(name.trim_end_matches(':').to_string());
        }
    }
    out
}

/// The metric families a scrape exports (histogram series folded into their family,
/// and kept as the `_bucket`/`_sum`/`_count` names queries use).
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(family) = name.strip_suffix(suffix) {
                out.insert(family.to_string());
            }
        }
        out.insert(name);
    }
    out
}

fn promtool_check_metrics(promtool: &Path, scrape: &str) {
    let out = output_with_stdin(
        Command::new(promtool).args(["check", "metrics"]),
        scrape.as_bytes(),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "promtool check metrics: {text}"
    );
}

#[test]
fn a_live_scrape_is_clean_and_exports_every_name_the_rules_and_dashboard_use() {
    let promtool = tool("promtool", "prometheus");
    let routing = Routing::start();
    // On the spool: small segments and no retention delay, so retention deletes.
    let spool = server(
        &routing,
        Setup {
            sink: "segment_bytes = 4096\nretain_secs = 0\n".into(),
            ..Setup::default()
        },
    );
    for n in 0..30 {
        assert_eq!(send(&spool, n), 200);
    }
    assert_eq!(send(&spool, 0), 200, "a duplicate");
    let bad = inbound_body(OURS, "+14155559990", ACCOUNT, "SM1", "x");
    assert_eq!(spool.post_signed("mo", &bad, "not-the-token").status, 403);
    let unknown = inbound_body("+14155550199", "+14155559990", ACCOUNT, "SM2", "x");
    assert_eq!(spool.post_signed("mo", &unknown, TOKEN).status, 200);
    eventually(
        "every message delivered and a segment deleted",
        Duration::from_secs(20),
        || {
            routing.rx.delivered().len() >= 30
                && spool
                    .metric(r#"sms_ingress_spool_segments_deleted_total{queue="org-a/support"}"#)
                    > 0.0
        },
    );
    // An inactive integration: the next message is a dead letter.
    let list = spool.admin("GET", "/api/v1/integrations", ADMIN_TOKEN, None);
    assert_eq!(list.status, 200, "{}", list.text());
    let id = list.json()[0]["id"].as_str().unwrap().to_string();
    let r = spool.admin(
        "PATCH",
        &format!("/api/v1/integrations/{id}"),
        ADMIN_TOKEN,
        Some(&serde_json::json!({"status": "inactive"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(send(&spool, 100), 200);
    eventually("a dead letter counted", Duration::from_secs(5), || {
        spool
            .metrics()
            .lines()
            .any(|l| l.starts_with("sms_ingress_dead_letters_total{"))
    });

    // On NATS, with the KV store: the NATS and KV gauges.
    let nats = Nats::start();
    let fleet = server(
        &routing,
        Setup {
            sink_section: Some(format!(
                "[sink]\nkind = \"nats\"\n\n[sink.nats]\nservers = [\"{}\"]\nstream = \"SMSOPS\"\n",
                nats.url()
            )),
            control: format!(
                "store = \"nats_kv\"\nnats_kv = {{ servers = [\"{}\"], bucket = \"ops_test\", connect_timeout_ms = 3000, request_timeout_ms = 3000 }}\n",
                nats.url()
            ),
            ..Setup::default()
        },
    );
    assert_eq!(send(&fleet, 200), 200);
    // A one-replica stream is reported and warned about.
    assert_eq!(fleet.metric("sms_ingress_nats_stream_replicas"), 1.0);
    let mut fleet = fleet;
    assert!(
        fleet
            .logs()
            .iter()
            .any(|l| l.contains("fewer than 3 replicas")),
        "no replica warning"
    );

    let mut names = BTreeSet::new();
    for s in [&spool, &fleet] {
        let scrape = s.metrics();
        promtool_check_metrics(&promtool, &scrape);
        names.extend(exported(&scrape));
    }
    let rules = std::fs::read_to_string(repo("config/prometheus/alerts.yml")).unwrap();
    let recorded: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(String::from)
        .collect();
    let dashboard_text = std::fs::read_to_string(repo("config/grafana/sms-ingress.json")).unwrap();
    for (file, text) in [
        ("alerts.yml", &rules),
        ("sms-ingress.json", &dashboard_text),
    ] {
        let unknown: Vec<String> = names_in(text)
            .into_iter()
            .filter(|n| !names.contains(n) && !recorded.contains(n))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses names no running server exports: {unknown:?}"
        );
    }

    // The dashboard is a Grafana JSON model whose every query names a known metric.
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    assert_eq!(dashboard["uid"], "sms-ingress");
    let mut panels = Vec::new();
    fn collect<'a>(list: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            collect(&p["panels"], out);
        }
    }
    collect(&dashboard["panels"], &mut panels);
    let queried: Vec<_> = panels.iter().filter(|p| p["type"] != "row").collect();
    assert!(queried.len() >= 20, "{} panels", queried.len());
    for p in queried {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{p}"));
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let used = names_in(expr);
            assert!(
                !used.is_empty()
                    && used
                        .iter()
                        .all(|n| names.contains(n) || recorded.contains(n)),
                "panel {}: {expr}",
                p["title"]
            );
        }
    }
}
