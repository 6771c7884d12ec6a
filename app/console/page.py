"""The operator console: one self-contained page (inline CSS and vanilla JS; the diagram library
from the npm package, served by this surface, never a CDN).

The page holds no data and is served without auth at `GET /console`. Sign-in is the inbox's: an
approver's personal credential (or the operator token, read-only) kept in `sessionStorage` for
this origin and sent only as `Authorization: Bearer ...`. Views are addressed by the URL's
fragment (`#/`, `#/task/AGENT/TASK_ID`), so a task's page can be linked and reloaded.

Every value from the server is inserted with `textContent`; the one exception is the diagram's
SVG, which Mermaid renders from the machine's declaration (code, not data) in its strict mode.
The Content-Security-Policy allows this page's own script (by hash), scripts from this origin
(the library), same-origin `fetch`, and images from this origin or blobs (the receipt). Styles
may be inline because Mermaid styles its SVG that way; no data is ever inserted as markup.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from types import MappingProxyType

from starlette.requests import Request
from starlette.responses import HTMLResponse

#: Headers to send with the humans' pages (this one and the inbox). `frame-ancestors` only works
#: as a header, not in the `<meta>` CSP.
PAGE_HEADERS = MappingProxyType(
    {
        "Cache-Control": "no-store",
        "Content-Security-Policy": "frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }
)

_STYLE = """
:root {
  color-scheme: light;
  --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --bg: #ffffff; --soft: #f6f8fa;
  --accent: #0a58ca; --ok: #116329; --ok-bg: #dafbe1; --bad: #a40e26; --bad-bg: #ffebe9;
  --warn: #7d4e00; --warn-bg: #fff8c5; --wait: #0550ae; --wait-bg: #ddf4ff;
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body {
  margin: 0; background: var(--soft); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
header.top { background: #24292f; color: #fff; }
header.top .bar {
  max-width: 1280px; margin: 0 auto; padding: 10px 16px; display: flex; flex-wrap: wrap;
  align-items: center; gap: 8px 20px;
}
header.top h1 { font-size: 1.15rem; margin: 0; }
header.top a { color: #fff; }
header.top nav { display: flex; gap: 14px; margin-right: auto; }
header.top .who { color: #d0d7de; }
main { max-width: 1280px; margin: 0 auto; padding: 0 16px 32px; }
.card { background: var(--bg); border: 1px solid var(--line); border-radius: 8px; padding: 16px; margin: 16px 0; }
.card > h2, .card > h3 { margin-top: 0; font-size: 1.05rem; }
label { font-weight: 600; display: block; margin-bottom: 4px; }
input, select, textarea {
  font: inherit; padding: 5px 8px; border: 1px solid #8c959f; border-radius: 6px; background: #fff; color: var(--fg);
}
textarea { width: 100%; resize: vertical; min-height: 2.4em; }
button {
  font: inherit; font-weight: 600; padding: 5px 14px; border-radius: 6px; cursor: pointer;
  border: 1px solid #8c959f; background: #f3f4f6; color: var(--fg);
}
button:disabled { opacity: 0.55; cursor: progress; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
button.approve { background: var(--ok); border-color: var(--ok); color: #fff; }
button.reject { background: var(--bad); border-color: var(--bad); color: #fff; }
:focus-visible { outline: 3px solid #fb8f44; outline-offset: 2px; }
form.filters { display: flex; flex-wrap: wrap; gap: 12px; align-items: end; margin-bottom: 12px; }
form.filters .grow { flex: 1 1 16em; }
form.filters input[type=search] { width: 100%; }
.status { margin: 12px 0 0; font-weight: 600; }
.status:empty { display: none; }
.status:not(:empty) { padding: 8px 12px; border-radius: 6px; border: 1px solid var(--line); background: var(--bg); }
.status[data-kind="success"] { background: var(--ok-bg); border-color: #4ac26b; color: var(--ok); }
.status[data-kind="error"] { background: var(--bad-bg); border-color: #ff8182; color: var(--bad); }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid var(--line); }
th { background: var(--soft); font-size: 0.8125rem; color: var(--muted); }
td code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.85em; }
.wrap { overflow-wrap: anywhere; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; }
.badge {
  display: inline-block; font-size: 0.75rem; font-weight: 700; padding: 1px 8px; border-radius: 10px;
  border: 1px solid var(--line); text-transform: uppercase; letter-spacing: 0.02em;
}
.badge.running { background: var(--soft); }
.badge.waiting { background: var(--wait-bg); color: var(--wait); border-color: #54aeff; }
.badge.stalled { background: var(--warn-bg); color: var(--warn); border-color: #d4a72c; }
.badge.failed { background: var(--bad-bg); color: var(--bad); border-color: #ff8182; }
.badge.complete { background: var(--ok-bg); color: var(--ok); border-color: #4ac26b; }
.banner { padding: 10px 12px; border-radius: 6px; margin: 12px 0; border: 1px solid var(--line); }
.banner.failed { background: var(--bad-bg); border-color: #ff8182; }
.banner.stalled { background: var(--warn-bg); border-color: #d4a72c; }
.pager { display: flex; gap: 12px; align-items: center; margin-top: 12px; }
.muted { color: var(--muted); }
.empty { color: var(--muted); font-style: italic; }
.live { font-size: 0.8125rem; color: #d0d7de; }
.live[data-on="yes"]::before { content: "\\25CF "; color: #2da44e; }
.grid2 { display: grid; grid-template-columns: minmax(0, 1.2fr) minmax(0, 1fr); gap: 16px; }
@media (max-width: 900px) { .grid2 { grid-template-columns: minmax(0, 1fr); } }
dl.kv { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 4px 12px; margin: 0; }
dl.kv dt { font-weight: 600; color: var(--muted); }
dl.kv dd { margin: 0; }
.differs { color: var(--bad); font-weight: 700; }
.tag { font-size: 0.75rem; font-weight: 700; padding: 0 6px; border-radius: 10px; border: 1px solid; }
.tag.effect { color: var(--bad); border-color: #ff8182; background: var(--bad-bg); }
.tag.read { color: var(--muted); border-color: var(--line); }
.tag.differs { border-color: #ff8182; background: var(--bad-bg); }
.receipt img { max-width: 100%; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
.diagram { overflow-x: auto; }
.diagram svg { max-width: 100%; height: auto; }
.actions { display: flex; gap: 8px; margin-top: 8px; }
dialog { border: 1px solid var(--line); border-radius: 10px; max-width: 760px; width: calc(100% - 32px); }
dialog::backdrop { background: rgba(27, 31, 36, 0.45); }
.chain-ok { color: var(--ok); font-weight: 700; }
.chain-bad { color: var(--bad); font-weight: 700; }
a.task-link { font-weight: 600; }
"""

_SCRIPT = r"""
"use strict";
(function () {
  var TOKEN_KEY = "approvals.approverToken"; // shared with the inbox (same origin)
  var $ = function (id) { return document.getElementById(id); };
  var status = $("status");
  var listView = $("list-view"), taskView = $("task-view"), signIn = $("sign-in-section");
  var who = $("who"), live = $("live");
  var signedInAs;            // a name, null for the operator, undefined before the first answer
  var route = null;          // {kind: "list"} or {kind: "task", agent, taskId}
  var current = null;        // the task detail on screen
  var listState = { agent: "", status: "", search: "", offset: 0, limit: 25 };
  var changes = null;        // the live stream's AbortController
  var reloadTimer = null;
  var diagramSeq = 0, receiptUrl = null, pendingDecision = null;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function str(v) { return v === undefined || v === null ? "" : String(v); }
  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }
  function setStatus(text, kind) { status.textContent = text; status.dataset.kind = kind || "info"; }
  function token() { return sessionStorage.getItem(TOKEN_KEY); }
  function when(iso) {
    var d = new Date(iso);
    return !iso || isNaN(d.getTime()) ? str(iso) : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
  }
  function badge(s) { return el("span", { "class": "badge " + str(s), "data-testid": "status-badge" }, s); }

  async function api(path) {
    var bearer = token();
    if (!bearer) { showSignIn(""); throw new Error("signed out"); }
    var res = await fetch(path, { headers: { "Authorization": "Bearer " + bearer, "Accept": "application/json" }, cache: "no-store" });
    var data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (res.status === 401) { signOut("Your credential was not accepted (401). Sign in again."); throw new Error("401"); }
    if (!res.ok) {
      var msg = data && data.error && data.error.message ? data.error.message : "HTTP " + res.status;
      var err = new Error(msg); err.status = res.status; throw err;
    }
    if (data && "signed_in_as" in data) {
      signedInAs = typeof data.signed_in_as === "string" && data.signed_in_as ? data.signed_in_as : null;
      who.textContent = signedInAs === null ? "operator (read-only)" : signedInAs;
    }
    return data;
  }

  // --- sign-in ---------------------------------------------------------------------------------
  function showSignIn(message) {
    stopChanges();
    listView.hidden = true; taskView.hidden = true; signIn.hidden = false;
    $("sign-out").hidden = true; who.textContent = "";
    if (message) { setStatus(message, "error"); }
    $("token").focus();
  }
  function signOut(message) { sessionStorage.removeItem(TOKEN_KEY); signedInAs = undefined; showSignIn(message); }
  $("sign-in-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var value = $("token").value.trim();
    if (!value) { setStatus("Enter your approver credential (or the operator token).", "error"); return; }
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    setStatus("", "info");
    start();
  });
  $("sign-out").addEventListener("click", function () { signOut(""); setStatus("Signed out.", "info"); });

  // --- routing ---------------------------------------------------------------------------------
  function parseRoute() {
    var hash = location.hash.replace(/^#/, "");
    var m = /^\/task\/([^/]+)\/(.+)$/.exec(hash);
    if (m) { return { kind: "task", agent: decodeURIComponent(m[1]), taskId: decodeURIComponent(m[2]) }; }
    return { kind: "list" };
  }
  function taskHref(agent, taskId) { return "#/task/" + encodeURIComponent(agent) + "/" + encodeURIComponent(taskId); }
  window.addEventListener("hashchange", function () { if (token()) { show(); } });
  function start() {
    signIn.hidden = true; $("sign-out").hidden = false;
    startChanges();
    show();
  }
  function show() {
    route = parseRoute();
    if (route.kind === "task") { listView.hidden = true; taskView.hidden = false; loadTask(); }
    else { taskView.hidden = true; listView.hidden = false; current = null; loadList(); }
  }

  // --- the task list ---------------------------------------------------------------------------
  var filters = $("filters");
  filters.addEventListener("submit", function (event) {
    event.preventDefault();
    listState.agent = $("f-agent").value; listState.status = $("f-status").value;
    listState.search = $("f-search").value.trim(); listState.offset = 0;
    loadList();
  });
  $("prev").addEventListener("click", function () { listState.offset = Math.max(0, listState.offset - listState.limit); loadList(); });
  $("next").addEventListener("click", function () { listState.offset += listState.limit; loadList(); });

  async function loadList() {
    var q = new URLSearchParams();
    ["agent", "status", "search"].forEach(function (k) { if (listState[k]) { q.set(k, listState[k]); } });
    q.set("limit", String(listState.limit)); q.set("offset", String(listState.offset));
    var page;
    try { page = await api("/console/api/tasks?" + q.toString()); }
    catch (e) { if (e.status) { setStatus("Could not load the tasks: " + e.message, "error"); } return; }
    if (route.kind !== "list") { return; }
    renderAgents(page.agents || []);
    var body = $("tasks-body"); clear(body);
    (page.tasks || []).forEach(function (t) {
      var tr = el("tr", { "data-testid": "task-row", "data-task-id": str(t.task_id), "data-agent": str(t.agent), "data-status": str(t.status) });
      tr.append(el("td", {}, when(t.created_at)));
      tr.append(el("td", {}, t.agent));
      var link = el("a", { href: taskHref(t.agent, t.task_id), "class": "task-link mono wrap" }, t.task_id);
      var cellTask = el("td"); cellTask.append(link); tr.append(cellTask);
      tr.append(el("td", { "class": "mono" }, t.state));
      var cellStatus = el("td"); cellStatus.append(badge(t.status)); tr.append(cellStatus);
      var why = t.stall ? "stalled at " + t.stall.step + ": " + t.stall.last_error
        : t.error ? str(t.error.code) + ": " + str(t.error.message) : str(t.note);
      tr.append(el("td", { "class": "wrap" }, why));
      tr.append(el("td", {}, when(t.updated_at)));
      body.append(tr);
    });
    $("tasks-empty").hidden = (page.tasks || []).length !== 0;
    var first = page.tasks.length ? page.offset + 1 : 0;
    $("page-info").textContent = first + "\u2013" + (page.offset + page.tasks.length) + " of " + page.total +
      (page.stalls_known ? "" : " (Restate unreachable: stalls not shown)");
    $("prev").disabled = page.offset === 0;
    $("next").disabled = page.offset + page.tasks.length >= page.total;
    if (status.dataset.kind === "error") { setStatus("", "info"); }
  }
  function renderAgents(agents) {
    var select = $("f-agent");
    if (select.options.length === agents.length + 1) { return; }
    clear(select); select.append(el("option", { value: "" }, "every agent"));
    agents.forEach(function (a) { select.append(el("option", { value: a }, a)); });
    select.value = listState.agent;
  }

  // --- one task --------------------------------------------------------------------------------
  async function loadTask() {
    var r = route;
    var path = "/console/api/tasks/" + encodeURIComponent(r.agent) + "/" + encodeURIComponent(r.taskId);
    var detail;
    try { detail = await api(path); }
    catch (e) {
      if (e.status) { clear($("task-body")); $("task-title").textContent = r.agent + " / " + r.taskId; setStatus(e.message, "error"); }
      return;
    }
    if (route !== r) { return; }
    current = detail;
    renderTask(detail);
  }

  function renderTask(d) {
    var v = d.view;
    $("task-title").textContent = d.agent + " / " + d.task_id;
    var head = $("task-head"); clear(head);
    head.append(el("span", { "class": "mono" }, v.state), document.createTextNode(" "), badge(d.status));
    if (v.model) { head.append(el("span", { "class": "muted" }, "  model " + v.model)); }
    if (v.spend) {
      var sp = v.spend, est = v.model === "offline" ? " (estimated)" : "";
      head.append(el("span", { "class": "muted", "data-testid": "spend" }, "  · " + sp.llm_calls + " model call(s), " +
        Number(sp.input_tokens).toLocaleString() + " in + " + Number(sp.output_tokens).toLocaleString() + " out tokens" + est +
        ", $" + sp.cost_usd + (sp.unpriced_calls ? " (+" + sp.unpriced_calls + " unpriced)" : "") + "; " + sp.tool_calls + " tool call(s)"));
    }
    var body = $("task-body"); clear(body);
    if (v.error) {
      var banner = el("div", { "class": "banner failed", "data-testid": "error-banner" });
      banner.append(el("strong", {}, "Failed in " + str(v.error.state) + " (" + str(v.error.code) + "): "), el("span", { "class": "text" }, v.error.message));
      body.append(banner);
    }
    if (v.stall) {
      var s = v.stall, stall = el("div", { "class": "banner stalled", "data-testid": "stall-banner" });
      stall.append(el("strong", {}, "Stalled at " + s.step + " since " + when(s.since) + ", " + s.rounds + " round(s); next try " + when(s.next_retry_at) + ": "), el("span", { "class": "text" }, s.last_error));
      body.append(stall);
    }
    if (v.pending_approval) { body.append(renderPending(d, v.pending_approval)); }
    if (v.result) { body.append(card("Result", renderValue(v.result), "result")); }
    var diagram = el("div", { "class": "diagram", "data-testid": "diagram" });
    body.append(card("State diagram", diagram, "diagram-card"));
    drawDiagram(diagram, d.diagram);
    body.append(card("Timeline (event log)", renderTimeline(d), "timeline"));
    body.append(card("Approvals", renderApprovals(v.approvals || []), "approvals"));
    body.append(card("Restate journal", renderJournal(d), "journal"));
  }
  function card(title, content, testid) {
    var section = el("section", { "class": "card", "data-testid": testid });
    section.append(el("h3", {}, title), content);
    return section;
  }

  function renderValue(value) {
    if (value === null || value === undefined) { return el("span", { "class": "muted" }, "\u2014"); }
    if (Array.isArray(value)) {
      if (!value.length) { return el("span", { "class": "muted" }, "none"); }
      if (value.every(function (x) { return x === null || typeof x !== "object"; })) { return el("span", { "class": "text" }, value.map(str).join(", ")); }
      var list = el("ol");
      value.forEach(function (x) { var li = el("li"); li.append(renderValue(x)); list.append(li); });
      return list;
    }
    if (typeof value === "object") {
      var dl = el("dl", { "class": "kv" });
      Object.keys(value).forEach(function (k) { var dd = el("dd"); dd.append(renderValue(value[k])); dl.append(el("dt", {}, k.replace(/_/g, " ")), dd); });
      return dl;
    }
    return el("span", { "class": "text" }, str(value));
  }

  // The approval, readable: what exactly is decided, per agent, else every field.
  function renderPending(d, p) {
    var section = el("section", { "class": "card", "data-testid": "pending" });
    section.append(el("h3", {}, "Waiting for approval at " + p.state));
    section.append(el("p", { "class": "text", "data-testid": "pending-summary" }, p.summary));
    var meta = el("dl", { "class": "kv" });
    [["approvers", (p.approvers || []).join(", ")], ["deadline", when(p.deadline)], ["requested", when(p.requested_at)],
     ["approval hash", p.approval_hash], ["ticket", p.approval_ticket_id]].forEach(function (kv) {
      meta.append(el("dt", {}, kv[0]), el("dd", { "class": kv[0] === "approval hash" ? "mono wrap" : "" }, kv[1]));
    });
    section.append(meta);
    section.append(el("h4", {}, "What is approved"));
    section.append(readable(d, p.details || {}));
    section.append(decisionArea(d, p));
    return section;
  }
  function readable(d, details) {
    if (d.agent === "AgentTask" && details.plan) { return planForm(d, details); }
    if (details.expense && details.receipt) { return expenseForm(d, details); }
    return renderValue(details);
  }
  function planForm(d, details) {
    var wrap = el("div", { "data-testid": "plan-form" });
    var dl = el("dl", { "class": "kv" });
    dl.append(el("dt", {}, "user"), el("dd", {}, details.user_id), el("dt", {}, "task"), el("dd", { "class": "text" }, details.task));
    wrap.append(dl);
    var table = el("table", { "data-testid": "plan-table" });
    var thead = el("tr"); ["#", "Tool", "Arguments", "Why", "Side effects"].forEach(function (h) { thead.append(el("th", { scope: "col" }, h)); });
    table.append(thead);
    ((details.plan || {}).steps || []).forEach(function (step, i) {
      var tr = el("tr", { "data-testid": "plan-step", "data-tool": str(step.tool) });
      tr.append(el("td", {}, i + 1), el("td", { "class": "mono" }, step.tool));
      var args = el("td"); args.append(renderValue(step.args)); tr.append(args);
      tr.append(el("td", { "class": "text" }, step.reason));
      var effects = el("td"), known = d.tools && step.tool in d.tools;
      effects.append(known ? (d.tools[step.tool] ? el("span", { "class": "tag effect" }, "side effects") : el("span", { "class": "tag read" }, "read-only")) : el("span", { "class": "muted" }, "unknown"));
      tr.append(effects);
      table.append(tr);
    });
    wrap.append(table);
    if (details.replanned_after) { wrap.append(el("h4", {}, "Replanned after"), renderValue(details.replanned_after)); }
    return wrap;
  }
  function same(a, b) { return str(a).trim().toLowerCase() === str(b).trim().toLowerCase(); }
  function expenseForm(d, details) {
    var e = details.expense, r = details.receipt, c = details.classification || {};
    var grid = el("div", { "class": "grid2", "data-testid": "expense-form" });
    var left = el("div");
    var table = el("table");
    var head = el("tr"); ["", "Claimed", "Receipt (OCR)"].forEach(function (h) { head.append(el("th", { scope: "col" }, h)); });
    table.append(head);
    function row(name, claimed, read, differs) {
      var tr = el("tr", { "data-testid": "expense-" + name.toLowerCase() });
      tr.append(el("th", { scope: "row" }, name), el("td", {}, claimed));
      var cell = el("td", differs ? { "class": "differs" } : {}, read);
      if (differs) { cell.append(document.createTextNode(" "), el("span", { "class": "tag differs", "data-testid": "differs" }, "differs")); }
      tr.append(cell); table.append(tr);
    }
    row("Amount", str(e.amount) + " " + str(e.currency), r.total === null || r.total === undefined ? "unread" : str(r.total), r.readable && r.total_matches === false);
    row("Merchant", e.merchant, r.merchant || "unread", !!r.merchant && !same(r.merchant, e.merchant));
    row("Date", e.date, r.date || "unread", r.date_matches === false);
    left.append(table);
    var dl = el("dl", { "class": "kv" });
    [["employee", e.employee_id], ["description", e.description], ["category", c.category],
     ["confidence", typeof c.confidence === "number" ? Math.round(c.confidence * 100) + "%" : c.confidence],
     ["why", c.rationale], ["routing rule", details.routing_rule], ["receipt problems", (r.problems || []).join("; ") || "none"]].forEach(function (kv) {
      dl.append(el("dt", {}, kv[0]), el("dd", { "class": "text" }, kv[1]));
    });
    left.append(dl);
    var right = el("div", { "class": "receipt" });
    if (d.receipt_url) {
      var img = el("img", { alt: "Receipt of " + str(e.expense_id), "data-testid": "receipt-image" });
      right.append(img);
      loadReceipt(img, d.receipt_url);
    }
    grid.append(left, right);
    return grid;
  }
  async function loadReceipt(img, url) {
    try {
      var res = await fetch(url, { headers: { "Authorization": "Bearer " + token() }, cache: "no-store" });
      if (!res.ok) { img.replaceWith(el("p", { "class": "empty" }, "The receipt could not be loaded (HTTP " + res.status + ").")); return; }
      if (receiptUrl) { URL.revokeObjectURL(receiptUrl); }
      receiptUrl = URL.createObjectURL(await res.blob());
      img.src = receiptUrl;
    } catch (e) { img.replaceWith(el("p", { "class": "empty" }, "The receipt could not be loaded.")); }
  }

  function decisionArea(d, p) {
    var area = el("div", { "data-testid": "decision" });
    if (!d.may_decide) {
      var why = signedInAs === null ? "Signed in with the operator token: read-only." : "Not yours to decide: the approvers are " + (p.approvers || []).join(", ") + ".";
      area.append(el("p", { "class": "empty", "data-testid": "not-yours" }, why));
      return area;
    }
    area.append(el("label", { "for": "comment" }, "Comment (recorded with the decision)"));
    var comment = el("textarea", { id: "comment", rows: "2", "data-testid": "comment-input" });
    area.append(comment);
    var actions = el("div", { "class": "actions" });
    var approve = el("button", { type: "button", "class": "approve", "data-testid": "approve-button" }, "Approve\u2026");
    var reject = el("button", { type: "button", "class": "reject", "data-testid": "reject-button" }, "Reject\u2026");
    approve.addEventListener("click", function () { confirmDecision(d, p, "approve", comment.value); });
    reject.addEventListener("click", function () { confirmDecision(d, p, "reject", comment.value); });
    actions.append(approve, reject);
    area.append(actions);
    return area;
  }
  function confirmDecision(d, p, decision, comment) {
    var dialog = $("confirm");
    pendingDecision = { agent: d.agent, task_id: d.task_id, decision: decision, comment: comment, approval_hash: p.approval_hash, key: (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()) };
    $("confirm-title").textContent = (decision === "approve" ? "Approve" : "Reject") + " " + d.agent + " " + d.task_id + "?";
    var what = $("confirm-what"); clear(what);
    var dl = el("dl", { "class": "kv" });
    [["decision", decision], ["as", signedInAs], ["state", p.state], ["approval hash", p.approval_hash], ["comment", comment || "(none)"]].forEach(function (kv) {
      dl.append(el("dt", {}, kv[0]), el("dd", { "class": kv[0] === "approval hash" ? "mono wrap" : "text", "data-testid": "confirm-" + kv[0].replace(" ", "-") }, kv[1]));
    });
    what.append(dl, el("p", { "class": "text" }, p.summary), readable(d, p.details || {}));
    var go = $("confirm-go");
    go.className = decision === "approve" ? "approve" : "reject";
    go.textContent = decision === "approve" ? "Approve exactly this" : "Reject exactly this";
    dialog.showModal();
  }
  $("confirm-cancel").addEventListener("click", function () { pendingDecision = null; $("confirm").close(); });
  $("confirm-go").addEventListener("click", async function () {
    var p = pendingDecision;
    if (!p) { return; }
    var go = $("confirm-go"); go.disabled = true;
    var res, data = null;
    try {
      res = await fetch("/inbox/decide", {
        method: "POST", cache: "no-store",
        headers: { "Authorization": "Bearer " + token(), "Content-Type": "application/json", "Accept": "application/json", "Idempotency-Key": p.key },
        body: JSON.stringify({ agent: p.agent, task_id: p.task_id, decision: p.decision, comment: p.comment, approval_hash: p.approval_hash })
      });
      try { data = await res.json(); } catch (e) { data = null; }
    } catch (e) {
      go.disabled = false;
      setStatus("Network error: the decision may or may not have been recorded; the page refreshes, check before trying again.", "error");
      $("confirm").close(); loadTask(); return;
    }
    go.disabled = false; pendingDecision = null; $("confirm").close();
    if (res.status === 401) { signOut("Your credential was not accepted (401). Sign in again."); return; }
    if (res.ok) { setStatus((p.decision === "approve" ? "Approved " : "Rejected ") + p.agent + " " + p.task_id + " as " + signedInAs + ": recorded.", "success"); }
    else { setStatus("The decision was not recorded: " + (data && data.error ? data.error.message : "HTTP " + res.status), "error"); }
    loadTask();
  });

  function renderTimeline(d) {
    var wrap = el("div");
    var chain = d.chain;
    wrap.append(chain.ok
      ? el("p", { "class": "chain-ok", "data-testid": "chain" }, "Hash chain verified: " + chain.events + " event(s), each linked to the one before.")
      : el("p", { "class": "chain-bad", "data-testid": "chain" }, "Hash chain BROKEN at event " + chain.broken.seq + ": " + chain.broken.problem));
    if (!d.events.length) { wrap.append(el("p", { "class": "empty" }, "No events logged yet.")); return wrap; }
    var table = el("table", { "data-testid": "timeline-table" });
    var head = el("tr"); ["#", "When", "Transition", "Note", "Model use"].forEach(function (h) { head.append(el("th", { scope: "col" }, h)); });
    table.append(head);
    d.events.forEach(function (e) {
      var tr = el("tr", { "data-testid": "timeline-row" });
      tr.append(el("td", {}, e.seq), el("td", {}, when(e.at)), el("td", { "class": "mono" }, (e.from_state || "(start)") + " \u2192 " + e.to_state), el("td", { "class": "text" }, e.note));
      var used = (e.payload && e.payload.usage) || [];
      tr.append(el("td", { "class": "muted", "data-testid": "event-usage" }, used.map(function (u) {
        return u.step.split(" ").slice(-1)[0] + ": " + (u.input_tokens + u.output_tokens) + " tokens" + (u.cost_usd === null ? "" : ", $" + u.cost_usd);
      }).join("; ")));
      table.append(tr);
    });
    wrap.append(table);
    return wrap;
  }
  function renderApprovals(approvals) {
    if (!approvals.length) { return el("p", { "class": "empty" }, "No approval decided yet."); }
    var table = el("table", { "data-testid": "approvals-table" });
    var head = el("tr"); ["State", "Outcome", "By", "When", "Comment", "Hash"].forEach(function (h) { head.append(el("th", { scope: "col" }, h)); });
    table.append(head);
    approvals.forEach(function (a) {
      var tr = el("tr", { "data-testid": "approval-record" });
      tr.append(el("td", { "class": "mono" }, a.state), el("td", {}, a.outcome), el("td", {}, a.approver || "\u2014"), el("td", {}, when(a.decided_at)), el("td", { "class": "text" }, a.comment), el("td", { "class": "mono wrap" }, a.approval_hash));
      table.append(tr);
    });
    return table;
  }
  function renderJournal(d) {
    var wrap = el("div");
    if (!d.invocations.length) { wrap.append(el("p", { "class": "empty" }, "No run invocation found in Restate (purged after its retention, or Restate is unreachable).")); }
    d.invocations.forEach(function (inv) {
      var p = el("p", { "data-testid": "invocation" });
      p.append(el("code", {}, inv.id), document.createTextNode(" " + str(inv.status) + ", created " + when(inv.created_at) + ". Journal: "), el("code", { "data-testid": "describe" }, inv.describe));
      wrap.append(p);
    });
    var ui = el("p");
    ui.append(document.createTextNode("Restate's own UI: "), el("a", { href: d.restate_ui, target: "_blank", rel: "noopener noreferrer", "data-testid": "restate-ui" }, d.restate_ui));
    wrap.append(ui);
    return wrap;
  }

  // --- the diagram: Mermaid from this origin, loaded the first time a task is shown ------------
  var mermaidReady = null;
  function loadMermaid() {
    if (mermaidReady) { return mermaidReady; }
    mermaidReady = new Promise(function (resolve, reject) {
      var script = el("script", { src: "/console/assets/mermaid.min.js" });
      script.onload = function () {
        window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "default" });
        resolve(window.mermaid);
      };
      script.onerror = function () { mermaidReady = null; reject(new Error("the diagram library did not load")); };
      document.head.append(script);
    });
    return mermaidReady;
  }
  async function drawDiagram(node, diagram) {
    var n = ++diagramSeq;
    var path = el("p", { "class": "muted" }, "Path: " + (diagram.path || []).join(" \u2192 "));
    try {
      var mermaid = await loadMermaid();
      var out = await mermaid.render("state-diagram-" + n, diagram.mermaid);
      if (n !== diagramSeq) { return; }
      clear(node);
      node.innerHTML = out.svg;  // Mermaid's SVG of the machine's declaration (strict mode)
      node.dataset.rendered = "yes";
      node.append(path);
    } catch (e) {
      if (n !== diagramSeq) { return; }
      clear(node);
      node.append(el("p", { "class": "empty" }, "The diagram could not be drawn (" + e.message + "); its source:"), el("pre", { "class": "mono" }, diagram.mermaid), path);
    }
  }

  // --- live updates: the log's changes as server-sent events, read with fetch ------------------
  function stopChanges() { if (changes) { changes.abort(); changes = null; } live.dataset.on = "no"; live.textContent = "live updates off"; }
  async function startChanges() {
    stopChanges();
    var controller = new AbortController(); changes = controller;
    try {
      var res = await fetch("/console/api/changes", { headers: { "Authorization": "Bearer " + token(), "Accept": "text/event-stream" }, signal: controller.signal, cache: "no-store" });
      if (!res.ok || !res.body) { throw new Error("HTTP " + res.status); }
      live.dataset.on = "yes"; live.textContent = "live";
      var reader = res.body.getReader(), decoder = new TextDecoder(), buffer = "";
      for (;;) {
        var chunk = await reader.read();
        if (chunk.done) { break; }
        buffer += decoder.decode(chunk.value, { stream: true });
        var events = buffer.split("\n\n"); buffer = events.pop();
        events.forEach(onChange);
      }
    } catch (e) { if (controller.signal.aborted) { return; } }
    if (changes === controller) {
      live.dataset.on = "no"; live.textContent = "reconnecting\u2026";
      setTimeout(function () { if (changes === controller && token()) { startChanges(); } }, 2000);
    }
  }
  function onChange(block) {
    var name = "", data = "";
    block.split("\n").forEach(function (line) {
      if (line.indexOf("event: ") === 0) { name = line.slice(7); }
      if (line.indexOf("data: ") === 0) { data += line.slice(6); }
    });
    if (name !== "moved") { return; }
    var moved; try { moved = JSON.parse(data); } catch (e) { return; }
    var mine = route && route.kind === "task" && (moved.moves || []).some(function (m) { return m.agent === route.agent && m.task_id === route.taskId; });
    if (route && (route.kind === "list" || mine)) {
      clearTimeout(reloadTimer);
      reloadTimer = setTimeout(function () { if (route.kind === "list") { loadList(); } else { loadTask(); } }, 250);
    }
  }

  if (token()) { start(); } else { showSignIn(""); }
})();
"""

_BODY = """
<header class="top">
  <div class="bar">
    <h1>Agent console</h1>
    <nav><a href="#/" data-testid="nav-tasks">Tasks</a><a href="/inbox">Approvals inbox</a></nav>
    <span id="live" class="live" data-on="no">live updates off</span>
    <span class="who">Signed in as <strong id="who"></strong></span>
    <button id="sign-out" type="button" data-testid="sign-out" hidden>Sign out</button>
  </div>
</header>
<main>
  <p id="status" class="status" role="status" aria-live="polite" data-testid="status-message"></p>
  <section id="sign-in-section" class="card" aria-labelledby="sign-in-title" hidden>
    <h2 id="sign-in-title">Sign in</h2>
    <form id="sign-in-form" method="post" autocomplete="off" novalidate>
      <label for="token">Your approver credential, or the operator token (read-only)</label>
      <input id="token" type="password" autocomplete="off" spellcheck="false" size="48"
             placeholder="apv_&hellip;" data-testid="token-input">
      <p class="muted">Issued by an operator with <code>agentctl approvers add NAME</code>; kept in this tab only.</p>
      <button type="submit" class="primary" data-testid="sign-in">Sign in</button>
    </form>
  </section>
  <section id="list-view" class="card" aria-labelledby="list-title" hidden>
    <h2 id="list-title">Tasks</h2>
    <form id="filters" class="filters" data-testid="filters">
      <div><label for="f-agent">Agent</label><select id="f-agent" data-testid="filter-agent">
        <option value="">every agent</option></select></div>
      <div><label for="f-status">Status</label><select id="f-status" data-testid="filter-status">
        <option value="">any</option><option value="waiting">waiting</option><option value="running">running</option>
        <option value="stalled">stalled</option><option value="failed">failed</option>
        <option value="complete">complete</option></select></div>
      <div class="grow"><label for="f-search">Task id contains</label>
        <input id="f-search" type="search" data-testid="filter-search"></div>
      <div><button type="submit" class="primary" data-testid="apply-filters">Show</button></div>
    </form>
    <table>
      <thead><tr><th scope="col">Created</th><th scope="col">Agent</th><th scope="col">Task</th>
        <th scope="col">State</th><th scope="col">Status</th><th scope="col">Why</th>
        <th scope="col">Last moved</th></tr></thead>
      <tbody id="tasks-body" data-testid="tasks-body"></tbody>
    </table>
    <p id="tasks-empty" class="empty" hidden>No task matches.</p>
    <div class="pager"><button id="prev" type="button">Newer</button><span id="page-info" class="muted"></span>
      <button id="next" type="button">Older</button></div>
  </section>
  <section id="task-view" aria-labelledby="task-title" hidden>
    <p><a href="#/">&larr; All tasks</a></p>
    <h2 id="task-title" class="wrap"></h2>
    <p id="task-head"></p>
    <div id="task-body"></div>
  </section>
  <dialog id="confirm" aria-labelledby="confirm-title" data-testid="confirm-dialog">
    <h2 id="confirm-title"></h2>
    <div id="confirm-what"></div>
    <div class="actions">
      <button id="confirm-go" type="button" data-testid="confirm-go"></button>
      <button id="confirm-cancel" type="button" data-testid="confirm-cancel">Cancel</button>
    </div>
  </dialog>
</main>
"""


def csp_hash(source: str) -> str:
    """A CSP source expression allowing exactly this inline script or style."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def page_html(title: str, csp: list[str], style: str, body: str, script: str) -> str:
    """A self-contained page: its CSP in a `<meta>`, its style and script inline (allowed by hash)."""
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{"; ".join(csp)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{title}</title>\n"
        f"<style>{style}</style>\n</head>\n<body>{body}<script>{script}</script>\n</body>\n</html>\n"
    )


@cache
def console_page_html() -> str:
    """The whole console page; it embeds no data, so it is the same for everyone."""
    csp = [
        "default-src 'none'",
        f"script-src 'self' {csp_hash(_SCRIPT)}",
        # Mermaid styles the SVG it draws inline; no data is ever inserted as markup.
        "style-src 'self' 'unsafe-inline'",
        "connect-src 'self'",
        "img-src 'self' blob: data:",
        "font-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
    ]
    return page_html("Agent console", csp, _STYLE, _BODY, _SCRIPT)


async def console_page(_: Request) -> HTMLResponse:
    """`GET /console` (no auth: the page holds no data)."""
    return HTMLResponse(console_page_html(), headers=dict(PAGE_HEADERS))
