//! `sms-loadtest fake-twilio`: the test kit's in-memory Twilio REST API
//! (`sms_ingress_testkit::FakeTwilio`) as a standalone server, seeded from flags, so
//! an admin can walk through docs/ADMIN.md with the vendor checks on and no real Twilio.

use anyhow::{bail, Context, Result};
use clap::Args;
use sms_ingress::model::regions::{self, Region};
use sms_ingress::model::state::{is_account_sid, is_e164};
use sms_ingress_testkit::FakeTwilio;
use std::collections::HashSet;
use std::net::SocketAddr;

#[derive(Args, Debug)]
#[command(after_help = "\
Every sender must belong to an --account given on the same command line. SMS_URL is everything
after the field before it, so it may contain ':'; when omitted it is the webhook URL of --region,
exactly what the import check expects, so the sender imports cleanly. Give another URL (e.g.
https://example.com/sms) to see webhook_not_configured, or put a number in a `nodefer` service.
The model lives in memory: restart with other flags to \"change the Twilio console\".

Example (docs/ADMIN.md):
  sms-loadtest fake-twilio \\
    --account AC00000000000000000000000000000001:twilio-token-1 \\
    --number +14155550100:AC00000000000000000000000000000001 \\
    --number +12125550100:AC00000000000000000000000000000001 \\
    --service '10DLC campaign:AC00000000000000000000000000000001:defer:+12125550100' \\
    --number +14155550111:AC00000000000000000000000000000001:https://example.com/sms \\
    --short-code 55123:AC00000000000000000000000000000001 \\
    --range +14155551000:100:AC00000000000000000000000000000001

Then in the sms-ingress config: control.vendor_checks = true and the two base URLs printed.")]
pub struct FakeTwilioArgs {
    /// Address to listen on (port 0 picks one; the base URLs printed use the bound address).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Region whose webhook URL is the default SMS URL (see GET /api/v1/regions).
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// ACCOUNT_SID:AUTH_TOKEN[,SECONDARY_TOKEN] — an account (or sub-account) and the
    /// Auth Token its REST API accepts; a secondary token (as during a rotation in the
    /// Twilio console) is accepted too. Repeatable.
    #[arg(long = "account", value_name = "AC…:TOKEN[,TOKEN2]")]
    pub accounts: Vec<String>,
    /// +E164:ACCOUNT_SID[:SMS_URL] — a phone number of the account. Repeatable.
    #[arg(long = "number", value_name = "+E164:AC…[:SMS_URL]")]
    pub numbers: Vec<String>,
    /// CODE:ACCOUNT_SID[:SMS_URL] — a short code of the account. Repeatable.
    #[arg(long = "short-code", value_name = "CODE:AC…[:SMS_URL]")]
    pub short_codes: Vec<String>,
    /// FIRST:COUNT:ACCOUNT_SID[:SMS_URL] — COUNT consecutive numbers from +E164 FIRST
    /// (an inventory to bulk-import). Repeatable.
    #[arg(long = "range", value_name = "+E164:COUNT:AC…[:SMS_URL]")]
    pub ranges: Vec<String>,
    /// NAME:ACCOUNT_SID:defer|nodefer:SENDER[,SENDER...] — a Messaging Service holding
    /// numbers or short codes given above; `defer` is "Defer to sender's webhook".
    /// Its MG… SID is printed. Repeatable.
    #[arg(long = "service", value_name = "NAME:AC…:defer|nodefer:SENDERS")]
    pub services: Vec<String>,
}

/// One account of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSpec {
    pub sid: String,
    pub token: String,
    /// A secondary Auth Token the REST API accepts too (Twilio's token rotation).
    pub secondary: Option<String>,
}

/// One phone number or short code of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderSpec {
    pub id: String,
    pub account: String,
    pub sms_url: String,
}

/// One --range: `count` numbers from `first` to `last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSpec {
    pub first: String,
    pub last: String,
    pub count: u64,
    pub account: String,
    pub sms_url: String,
}

/// One Messaging Service of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub account: String,
    pub defer: bool,
    pub members: Vec<String>,
}

/// Everything the flags describe, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub region: &'static Region,
    pub accounts: Vec<AccountSpec>,
    /// Every phone number: the --number ones, then each --range expanded.
    pub numbers: Vec<SenderSpec>,
    /// The --range flags, for the summary.
    pub ranges: Vec<RangeSpec>,
    pub short_codes: Vec<SenderSpec>,
    pub services: Vec<ServiceSpec>,
}

