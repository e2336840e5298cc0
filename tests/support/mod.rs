//! Test support: starts the real `sms-ingress` binary on ephemeral loopback ports with a
//! temporary data directory, and speaks plain HTTP/1.1 to it over TCP and the admin socket.

#![allow(dead_code)]

pub mod nats;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const REGION_KEY: &str = "a906d2848ad146028e8805a8bbaa24d3";
pub const PUBLIC_URL: &str = "https://sms.test.example";
pub const ADMIN_TOKEN: &str = "admin-token-org-a";
pub const OTHER_ORG_TOKEN: &str = "admin-token-org-b";
pub const ALL_PERMS: &str = r#"["integration:add", "integration:view", "integration:edit", "integration:delete", "sms_number:all"]"#;

/// A running server and everything needed to talk to it.
pub struct TestServer {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub admin_socket: PathBuf,
    child: Child,
    logs: std::sync::Mutex<mpsc::Receiver<String>>,
    pub log_lines: Vec<String>,
}

/// Knobs a test may turn.
#[derive(Clone)]
pub struct Options {
    pub queue_capacity: usize,
    /// `queues.max_per_org`.
    pub max_queues_per_org: usize,
    pub max_batch: usize,
    /// `dead_letters.max_per_integration`.
    pub dead_letter_max: u64,
    pub extra: String,
    /// Base URL of a fake Twilio (`http://127.0.0.1:PORT`): turns `control.vendor_checks`
    /// on against it (`…/v1` for Messaging). `None` keeps vendor checks off.
    pub twilio_base: Option<String>,
    /// Raw TOML placed right after the `[control]` header.
    pub control_extra: String,
    /// Replaces the generated `[sink]` section (spool under the temp dir) when set.
    pub sink_toml: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queue_capacity: 4096,
            max_queues_per_org: 100,
            max_batch: 1024,
            dead_letter_max: 100_000,
            extra: String::new(),
            twilio_base: None,
            control_extra: String::new(),
            sink_toml: None,
        }
    }
}

pub fn sha256_hex(s: &str) -> String {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    digest.as_ref().iter().fold(String::new(), |mut acc, b| {
        let _ = write!(acc, "{b:02x}");
        acc
    })
}

/// The `[control]` keys of the vendor checks: on against a fake Twilio, else off.
fn vendor_toml(opts: &Options) -> String {
    match &opts.twilio_base {
        Some(base) => format!(
            "vendor_checks = true\ntwilio_api_base = \"{base}\"\ntwilio_messaging_base = \"{base}/v1\"\n"
        ),
        None => "vendor_checks = false\n".to_string(),
    }
}

