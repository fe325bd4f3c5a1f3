// Verify one Standard Webhooks request with the npm `standardwebhooks` package, unchanged.
// stdin: {"secret": "whsec_...", "headers": {...}, "body": "<exact body>"}; prints "ok" or the error.
const { Webhook } = require("standardwebhooks");
let input = "";
process.stdin.on("data", (c) => (input += c));
process.stdin.on("end", () => {
  const { secret, headers, body } = JSON.parse(input);
  try {
    new Webhook(secret).verify(body, headers);
    console.log("ok");
  } catch (e) {
    console.log("error: " + e.message);
    process.exitCode = 1;
  }
});
