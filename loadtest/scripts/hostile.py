#!/usr/bin/env python3
"""The hostile-tenant figures of the tenant-isolation issue, measured on a release binary:
queue churn (RSS, threads, fds, /metrics lines, disk blocks of the spool), an fd flood under RLIMIT_NOFILE 256
(CPU seconds), and the modes of the files written under umask 022.

    python3 loadtest/scripts/hostile.py [BINARY ...]     (default ./target/release/sms-ingress)

Each binary gets a fresh directory and config; run an old and a new binary in one call
to compare them on the same machine in the same minutes.
"""
import hashlib
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time

ADMIN = "hostile-admin-token"
ACCOUNT = "AC0123456789abcdef0123456789abcdef"


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def admin(sock, method, path, body=None):
    c = UnixHTTP(sock)
    headers = {"Authorization": "Bearer " + ADMIN}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    c.request(method, path, data, headers)
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    return r.status, text


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(binary, wrapper=()):
    d = tempfile.mkdtemp(prefix="hostile-")
    key = subprocess.run([binary, "keygen"], capture_output=True, text=True, check=True).stdout
    with open(os.path.join(d, "master.key"), "w") as f:
        f.write(key)
    os.chmod(os.path.join(d, "master.key"), 0o600)
    web, met = free_port(), free_port()
    cfg = f"""
[server]
listen = "127.0.0.1:{web}"
public_url = "https://sms.example.com"
region = "us-east-1"
[metrics]
listen = "127.0.0.1:{met}"
[control]
vendor_checks = false
state_file = "{d}/state.json"
admin_socket = "{d}/admin.sock"
master_key_file = "{d}/master.key"
audit_log = "{d}/audit.log"
[[control.admin_tokens]]
id = "admin"
org = "org-a"
token_sha256 = "{hashlib.sha256(ADMIN.encode()).hexdigest()}"
permissions = ["integration:add", "integration:view", "integration:edit", "integration:delete", "sms_number:all"]
[sink]
dir = "{d}/spool"
[dead_letters]
dir = "{d}/dead-letters"
[log]
level = "warn"
"""
    path = os.path.join(d, "config.toml")
    with open(path, "w") as f:
        f.write(cfg)
    old_umask = os.umask(0o022)
    p = subprocess.Popen(list(wrapper) + [binary, "serve", "--config", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.umask(old_umask)
    sock = os.path.join(d, "admin.sock")
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            if admin(sock, "GET", "/api/v1/integrations")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)
    else:
        p.kill()
        raise SystemExit(f"{binary} did not start")
    return p, d, sock, web, met


def spool_mb(d):
    total = 0
    for root, _, files in os.walk(os.path.join(d, "spool")):
        for f in files:
            total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return round(total / 2**20, 1)


def held(pid):
    status = open(f"/proc/{pid}/status").read()
    field = lambda n: int(next(l for l in status.splitlines() if l.startswith(n)).split()[1])
    return {"rss_mb": round(field("VmRSS:") / 1024, 1), "threads": field("Threads:"),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def metrics_lines(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    n = len(c.getresponse().read().decode().splitlines())
    c.close()
    return n


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def churn(binary, cycles=100):
    p, d, sock, _, met = start(binary)
    status, text = admin(sock, "POST", "/api/v1/integrations",
                         {"name": "t", "account_sid": ACCOUNT, "auth_token": "tok"})
    iid = json.loads(text)["id"]
    time.sleep(1)
    before = held(p.pid) | {"metrics_lines": metrics_lines(met)}
    for i in range(cycles):
        number = f"+1415555{1000 + i:04d}"
        s, t = admin(sock, "POST", "/api/v1/numbers", {"sender_id": number, "type": "local",
                     "country": "US", "queue": f"churn-{i}", "integration_id": iid})
        assert s == 201, t
        s, t = admin(sock, "DELETE", "/api/v1/numbers/" + number.replace("+", "%2B"))
        assert s == 204, t
    time.sleep(3)
    after = held(p.pid) | {"metrics_lines": metrics_lines(met), "spool_disk_mb": spool_mb(d)}
    p.kill()
    p.wait()
    return before, after, d


def fd_flood(binary):
    p, d, sock, web, met = start(binary, ["prlimit", "--nofile=256:256", "--"])
    conns = []
    for port, n in ((web, 400), (met, 20)):
        for _ in range(n):
            try:
                conns.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                pass
    c0 = cpu_seconds(p.pid)
    time.sleep(3)
    cpu = cpu_seconds(p.pid) - c0
    for c in conns:
        c.close()
    time.sleep(1)
    try:
        ok = admin(sock, "GET", "/api/v1/integrations")[0] == 200
    except OSError:
        ok = False
    p.kill()
    p.wait()
    return round(cpu, 2), ok


def modes(d):
    out = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode) or name in ("config.toml", "master.key"):
                continue
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
            out.setdefault(f"{kind} {oct(st.st_mode & 0o777)}", []).append(os.path.relpath(path, d))
    return {k: len(v) for k, v in out.items()}


def main():
    binaries = sys.argv[1:] or ["./target/release/sms-ingress"]
    for b in binaries:
        before, after, d = churn(b)
        print(f"{b}: queue churn, 100 import+delete cycles on new queue names:")
        print(f"  before {before}")
        print(f"  after  {after}")
        print(f"  files written under umask 022: {modes(d)}")
        cpu, ok = fd_flood(b)
        print(f"  fd flood under RLIMIT_NOFILE 256 (400 webhook + 20 metrics connections, 3 s):"
              f" {cpu} s CPU; admin API answers afterwards: {ok}")


if __name__ == "__main__":
    main()
