"""The approvals inbox: one self-contained HTML page (inline CSS and vanilla JS, no external assets).

The page holds no data and is served without auth at `GET /` and `GET /inbox`. An approver signs in
with their personal approver credential (`apv_...`, issued by an operator with
`agentctl approvers add NAME`), kept in `sessionStorage` and sent only as
`Authorization: Bearer ...`, never in a URL. Who is signed in comes from the server, never from the
page: `GET /approvals` answers `signed_in_as` (null for the operator token, which may only look) and
a `may_decide` per row; only rows the approver may decide get a comment box and Approve/Reject.
`POST /inbox/decide` carries the row's `approval_hash` and no approver (the server records the
credential's owner). A 503 `outcome_unknown` is reported as "may have been recorded", so the
approver refreshes before deciding again. Every value from the server is inserted with
`textContent`, and a Content-Security-Policy allows only this page's own script and style (by hash)
and same-origin `fetch`, so an injected `<script>` or `onerror=` in a summary cannot run.
"""

from __future__ import annotations

from functools import cache

from starlette.requests import Request
from starlette.responses import HTMLResponse

from app.console.page import PAGE_HEADERS, csp_hash, page_html

#: How often the page reloads the list while it is visible, in milliseconds.
AUTO_REFRESH_MS = 10_000

#: Headers to send with the page (the humans' pages share them).
INBOX_PAGE_HEADERS = PAGE_HEADERS

_STYLE = """
:root {
  color-scheme: light;
  --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --bg: #ffffff; --soft: #f6f8fa;
  --accent: #0a58ca; --ok: #116329; --ok-bg: #dafbe1; --bad: #a40e26; --bad-bg: #ffebe9;
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body {
  margin: 0; background: var(--soft); color: var(--fg);
  font: 16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
header, main { max-width: 1200px; margin: 0 auto; padding: 0 16px; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 16px; padding-top: 16px; }
h1 { font-size: 1.5rem; margin: 0; }
header p { margin: 0; color: var(--muted); }
.card {
  background: var(--bg); border: 1px solid var(--line); border-radius: 8px; padding: 16px; margin: 16px 0;
}
.visually-hidden {
  position: absolute !important; width: 1px; height: 1px; padding: 0; margin: -1px; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; border: 0;
}
form.sign-in { display: grid; gap: 12px; max-width: 420px; }
label { font-weight: 600; display: block; margin-bottom: 4px; }
input, textarea {
  font: inherit; width: 100%; padding: 6px 8px; border: 1px solid #8c959f; border-radius: 6px;
  background: #fff; color: var(--fg);
}
textarea { resize: vertical; min-height: 2.4em; }
.hint { color: var(--muted); font-size: 0.875rem; margin: 0; }
button {
  font: inherit; font-weight: 600; padding: 6px 14px; border-radius: 6px; cursor: pointer;
  border: 1px solid #8c959f; background: #f3f4f6; color: var(--fg);
}
button:disabled { opacity: 0.55; cursor: progress; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
button.approve { background: var(--ok); border-color: var(--ok); color: #fff; }
button.reject { background: var(--bad); border-color: var(--bad); color: #fff; }
button.link {
  background: none; border: none; color: var(--accent); padding: 2px 0; text-decoration: underline;
}
:focus-visible { outline: 3px solid #fb8f44; outline-offset: 2px; }
.toolbar { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 16px; }
.toolbar .who { margin-right: auto; }
.updated { color: var(--muted); font-size: 0.875rem; }
.status { min-height: 1.5em; margin: 12px 0 0; padding: 0; font-weight: 600; }
.status:empty { min-height: 0; margin: 0; }
.status:not(:empty) { padding: 8px 12px; border-radius: 6px; border: 1px solid var(--line); }
.status[data-kind="success"] { background: var(--ok-bg); border-color: #4ac26b; color: var(--ok); }
.status[data-kind="error"] { background: var(--bad-bg); border-color: #ff8182; color: var(--bad); }
.status[data-kind="info"] { background: var(--soft); }
.table-wrap { overflow-x: auto; }
table { width: 100%; border-collapse: collapse; }
caption { text-align: left; font-weight: 600; padding-bottom: 8px; }
th, td { text-align: left; vertical-align: top; padding: 8px; border-bottom: 1px solid var(--line); }
th { background: var(--soft); font-size: 0.875rem; color: var(--muted); }
tbody.approval:hover > tr.main { background: #fbfcfd; }
td.summary { min-width: 12em; overflow-wrap: anywhere; }
td.decision { min-width: 12.5em; }
.actions { display: flex; gap: 8px; margin-top: 6px; }
.tag {
  display: inline-block; font-size: 0.75rem; font-weight: 600; padding: 0 6px; border-radius: 10px;
  border: 1px solid var(--line); color: var(--muted); margin-left: 4px;
}
.tag.overdue { color: var(--bad); border-color: #ff8182; }
tr.details > td { background: var(--soft); }
pre {
  margin: 0; max-height: 24em; overflow: auto; font-size: 0.8125rem; white-space: pre-wrap;
  overflow-wrap: anywhere;
}
code { font-size: 0.9em; }
td.task code { white-space: nowrap; }
a.review { font-size: 0.875rem; }
.empty { color: var(--muted); font-style: italic; margin: 8px 0; }
.not-yours { color: var(--muted); font-style: italic; }
@media (max-width: 960px) {
  table, thead, tbody, tr, th, td { display: block; }
  thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
  tbody.approval { border: 1px solid var(--line); border-radius: 8px; margin-bottom: 12px; }
  td { border: none; padding: 4px 10px; }
  td::before {
    content: attr(data-label); display: block; font-size: 0.75rem; font-weight: 600; color: var(--muted);
  }
  tr.details > td::before { content: none; }
  caption { display: block; }
  td.summary, td.decision { min-width: 0; }
  td.task code { white-space: normal; overflow-wrap: anywhere; }
}
"""