/// Writes a file only its owner may read (a master key: the server refuses any other mode).
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn write_config(dir: &Path, opts: &Options) -> PathBuf {
    let key = sms_ingress::model::crypto::MasterKey::generate_base64().unwrap();
    write_private(&dir.join("master.key"), key.as_bytes());
    let spool_sink = format!(
        "[sink]\nkind = \"spool\"\ndir = \"{d}/spool\"\nmax_batch = {mb}\n",
        d = dir.display(),
        mb = opts.max_batch,
    );
    let sink = opts.sink_toml.clone().unwrap_or(spool_sink);
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "{PUBLIC_URL}"
region = "us-east-1"
max_body_bytes = 4096
retry_after_secs = 7

[metrics]
listen = "127.0.0.1:0"

[control]
{vendor}{control_extra}
state_file = "{d}/state.json"
admin_socket = "{d}/admin.sock"
master_key_file = "{d}/master.key"
audit_log = "{d}/audit.log"

[[control.admin_tokens]]
id = "a-admin"
org = "org-a"
token_sha256 = "{ha}"
permissions = {ALL_PERMS}

[[control.admin_tokens]]
id = "b-admin"
org = "org-b"
token_sha256 = "{hb}"
permissions = {ALL_PERMS}

{sink}

[dead_letters]
dir = "{d}/dead-letters"
max_per_integration = {dlm}

[queues]
capacity = {cap}
max_per_org = {mq}

[log]
format = "json"
level = "debug"
{extra}
"#,
        d = dir.display(),
        ha = sha256_hex(ADMIN_TOKEN),
        hb = sha256_hex(OTHER_ORG_TOKEN),
        cap = opts.queue_capacity,
        mq = opts.max_queues_per_org,
        dlm = opts.dead_letter_max,
        extra = opts.extra,
        vendor = vendor_toml(opts),
        control_extra = opts.control_extra,
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

impl TestServer {
    /// Starts a server in a fresh temporary directory.
    pub fn start(opts: Options) -> TestServer {
        let dir = tempfile::tempdir().unwrap().keep();
        let config = write_config(&dir, &opts);
        Self::start_in(dir, config)
    }

    /// Starts (or restarts) a server on an existing directory and config.
    pub fn start_in(dir: PathBuf, config: PathBuf) -> TestServer {
        Self::start_under(dir, config, &[])
    }

    /// Starts a server run by `wrapper` (e.g. `prlimit --nofile=256:256 --`), if not empty.
    pub fn start_under(dir: PathBuf, config: PathBuf, wrapper: &[&str]) -> TestServer {
        let bin = env!("CARGO_BIN_EXE_sms-ingress");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = command
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("SMS_INGRESS_MASTER_KEY")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sms-ingress");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut log_lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not start; log so far:\n{}",
                    log_lines.join("\n")
                );
            };
            log_lines.push(line.clone());
            if line.contains("sms-ingress serving") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let addr = v["listen"].as_str().unwrap().parse().unwrap();
                let metrics_addr = v["metrics"].as_str().unwrap().parse().unwrap();
                return TestServer {
                    admin_socket: dir.join("admin.sock"),
                    dir,
                    config,
                    addr,
                    metrics_addr,
                    child,
                    logs: std::sync::Mutex::new(rx),
                    log_lines,
                };
            }
        }
    }

    /// The server's process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit; its exit status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Restarts on the same directory and config (new ports).
    pub fn restart(mut self) -> TestServer {
        self.kill9();
        let (dir, config) = (self.dir.clone(), self.config.clone());
        Self::start_in(dir, config)
    }

    /// Every log line so far.
    pub fn logs(&mut self) -> &[String] {
        while let Ok(l) = self.logs.lock().unwrap().try_recv() {
            self.log_lines.push(l);
        }
        &self.log_lines
    }

    pub fn webhook_path(kind: &str) -> String {
        format!("/vendors/v1/twilio/{REGION_KEY}/{kind}")
    }

    /// Sends a signed inbound webhook for `body` (form-encoded) to `/mo`.
    pub fn post_signed(&self, kind: &str, body: &str, token: &str) -> Response {
        let path = Self::webhook_path(kind);
        let sig = sign(&path, body, token);
        self.post(&path, body, &[("X-Twilio-Signature", sig.as_str())])
    }

    /// As `post_signed`, but None when the server closes without an answer.
    pub fn try_post_signed(&self, kind: &str, body: &str, token: &str) -> Option<Response> {
        let path = Self::webhook_path(kind);
        let sig = sign(&path, body, token);
        let headers = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Twilio-Signature", sig.as_str()),
        ];
        let stream = TcpStream::connect(self.addr).ok()?;
        try_parse_response(&exchange_raw(
            stream,
            "POST",
            &path,
            &headers,
            body.as_bytes(),
        ))
    }

    pub fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Response {
        let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
        h.extend_from_slice(headers);
        self.request("POST", path, &h, body.as_bytes())
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let stream = TcpStream::connect(self.addr).unwrap();
        exchange(stream, method, path, headers, body)
    }

    pub fn metrics(&self) -> String {
        let stream = TcpStream::connect(self.metrics_addr).unwrap();
        exchange(stream, "GET", "/metrics", &[], b"").text()
    }

    /// Value of a metric line (exact name+labels prefix), 0 if absent.
    pub fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn admin(
        &self,
        method: &str,
        path: &str,
        token: &str,
        json: Option<&serde_json::Value>,
    ) -> Response {
        let stream = UnixStream::connect(&self.admin_socket).unwrap();
        let auth = format!("Bearer {token}");
        let body = json.map(|j| j.to_string()).unwrap_or_default();
        let mut headers = vec![("Authorization", auth.as_str())];
        if json.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        exchange(stream, method, path, &headers, body.as_bytes())
    }

    /// Records of a queue, through the CLI an operator would use.
    pub fn spool_tail(&self, queue: &str) -> Vec<serde_json::Value> {
        self.tail(&["--queue", queue, "--config", self.config.to_str().unwrap()])
    }

    /// Dead letters of an integration, through the same CLI pointed at `dead_letters.dir`.
    pub fn dead_letter_tail(&self, integration_id: &str) -> Vec<serde_json::Value> {
        let dir = self.dir.join("dead-letters");
        self.tail(&["--dir", dir.to_str().unwrap(), "--queue", integration_id])
    }

    fn tail(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_sms-ingress"))
            .args(["spool", "tail"])
            .args(args)
            .output()
            .unwrap();
        json_lines(succeeded(out, "spool tail"))
    }

    /// The binary run with `args` and this server's `--config`, as it ended.
    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_sms-ingress"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// The same, which must succeed: its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        String::from_utf8(succeeded(self.cli_output(args), &args.join(" ")).stdout).unwrap()
    }

    /// The same, its stdout read as NDJSON.
    pub fn cli_json_lines(&self, args: &[&str]) -> Vec<serde_json::Value> {
        json_lines(succeeded(self.cli_output(args), &args.join(" ")))
    }
}

