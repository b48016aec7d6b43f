"""The gallery (make gallery): every spec is valid and runs on the embedded server; the README's gallery is the
committed index's, word for word and number for number, and its pictures are there and small."""

import json

import pytest
import yaml

from backend.spec import JobSpec, parse_spec_text
from backend.sweeps import expand
from gallery import index
from gallery.phenomena import PHENOMENA
from tests.conftest import Serve

SPECS = index.ROOT / "examples" / "gallery"


def test_every_gallery_spec_is_valid_and_belongs_to_one_phenomenon():
    assert sorted(p.spec for p in PHENOMENA) == sorted(f.name for f in SPECS.glob("*.yaml"))
    for phenomenon in PHENOMENA:
        raw = parse_spec_text((SPECS / phenomenon.spec).read_text())
        if "sweep" in raw:
            assert len(expand(raw, 100)) > 1
        else:
            JobSpec.model_validate(raw)


def test_the_readme_gallery_is_the_committed_index_and_its_pictures_are_small():
    committed = json.loads(index.INDEX.read_text())
    assert [e["name"] for e in committed["phenomena"]] == [p.name for p in PHENOMENA]
    assert index.readme_section(committed) in index.README.read_text()
    assert (index.DOCS / "index.md").read_text() == index.page(committed)
    for entry in committed["phenomena"]:
        picture = index.DOCS / f"{entry['name']}.png"
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size <= 300_000, picture
        for value in entry["measured"].values():
            assert isinstance(value, float)


def _short(text: str) -> str:
    """The spec for a few steps: a sweep keeps its first value of each field."""
    raw = yaml.safe_load(text)
    raw["train"] |= {"steps": 4, "eval_every": 2} | ({"checkpoint_every": 2} if raw["train"].get("checkpoint_every") else {})
    if "sweep" in raw:
        raw["sweep"] = {field: values[:1] for field, values in raw["sweep"].items()}
    return yaml.safe_dump(raw)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    serve = Serve(tmp_path_factory.mktemp("gallery"))
    yield serve
    serve.ctrl_c()


def test_each_gallery_spec_runs_a_few_steps_on_the_embedded_server(served: Serve):
    made = {}
    for phenomenon in PHENOMENA:
        text = _short((SPECS / phenomenon.spec).read_text())
        sweep = "sweep" in yaml.safe_load(text)
        response = served.client.post("/sweeps" if sweep else "/jobs", content=text, headers={"content-type": "application/yaml"})
        assert response.status_code == 201, (phenomenon.name, response.text)
        made[phenomenon.name] = response.json()["jobs"][0]["id"] if sweep else response.json()["id"]
    for name, job_id in made.items():
        job = served.job_when(job_id, lambda j: j["status"] not in ("queued", "running"), 300)
        assert job["status"] == "succeeded", (name, job["error"])
