"""Accounts, teams and the promises of issue 8: default deny, team isolation (404, never 403), no traversal,
CSRF on cookie sessions, hashed secrets, quotas and rate limits with messages that name the limit."""

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.config import Settings, get_settings
from backend.db import session_scope
from backend.models import Analysis, ApiToken, Artifact, Result, User
from backend.queue import make_celery
from backend.services.artifacts import LocalArtifactStore
from backend.services.series import append_points
from tests.conftest import bearer, provision, spec

API = "/api/v1"
PUBLIC = {("GET", "/api/v1/health"), ("POST", "/api/v1/auth/login")}
METHODS = ("get", "post", "put", "patch", "delete")


def operations(client: TestClient) -> list[tuple[str, str]]:
    schema = client.get(f"{API}/openapi.json").json()
    return [(m.upper(), path) for path, item in schema["paths"].items() for m in METHODS if m in item]


def _routes(app) -> list[tuple[str, APIRoute]]:
    """Every API route with its full path (FastAPI keeps included routers apart)."""
    out = []
    for route in app.routes:
        if isinstance(route, APIRoute):
            out.append((route.path, route))
        elif hasattr(route, "original_router"):
            prefix = route.include_context.prefix
            out += [(prefix + r.path, r) for r in route.original_router.routes if isinstance(r, APIRoute)]
    return out


def _decisions(dependant) -> list[str]:
    found = [d.call.authorization for d in dependant.dependencies if hasattr(d.call, "authorization")]
    for sub in dependant.dependencies:
        found += _decisions(sub)
    return found


def test_every_route_declares_an_authorization_decision(client):
    routes = _routes(client.app)
    schema_ops = set(operations(client))
    assert len(schema_ops) > 40
    declared = {(m, path) for path, r in routes for m in r.methods if _decisions(r.dependant)}
    missing = sorted(op for op in schema_ops if op not in declared)
    assert missing == [], f"routes without an authorization decision: {missing}"
    public = {(m, path) for path, r in routes for m in r.methods if "public" in _decisions(r.dependant)}
    assert public & schema_ops == PUBLIC


def test_without_credentials_every_route_but_health_and_login_answers_401(client):
    anonymous = TestClient(client.app, base_url="http://127.0.0.1")
    for method, path in operations(client):
        url = re.sub(r"\{[^}]*_id\}", "1", path).replace("{kind}", "summary").replace("{username}", "x")
        response = anonymous.request(method, url, json={} if method != "GET" else None)
        if (method, path) in PUBLIC:
            assert response.status_code != 401, (method, path)
        elif (method, path) == ("GET", f"{API}/operator/metrics"):  # its own token, not an account's; off until set
            assert response.status_code == 404 and "DYNASCOPE_METRICS_TOKEN" in response.json()["detail"]
        else:
            assert response.status_code == 401, (method, path, response.status_code, response.text)
            assert "sign in" in response.json()["detail"]


@pytest.fixture
def teams(client: TestClient) -> dict[str, Any]:
    """Team b's user bob with a job that has every kind of row (series, result, artifact, analysis), a sweep and
    a dataset; alice (team a) must not reach any of them."""
    url, key = get_settings().database_url, get_settings().secret_key.get_secret_value()
    bob = TestClient(client.app, base_url="http://127.0.0.1", headers=bearer(provision(url, key, "bob", "b")))
    job = bob.post(f"{API}/jobs", json=spec(name="bob-job")).json()
    sweep = bob.post(f"{API}/sweeps", json={**spec(name="bob-sweep"), "sweep": {"optimizer.lr": [0.1, 0.2]}}).json()
    buffer = io.BytesIO()
    np.savez(buffer, X=np.zeros((20, 3), np.float32), y=np.arange(20) % 2)
    dataset = bob.post(
        f"{API}/datasets",
        params={"name": "bob-data", "format": "npz"},
        content=buffer.getvalue(),
        headers={"content-type": "application/octet-stream"},
    ).json()
    stored = LocalArtifactStore(get_settings().artifact_dir).put(b"checkpoint bytes of team b")
    with session_scope() as session:
        append_points(session, job["id"], "train/loss", np.array([0, 1]), np.array([1.0, 0.5]))
        result = Result(job_id=job["id"], kind="summary", step=1, data={"final": {"train/loss": 0.5}})
        analysis = Analysis(job_id=job["id"], kind="hessian", step=1, params={})
        session.add_all([result, analysis])
        session.add(Artifact(id=stored.id, job_id=job["id"], kind="checkpoint", step=1, size=stored.size, sha256=stored.sha256))
        session.flush()
        ids = {
            "job_id": job["id"],
            "sweep_id": sweep["id"],
            "dataset_id": dataset["id"],
            "artifact_id": stored.id,
            "result_id": result.id,
            "analysis_id": analysis.id,
            "kind": "summary",
            "token_id": 0,
        }
    bob_token = bob.get(f"{API}/tokens").json()[0]
    ids["token_id"] = bob_token["id"]
    return {"bob": bob, "ids": ids}