_SCRIPT = """
"use strict";
(function () {
  var TOKEN_KEY = "approvals.approverToken";
  // What earlier versions of this page kept: a shared operator token and a typed name.
  var LEGACY_KEYS = ["approvals.operatorToken", "approvals.operatorName"];
  var REFRESH_MS = __REFRESH_MS__;
  var UNAUTHORIZED = "Your approver credential was not accepted (401). Sign in again.";
  var $ = function (id) { return document.getElementById(id); };
  var signInSection = $("sign-in-section");
  var form = $("sign-in-form");
  var tokenInput = $("token");
  var inbox = $("inbox");
  var who = $("who");
  var updated = $("updated");
  var table = $("approvals-table");
  var empty = $("empty-state");
  var status = $("status");
  var rows = new Map();
  var loadSeq = 0;
  var timer = null;
  var idCounter = 0;
  // Who the server says the credential belongs to: a name, null for the operator (read-only),
  // undefined until the first list has been loaded.
  var signedInAs;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }
  function str(value) { return value === undefined || value === null ? "" : String(value); }
  function setStatus(text, kind, source) {
    status.textContent = text;
    status.dataset.kind = kind || "info";
    status.dataset.source = source || "";
  }
  function errorMessage(data, res) {
    if (data && data.error && typeof data.error.message === "string" && data.error.message) {
      return data.error.message;
    }
    return "the server answered HTTP " + res.status + (res.statusText ? " " + res.statusText : "") + ".";
  }
  async function readJson(res) {
    try { return await res.json(); } catch (e) { return null; }
  }
  function token() { return sessionStorage.getItem(TOKEN_KEY); }
  function mayDecide(a) { return typeof signedInAs === "string" && a.may_decide === true; }

  function showSignIn(message) {
    if (timer !== null) { clearInterval(timer); timer = null; }
    loadSeq++;
    rows.forEach(function (entry) { entry.body.remove(); });
    rows.clear();
    signedInAs = undefined;
    who.textContent = "";
    inbox.hidden = true;
    signInSection.hidden = false;
    tokenInput.value = "";
    if (message) { setStatus(message, "error", "auth"); }
    tokenInput.focus();
  }
  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(message);
  }
  function showInbox() {
    signInSection.hidden = true;
    inbox.hidden = false;
    who.textContent = "\\u2026";
    empty.hidden = true;
    table.hidden = true;
    updated.textContent = "Loading\\u2026";
    if (timer === null) {
      timer = setInterval(function () { if (!document.hidden) { load(); } }, REFRESH_MS);
    }
    load();
  }

  function formatDeadline(iso) {
    var when = new Date(iso);
    if (!iso || isNaN(when.getTime())) { return { text: str(iso), overdue: false }; }
    var text = when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
    return { text: text, overdue: when.getTime() < Date.now() };
  }
  function cell(label, cls) {
    var td = el("td", { "data-label": label });
    if (cls) { td.className = cls; }
    return td;
  }

  function buildRow(a, comment) {
    var n = ++idCounter;
    var body = el("tbody", { "class": "approval" });
    var tr = el("tr", { "class": "main", "data-testid": "approval-row" });
    var entry = { body: body, tr: tr, approval: a };
    entry.task = el("code");
    entry.agent = el("span");
    entry.summary = el("span");
    entry.approvers = el("span");
    entry.deadline = el("time");
    entry.overdue = el("span", { "class": "tag overdue" }, "overdue");
    entry.reminded = el("span", { "class": "tag" }, "reminder sent");
    // The console's page of the task: the approval as a readable form, its receipt, its history.
    entry.review = el("a", { "class": "review", "data-testid": "review-link" }, "Review in the console");
    var taskCell = cell("Task", "task"); taskCell.append(entry.task, el("br"), entry.review);
    var agentCell = cell("Agent"); agentCell.append(entry.agent);
    var summaryCell = cell("Summary", "summary"); summaryCell.append(entry.summary);
    var approversCell = cell("Approvers"); approversCell.append(entry.approvers);
    var deadlineCell = cell("Deadline");
    deadlineCell.append(entry.deadline, entry.overdue, entry.reminded);

    var detailsId = "details-" + n;
    var detailsCell = cell("Details");
    entry.toggle = el("button", {
      type: "button", "class": "link", "aria-expanded": "false", "aria-controls": detailsId,
      "data-testid": "details-toggle"
    }, "Show details");
    detailsCell.append(entry.toggle);

    var decisionCell = cell("Decision", "decision");
    entry.mayDecide = mayDecide(a);
    entry.comment = null;
    // A comment typed before the row became read-only comes back if it becomes decidable again.
    entry.keptComment = comment || "";
    if (entry.mayDecide) {
      var commentId = "comment-" + n;
      entry.commentLabel = el("label", { "for": commentId, "class": "visually-hidden" });
      entry.comment = el("textarea", {
        id: commentId, rows: "2", placeholder: "Comment (optional)", "data-testid": "comment-input"
      });
      entry.comment.value = entry.keptComment;
      var actions = el("div", { "class": "actions" });
      entry.approve = el("button", { type: "button", "class": "approve", "data-testid": "approve-button" },
        "Approve");
      entry.reject = el("button", { type: "button", "class": "reject", "data-testid": "reject-button" },
        "Reject");
      actions.append(entry.approve, entry.reject);
      decisionCell.append(entry.commentLabel, entry.comment, actions);
      entry.approve.addEventListener("click", function () { decide(entry, "approve"); });
      entry.reject.addEventListener("click", function () { decide(entry, "reject"); });
    } else {
      decisionCell.append(el("span", { "class": "not-yours", "data-testid": "not-yours" },
        "Not yours to decide"));
    }
    tr.append(taskCell, agentCell, summaryCell, approversCell, deadlineCell, detailsCell, decisionCell);

    entry.detailsRow = el("tr", { "class": "details", id: detailsId, "data-testid": "details-row" });
    entry.detailsRow.hidden = true;
    var detailsTd = el("td", { colspan: "7" });
    entry.json = el("pre", { "data-testid": "details-json" });
    detailsTd.append(entry.json);
    entry.detailsRow.append(detailsTd);
    body.append(tr, entry.detailsRow);

    entry.toggle.addEventListener("click", function () {
      var open = entry.detailsRow.hidden;
      entry.detailsRow.hidden = !open;
      entry.toggle.setAttribute("aria-expanded", open ? "true" : "false");
      entry.toggle.textContent = open ? "Hide details" : "Show details";
    });
    updateRow(entry, a);
    return entry;
  }

  function updateRow(entry, a) {
    var task = str(a.task_id);
    entry.approval = a;
    entry.tr.dataset.taskId = task;
    entry.tr.dataset.agent = str(a.agent);
    entry.task.textContent = task;
    entry.review.href = "/console#/task/" + encodeURIComponent(str(a.agent)) + "/" + encodeURIComponent(task);
    entry.agent.textContent = str(a.agent);
    entry.summary.textContent = str(a.summary);
    entry.approvers.textContent = Array.isArray(a.approvers)
      ? a.approvers.map(str).join(", ") : str(a.approvers);
    var deadline = formatDeadline(a.deadline);
    entry.deadline.textContent = deadline.text;
    entry.deadline.setAttribute("datetime", str(a.deadline));
    entry.deadline.title = "Deadline " + str(a.deadline) + "; requested " + str(a.requested_at);
    entry.overdue.hidden = !deadline.overdue;
    entry.reminded.hidden = a.reminded !== true;
    if (entry.mayDecide) {
      entry.commentLabel.textContent = "Comment for task " + task;
      entry.approve.setAttribute("aria-label", "Approve task " + task);
      entry.reject.setAttribute("aria-label", "Reject task " + task);
    }
    entry.toggle.setAttribute("aria-label", "Details of task " + task);
    var json;
    try { json = JSON.stringify(a.details === undefined ? null : a.details, null, 2); }
    catch (e) { json = str(a.details); }
    entry.json.textContent = json;
  }

  function render(approvals) {
    var seen = new Set();
    var position = 0;
    approvals.forEach(function (a) {
      if (!a || typeof a !== "object") { return; }
      var key = JSON.stringify([str(a.agent), str(a.task_id)]);
      if (seen.has(key)) { return; }
      seen.add(key);
      var entry = rows.get(key);
      var changed = entry && (entry.approval.approval_hash !== a.approval_hash ||
        entry.mayDecide !== mayDecide(a));
      if (changed) {
        // What is waiting, or whether it is ours to decide, changed: a new row, so the approver
        // sees it afresh (the comment is kept).
        var comment = entry.comment ? entry.comment.value : entry.keptComment;
        entry.body.remove();
        entry = buildRow(a, comment);
        rows.set(key, entry);
      } else if (entry) {
        updateRow(entry, a);
      } else {
        entry = buildRow(a, "");
        rows.set(key, entry);
      }
      // Move only what is out of place, so a focused comment box keeps focus across refreshes.
      var bodies = table.tBodies;
      if (bodies[position] !== entry.body) { table.insertBefore(entry.body, bodies[position] || null); }
      position++;
    });
    rows.forEach(function (entry, key) {
      if (!seen.has(key)) { entry.body.remove(); rows.delete(key); }
    });
    table.hidden = rows.size === 0;
    empty.hidden = rows.size !== 0;
  }

  async function load() {
    var bearer = token();
    if (!bearer) { showSignIn(""); return; }
    var seq = ++loadSeq;
    var res, data;
    try {
      res = await fetch("/approvals", {
        headers: { "Authorization": "Bearer " + bearer, "Accept": "application/json" },
        cache: "no-store"
      });
      data = await readJson(res);
    } catch (e) {
      if (seq === loadSeq) {
        setStatus("Network error: the approvals service cannot be reached. The list may be out of date; " +
          "it retries every " + (REFRESH_MS / 1000) + " s, or press Refresh.", "error", "load");
      }
      return;
    }
    if (seq !== loadSeq) { return; }
    if (res.status === 401) {
      signOut(UNAUTHORIZED);
      return;
    }
    if (!res.ok || !data || !Array.isArray(data.approvals)) {
      setStatus("Could not load the approvals: " + errorMessage(data, res), "error", "load");
      return;
    }
    // Anything but a name means no approver identity: read-only, whatever the rows say.
    signedInAs = typeof data.signed_in_as === "string" && data.signed_in_as ? data.signed_in_as : null;
    who.textContent = signedInAs === null ? "operator (read-only)" : signedInAs;
    render(data.approvals);
    updated.textContent = "Updated " + new Date().toLocaleTimeString();
    if (status.dataset.source === "load" || status.dataset.source === "auth") { setStatus("", "info", ""); }
  }

  async function decide(entry, decision) {
    var bearer = token();
    var name = signedInAs;
    if (!bearer) { signOut("Sign in again to record a decision."); return; }
    if (typeof name !== "string") { return; }
    var a = entry.approval;
    var task = str(a.task_id);
    // No approver here: the server records the owner of the credential.
    var body = {
      agent: a.agent, task_id: a.task_id, decision: decision,
      comment: entry.comment.value, approval_hash: a.approval_hash
    };
    entry.approve.disabled = true;
    entry.reject.disabled = true;
    setStatus("Sending the decision for task " + task + "\\u2026", "info", "decide");
    var res, data;
    try {
      res = await fetch("/inbox/decide", {
        method: "POST",
        headers: {
          "Authorization": "Bearer " + bearer, "Content-Type": "application/json",
          "Accept": "application/json"
        },
        body: JSON.stringify(body),
        cache: "no-store"
      });
      data = await readJson(res);
    } catch (e) {
      entry.approve.disabled = false;
      entry.reject.disabled = false;
      setStatus("Network error: the decision for task " + task + " may or may not have been recorded. " +
        "Press Refresh to check before trying again.", "error", "decide");
      return;
    }
    entry.approve.disabled = false;
    entry.reject.disabled = false;
    if (res.status === 401) {
      signOut(UNAUTHORIZED);
      return;
    }
    if (res.status === 503 && data && data.error && data.error.code === "outcome_unknown") {
      var why = errorMessage(data, res);
      setStatus("The decision for task " + task + " may have been recorded, or may not: " + why +
        (/[.!?]$/.test(why) ? "" : ".") + " Press Refresh to check before trying again.", "error", "decide");
    } else if (res.ok) {
      var verb = decision === "approve" ? "Approved" : "Rejected";
      var detail = data && typeof data.message === "string" && data.message
        ? data.message : str(data && data.status) || "recorded";
      setStatus(verb + " task " + task + " (" + str(a.agent) + ") as " + name + ": " + detail + ".",
        "success", "decide");
    } else {
      setStatus("The decision for task " + task + " was not recorded: " + errorMessage(data, res),
        "error", "decide");
    }
    await load();
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var bearer = tokenInput.value.trim();
    if (!bearer) {
      setStatus("Enter your approver credential.", "error", "auth");
      tokenInput.focus();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, bearer);
    tokenInput.value = "";
    setStatus("", "info", "");
    showInbox();
  });
  $("refresh").addEventListener("click", function () { load(); });
  $("sign-out").addEventListener("click", function () {
    signOut("");
    setStatus("Signed out.", "info", "");
  });
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && timer !== null) { load(); }
  });

  LEGACY_KEYS.forEach(function (key) { sessionStorage.removeItem(key); });
  if (token()) { showInbox(); } else { showSignIn(""); }
})();
"""

