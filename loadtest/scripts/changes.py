#!/usr/bin/env python3
"""Round-trip times of control-plane changes, and the RSS per number, of a running sms-ingress.

Usage (from the repository root, against `sms-ingress serve --config loadtest/sms-ingress.toml`
after `sms-loadtest setup`):

    python3 loadtest/scripts/changes.py [--rounds N] [--pid PID] [--empty-rss BYTES] [--out JSON]
                                        [--socket PATH] [--token TOKEN] [--plan PATH]

Each of N rounds (default 15) times four changes over ONE keep-alive HTTP/1.1 connection on
the admin Unix socket (default data/loadtest/admin.sock, token loadtest-admin-token, org
loadtest-org; the integration id is the plan's `integration_id`, default data/loadtest/plan.json):

    import      POST   /api/v1/numbers                 (+14159999990 on queue loadtest-0)
    delete      DELETE /api/v1/numbers/%2B14159999990
    deactivate  PATCH  /api/v1/integrations/ID         {"status": "inactive"}
    activate    PATCH  /api/v1/integrations/ID         {"status": "active"}

A round trip is time.monotonic() around sending the request and reading the whole answer;
the script sleeps 50 ms between requests. The number is deleted first if present (404 is
fine). Any other non-2xx answer aborts with a message (the integration is set active again
first if it was left inactive). Prints one line per change kind: median, p90 (nearest
rank), min and max in ms, and the count.

With --pid it also prints the process's VmRSS (/proc/PID/status) and the number count (the
integration's number count from GET /api/v1/integrations/ID, else the length of the plan's
`numbers`): with --empty-rss BYTES (the RSS of the same binary started on an empty state)
the bytes per number are (VmRSS - BYTES) / numbers; without it, a plain VmRSS / numbers
ratio, labelled as such. --out writes everything as JSON.
"""
import argparse
import http.client
import json
import math
import os
import statistics
import sys
import time
from urllib.parse import quote

from patcher import UnixConnection  # beside this script

NUMBER = "+14159999990"
QUEUE = "loadtest-0"
PAUSE = 0.05
KINDS = ("import", "delete", "deactivate", "activate")


class Admin:
    def __init__(self, sock, token):
        self.conn = UnixConnection(sock, timeout=120)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.connects = 0  # connections opened (1 if keep-alive held throughout)

    def call(self, method, path, body=None):
        """(status, body bytes, seconds): seconds cover the request and the whole answer."""
        if self.conn.sock is None:
            self.connects += 1
        data = None if body is None else json.dumps(body)
        t = time.monotonic()
        self.conn.request(method, path, data, self.headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        return resp.status, raw, time.monotonic() - t


def fail(msg):
    sys.exit(f"changes.py: {msg}")


def check(what, status, raw):
    if not 200 <= status < 300:
        raise RuntimeError(f"{what}: HTTP {status}: {raw[:500].decode(errors='replace')}")


def nearest_rank(sorted_values, p):
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def summary(seconds):
    ms = sorted(s * 1000 for s in seconds)
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": nearest_rank(ms, 90),
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "count": len(ms),
        "samples_ms": [round(s * 1000, 3) for s in seconds],
    }


def vm_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    fail(f"no VmRSS in /proc/{pid}/status")