def test_a_member_of_another_team_gets_404_for_every_read_and_write_on_its_rows(client, teams):
    ids, bob = teams["ids"], teams["bob"]
    tried = 0
    for method, path in operations(client):
        names = re.findall(r"\{(\w+)\}", path)
        if not names or not set(names) <= set(ids) or "team" in path:
            continue
        url = path.format(**ids)
        response = client.request(method, url, json={} if method in ("POST", "PUT", "PATCH") else None)
        assert response.status_code == 404, (method, url, response.status_code, response.text[:200])
        tried += 1
        if method == "GET" and not url.endswith(("/events", "/export")):  # the control: the ids are real, and bob reaches them
            assert bob.request(method, url).status_code == 200, (method, url)
    assert tried >= 17  # every route with a job, sweep, dataset, artifact, result, analysis or token id
    # lists, bulk actions, specs naming team b's dataset, an interpolation to team b's job: as if absent
    assert client.get(f"{API}/jobs").json()["total"] == 0 and client.get(f"{API}/datasets").json() == []
    bulk = client.post(f"{API}/jobs/bulk", json={"action": "delete", "ids": [ids["job_id"]]}).json()
    assert bulk == {"done": [], "refused": {str(ids["job_id"]): "no such job"}}
    stolen = client.get(f"{API}/export", params={"ids": str(ids["job_id"]), "format": "csv"})
    assert stolen.status_code == 200 and stolen.headers["x-dynascope-rows"] == "0" and "bob-job" not in stolen.text
    assert client.get(f"{API}/export", params={"sweep_id": ids["sweep_id"]}).headers["x-dynascope-jobs"] == "0"
    assert client.get(f"{API}/compare/groups", params={"ids": str(ids["job_id"]), "series": "train/loss"}).json()["groups"] == []
    assert client.get(f"{API}/jobs-table", params={"sweep_id": ids["sweep_id"]}).json()["total"] == 0
    report = client.get(f"{API}/compare/report.html", params={"sweep_id": ids["sweep_id"]}).text
    assert "<title>Dynascope report: 0 runs</title>" in report and "bob" not in report
    assert bob.get(f"{API}/export", params={"ids": str(ids["job_id"]), "format": "csv"}).text.count("bob-job") == 2  # the control
    raw = spec() | {"data": {"kind": "upload", "dataset": ids["dataset_id"]}}
    refused = client.post(f"{API}/jobs", json=raw)
    assert refused.status_code == 422 and "no uploaded dataset" in refused.text
    own = client.post(f"{API}/jobs", json=spec(name="alice-job")).json()
    stored = LocalArtifactStore(get_settings().artifact_dir).put(b"alice's checkpoint")
    with session_scope() as session:
        session.add(Artifact(id=stored.id, job_id=own["id"], kind="checkpoint", step=0, size=stored.size, sha256=stored.sha256))
    across = client.post(f"{API}/jobs/{own['id']}/analyses", json={"kind": "interpolation", "to_job": ids["job_id"]})
    assert across.status_code == 422 and f"no job {ids['job_id']}" in across.text
    assert bob.get(f"{API}/jobs/{ids['job_id']}").json()["status"] == "queued"  # untouched
    assert client.get(f"{API}/teams").json()[0]["name"] == "a"
    with bob.stream("GET", f"{API}/jobs/{ids['job_id']}/events") as stream:  # bob's own stream opens
        assert stream.status_code == 200
        bob.post(f"{API}/jobs/{ids['job_id']}/cancel")
        assert "event: hello" in next(stream.iter_text())