_BODY = """
<header>
  <h1>Approvals inbox</h1>
  <p>Decisions that agents are waiting for.</p>
</header>
<main>
  <section id="sign-in-section" class="card" aria-labelledby="sign-in-title">
    <h2 id="sign-in-title">Sign in</h2>
    <form id="sign-in-form" class="sign-in" method="post" autocomplete="off" novalidate>
      <div>
        <label for="token">Your approver credential</label>
        <input id="token" type="password" autocomplete="off" spellcheck="false" required
               placeholder="apv_&hellip;" data-testid="token-input" aria-describedby="token-hint">
        <p id="token-hint" class="hint">Your personal approver credential, issued to you by an operator
          (<code>agentctl approvers add NAME</code>). Your decisions are recorded under the name it
          belongs to. Kept in this browser tab only (session storage).</p>
      </div>
      <div><button type="submit" class="primary" data-testid="sign-in">Sign in</button></div>
    </form>
  </section>
  <p id="status" class="status" role="status" aria-live="polite" aria-atomic="true"
     data-testid="status-message"></p>
  <section id="inbox" class="card" aria-labelledby="inbox-title" hidden>
    <div class="toolbar">
      <h2 id="inbox-title" class="visually-hidden">Pending approvals</h2>
      <span class="who">Signed in as <strong id="who"></strong></span>
      <span id="updated" class="updated"></span>
      <button id="refresh" type="button" data-testid="refresh">Refresh</button>
      <button id="sign-out" type="button" data-testid="sign-out">Sign out</button>
    </div>
    <p id="empty-state" class="empty" data-testid="empty-state" hidden>No approvals are waiting.</p>
    <div class="table-wrap">
      <table id="approvals-table" data-testid="approvals-table" hidden>
        <caption>Pending approvals</caption>
        <thead>
          <tr>
            <th scope="col">Task</th><th scope="col">Agent</th><th scope="col">Summary</th>
            <th scope="col">Approvers</th><th scope="col">Deadline</th><th scope="col">Details</th>
            <th scope="col">Decision</th>
          </tr>
        </thead>
      </table>
    </div>
  </section>
</main>
"""


@cache
def inbox_page_html() -> str:
    """The whole inbox page; it embeds no data, so it is the same for everyone."""
    script = _SCRIPT.replace("__REFRESH_MS__", str(AUTO_REFRESH_MS))
    csp = [
        "default-src 'none'",
        f"script-src {csp_hash(script)}",
        f"style-src {csp_hash(_STYLE)}",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
    ]
    return page_html("Approvals inbox", csp, _STYLE, _BODY, script)


async def inbox_page(request: Request) -> HTMLResponse:
    """Starlette endpoint for `GET /` and `GET /inbox` (no auth: the page holds no data)."""
    return HTMLResponse(inbox_page_html(), headers=dict(INBOX_PAGE_HEADERS))
