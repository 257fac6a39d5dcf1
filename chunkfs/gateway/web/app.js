// The chunkfs file manager: the REST API (/api/v1/) from the browser, with the login's HttpOnly
// cookie and the CSRF token /api/v1/auth/me gives. Text from the server is put into the page
// with textContent only (never as HTML). Uploads use tus (/api/v1/uploads/): each file's upload
// URL is kept in localStorage under its target path, size and mtime, so dropping the same file
// again (after a closed tab, a lost network) resumes from the offset the server has.
"use strict";

const API = "/api/v1";
const PIECE_BYTES = 2 * 1024 * 1024;  // one PATCH: progress moves and a cut costs at most this much
const state = { csrf: null, me: null, cwd: "/", owners: new Map() };
const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function joinPath(dir, name) { return (dir.endsWith("/") ? dir : dir + "/") + name; }
function urlPath(path) { return path.split("/").map(encodeURIComponent).join("/"); }
function utf8Base64(text) { return btoa(String.fromCharCode(...new TextEncoder().encode(text))); }
function size(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}
function when(seconds) { return new Date(seconds * 1000).toLocaleString(); }
function say(text, bad = false) { const m = $("message"); m.textContent = text; m.className = bad ? "error" : "muted"; }

async function refreshTokens() {
  const r = await fetch(`${API}/auth/refresh`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  return r.ok;
}

// A call as the logged-in user; an expired access token is refreshed once and the call made again.
async function call(method, url, { json, headers = {}, body } = {}, retry = true) {
  const h = { ...headers };
  if (state.csrf && !["GET", "HEAD"].includes(method)) h["X-CSRF-Token"] = state.csrf;
  if (json !== undefined) { h["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  const r = await fetch(url, { method, headers: h, body, credentials: "same-origin" });
  if (r.status === 401 && retry && await refreshTokens()) return call(method, url, { json, headers, body }, false);
  return r;
}

async function errorOf(r) {
  try { const j = await r.json(); return j.message || j.error || `HTTP ${r.status}`; } catch { return `HTTP ${r.status}`; }
}

// ---- login --------------------------------------------------------------------------------------
async function start() {
  const r = await call("GET", `${API}/auth/me`);
  if (!r.ok) { showLogin(); return; }
  state.me = await r.json();
  state.csrf = state.me.csrf_token;
  $("login").hidden = true;
  $("app").hidden = false;
  $("who").textContent = `${state.me.name} (uid ${state.me.uid})`;
  const fromHash = decodeURIComponent(location.hash.slice(1));
  await loadOwners();
  await openDir(fromHash.startsWith("/") ? fromHash : state.me.home);
  await loadShares();
  await loadUsage();
  if (state.me.is_admin) await loadAdmin();
}

function showLogin() {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-name").focus();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  const r = await fetch(`${API}/auth/login`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: $("login-name").value, password: $("login-password").value }),
  });
  if (!r.ok) { $("login-error").textContent = await errorOf(r); return; }
  $("login-password").value = "";
  await start();
});

$("logout").addEventListener("click", async () => {
  await call("POST", `${API}/auth/logout`, {}, false);
  state.csrf = state.me = null;
  location.hash = "";
  showLogin();
});

// ---- listing --------------------------------------------------------------------------------------
async function loadOwners() {
  const r = await call("GET", `${API}/users`);
  if (r.ok) for (const u of (await r.json()).users) state.owners.set(u.uid, u.name);
}

async function openDir(path) {
  let r = await call("GET", `${API}/files${urlPath(path)}?list`);
  if (!r.ok && path !== "/") { say(`${path}: ${await errorOf(r)}`, true); path = "/"; r = await call("GET", `${API}/files/?list`); }
  if (!r.ok) { say(await errorOf(r), true); return; }
  state.cwd = path;
  location.hash = encodeURIComponent(path);
  drawCrumbs(path);
  const tbody = $("files").tBodies[0];
  tbody.replaceChildren();
  if (path !== "/") {
    const up = path.replace(/\/[^/]*$/, "") || "/";
    tbody.append(el("tr", {}, el("td", {}, el("a", { href: "#", onclick: (e) => { e.preventDefault(); openDir(up); } }, "..")),
      el("td"), el("td"), el("td"), el("td")));
  }
  let entries = (await r.json()).entries;
  entries.sort((a, b) => (a.type === "directory" ? 0 : 1) - (b.type === "directory" ? 0 : 1) || a.name.localeCompare(b.name));
  for (const entry of entries) tbody.append(fileRow(entry));
}