TRAVERSALS = [
    "../../../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "..%252f..%252fetc%252fpasswd",
    "%2e%2e%2f%2e%2e%2fsecret_key",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "..\\..\\secret_key",
    "..%5c..%5csecret_key",
    "....//....//etc/passwd",
]


def test_no_client_path_reaches_the_filesystem(client, teams, tmp_path: Path):
    bob, job_id = teams["bob"], teams["ids"]["job_id"]
    for evil in TRAVERSALS:
        for url in (f"{API}/jobs/{job_id}/artifacts/{evil}", f"{API}/datasets/{evil}", f"/static/{evil}", f"/static/vendor/{evil}"):
            response = bob.get(url)
            assert response.status_code in (404, 422), (url, response.status_code)
            assert b"root:" not in response.content and b"checkpoint bytes" not in response.content
    # an upload's name is a label: the file goes under a server-made id
    buffer = io.BytesIO()
    np.savez(buffer, X=np.zeros((10, 2), np.float32), y=np.arange(10) % 2)
    made = bob.post(
        f"{API}/datasets",
        params={"name": "../../../evil.npz", "format": "npz"},
        content=buffer.getvalue(),
        headers={"content-type": "application/octet-stream"},
    )
    assert made.status_code == 201 and made.json()["name"] == "../../../evil.npz"
    files = [p.name for p in get_settings().artifact_dir.rglob("*") if p.is_file()]
    assert files and all(re.fullmatch(r"[0-9a-f]{32}", name) for name in files)
    assert not list(tmp_path.parent.rglob("evil.npz"))