def number_count(view):
    """The integration view's number count field: `number_count`, else any int field naming numbers."""
    if isinstance(view, dict) and isinstance(view.get("data"), dict):
        view = view["data"]
    if not isinstance(view, dict):
        return None, None
    if isinstance(view.get("number_count"), int):
        return "number_count", view["number_count"]
    for k, v in view.items():
        if "number" in k and isinstance(v, int) and not isinstance(v, bool):
            return k, v
    return None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--pid", type=int)
    ap.add_argument("--empty-rss", type=int, metavar="BYTES")
    ap.add_argument("--out")
    ap.add_argument("--socket", default="data/loadtest/admin.sock")
    ap.add_argument("--token", default="loadtest-admin-token")
    ap.add_argument("--plan", default="data/loadtest/plan.json")
    a = ap.parse_args()
    if a.rounds < 1:
        fail("--rounds must be at least 1")

    try:
        with open(a.plan) as f:
            plan = json.load(f)
        integration = plan["integration_id"]
    except (OSError, ValueError, KeyError) as e:
        fail(f"reading integration_id from {a.plan}: {e}")
    if not os.path.exists(a.socket):
        fail(f"no admin socket at {a.socket}: is sms-ingress serve running from this directory?")

    admin = Admin(a.socket, a.token)
    num_path = f"/api/v1/numbers/{quote(NUMBER, safe='')}"
    int_path = f"/api/v1/integrations/{quote(integration, safe='')}"
    requests = {
        "import": ("POST", "/api/v1/numbers", {"sender_id": NUMBER, "type": "local", "country": "US",
                                               "integration_id": integration, "queue": QUEUE}),
        "delete": ("DELETE", num_path, None),
        "deactivate": ("PATCH", int_path, {"status": "inactive"}),
        "activate": ("PATCH", int_path, {"status": "active"}),
    }
    times = {k: [] for k in KINDS}
    inactive = False
    try:
        status, raw, _ = admin.call("DELETE", num_path)  # left by an earlier run?
        if status != 404:
            check("initial delete of " + NUMBER, status, raw)
        time.sleep(PAUSE)
        for r in range(a.rounds):
            for kind in KINDS:
                method, path, body = requests[kind]
                status, raw, secs = admin.call(method, path, body)
                if kind == "deactivate":
                    inactive = True
                check(f"round {r + 1} {kind} ({method} {path})", status, raw)
                if kind == "activate":
                    inactive = False
                times[kind].append(secs)
                time.sleep(PAUSE)
    except (RuntimeError, OSError, http.client.HTTPException) as e:
        if inactive:
            try:
                st, raw, _ = admin.call("PATCH", int_path, {"status": "active"})
                print(f"after the failure, re-activation answered HTTP {st}", file=sys.stderr)
            except Exception as e2:  # report, but the first error is the one that matters
                print(f"after the failure, re-activation failed too: {e2}", file=sys.stderr)
        fail(f"aborted: {e}")

    result = {"rounds": a.rounds, "integration_id": integration, "pause_ms": PAUSE * 1000,
              "connections_opened": admin.connects, "changes": {}}
    print(f"{'change':<11} {'median ms':>10} {'p90 ms':>10} {'min ms':>10} {'max ms':>10} {'count':>6}")
    for kind in KINDS:
        s = summary(times[kind])
        result["changes"][kind] = s
        print(f"{kind:<11} {s['median_ms']:10.2f} {s['p90_ms']:10.2f} {s['min_ms']:10.2f} "
              f"{s['max_ms']:10.2f} {s['count']:6d}")
    if admin.connects != 1:
        print(f"note: {admin.connects} connections were opened (the server closed keep-alive); "
              "those round trips include a connect", file=sys.stderr)

    if a.pid is not None:
        rss = vm_rss(a.pid)
        status, raw, _ = admin.call("GET", int_path)
        check("GET " + int_path, status, raw)
        try:
            field, numbers = number_count(json.loads(raw))
        except ValueError:
            field, numbers = None, None
        source = f"GET {int_path} field {field}"
        if numbers is None:
            numbers, source = len(plan.get("numbers", [])), f"len(numbers) of {a.plan}"
        result.update({"pid": a.pid, "vm_rss_bytes": rss, "numbers": numbers, "numbers_source": source})
        print(f"VmRSS of pid {a.pid}: {rss} bytes ({rss / 2**20:.1f} MiB); numbers: {numbers} ({source})")
        if numbers:
            if a.empty_rss is not None:
                per = (rss - a.empty_rss) / numbers
                result.update({"empty_rss_bytes": a.empty_rss, "rss_bytes_per_number": per,
                               "rss_per_number_kind": "(VmRSS - empty_rss) / numbers"})
                print(f"RSS per number: ({rss} - {a.empty_rss}) / {numbers} = {per:.1f} bytes")
            else:
                per = rss / numbers
                result.update({"rss_bytes_per_number": per, "rss_per_number_kind": "plain VmRSS / numbers"})
                print(f"RSS per number: {per:.1f} bytes (plain ratio VmRSS / numbers, no --empty-rss baseline)")
    admin.conn.close()

    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
