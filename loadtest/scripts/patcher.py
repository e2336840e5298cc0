"""Control-plane changes at a fixed period over one keep-alive admin connection.

Usage: python3 loadtest/scripts/patcher.py SOCKET TOKEN INTEGRATION_ID PERIOD_MS FLAG OUT [MODE [NUMBER QUEUE]]
MODE `notes` (default): each change is a PATCH of the integration's notes. MODE `number`:
changes alternate between importing NUMBER on QUEUE and deleting it again (use a number
the load does not send to: while it is deleted its webhooks are dropped with a 200). Either way
each is one accepted change and one snapshot swap, sent at start + k * PERIOD_MS while
the file FLAG exists; each line of OUT is the HTTP status and the change's round-trip
seconds. One process and one connection, so the measurement does not add a process
start per change to the machine under test.
"""
import http.client
import json
import os
import socket
import sys
import time
from urllib.parse import quote


class UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over the admin Unix socket; http.client keeps it alive between requests."""

    def __init__(self, path, timeout=None):
        super().__init__("admin", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def main():
    sock, token, integration, period_ms, flag, out = sys.argv[1:7]
    mode = sys.argv[7] if len(sys.argv) > 7 else "notes"
    number, queue = (sys.argv[8], sys.argv[9]) if mode == "number" else (None, None)
    period = int(period_ms) / 1000
    conn = UnixConnection(sock)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if mode == "number":  # left imported by an earlier run: start from "absent"
        conn.request("DELETE", f"/api/v1/numbers/{quote(number)}", None, headers)
        conn.getresponse().read()
    start, k = time.monotonic(), 0
    with open(out, "a") as log:
        while os.path.exists(flag):
            k += 1
            if mode == "notes":
                method, path = "PATCH", f"/api/v1/integrations/{integration}"
                body = json.dumps({"notes": f"swap {k}"})
            elif k % 2:
                method, path = "POST", "/api/v1/numbers"
                body = json.dumps({"sender_id": number, "type": "local", "country": "US",
                                   "integration_id": integration, "queue": queue})
            else:
                method, path, body = "DELETE", f"/api/v1/numbers/{quote(number)}", None
            t = time.monotonic()
            conn.request(method, path, body, headers)
            resp = conn.getresponse()
            resp.read()
            log.write(f"{resp.status} {time.monotonic() - t:.6f}\n")
            time.sleep(max(0.0, start + k * period - time.monotonic()))


if __name__ == "__main__":
    main()