/// `out`, after asserting the command (`what`) succeeded.
pub fn succeeded(out: std::process::Output, what: &str) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A command's stdout as NDJSON.
pub fn json_lines(out: std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `cmd` run with `input` on its stdin, as it ended.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Starts `serve --config config`, which must refuse to start within `limit` (it is
/// killed and the test fails if it keeps running); its stderr.
pub fn serve_refuses(config: &Path, limit: Duration) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sms-ingress"))
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("SMS_INGRESS_MASTER_KEY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve kept running on {}", config.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "serve exited 0: {err}");
    err
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The signature Twilio would send for this path under PUBLIC_URL.
pub fn sign(path: &str, body: &str, token: &str) -> String {
    let form = sms_ingress::form::Form::parse(body.as_bytes()).unwrap();
    sms_ingress::signature::compute(&format!("{PUBLIC_URL}{path}"), &form, token.as_bytes())
}

/// A response, read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 exchange with `Connection: close`, bounded by a timeout.
pub fn exchange<S: Read + Write + SetTimeout>(
    stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    parse_response(&exchange_raw(stream, method, path, headers, body))
}

/// The bytes the server answered to one exchange (empty if it closed without a word).
fn exchange_raw<S: Read + Write + SetTimeout>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    stream.set_timeouts(Duration::from_secs(20));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    // A server that closes at once may reset the write; the answer (or none) tells.
    let _ = stream.write_all(&bytes);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    raw
}

pub fn parse_response(raw: &[u8]) -> Response {
    try_parse_response(raw)
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)))
}

/// The response in `raw`, or None when the server closed without answering (a connection
/// refused at accept, say).
pub fn try_parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// Read/write timeouts for both stream kinds.
pub trait SetTimeout {
    fn set_timeouts(&mut self, d: Duration);
}
impl SetTimeout for TcpStream {
    fn set_timeouts(&mut self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
        self.set_write_timeout(Some(d)).unwrap();
    }
}
impl SetTimeout for UnixStream {
    fn set_timeouts(&mut self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
        self.set_write_timeout(Some(d)).unwrap();
    }
}

/// Percent-encodes a form value the way Twilio does.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An inbound message body as Twilio would post it.
pub fn inbound_body(
    to: &str,
    from: &str,
    account_sid: &str,
    message_sid: &str,
    text: &str,
) -> String {
    format!(
        "ToCountry=US&ToState=CA&SmsMessageSid={sid}&NumMedia=0&ToCity=&FromZip=&SmsSid={sid}&FromState=CA&SmsStatus=received&FromCity=&Body={body}&FromCountry=US&To={to}&ToZip=&NumSegments=1&MessageSid={sid}&AccountSid={acct}&From={from}&ApiVersion=2010-04-01",
        sid = message_sid,
        body = enc(text),
        to = enc(to),
        from = enc(from),
        acct = account_sid,
    )
}

/// A delivery report as Twilio would post it (our number is From).
pub fn status_body(
    ours: &str,
    to: &str,
    account_sid: &str,
    message_sid: &str,
    status: &str,
) -> String {
    format!(
        "SmsSid={sid}&SmsStatus={st}&MessageStatus={st}&To={to}&MessageSid={sid}&AccountSid={acct}&From={from}&ApiVersion=2010-04-01",
        sid = message_sid,
        st = status,
        to = enc(to),
        from = enc(ours),
        acct = account_sid,
    )
}

/// Creates an integration of org-a and imports one number into it; returns the integration id.
pub fn setup_number(
    s: &TestServer,
    account_sid: &str,
    auth_token: &str,
    number: serde_json::Value,
) -> String {
    let r = s.admin(
        "POST",
        "/api/v1/integrations",
        ADMIN_TOKEN,
        Some(&serde_json::json!({"name": "test", "account_sid": account_sid, "auth_token": auth_token})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let mut number = number;
    number["integration_id"] = serde_json::Value::String(id.clone());
    let r = s.admin("POST", "/api/v1/numbers", ADMIN_TOKEN, Some(&number));
    assert_eq!(r.status, 201, "{}", r.text());
    id
}
