"""The published schema and the server agree on every pattern and format.

JSON Schema patterns are ECMA-262 regexes (read here by `regress`, with and without the `u` flag, and by the
`jsonschema_rs` validator); the server reads them with pydantic's Rust engine. The two dialects differ on
\\w, \\d, \\s and \\b, on `$` before a newline and, without `u`, on how characters beyond the BMP count. Each
pattern is tried on strings made of the characters where they differ; each free-text field is also sent to
the server and its answer compared with the schema's verdict."""

import re
from typing import Annotated, Any

import jsonschema_rs
import pytest
import regress
from fastapi.testclient import TestClient
from pydantic import Field, TypeAdapter, ValidationError

from tests.conftest import spec

# Where the dialects part: letters, digits and spaces beyond ASCII, controls, line ends, astral characters.
TRICKY = [
    "é",
    "ý",
    "Ж",
    "中",
    "ß",
    "İ",
    "\u212a",
    "٣",
    "５",
    "𝟘",
    "😀",
    "𝔸",
    " ",
    "\u00a0",
    "\u1680",
    "\u2003",
    "\u200b",
    "\u2028",
    "\u3000",
    "\ufeff",
    "\x1c",
    "\x85",
    "\x00",
    "\x7f",
    "\t",
    "\n",
    "\r",
    ",",
    "_",
    "-",
    ".",
    ":",
    "/",
    "@",
    "$",
    "^",
]
# A string each pattern holds (the test fails for a new pattern until it has one).
HOLDS = {
    r"^[0-9a-f]{32}$": "0123456789abcdef0123456789abcdef",
    r"^-?(created|name|status)$": "-created",
    r"^((final|max|min):[A-Za-z0-9_/.\-]{1,200}|diverged)$": "final:val/loss",
    r"^[a-z][a-z0-9_]{0,49}$": "hessian_analysis",
    r"^(json|csv|npz|vtk)$": "vtk",
    r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$": "ada.lovelace@lab",
    r"^[^\x00-\x1f]+$": "digits-mlp lr=0.5",
    r"^[^\x00-\x1f]*$": "cuda:0",
    r"^[A-Za-z0-9_.]+$": "layers.3",
    r"^[A-Za-z0-9_][A-Za-z0-9_/.\-]{0,199}$": "grad/noise_scale",
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$": "mylab.models:build_vit",
    r"^([0-9]{1,10}(,[0-9]{1,10})*)?$": "3,14,15",
    r"^[A-Za-z0-9_/.,\-]*$": "train/loss,val/loss",
    r"^[A-Za-z0-9_/.\-]*$": "val/",
    r"^[A-Za-z0-9_.,]*$": "optimizer.lr,train.seed",
    r"^[A-Za-z0-9_/.,:\-]*$": "final:val/loss,min:train/loss",
    r"^-?[A-Za-z0-9_/.:\-]+$": "-final:val/loss",
}


