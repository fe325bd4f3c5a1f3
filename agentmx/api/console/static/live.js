// Live inbox: new messages appear at the top as they arrive (the page works without this).
// Reads /console/live (server-sent events, the session cookie) and builds each row with
// textContent: nothing from a message becomes HTML.
(function () {
  "use strict";
  var status = document.getElementById("live-status");
  var table = document.getElementById("messages");
  if (!status || !table || !window.EventSource || !status.dataset.live) { return; }
  var body = table.tBodies[0];
  var url = status.dataset.live + "?after=" + encodeURIComponent(status.dataset.after || "");
  var source = new EventSource(url);
  function cell(text, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    td.textContent = text;
    return td;
  }
  function verdict(word) {
    var td = document.createElement("td"), span = document.createElement("span");
    word = String(word || "none");
    span.className = "verdict " + word.replace(/[^a-z]/g, "");
    span.textContent = word;
    td.appendChild(span);
    return td;
  }
  source.onopen = function () { status.textContent = "Live: new messages appear here as they arrive."; };
  source.onerror = function () { status.textContent = "Live updates paused; reconnecting…"; };
  source.addEventListener("email.received", function (e) {
    var m;
    try { m = JSON.parse(e.data); } catch (err) { return; }
    if (!m || typeof m.id !== "string" || document.querySelector('tr[data-id="' + m.id.replace(/[^A-Za-z0-9_:]/g, "") + '"]')) { return; }
    var empty = body.querySelector("tr.empty");
    if (empty) { empty.remove(); }
    var tr = document.createElement("tr");
    tr.dataset.id = m.id;
    tr.className = "unread fresh";
    var auth = m.auth || {};
    var inbox = m.inbox || {};
    tr.appendChild(cell(String(inbox.receivedAt || m.createdAt || "").replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC"), "when"));
    tr.appendChild(cell((m.envelope && m.envelope.mailFrom) || (m.from && m.from.address) || "<>"));
    tr.appendChild(cell(m.recipient || ""));
    var subj = document.createElement("td"), a = document.createElement("a");
    a.href = "/console/messages/" + encodeURIComponent(m.id);
    a.textContent = m.subject || "(no subject)";
    subj.appendChild(a);
    tr.appendChild(subj);
    tr.appendChild(verdict(auth.dmarc));
    tr.appendChild(verdict(auth.dkim));
    tr.appendChild(verdict(auth.spf));
    tr.appendChild(cell(inbox.state || ""));
    body.insertBefore(tr, body.firstChild);
    status.textContent = "New message from " + ((m.from && m.from.address) || "unknown sender") + ".";
  });
}());