def test_uploads_stop_reading_at_the_team_limit(client):
    """(Pickles, zip bombs and counting a stream as it comes: tests/integration/test_uploads.py.)"""
    team_id = client.get(f"{API}/auth/me").json()["team"]["id"]
    assert client.patch(f"{API}/teams/{team_id}/quotas", json={"max_upload_bytes": 1000}).status_code == 200

    body = (b"x" * 500 for _ in range(100))  # streamed, without a Content-Length
    response = client.post(
        f"{API}/datasets", params={"name": "big", "format": "npz"}, content=body, headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 413 and "team's limit of 1000 bytes" in response.json()["detail"]


def test_roles_viewers_read_members_write_owners_manage(client):
    url, key = get_settings().database_url, get_settings().secret_key.get_secret_value()
    job = client.post(f"{API}/jobs", json=spec(name="team-a-job")).json()
    viewer = TestClient(client.app, base_url="http://127.0.0.1", headers=bearer(provision(url, key, "vera", "a", "viewer")))
    member = TestClient(client.app, base_url="http://127.0.0.1", headers=bearer(provision(url, key, "mo", "a", "member")))
    assert viewer.get(f"{API}/jobs/{job['id']}").status_code == 200
    for method, path, body in (
        ("POST", "/jobs", spec()),
        ("POST", f"/jobs/{job['id']}/cancel", None),
        ("PATCH", f"/jobs/{job['id']}", {"tags": ["x"]}),
        ("POST", "/jobs/bulk", {"action": "cancel", "ids": [job["id"]]}),
        ("POST", "/datasets?name=x&format=npz", None),
    ):
        response = viewer.request(method, API + path, json=body)
        assert response.status_code == 403 and "viewer" in response.json()["detail"], (method, path)
    assert viewer.get(f"{API}/jobs/{job['id']}").json()["status"] == "queued"
    assert member.post(f"{API}/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    by_mo = member.post(f"{API}/jobs", json=spec(name="mo-job")).json()
    assert by_mo["creator"] == "mo" and job["creator"] == "alice"
    assert [j["name"] for j in viewer.get(f"{API}/jobs", params={"creator": "MO"}).json()["items"]] == ["mo-job"]
    assert member.put(f"{API}/team/members/vera", json={"role": "member"}).status_code == 403
    assert client.put(f"{API}/team/members/vera", json={"role": "member"}).json() == {"username": "vera", "role": "member"}
    assert client.put(f"{API}/team/members/alice", json={"role": "member"}).status_code == 409  # the last owner stays
    assert client.delete(f"{API}/team/members/mo").status_code == 204
    assert member.get(f"{API}/jobs").status_code == 403  # out of the team: the token no longer reads it
    assert member.post(f"{API}/users", json={"username": "eve", "password": "long enough"}).status_code == 403


def test_cookie_sessions_are_http_only_strict_secure_and_need_the_csrf_token(client):
    assert client.post(f"{API}/users", json={"username": "carol", "password": "correct horse"}).status_code == 201
    assert client.put(f"{API}/team/members/carol", json={"role": "member"}).status_code == 200
    with session_scope() as session:
        assert session.scalar(select(User.password_hash).where(User.username == "carol")).startswith("$argon2id$")
    browser = TestClient(client.app, base_url="https://127.0.0.1")
    assert browser.post(f"{API}/auth/login", json={"username": "carol", "password": "wrong horse"}).status_code == 401
    signed_in = browser.post(f"{API}/auth/login", json={"username": "carol", "password": "correct horse"})
    assert signed_in.status_code == 200
    cookie = signed_in.headers["set-cookie"].lower()
    assert all(part in cookie for part in ("httponly", "samesite=strict", "secure", "path=/"))
    me = signed_in.json()
    assert me["team"]["name"] == "a" and me["csrf_token"]
    assert browser.get(f"{API}/jobs").status_code == 200
    refused = browser.post(f"{API}/jobs", json=spec())
    assert refused.status_code == 403 and "x-csrf-token" in refused.text
    wrong = browser.post(f"{API}/jobs", json=spec(), headers={"x-csrf-token": "0" * 64})
    assert wrong.status_code == 403
    assert browser.post(f"{API}/jobs", json=spec(), headers={"x-csrf-token": me["csrf_token"]}).status_code == 201
    # the cookie is not the secret kept: the table holds only a keyed hash of it
    secret = browser.cookies["dynascope_session"]
    with session_scope() as session:
        from backend.models import WebSession

        assert session.get(WebSession, secret) is None and session.scalars(select(WebSession.id)).all()
    assert browser.post(f"{API}/auth/logout", headers={"x-csrf-token": me["csrf_token"]}).status_code == 204
    assert browser.get(f"{API}/jobs").status_code == 401
    again = TestClient(client.app, base_url="https://127.0.0.1", cookies={"dynascope_session": secret})
    assert again.get(f"{API}/auth/me").status_code == 401  # the old cookie is dead server-side too


def test_switching_team_changes_what_the_dashboard_sees_and_only_to_own_teams(client):
    url, key = get_settings().database_url, get_settings().secret_key.get_secret_value()
    provision(url, key, "dana", "a", "member", password="dana password")
    provision(url, key, "dana", "c", "viewer")
    other = TestClient(client.app, base_url="http://127.0.0.1", headers=bearer(provision(url, key, "zed", "z")))
    other.post(f"{API}/jobs", json=spec(name="in-z"))
    client.post(f"{API}/jobs", json=spec(name="in-a"))
    browser = TestClient(client.app, base_url="https://127.0.0.1")
    me = browser.post(f"{API}/auth/login", json={"username": "dana", "password": "dana password"}).json()
    csrf = {"x-csrf-token": me["csrf_token"]}
    assert [t["name"] for t in me["teams"]] == ["a", "c"] and me["team"]["name"] == "a"
    assert [j["name"] for j in browser.get(f"{API}/jobs").json()["items"]] == ["in-a"]
    team_c = next(t["id"] for t in me["teams"] if t["name"] == "c")
    assert browser.put(f"{API}/auth/team", json={"team_id": team_c}, headers=csrf).json()["team"]["role"] == "viewer"
    assert browser.get(f"{API}/jobs").json()["total"] == 0
    assert browser.post(f"{API}/jobs", json=spec(), headers=csrf).status_code == 403  # a viewer in c
    team_z = other.get(f"{API}/auth/me").json()["team"]["id"]
    assert browser.put(f"{API}/auth/team", json={"team_id": team_z}, headers=csrf).status_code == 404


def test_tokens_are_shown_once_kept_hashed_show_use_and_die_when_revoked(client):
    made = client.post(f"{API}/tokens", json={"name": "laptop"})
    assert made.status_code == 201
    token = made.json()["token"]
    assert token.startswith("dsk_") and made.json()["prefix"] == token[:12]
    with session_scope() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == "laptop"))
        assert token not in (row.token_hash, row.prefix) and len(row.token_hash) == 64 and row.last_used_at is None
    laptop = TestClient(client.app, base_url="http://127.0.0.1", headers=bearer(token))
    assert laptop.get(f"{API}/jobs").status_code == 200
    listed = {t["name"]: t for t in client.get(f"{API}/tokens").json()}
    assert "token" not in listed["laptop"] and listed["laptop"]["last_used_at"] is not None
    assert client.delete(f"{API}/tokens/{listed['laptop']['id']}").json()["revoked_at"] is not None
    dead = laptop.get(f"{API}/jobs")
    assert dead.status_code == 401 and "revoked" in dead.json()["detail"]


