// Signing in, the user menu (team switch, sign out) and the account page (tokens, members, quotas).
import { api, esc, errorText, setCsrfToken } from "./common.js";

export const session = { me: null };

function remember(me) {
  session.me = me;
  document.body.dataset.role = me?.team?.role ?? "none";  // a viewer's page hides what it may not do
  setCsrfToken(me?.csrf_token ?? null);
  renderUserMenu();
  return me;
}

export async function loadMe() {
  try {
    return remember(await api("/auth/me"));
  } catch (err) {
    if (err.status === 401) return remember(null);
    throw err;
  }
}

export async function signInWithCode(code) {
  try {
    return remember(await api("/auth/login", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ code }) }));
  } catch (err) {
    return null;
  }
}

export const canWrite = () => ["member", "owner"].includes(session.me?.team?.role);

function renderUserMenu() {
  const menu = document.getElementById("user-menu");
  const me = session.me;
  document.getElementById("nav-new").hidden = !canWrite();
  if (!me) { menu.innerHTML = ""; return; }
  const teams = me.teams.map((t) => `<option value="${t.id}" ${t.id === me.team?.id ? "selected" : ""}>${esc(t.name)} (${t.role})</option>`).join("");
  menu.innerHTML = `
    <label>Team <select id="team-switch">${teams || "<option>no team</option>"}</select></label>
    <a href="#/account" id="nav-account">${esc(me.username)}</a>
    <button id="sign-out" type="button">Sign out</button>`;
  menu.querySelector("#team-switch").addEventListener("change", async (e) => {
    remember(await api("/auth/team", { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify({ team_id: Number(e.target.value) }) }));
    window.dispatchEvent(new Event("hashchange"));
  });
  menu.querySelector("#sign-out").addEventListener("click", async () => {
    await api("/auth/logout", { method: "POST" }).catch(() => {});
    remember(null);
    window.dispatchEvent(new Event("hashchange"));
  });
}

export function renderSignIn(view, onDone) {
  view.innerHTML = `
    <h1>Sign in</h1>
    <form id="sign-in" class="stack" autocomplete="on">
      <label>Username <input id="username" name="username" autocomplete="username" required></label>
      <label>Password <input id="password" name="password" type="password" autocomplete="current-password" required></label>
      <button type="submit">Sign in</button>
      <p id="sign-in-error" class="error-text" role="alert"></p>
    </form>
    <p class="muted">Running it yourself? <code>dynascope serve</code> prints a one-time sign-in link for the local user.</p>`;
  view.querySelector("#username").focus();
  view.querySelector("#sign-in").addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { username: view.querySelector("#username").value, password: view.querySelector("#password").value };
    try {
      remember(await api("/auth/login", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) }));
      onDone();
    } catch (err) {
      view.querySelector("#sign-in-error").textContent = errorText(err);
    }
  });
  return () => {};
}