/// Most numbers one --range may add.
const MAX_RANGE: u64 = 10_000_000;

fn account_sid(s: &str, flag: &str, value: &str) -> Result<String> {
    if !is_account_sid(s) {
        bail!("{flag} {value:?}: {s:?} is not an Account SID (AC followed by 32 hex digits)");
    }
    Ok(s.to_string())
}

fn sms_url(url: Option<&str>, region: &Region, flag: &str, value: &str) -> Result<String> {
    match url {
        None => Ok(region.webhook_url()),
        Some("") => bail!("{flag} {value:?}: the SMS URL after the last ':' is empty"),
        Some(u) => Ok(u.to_string()),
    }
}

impl FakeTwilioArgs {
    /// Parses and cross-checks every flag.
    pub fn seed(&self) -> Result<Seed> {
        let region = regions::by_name(&self.region).with_context(|| {
            let names: Vec<&str> = regions::REGIONS.iter().map(|r| r.name).collect();
            format!(
                "--region {:?} is not one of: {}",
                self.region,
                names.join(", ")
            )
        })?;
        let mut accounts: Vec<AccountSpec> = Vec::new();
        for v in &self.accounts {
            let (sid, token) = v
                .split_once(':')
                .with_context(|| format!("--account {v:?}: expected AC…:TOKEN"))?;
            let sid = account_sid(sid, "--account", v)?;
            let (token, secondary) = match token.split_once(',') {
                Some((t, s)) => (t, Some(s)),
                None => (token, None),
            };
            if token.is_empty() || secondary.is_some_and(|s| s.is_empty() || s == token) {
                bail!("--account {v:?}: an Auth Token is empty (or the secondary is the primary)");
            }
            if accounts.iter().any(|a| a.sid == sid) {
                bail!("--account {sid} is given twice");
            }
            accounts.push(AccountSpec {
                sid,
                token: token.to_string(),
                secondary: secondary.map(str::to_string),
            });
        }
        let known = |sid: &str, flag: &str, v: &str| -> Result<String> {
            let sid = account_sid(sid, flag, v)?;
            if !accounts.iter().any(|a| a.sid == sid) {
                bail!("{flag} {v:?}: account {sid} is not given with --account");
            }
            Ok(sid)
        };
        let mut numbers = Vec::new();
        for v in &self.numbers {
            let mut parts = v.splitn(3, ':');
            let (id, acct) = (parts.next().unwrap_or(""), parts.next());
            let acct =
                acct.with_context(|| format!("--number {v:?}: expected +E164:AC…[:SMS_URL]"))?;
            if !is_e164(id) {
                bail!("--number {v:?}: {id:?} is not an E.164 number (+ and 8-15 digits, the first not 0)");
            }
            numbers.push(SenderSpec {
                id: id.to_string(),
                account: known(acct, "--number", v)?,
                sms_url: sms_url(parts.next(), region, "--number", v)?,
            });
        }
        let mut ranges = Vec::new();
        for v in &self.ranges {
            let mut parts = v.splitn(4, ':');
            let (first, count, acct) = (parts.next().unwrap_or(""), parts.next(), parts.next());
            let (Some(count), Some(acct)) = (count, acct) else {
                bail!("--range {v:?}: expected +E164:COUNT:AC…[:SMS_URL]");
            };
            if !is_e164(first) {
                bail!("--range {v:?}: {first:?} is not an E.164 number");
            }
            let count: u64 = count
                .parse()
                .ok()
                .filter(|c| (1..=MAX_RANGE).contains(c))
                .with_context(|| format!("--range {v:?}: COUNT must be 1 to {MAX_RANGE}"))?;
            let digits = &first[1..];
            let start: u64 = digits.parse().context("E.164 digits")?;
            let last = start + count - 1;
            if last.to_string().len() > digits.len() {
                bail!(
                    "--range {v:?}: {count} numbers from {first} overflow its {} digits",
                    digits.len()
                );
            }
            let account = known(acct, "--range", v)?;
            let url = sms_url(parts.next(), region, "--range", v)?;
            let width = digits.len();
            for n in start..=last {
                numbers.push(SenderSpec {
                    id: format!("+{n:0width$}"),
                    account: account.clone(),
                    sms_url: url.clone(),
                });
            }
            ranges.push(RangeSpec {
                first: first.to_string(),
                last: format!("+{last:0width$}"),
                count,
                account,
                sms_url: url,
            });
        }
        let mut short_codes = Vec::new();
        for v in &self.short_codes {
            let mut parts = v.splitn(3, ':');
            let (id, acct) = (parts.next().unwrap_or(""), parts.next());
            let acct =
                acct.with_context(|| format!("--short-code {v:?}: expected CODE:AC…[:SMS_URL]"))?;
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                bail!("--short-code {v:?}: {id:?} is not a short code (digits)");
            }
            short_codes.push(SenderSpec {
                id: id.to_string(),
                account: known(acct, "--short-code", v)?,
                sms_url: sms_url(parts.next(), region, "--short-code", v)?,
            });
        }
        let mut ids = HashSet::new();
        for s in numbers.iter().chain(&short_codes) {
            if !ids.insert(s.id.as_str()) {
                bail!("sender {} is given twice", s.id);
            }
        }
        let mut services = Vec::new();
        for v in &self.services {
            let parts: Vec<&str> = v.splitn(4, ':').collect();
            let [name, acct, defer, members] = parts.as_slice() else {
                bail!("--service {v:?}: expected NAME:AC…:defer|nodefer:SENDER[,SENDER...]");
            };
            if name.is_empty() {
                bail!("--service {v:?}: the name is empty");
            }
            let account = known(acct, "--service", v)?;
            let defer = match *defer {
                "defer" => true,
                "nodefer" => false,
                other => bail!("--service {v:?}: {other:?} is neither defer nor nodefer"),
            };
            let mut list = Vec::new();
            for m in members.split(',').filter(|m| !m.is_empty()) {
                let owner = numbers
                    .iter()
                    .chain(&short_codes)
                    .find(|s| s.id == m)
                    .with_context(|| {
                        format!("--service {v:?}: {m} is not given with --number or --short-code")
                    })?;
                if owner.account != account {
                    bail!(
                        "--service {v:?}: {m} belongs to {}, not {account}",
                        owner.account
                    );
                }
                list.push(m.to_string());
            }
            services.push(ServiceSpec {
                name: name.to_string(),
                account,
                defer,
                members: list,
            });
        }
        Ok(Seed {
            region,
            accounts,
            numbers,
            ranges,
            short_codes,
            services,
        })
    }
}

