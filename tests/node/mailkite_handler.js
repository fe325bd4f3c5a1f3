// A MailKite inbound-email handler written the way MailKite's docs show one, run unchanged against
// agentmx: express with the raw body, the x-mailkite-signature check done by hand with node:crypto
// (t in ms, a 5-minute window, a constant-time compare), then a reply through POST <base>/v1/send
// from the address the mail was sent to, threaded on the event, and reply_ok's body as the answer.
//
// Environment: MAILKITE_WEBHOOK_SECRET (the whsec_ secret, used whole as the HMAC key),
// MAILKITE_API_KEY, MAILKITE_BASE_URL (agentmx serve), PORT (0: any). Prints "listening <port>".
const crypto = require("node:crypto");
const express = require("express");

const SECRET = process.env.MAILKITE_WEBHOOK_SECRET;
const API_KEY = process.env.MAILKITE_API_KEY;
const BASE = (process.env.MAILKITE_BASE_URL || "https://api.mailkite.dev").replace(/\/$/, "");
const TOLERANCE_MS = 5 * 60 * 1000;

function verified(header, raw) {
  if (typeof header !== "string") return false;
  const parts = {};
  for (const piece of header.split(",")) {
    const at = piece.indexOf("=");
    if (at > 0) parts[piece.slice(0, at).trim()] = piece.slice(at + 1).trim();
  }
  const t = Number(parts.t);
  if (!Number.isFinite(t) || !parts.v1 || Math.abs(Date.now() - t) > TOLERANCE_MS) return false;
  const expected = crypto.createHmac("sha256", SECRET).update(`${parts.t}.`).update(raw).digest("hex");
  const given = Buffer.from(parts.v1, "utf8");
  const wanted = Buffer.from(expected, "utf8");
  return given.length === wanted.length && crypto.timingSafeEqual(given, wanted);
}

const app = express();
app.post("/hooks/mailkite", express.raw({ type: "application/json" }), async (req, res) => {
  if (!verified(req.headers["x-mailkite-signature"], req.body)) {
    console.log("signature: refused");
    return res.sendStatus(401);
  }
  console.log("signature: ok");
  const event = JSON.parse(req.body.toString("utf8"));
  if (event.type !== "email.received") return res.type("application/json").send('{"status":"ok"}');
  const answer = await fetch(`${BASE}/v1/send`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({
      from: event.to[0].address,
      to: event.from.address,
      subject: `Re: ${event.subject}`,
      text: `Thanks, we got your message (${event.id}).`,
      inReplyTo: event.id,
    }),
  });
  const sent = await answer.json();
  console.log(`send: ${answer.status} ${JSON.stringify(sent)}`);
  if (!answer.ok) return res.sendStatus(500);
  res.status(200).type("application/json").send('{"status":"ok"}');   // mailkite reply_ok()
});

const server = app.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
