"""Control-plane changes at a fixed period over one keep-alive admin connection.

Usage: python3 loadtest/scripts/patcher.py SOCKET TOKEN INTEGRATION_ID PERIOD_MS FLAG OUT
Each change is a PATCH of the integration's notes (one accepted change, one snapshot
swap), sent at start + k * PERIOD_MS while the file FLAG exists; each line of OUT is the
HTTP status and the change's round-trip seconds. One process and one connection, so the
measurement does not add a process start per change to the machine under test.
"""
import http.client
import json
import os
import socket
import sys
import time


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("admin")
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def main():
    sock, token, integration, period_ms, flag, out = sys.argv[1:7]
    period = int(period_ms) / 1000
    conn = UnixConnection(sock)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    start, k = time.monotonic(), 0
    with open(out, "a") as log:
        while os.path.exists(flag):
            k += 1
            body = json.dumps({"notes": f"swap {k}"})
            t = time.monotonic()
            conn.request("PATCH", f"/api/v1/integrations/{integration}", body, headers)
            resp = conn.getresponse()
            resp.read()
            log.write(f"{resp.status} {time.monotonic() - t:.6f}\n")
            time.sleep(max(0.0, start + k * period - time.monotonic()))


if __name__ == "__main__":
    main()