def test_a_token_over_its_rate_limit_gets_429_naming_the_limit(client):
    token = client.post(f"{API}/tokens", json={"name": "ci", "rate_limit_per_minute": 3}).json()["token"]
    limited = TestClient(client.app, base_url="http://127.0.0.1", headers=bearer(token))
    assert [limited.get(f"{API}/auth/me").status_code for _ in range(3)] == [200, 200, 200]
    over = limited.get(f"{API}/auth/me")
    assert over.status_code == 429 and "3 requests per minute" in over.json()["detail"] and int(over.headers["retry-after"]) >= 1
    assert client.get(f"{API}/auth/me").status_code == 200  # other tokens are not slowed


def test_sign_in_attempts_are_limited_per_username(client):
    anonymous = TestClient(client.app, base_url="https://127.0.0.1")
    codes = [anonymous.post(f"{API}/auth/login", json={"username": "nobody-here", "password": "guess"}).status_code for _ in range(11)]
    assert codes[:10] == [401] * 10 and codes[10] == 429


def test_the_queued_jobs_quota_answers_429_with_the_limit(client):
    team_id = client.get(f"{API}/auth/me").json()["team"]["id"]
    assert client.patch(f"{API}/teams/{team_id}/quotas", json={"max_queued_jobs": 2}).json()["max_queued_jobs"] == 2
    assert [client.post(f"{API}/jobs", json=spec()).status_code for _ in range(2)] == [201, 201]
    over = client.post(f"{API}/jobs", json=spec())
    assert over.status_code == 429 and "quota of 2 queued jobs" in over.json()["detail"]
    sweep = client.post(f"{API}/sweeps", json={**spec(), "sweep": {"optimizer.lr": [0.1, 0.2]}})
    assert sweep.status_code == 429
    assert client.get(f"{API}/team/quotas").json()["queued"] == 2


def test_secrets_have_no_usable_default_outside_the_embedded_mode(monkeypatch):
    monkeypatch.delenv("DYNASCOPE_SECRET_KEY", raising=False)
    with pytest.raises(ValueError, match="DYNASCOPE_SECRET_KEY must be set"):
        Settings(database_url="postgresql+psycopg://u@db/dynascope")
    with pytest.raises(ValueError, match="at least 32"):
        Settings(database_url="postgresql+psycopg://u@db/dynascope", secret_key="short")
    celery = make_celery(Settings(database_url="sqlite://", broker_url="redis://127.0.0.1:6379/11"))
    assert celery.conf.accept_content == ["json"] and celery.conf.task_serializer == "json"