function drawCrumbs(path) {
  const nav = $("crumbs");
  nav.replaceChildren(el("a", { href: "#", onclick: (e) => { e.preventDefault(); openDir("/"); } }, "/"), " ");
  let sofar = "";
  for (const part of path.split("/").filter(Boolean)) {
    sofar += "/" + part;
    const target = sofar;
    nav.append(el("a", { href: "#", onclick: (e) => { e.preventDefault(); openDir(target); } }, part), " / ");
  }
}

function fileRow(entry) {
  const path = joinPath(state.cwd, entry.name);
  const isDir = entry.type === "directory";
  const name = isDir
    ? el("a", { href: "#", onclick: (e) => { e.preventDefault(); openDir(path); } }, entry.name + "/")
    : el("a", { href: `${API}/files${urlPath(path)}?download`, download: entry.name }, entry.name);
  const owner = state.owners.get(entry.uid) ?? String(entry.uid);
  const actions = el("div", { class: "actions" },
    el("button", { class: "quiet", type: "button", title: "Share", onclick: () => openShare(path) }, "Share"),
    el("button", { class: "quiet", type: "button", title: "Rename or move", onclick: () => rename(path, entry.name) }, "Rename"),
    el("button", { class: "quiet danger", type: "button", title: "Delete", onclick: () => remove(path, isDir) }, "Delete"));
  return el("tr", { "data-name": entry.name },
    el("td", {}, name), el("td", { class: "num" }, isDir ? "" : size(entry.size)),
    el("td", {}, when(entry.mtime)), el("td", {}, owner), el("td", {}, actions));
}

async function loadUsage() {
  const r = await call("GET", `${API}/usage?path=${encodeURIComponent(state.me.home)}`);
  if (r.ok) {
    const u = await r.json();
    $("usage").textContent = `${size(u.bytes)} in ${u.files} files in ${u.path}` + (u.quota_bytes ? ` of ${size(u.quota_bytes)}` : "");
  }
}

// ---- changes --------------------------------------------------------------------------------------
$("mkdir").addEventListener("click", async () => {
  const name = prompt("Name of the new folder");
  if (!name) return;
  const r = await call("POST", `${API}/dirs${urlPath(joinPath(state.cwd, name))}`);
  if (!r.ok) { say(await errorOf(r), true); return; }
  say(`made ${name}`);
  await openDir(state.cwd);
});

async function rename(path, name) {
  const to = prompt("New name (or a path from / to move it)", name);
  if (!to || to === name) return;
  const r = await call("POST", `${API}/move`, { json: { from: path, to: to.startsWith("/") ? to : joinPath(state.cwd, to) } });
  if (!r.ok) { say(await errorOf(r), true); return; }
  say(`renamed ${name}`);
  await openDir(state.cwd);
}

async function remove(path, isDir) {
  if (!confirm(`Delete ${path}?` + (isDir ? " (a folder must be empty)" : ""))) return;
  const r = await call("DELETE", `${API}/files${urlPath(path)}`);
  if (!r.ok) { say(await errorOf(r), true); return; }
  say(`deleted ${path}`);
  await openDir(state.cwd);
  await loadUsage();
}

// ---- uploads (tus) ----------------------------------------------------------------------------------
function patch(url, offset, piece, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PATCH", url);
    xhr.setRequestHeader("Tus-Resumable", "1.0.0");
    xhr.setRequestHeader("Upload-Offset", String(offset));
    xhr.setRequestHeader("Content-Type", "application/offset+octet-stream");
    if (state.csrf) xhr.setRequestHeader("X-CSRF-Token", state.csrf);
    xhr.upload.onprogress = (e) => onProgress(e.loaded);
    xhr.onload = () => (xhr.status === 204 ? resolve(Number(xhr.getResponseHeader("Upload-Offset")))
      : reject(new Error(`upload refused: HTTP ${xhr.status}`)));
    xhr.onerror = () => reject(new Error("the connection was lost"));
    xhr.send(piece);
  });
}

async function upload(file) {
  const target = joinPath(state.cwd, file.name);
  const remembered = `chunkfs-tus:${target}:${file.size}:${file.lastModified}`;
  const bar = el("progress", { max: Math.max(file.size, 1), value: 0 });
  const note = el("span", { class: "muted" }, "starting");
  const row = el("li", { "data-name": file.name }, el("span", {}, file.name), bar, note);
  $("uploads").append(row);
  try {
    let url = localStorage.getItem(remembered);
    let offset = 0;
    if (url) {
      const r = await call("HEAD", url, { headers: { "Tus-Resumable": "1.0.0" } });
      if (r.ok) { offset = Number(r.headers.get("Upload-Offset")); row.dataset.resumedFrom = String(offset); }
      else url = null;
    }
    if (!url) {
      const r = await call("POST", `${API}/uploads/`, { headers: {
        "Tus-Resumable": "1.0.0", "Upload-Length": String(file.size), "Upload-Metadata": `path ${utf8Base64(target)}` } });
      if (r.status !== 201) throw new Error(await errorOf(r));
      url = r.headers.get("Location");
      localStorage.setItem(remembered, url);
    }
    bar.value = offset;
    note.textContent = offset ? `resumed at ${Math.round(100 * offset / file.size)}%` : "0%";
    while (offset < file.size) {
      const start = offset;
      offset = await patch(url, start, file.slice(start, start + PIECE_BYTES), (sent) => {
        bar.value = start + sent;
        note.textContent = `${Math.floor(100 * (start + sent) / file.size)}%`;
      });
    }
    localStorage.removeItem(remembered);
    bar.value = bar.max;
    note.textContent = "done";
    row.dataset.done = "1";
  } catch (error) {
    note.textContent = `stopped: ${error.message} (drop the file again to resume)`;
    note.className = "error";
    return;
  }
  await openDir(state.cwd);
  await loadUsage();
}

