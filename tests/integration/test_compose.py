"""docker-compose.yml: valid against the Compose specification, and every command it runs exists here."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml

from dynascope.cli import app
from tests.conftest import ROOT, reset_caches

COMPOSE = ROOT / "docker-compose.yml"
OURS = {"migrate", "api", "worker"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_valid_against_compose_spec():
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    result = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stack_has_its_services_and_health_gates(compose):
    services = compose["services"]
    assert {"api", "worker", "postgres", "redis", "migrate"} <= set(services)
    for name in ("postgres", "redis", "api", "worker"):
        assert "healthcheck" in services[name], name
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["restart"] == "no"
    assert "--concurrency" in services["worker"]["command"]
    assert services["worker"]["command"][services["worker"]["command"].index("--concurrency") + 1] == "1"
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for name in ("postgres", "redis"):
        assert "ports" not in services[name], f"{name} must not be exposed"
    assert all(p.startswith("127.0.0.1:") for p in services["api"]["ports"])


def test_secrets_are_required_not_defaulted(compose):
    env = compose["x-dynascope-env"]
    assert ":?" in env["DYNASCOPE_SECRET_KEY"] and ":?" in env["DYNASCOPE_DATABASE_URL"]
    assert ":?" in compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]


def test_every_command_of_ours_exists(compose):
    commands = typer.main.get_command(app).commands
    for name in OURS:
        argv = compose["services"][name]["command"]
        assert argv[0] == "dynascope", f"{name} runs {argv[0]}"
        assert argv[1] in commands, f"{name}: `dynascope {argv[1]}` does not exist"
        params = {opt for p in commands[argv[1]].params for opt in p.opts}
        for arg in argv[2:]:
            if arg.startswith("--"):
                assert arg in params, f"{name}: `dynascope {argv[1]}` has no option {arg}"


def test_health_checks_of_ours_run_real_code(compose, monkeypatch):
    api_check = compose["services"]["api"]["healthcheck"]["test"]
    assert api_check[1:3] == ["python", "-c"]
    compile(api_check[3], "healthcheck", "exec")
    assert re.search(r"/api/v1/health", api_check[3])
    worker_check = compose["services"]["worker"]["healthcheck"]["test"]
    assert worker_check[1:4] == ["celery", "-A", "worker.tasks"]
    monkeypatch.setenv("DYNASCOPE_BROKER_URL", "redis://127.0.0.1:6379/15")  # importing connects nothing
    reset_caches()
    import importlib

    tasks = importlib.import_module("worker.tasks")
    assert "dynascope.run_job" in tasks.celery_app.tasks
    reset_caches()


def test_build_targets_exist(compose):
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\w+)$", dockerfile, flags=re.M))
    for name in OURS:
        assert compose["services"][name]["build"]["target"] in stages
    for copied in re.findall(r"^COPY (\S+) ", dockerfile, flags=re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies missing {copied}"
    # `pip install .` leaves frontend/ and alembic.ini out of site-packages: the image imports the code from
    # its working directory, where they lie beside it.
    workdir = re.search(r"^WORKDIR (\S+)$", dockerfile, flags=re.M).group(1)
    assert re.search(rf"^ENV .*\bPYTHONPATH={re.escape(workdir)}\b", dockerfile, flags=re.M)