def test_server_side_cli_makes_accounts_teams_tokens_and_sign_in_codes(tmp_path: Path, embedded_redis: str, monkeypatch):
    import subprocess
    import sys

    from backend.main import create_app
    from tests.conftest import reset_caches

    env = {
        "DYNASCOPE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "DYNASCOPE_BROKER_URL": embedded_redis,
        "DYNASCOPE_ADMIN_USERNAME": "root",
        "DYNASCOPE_ADMIN_PASSWORD": "first admin password",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DYNASCOPE_SECRET_KEY", raising=False)

    def cli(*args: str, stdin: str | None = None) -> str:
        import os

        done = subprocess.run(
            [sys.executable, "-m", "dynascope.cli", *args], env=os.environ.copy(), cwd=tmp_path, input=stdin, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "made the first account: root" in cli("migrate")
    assert "made the first account" not in cli("migrate")  # only while there is no account
    made = cli("user", "create", "ada", "--admin", "--team", "lab")
    password = made.split("password (shown once): ")[1].split()[0]
    cli("user", "create", "bo", "--password-stdin", stdin="bo's long password\n")
    cli("team", "add", "lab", "bo", "--role", "viewer")
    token = cli("token", "create", "ada", "--team", "lab", "--name", "ci").strip()
    code = cli("user", "login-code", "bo").strip()
    reset_caches()
    app = create_app()
    me = TestClient(app, base_url="http://127.0.0.1", headers=bearer(token)).get(f"{API}/auth/me").json()
    assert (me["username"], me["is_admin"], me["team"]["name"], me["team"]["role"]) == ("ada", True, "lab", "owner")
    browser = TestClient(app, base_url="https://127.0.0.1")
    assert browser.post(f"{API}/auth/login", json={"username": "ada", "password": password}).status_code == 200
    root = browser.post(f"{API}/auth/login", json={"username": "root", "password": "first admin password"}).json()
    assert root["is_admin"] and root["team"] == {"id": root["team"]["id"], "name": "default", "role": "owner"}
    bo = browser.post(f"{API}/auth/login", json={"code": code}).json()
    assert (bo["username"], bo["team"]["role"]) == ("bo", "viewer")
    assert browser.post(f"{API}/auth/login", json={"code": code}).status_code == 401  # once only
    assert browser.post(f"{API}/auth/login", json={"username": "bo", "password": "bo's long password"}).status_code == 200
    reset_caches()


def test_the_api_docs_page_allows_only_its_cdn_and_its_own_script(client):
    response = client.get(f"{API}/docs")
    [csp] = response.headers.get_list("content-security-policy")
    script_src = dict(part.strip().split(" ", 1) for part in csp.split(";"))["script-src"].split()
    assert "'unsafe-inline'" not in script_src and "https://cdn.jsdelivr.net" in script_src
    assert sum(s.startswith("'sha256-") for s in script_src) == 1 and "<script>" in response.text


def test_an_open_event_stream_closes_when_its_token_is_revoked(client, monkeypatch):
    import time

    from backend.api import events

    monkeypatch.setattr(events, "RECHECK_SECONDS", 0.5)
    job = client.post(f"{API}/jobs", json=spec(name="watched")).json()  # queued: its stream stays open
    token = client.post(f"{API}/tokens", json={"name": "watcher"}).json()
    watcher = TestClient(client.app, base_url="http://127.0.0.1", headers=bearer(token["token"]))
    with watcher.stream("GET", f"{API}/jobs/{job['id']}/events") as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(lines) == "event: hello"
        client.delete(f"{API}/tokens/{token['id']}")
        began = time.monotonic()
        for _ in lines:  # ends by itself: the server closes the stream
            assert time.monotonic() - began < 20
    assert time.monotonic() - began < 20