async function uploadAll(files) { for (const file of files) await upload(file); }

$("picker").addEventListener("change", (e) => { uploadAll([...e.target.files]); e.target.value = ""; });
const drop = $("drop");
for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); uploadAll([...e.dataTransfer.files]); });

// ---- share links -------------------------------------------------------------------------------------
let sharing = null;

function openShare(path) {
  sharing = path;
  $("share-name").textContent = path;
  $("share-result").hidden = true;
  $("share-error").textContent = "";
  $("share-password").value = "";
  $("share-dialog").showModal();
}

$("share-create").addEventListener("click", async () => {
  const r = await call("POST", `${API}/shares`, { json: {
    path: sharing, expires_in_s: Number($("share-expiry").value), password: $("share-password").value,
    max_downloads: Number($("share-max").value || 0) } });
  if (!r.ok) { $("share-error").textContent = await errorOf(r); return; }
  $("share-url").value = (await r.json()).url;
  $("share-result").hidden = false;
  await loadShares();
});

$("share-copy").addEventListener("click", async () => {
  const input = $("share-url");
  try { await navigator.clipboard.writeText(input.value); } catch { input.select(); document.execCommand("copy"); }
  $("share-copy").textContent = "Copied";
});
$("share-close").addEventListener("click", () => { $("share-dialog").close(); $("share-copy").textContent = "Copy"; });

async function loadShares() {
  const r = await call("GET", `${API}/shares`);
  if (!r.ok) return;
  const tbody = $("shares").tBodies[0];
  tbody.replaceChildren();
  for (const s of (await r.json()).shares) {
    const state_ = s.revoked ? "revoked" : s.expired ? "expired"
      : s.max_downloads && s.downloads >= s.max_downloads ? "used up" : "active";
    const revoke = state_ === "active"
      ? el("button", { class: "quiet danger", type: "button", onclick: () => revokeShare(s.id) }, "Revoke") : "";
    tbody.append(el("tr", { "data-share": s.id }, el("td", {}, s.path), el("td", {}, when(s.expires_at)),
      el("td", { class: "num" }, s.max_downloads ? `${s.downloads} of ${s.max_downloads}` : String(s.downloads)),
      el("td", {}, state_ + (s.password ? ", password" : "")), el("td", {}, revoke)));
  }
}

async function revokeShare(id) {
  const r = await call("DELETE", `${API}/shares/${id}`);
  if (!r.ok) { say(await errorOf(r), true); return; }
  say("link revoked");
  await loadShares();
}

// ---- admin ------------------------------------------------------------------------------------------
async function loadAdmin() {
  $("admin").hidden = false;
  const health = await call("GET", `${API}/health`);
  if (health.status === 200 || health.status === 503) {
    const h = await health.json();
    const servers = h.chunkservers || [];
    $("admin-health").textContent = `cluster ${h.status}: ${servers.filter((s) => s.alive).length} of ${servers.length} chunkservers up`;
  }
  const users = await call("GET", `${API}/users`);
  if (users.ok) {
    const tbody = $("admin-users").tBodies[0];
    tbody.replaceChildren();
    for (const u of (await users.json()).users) {
      tbody.append(el("tr", {}, el("td", {}, u.name), el("td", { class: "num" }, String(u.uid)),
        el("td", { class: "num" }, String(u.gid)), el("td", {}, u.home), el("td", {}, u.disabled ? "disabled" : "active")));
    }
  }
  const keys = await call("GET", `${API}/keys`);
  if (keys.ok) {
    const tbody = $("admin-keys").tBodies[0];
    tbody.replaceChildren();
    for (const k of (await keys.json()).keys) {
      tbody.append(el("tr", {}, el("td", {}, k.name), el("td", {}, k.access_key_id),
        el("td", { class: "num" }, String(k.uid)), el("td", { class: "num" }, String(k.gid))));
    }
  }
}

start();
