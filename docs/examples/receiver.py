#!/usr/bin/env python3
"""A routing endpoint for sms-ingress deliveries (docs/DELIVERY.md), in Python.

Verifies each delivery with the Standard Webhooks library, processes each webhook-id
once (a redelivery after a crash or a lost 2xx is answered 204 and skipped), and keeps
the last offset per conversation to show the order. Run:

    pip install standardwebhooks
    python3 docs/examples/receiver.py --secret-file ROUTE.whsec --listen 127.0.0.1:8600
"""
import argparse
import json
import sqlite3
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--listen", default="127.0.0.1:8600")
    ap.add_argument("--db", default=":memory:", help="sqlite file of processed webhook-ids")
    args = ap.parse_args()
    # The first line is the current secret; sms-ingress signs with both lines during a
    # rotation, so verifying with the current one is enough.
    secret = open(args.secret_file).read().splitlines()[0].strip()
    wh = Webhook(secret)
    db = sqlite3.connect(args.db, check_same_thread=False, isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS seen (webhook_id TEXT PRIMARY KEY)")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                msg = wh.verify(body, dict(self.headers))  # raises on a bad signature or stale timestamp
            except WebhookVerificationError as e:
                self.send_response(401)
                self.end_headers()
                print(f"rejected: {e}", flush=True)
                return
            # Idempotency: the same webhook-id is the same Twilio delivery.
            first = db.execute(
                "INSERT OR IGNORE INTO seen VALUES (?)", (self.headers["webhook-id"],)
            ).rowcount == 1
            if first:
                print(json.dumps({
                    "webhook_id": self.headers["webhook-id"],
                    "offset": msg["offset"],
                    "kind": msg["kind"],
                    "conversation": [msg["number"], msg["from"] if msg["kind"] == "inbound" else msg["to"]],
                    "text": msg["params"].get("Body") if msg["params"] else None,
                }), flush=True)
            self.send_response(204)  # any 2xx: sms-ingress moves the cursor on
            self.end_headers()

        def log_message(self, *_):
            pass

    host, port = args.listen.rsplit(":", 1)
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