const fmt = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const json = (method, body) => ({ method, headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

export function renderAccount(view) {
  const me = session.me;
  const owner = me.team?.role === "owner";
  view.innerHTML = `
    <h1>Account: ${esc(me.username)}${me.is_admin ? ' <span class="tag">admin</span>' : ""}</h1>
    <section aria-labelledby="tokens-h"><h2 id="tokens-h">API tokens</h2>
      <p class="muted">A token acts in the team it is made in (now: ${esc(me.team?.name ?? "none")}), with your role there. Use it as
      <code>Authorization: Bearer …</code> or <code>DYNASCOPE_TOKEN</code> for the CLI.</p>
      <form id="token-form" class="toolbar"><label>Name <input id="token-name" required maxlength="100"></label><button type="submit">Create token</button></form>
      <div id="token-new" role="status"></div>
      <table id="tokens-table"><thead><tr><th>Name</th><th>Prefix</th><th>Team</th><th>Created</th><th>Last used</th><th>State</th><th></th></tr></thead><tbody></tbody></table>
    </section>
    <section aria-labelledby="team-h"><h2 id="team-h">Team ${esc(me.team?.name ?? "")}</h2>
      <p id="quotas" class="muted"></p>
      <table id="members-table"><thead><tr><th>Member</th><th>Role</th><th></th></tr></thead><tbody></tbody></table>
      ${owner ? `<form id="member-form" class="toolbar"><label>Username <input id="member-name" required></label>
        <label>Role <select id="member-role"><option>member</option><option>viewer</option><option>owner</option></select></label><button type="submit">Add or change</button></form>` : ""}
      <p id="team-error" class="error-text" role="alert"></p>
    </section>
    ${me.is_admin ? `<section aria-labelledby="admin-h"><h2 id="admin-h">Administration</h2>
      <form id="user-form" class="toolbar"><label>New account <input id="new-user" required></label><label>Password <input id="new-password" type="password" minlength="8" required autocomplete="new-password"></label><button type="submit">Create account</button></form>
      <form id="team-form" class="toolbar"><label>New team <input id="new-team" required></label><button type="submit">Create team</button></form>
      <p id="admin-state" role="status"></p></section>` : ""}
    <section aria-labelledby="password-h"><h2 id="password-h">Password</h2>
      <form id="password-form" class="toolbar"><label>Current <input id="pw-current" type="password" autocomplete="current-password"></label>
      <label>New <input id="pw-new" type="password" minlength="8" required autocomplete="new-password"></label><button type="submit">Change</button></form>
      <p id="password-state" role="status"></p></section>`;
  const teamName = Object.fromEntries(me.teams.map((t) => [t.id, t.name]));
  const drawTokens = async () => {
    const rows = await api("/tokens");
    view.querySelector("#tokens-table tbody").innerHTML = rows.map((t) => `<tr><td>${esc(t.name)}</td><td><code>${esc(t.prefix)}…</code></td>
      <td>${esc(teamName[t.team_id] ?? t.team_id)}</td><td>${fmt(t.created_at)}</td><td>${fmt(t.last_used_at)}</td>
      <td>${t.revoked_at ? `revoked ${fmt(t.revoked_at)}` : "active"}</td>
      <td>${t.revoked_at ? "" : `<button class="danger revoke" data-id="${t.id}" aria-label="revoke token ${esc(t.name)}">Revoke</button>`}</td></tr>`).join("");
  };
  const drawTeam = async () => {
    if (!me.team) return;
    const [members, q] = await Promise.all([api("/team/members"), api("/team/quotas")]);
    view.querySelector("#quotas").textContent = `Quotas: ${q.running} of ${q.max_running_jobs} running, ${q.queued} of ${q.max_queued_jobs} queued, uploads up to ${(q.max_upload_bytes / 1e6).toFixed(0)} MB.`;
    view.querySelector("#members-table tbody").innerHTML = members.map((m) => `<tr><td>${esc(m.username)}</td><td>${m.role}</td>
      <td>${owner && m.username !== me.username ? `<button class="danger remove-member" data-name="${esc(m.username)}" aria-label="remove ${esc(m.username)}">Remove</button>` : ""}</td></tr>`).join("");
  };
  const teamError = (err) => { view.querySelector("#team-error").textContent = errorText(err); };
  view.querySelector("#token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const made = await api("/tokens", json("POST", { name: view.querySelector("#token-name").value }));
      view.querySelector("#token-new").innerHTML = `<p>Copy it now: it is not shown again.</p><code id="new-token">${esc(made.token)}</code>`;
      await drawTokens();
    } catch (err) { view.querySelector("#token-new").textContent = errorText(err); }
  });
  view.querySelector("#tokens-table").addEventListener("click", async (e) => {
    if (e.target.classList.contains("revoke")) { await api(`/tokens/${e.target.dataset.id}`, { method: "DELETE" }); await drawTokens(); }
  });
  view.querySelector("#member-form")?.addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = encodeURIComponent(view.querySelector("#member-name").value);
    await api(`/team/members/${name}`, json("PUT", { role: view.querySelector("#member-role").value })).then(drawTeam, teamError);
  });
  view.querySelector("#members-table").addEventListener("click", async (e) => {
    if (e.target.classList.contains("remove-member")) await api(`/team/members/${encodeURIComponent(e.target.dataset.name)}`, { method: "DELETE" }).then(drawTeam, teamError);
  });
  const adminState = (text) => { view.querySelector("#admin-state").textContent = text; };
  view.querySelector("#user-form")?.addEventListener("submit", async (e) => {
    e.preventDefault();
    await api("/users", json("POST", { username: view.querySelector("#new-user").value, password: view.querySelector("#new-password").value }))
      .then((u) => adminState(`account ${u.username} made: add it to a team above`), (err) => adminState(errorText(err)));
  });
  view.querySelector("#team-form")?.addEventListener("submit", async (e) => {
    e.preventDefault();
    await api("/teams", json("POST", { name: view.querySelector("#new-team").value }))
      .then(async (t) => { adminState(`team ${t.name} made; you own it`); await loadMe(); }, (err) => adminState(errorText(err)));
  });
  view.querySelector("#password-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    await api("/auth/password", json("PUT", { current: view.querySelector("#pw-current").value, new: view.querySelector("#pw-new").value }))
      .then(() => { view.querySelector("#password-state").textContent = "password changed"; }, (err) => { view.querySelector("#password-state").textContent = errorText(err); });
  });
  drawTokens().catch(console.error);
  drawTeam().catch(teamError);
  return () => {};
}
