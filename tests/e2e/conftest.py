import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import OUTPUT_DIR, Serve, unavailable

CHROMIUM = os.environ.get("DYNASCOPE_CHROMIUM", "/usr/bin/chromium")
# As root in a container, without a sandbox, and without the background traffic a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    data = tmp_path_factory.mktemp("datasets")  # the worker's data root, which tests fill
    serve = Serve(tmp_path_factory.mktemp("e2e"), {"DYNASCOPE_ENTRYPOINTS": "dynascope_testlab.,mylab.", "DYNASCOPE_DATA_DIR": str(data)})
    serve.data_dir = data
    yield serve
    serve.ctrl_c()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, served: Serve, request: pytest.FixtureRequest):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=f"http://127.0.0.1:{served.port}")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    if "signed_out" not in request.keywords:  # signed in as the local user, by a one-time link
        pg.goto(f"/#login={served.login_code()}")
        pg.wait_for_selector("#nav-account")
    yield pg
    out = OUTPUT_DIR / "e2e"
    out.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(out / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