/// Builds the model; returns the service SIDs Twilio gave, in `seed.services` order.
pub fn build(seed: &Seed) -> (FakeTwilio, Vec<String>) {
    let fake = FakeTwilio::new();
    for a in &seed.accounts {
        fake.add_account(&a.sid, &a.token);
        if let Some(secondary) = &a.secondary {
            fake.add_secondary_token(&a.sid, secondary);
        }
    }
    for n in &seed.numbers {
        fake.add_number(&n.account, &n.id, &n.sms_url);
    }
    for s in &seed.short_codes {
        fake.add_short_code(&s.account, &s.id, &s.sms_url);
    }
    let mut sids = Vec::new();
    for s in &seed.services {
        let mg = fake.add_service(&s.account, &s.name, s.defer);
        for m in &s.members {
            fake.add_to_service(&mg, m);
        }
        sids.push(mg);
    }
    (fake, sids)
}

/// What the server holds, for the terminal: never a token.
pub fn describe(seed: &Seed, service_sids: &[String], addr: SocketAddr) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "fake Twilio listening on http://{addr}");
    let _ = writeln!(out, "  control.twilio_api_base       = \"http://{addr}\"");
    let _ = writeln!(
        out,
        "  control.twilio_messaging_base = \"http://{addr}/v1\""
    );
    let _ = writeln!(
        out,
        "default SMS URL ({}): {}",
        seed.region.name,
        seed.region.webhook_url()
    );
    for a in &seed.accounts {
        let tokens = if a.secondary.is_some() {
            "primary and secondary Auth Token"
        } else {
            "Auth Token"
        };
        let _ = writeln!(out, "account {} ({tokens} set, not shown)", a.sid);
        // --number entries come first in `numbers`, the expanded ranges after them.
        let ranged: u64 = seed.ranges.iter().map(|r| r.count).sum();
        let singles = seed.numbers.len() - ranged as usize;
        for n in seed.numbers[..singles]
            .iter()
            .filter(|n| n.account == a.sid)
        {
            sender_line(&mut out, seed, "number", n);
        }
        for r in seed.ranges.iter().filter(|r| r.account == a.sid) {
            let range = format!("{}..{}", r.first, r.last);
            let _ = writeln!(
                out,
                "  numbers    {range} ({} numbers) sms_url: {}",
                r.count,
                url_label(seed, &r.sms_url)
            );
        }
        for s in seed.short_codes.iter().filter(|s| s.account == a.sid) {
            sender_line(&mut out, seed, "short code", s);
        }
        for (s, mg) in seed.services.iter().zip(service_sids) {
            if s.account == a.sid {
                let _ = writeln!(
                    out,
                    "  service    {mg} {:?} defer to sender's webhook: {}; members: {}",
                    s.name,
                    if s.defer { "yes" } else { "no" },
                    if s.members.is_empty() {
                        "none".to_string()
                    } else {
                        s.members.join(", ")
                    }
                );
            }
        }
    }
    out
}