def _patterns(node: Any, where: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        own = [(where, node["pattern"])] if isinstance(node.get("pattern"), str) else []
        return own + [p for k, v in node.items() for p in _patterns(v, f"{where}/{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _patterns(v, f"{where}/{i}")]
    return []


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    from backend.main import create_app

    return create_app().openapi()


def _holds(pattern: str) -> str:
    if pattern in HOLDS:
        return HOLDS[pattern]
    return "Équipe-7"  # the free-text rules (team names, tags)


def _probes(pattern: str) -> list[str]:
    base = _holds(pattern)
    out = [base, base + "\n", "\n" + base]
    for c in TRICKY:
        out += [base + c, c + base, base[:1] + c + base[1:], c, c * 63, c * 64, c * 65, c * 100, c * 101]
    return out


def _server(pattern: str) -> TypeAdapter:
    return TypeAdapter(Annotated[str, Field(pattern=pattern)])


def _accepts(adapter: TypeAdapter, value: str) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def test_published_patterns_name_their_characters(openapi):
    """\\w, \\d, \\s and \\b are ASCII in ECMA-262 and Unicode on the server: no published pattern uses them."""
    found = _patterns(openapi)
    assert len(found) >= 10
    dialectal = [(where, p) for where, p in found if re.search(r"(?<!\\)(?:\\\\)*\\[wWdDsSbB]", p)]
    assert dialectal == []


def test_every_pattern_reads_alike_on_the_server_and_in_the_schema(openapi):
    disagreements = []
    for where, pattern in sorted(set(_patterns(openapi)), key=lambda wp: wp[1]):
        server = _server(pattern)
        assert _accepts(server, _holds(pattern)), f"add to HOLDS a string that {pattern!r} ({where}) holds"
        readers = {
            "ECMA-262": regress.Regex(pattern).find,
            "ECMA-262 /u": regress.Regex(pattern, "u").find,
            "jsonschema_rs": jsonschema_rs.validator_for({"type": "string", "pattern": pattern}).is_valid,
        }
        for probe in _probes(pattern):
            verdict = _accepts(server, probe)
            for name, reads in readers.items():
                if bool(reads(probe)) != verdict:
                    disagreements.append(f"{pattern!r} on {probe[:12]!r}…: server {verdict}, {name} {not verdict}")
    assert disagreements == [], "\n".join(disagreements[:40])


def _validator(openapi: dict[str, Any], schema: dict[str, Any]) -> Any:
    return jsonschema_rs.validator_for({**schema, "components": openapi["components"]}, validate_formats=True)


def _rejected(response, field: str) -> bool:
    """A 422 naming the field; anything else means the server took the value."""
    return response.status_code == 422 and any(field in map(str, e["loc"]) for e in response.json()["detail"])


NAMES = [
    "Équipe",
    "研究室",
    "Lab ٣",
    "jý",
    "lab 2",
    " lab",
    "lab ",
    "la\u2003b",
    "\u3000lab",
    "a\x85b",
    "a\nb",
    "x" * 100,
    "x" * 101,
    "😀" * 100,
    "😀" * 101,
]
TAGS = ["baseline", "lr:0.1", "é", "中文", "٣٣", "a b", "a,b", "a\u00a0b", "a\u2028b", "_", "😀" * 64, "😀" * 65]
TIMES = [
    "2026-12-03",
    "2026-12-03T10:00:00Z",
    "2026-12-03t10:00:00.1234567z",
    "2026-12-03T10:00:00+05:30",
    "2016-12-31T23:59:60Z",
    "2026-12-03T10:00:00",
    "2026-12-03 10:00:00Z",
    "1700000000",
    "2026-13-03",
    "2026-02-30",
    "2026-12-03T10:60:00Z",
    "yesterday",
]


def test_names_tags_and_times_are_judged_alike_by_the_server_and_the_schema(client: TestClient, openapi):
    job = client.post("/api/v1/jobs", json=spec(steps=10)).json()
    team = _validator(openapi, {"$ref": "#/components/schemas/TeamCreate"})
    update = _validator(openapi, {"$ref": "#/components/schemas/JobUpdate"})
    parameters = {p["name"]: p["schema"] for p in openapi["paths"]["/api/v1/jobs"]["get"]["parameters"]}
    query_tag, query_time = _validator(openapi, parameters["tag"]), _validator(openapi, parameters["created_after"])
    user = _validator(openapi, {"$ref": "#/components/schemas/UserCreate"})
    verdicts = []
    for name in NAMES:
        server = not _rejected(client.post("/api/v1/teams", json={"name": name}), "name")
        verdicts.append(("team name", name, server, team.is_valid({"name": name})))
        server = not _rejected(client.post("/api/v1/users", json={"username": name, "password": "long enough"}), "username")
        verdicts.append(("username", name, server, user.is_valid({"username": name, "password": "long enough"})))
    for tag in TAGS:
        server = not _rejected(client.patch(f"/api/v1/jobs/{job['id']}", json={"tags": [tag]}), "tags")
        verdicts.append(("tag", tag, server, update.is_valid({"tags": [tag]})))
        server = not _rejected(client.get("/api/v1/jobs", params={"tag": tag}), "tag")
        verdicts.append(("tag filter", tag, server, query_tag.is_valid([tag])))
    for moment in TIMES:
        server = not _rejected(client.get("/api/v1/jobs", params={"created_after": moment}), "created_after")
        verdicts.append(("time", moment, server, query_time.is_valid(moment)))
    assert [v for v in verdicts if v[2] != v[3]] == []
    accepted = {(field, value) for field, value, server, _ in verdicts if server}
    assert {("team name", "Équipe"), ("team name", "研究室"), ("tag", "中文"), ("time", "2026-12-03")} <= accepted
    assert not {("team name", " lab"), ("tag", "a b"), ("time", "1700000000"), ("username", "jý")} & accepted
