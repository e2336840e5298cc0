// A routing endpoint for sms-ingress deliveries (docs/DELIVERY.md), in Node.js.
//
// Verifies each delivery with the Standard Webhooks library and processes each
// webhook-id once (a redelivery after a crash or a lost 2xx is answered 204 and skipped).
// Run:
//   npm install standardwebhooks
//   node docs/examples/receiver.mjs ROUTE.whsec 127.0.0.1:8601
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { Webhook } from "standardwebhooks";

const [secretFile, listen = "127.0.0.1:8601"] = process.argv.slice(2);
// The first line is the current secret; during a rotation sms-ingress signs with both.
const wh = new Webhook(readFileSync(secretFile, "utf8").split("\n")[0].trim());
const seen = new Set(); // use a durable store (a unique key in your database) in production

createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8"); // verify the exact bytes sent
    let msg;
    try {
      msg = wh.verify(body, req.headers);
    } catch (e) {
      console.log(`rejected: ${e.message}`);
      res.writeHead(401).end();
      return;
    }
    const id = req.headers["webhook-id"];
    if (!seen.has(id)) {
      seen.add(id);
      const customer = msg.kind === "inbound" ? msg.from : msg.to;
      console.log(JSON.stringify({ webhook_id: id, offset: msg.offset, kind: msg.kind,
        conversation: [msg.number, customer], text: msg.params?.Body ?? null }));
    }
    res.writeHead(204).end(); // any 2xx: sms-ingress moves the cursor on
  });
}).listen(Number(listen.split(":")[1]), listen.split(":")[0]);