fn sender_line(out: &mut String, seed: &Seed, kind: &str, s: &SenderSpec) {
    use std::fmt::Write;
    let url = url_label(seed, &s.sms_url);
    let _ = writeln!(out, "  {kind:<10} {:<16} sms_url: {url}", s.id);
}

fn url_label<'a>(seed: &Seed, url: &'a str) -> &'a str {
    if url == seed.region.webhook_url() {
        "the region's webhook URL"
    } else {
        url
    }
}

/// Binds, prints what is served, and serves until Ctrl-C.
pub async fn run(args: FakeTwilioArgs) -> Result<()> {
    let seed = args.seed()?;
    let (fake, sids) = build(&seed);
    let (addr, task) = fake
        .start(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    print!("{}", describe(&seed, &sids, addr));
    println!("Ctrl-C stops it.");
    use std::io::Write;
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    task.abort();
    eprintln!("fake Twilio: stopped after {} requests", fake.requests());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const A: &str = "AC00000000000000000000000000000001";
    const B: &str = "AC00000000000000000000000000000002";
    const C: &str = "AC00000000000000000000000000000003";

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: FakeTwilioArgs,
    }

    fn seed(flags: &[&str]) -> Result<Seed> {
        let mut argv = vec!["t"];
        argv.extend_from_slice(flags);
        T::try_parse_from(argv)?.args.seed()
    }

    #[test]
    fn parses_every_flag() {
        let acct_a = format!("{A}:tok-a");
        let acct_b = format!("{B}:tok:with:colons");
        let acct_c = format!("{C}:c1,c2");
        let n1 = format!("+14155550100:{A}");
        let n2 = format!("+14155550111:{A}:https://example.com:8443/sms");
        let n3 = format!("+12125550100:{B}");
        let sc = format!("55123:{A}");
        let range = format!("+14155551098:3:{B}");
        let svc = format!("10DLC:{B}:defer:+12125550100,+14155551099");
        let svc2 = format!("plain:{A}:nodefer:");
        let s = seed(&[
            "--account",
            &acct_a,
            "--account",
            &acct_b,
            "--account",
            &acct_c,
            "--number",
            &n1,
            "--number",
            &n2,
            "--number",
            &n3,
            "--short-code",
            &sc,
            "--range",
            &range,
            "--service",
            &svc,
            "--service",
            &svc2,
            "--region",
            "eu-west-1",
        ])
        .unwrap();
        let region_url = regions::by_name("eu-west-1").unwrap().webhook_url();
        assert_eq!(s.region.name, "eu-west-1");
        assert_eq!(s.accounts[1].token, "tok:with:colons");
        assert_eq!(s.accounts[1].secondary, None);
        assert_eq!(s.accounts[2].token, "c1");
        assert_eq!(s.accounts[2].secondary.as_deref(), Some("c2"));
        assert_eq!(s.numbers[0].sms_url, region_url);
        assert_eq!(s.numbers[1].sms_url, "https://example.com:8443/sms");
        let ids: Vec<&str> = s.numbers.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "+14155550100",
                "+14155550111",
                "+12125550100",
                "+14155551098",
                "+14155551099",
                "+14155551100"
            ]
        );
        assert_eq!(s.numbers[5].account, B);
        assert_eq!(s.short_codes[0].id, "55123");
        assert_eq!(s.short_codes[0].sms_url, region_url);
        assert_eq!(
            s.services[0],
            ServiceSpec {
                name: "10DLC".into(),
                account: B.into(),
                defer: true,
                members: vec!["+12125550100".into(), "+14155551099".into()],
            }
        );
        assert!(!s.services[1].defer);
        assert!(s.services[1].members.is_empty());
    }

    #[test]
    fn defaults() {
        let a = T::try_parse_from(["t"]).unwrap().args;
        assert_eq!(a.listen.to_string(), "127.0.0.1:8081");
        let s = a.seed().unwrap();
        assert_eq!(s.region.name, "us-east-1");
        assert!(s.accounts.is_empty() && s.numbers.is_empty());
    }

    #[test]
    fn refuses_bad_flags() {
        let acct = format!("{A}:tok");
        let cases: &[(&[&str], &str)] = &[
            (&["--account", A], "expected AC…:TOKEN"),
            (&["--account", "AC12:tok"], "not an Account SID"),
            (&["--account", &format!("{A}:")], "Auth Token is empty"),
            (&["--account", &format!("{A}:t,")], "Auth Token is empty"),
            (
                &["--account", &format!("{A}:t,t")],
                "secondary is the primary",
            ),
            (&["--account", &acct, "--account", &acct], "given twice"),
            (
                &["--number", &format!("+14155550100:{B}")],
                "not given with --account",
            ),
            (
                &["--account", &acct, "--number", &format!("14155550100:{A}")],
                "not an E.164",
            ),
            (
                &["--account", &acct, "--number", "+14155550100"],
                "expected +E164",
            ),
            (
                &[
                    "--account",
                    &acct,
                    "--number",
                    &format!("+14155550100:{A}:"),
                ],
                "SMS URL",
            ),
            (
                &["--account", &acct, "--short-code", &format!("12a45:{A}")],
                "not a short code",
            ),
            (
                &[
                    "--account",
                    &acct,
                    "--range",
                    &format!("+999999999999999:2:{A}"),
                ],
                "overflow",
            ),
            (
                &[
                    "--account",
                    &acct,
                    "--range",
                    &format!("+14155550100:0:{A}"),
                ],
                "COUNT",
            ),
            (
                &[
                    "--account",
                    &acct,
                    "--number",
                    &format!("+14155550100:{A}"),
                    "--number",
                    &format!("+14155550100:{A}"),
                ],
                "given twice",
            ),
            (
                &["--account", &acct, "--service", &format!("s:{A}:maybe:")],
                "neither defer",
            ),
            (
                &[
                    "--account",
                    &acct,
                    "--service",
                    &format!("s:{A}:defer:+1999"),
                ],
                "not given with --number",
            ),
            (&["--region", "mars-1"], "not one of"),
        ];
        for (flags, want) in cases {
            let err = format!("{:#}", seed(flags).unwrap_err());
            assert!(err.contains(want), "{flags:?}: {err}");
        }
    }

    #[tokio::test]
    async fn serves_the_seed_without_tokens_in_the_listing() {
        use sms_ingress::control::vendor::{ImportVendorError, TwilioClient, VendorError};
        use sms_ingress::model::crypto::Secret;
        use sms_ingress::model::state::NumberType;
        let s = seed(&[
            "--account",
            &format!("{A}:secret-token,secret-two"),
            "--number",
            &format!("+14155550100:{A}"),
            "--service",
            &format!("10DLC:{A}:defer:+14155550100"),
        ])
        .unwrap();
        let (fake, sids) = build(&s);
        let (addr, task) = fake.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let text = describe(&s, &sids, addr);
        assert!(!text.contains("secret-"), "{text}");
        assert!(text.contains(&format!("twilio_messaging_base = \"http://{addr}/v1\"")));
        assert!(text.contains("+14155550100") && text.contains(&sids[0]));
        // The library's import check accepts the number with either token, and no other.
        let client = TwilioClient::new(
            &format!("http://{addr}"),
            &format!("http://{addr}/v1"),
            std::time::Duration::from_secs(5),
        )
        .unwrap();
        let url = s.region.webhook_url();
        for (token, want) in [
            ("secret-token", Ok(())),
            ("secret-two", Ok(())),
            (
                "secret-three",
                Err(ImportVendorError::Vendor(VendorError::CredentialsRejected)),
            ),
        ] {
            let token = Secret::new(token.to_string());
            let got = client
                .check_number(A, &token, "+14155550100", NumberType::Local, &url)
                .await;
            assert_eq!(got, want);
        }
        task.abort();
    }
}
