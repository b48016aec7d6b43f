"""The dashboard in headless Chromium against `dynascope serve`: what a user sees and clicks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import OUTPUT_DIR, Serve, spec
from tests.helpers import TEACHER, deep_linear_job, planted_pair_job

pytestmark = pytest.mark.e2e

TRACE_LEN = "(id, i) => document.getElementById(id)?.data?.[i]?.x?.length ?? 0"


def trace(page, plot: str, i: int) -> dict:
    return page.evaluate(
        "([id, i]) => { const t = document.getElementById(id).data[i]; return {name: t.name, x: Array.from(t.x), y: Array.from(t.y)}; }",
        [plot, i],
    )


def test_submit_the_example_from_the_form_and_watch_it_live(page, served: Serve):
    page.goto("/#/new")
    page.wait_for_function("document.querySelector('#spec-editor').value.includes('digits')")
    text = page.input_value("#spec-editor").replace("steps: 2000", "steps: 25000").replace("digits-mlp-lr0.5", "e2e-live")
    page.fill("#spec-editor", text)
    page.click("#submit-job")
    page.wait_for_url("**/#/jobs/*")
    job_id = int(page.url.rsplit("/", 1)[1])
    # Live: while the job runs, the loss curve grows without a reload.
    page.wait_for_function(
        f"document.querySelector('#job-status')?.textContent === 'running' && ({TRACE_LEN})('loss-plot', 0) > 0", timeout=60_000
    )
    first = page.evaluate(f"({TRACE_LEN})('loss-plot', 0)")
    page.wait_for_function(f"({TRACE_LEN})('loss-plot', 0) > {first}", timeout=30_000)
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'succeeded'", timeout=180_000)
    assert page.evaluate("document.querySelector('#progress-bar').value") == 1
    loss = trace(page, "loss-plot", 0)
    assert loss["name"] == "train/loss" and len(loss["x"]) > 100
    assert all(isinstance(v, (int, float)) for v in loss["y"]) and loss["y"][-1] < loss["y"][0]
    val = trace(page, "acc-plot", 1)
    assert val["name"] == "val/accuracy" and val["x"][-1] == 25_000 and val["y"][-1] > 0.8
    api = served.client.get(f"/jobs/{job_id}").json()
    assert api["status"] == "succeeded" and api["name"] == "e2e-live"
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "job-succeeded.png"), full_page=True)


def test_validation_errors_show_next_to_the_field(page, served: Serve):
    before = served.client.get("/jobs").json()["total"]
    page.goto("/#/new")
    page.wait_for_function("document.querySelector('#spec-editor').value.includes('digits')")
    text = page.input_value("#spec-editor").replace("lr: 0.5", "lr: -1").replace("kind: mlp", "kind: mlpp")
    page.fill("#spec-editor", text)
    page.click("#submit-job")
    lr = page.wait_for_selector("#spec-errors li[data-field='optimizer.lr']")
    assert "greater than 0" in lr.inner_text() and "line 4" in lr.inner_text()
    assert page.query_selector("#spec-errors li[data-field='model.kind']") is not None
    lr.click()  # selects the offending line in the editor
    selected = page.evaluate(
        "(() => { const e = document.querySelector('#spec-editor'); return e.value.slice(e.selectionStart, e.selectionEnd); })()"
    )
    assert "lr: -1" in selected
    page.fill("#spec-editor", text.replace("lr: -1", "lr: 0.5").replace("kind: mlpp", "kind: mlp"))
    page.click("#check-spec")
    page.wait_for_function("document.querySelector('#submit-state').textContent.startsWith('valid')")
    assert "26,122 parameters" in page.inner_text("#submit-state")  # 64·128+128 + 128·128+128 + 128·10+10
    page.fill("#spec-editor", "name: [broken")
    page.click("#submit-job")
    assert "not valid YAML" in page.wait_for_selector("#spec-errors li[data-field='spec']").inner_text()
    assert served.client.get("/jobs").json()["total"] == before


def test_cancel_from_the_job_page(page, served: Serve):
    job = served.client.post("/jobs", json=spec(steps=2_000_000, name="e2e-cancel")).json()
    page.goto(f"/#/jobs/{job['id']}")
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'running'", timeout=60_000)
    page.click("#cancel-job")
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'cancelled'", timeout=15_000)
    assert served.client.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"


def test_job_list_filters_and_searches(page, served: Serve):
    cancelled = served.client.post("/jobs", json=spec(steps=2_000_000, name="gamma-cancelled")).json()
    served.client.post(f"/jobs/{cancelled['id']}/cancel")  # (queued or running: it ends cancelled either way)
    served.job_when(cancelled["id"], lambda j: j["status"] == "cancelled", 60)
    for name in ("alpha-one", "alpha-two", "beta-one"):
        made = served.client.post("/jobs", json=spec(steps=20, name=name)).json()
        served.job_when(made["id"], lambda j: j["status"] == "succeeded", 60)
    page.goto("/#/jobs")
    page.wait_for_selector("tr.job-row")
    page.fill("#search", "alpha")
    page.wait_for_function(
        "[...document.querySelectorAll('tr.job-row td:nth-child(3)')].map(t => t.textContent).join() === 'alpha-two,alpha-one'"
    )
    assert "q=alpha" in page.url, "the search is kept in the URL"
    page.select_option("#status-filter", "cancelled")
    page.wait_for_function("document.querySelectorAll('tr.job-row').length === 0")
    page.fill("#search", "")
    page.wait_for_function(
        "[...document.querySelectorAll('tr.job-row td:nth-child(4)')].every(t => t.textContent === 'cancelled') && document.querySelectorAll('tr.job-row').length >= 1"
    )
    page.select_option("#status-filter", "")
    page.wait_for_selector("tr.job-row >> text=beta-one")
    header = page.inner_text("#jobs-table thead")
    for column in ("Name", "Status", "Duration", "Created"):
        assert column in header
    page.focus("tr.job-row:has-text('beta-one')")  # the keyboard opens a job as a click does
    page.keyboard.press("Enter")
    page.wait_for_url("**/#/jobs/*")
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'succeeded'")
    # tags and notes on the job, then the history filtered by tag, sorted, and pruned in bulk
    page.fill("#job-tags", "keeper, e2e")
    page.fill("#job-notes", "the one to keep")
    page.click("#save-annotations")
    page.wait_for_function("document.querySelector('#annotations-state').textContent === 'saved'")
    beta = int(page.url.rsplit("/", 1)[1].split("?")[0])
    assert served.client.get(f"/jobs/{beta}").json()["tags"] == ["e2e", "keeper"]
    page.goto("/#/jobs?tag=keeper")
    page.wait_for_function("[...document.querySelectorAll('tr.job-row td:nth-child(3)')].map(t => t.textContent).join() === 'beta-one'")
    assert page.input_value("#tag-filter") == "keeper" and "keeper" in page.inner_text("tr.job-row")
    page.goto("/#/jobs?q=alpha&sort=name")
    page.wait_for_function(
        "[...document.querySelectorAll('tr.job-row td:nth-child(3)')].map(t => t.textContent).join() === 'alpha-one,alpha-two'"
    )
    page.check("#select-all")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#bulk-delete")
    page.wait_for_function("document.querySelectorAll('tr.job-row').length === 0")
    assert "deleted 2" in page.inner_text("#bulk-state")
    assert [j["name"] for j in served.client.get("/jobs", params={"q": "alpha"}).json()["items"]] == []


def test_a_tracked_run_is_marked_in_the_history_filtered_by_source_and_drawn_live(page, served: Serve):
    run = served.client.post("/runs", json={"name": "e2e-tracked", "config": {"lr": 0.1}, "facts": {"host": "lab-7"}}).json()
    points = lambda steps: {"points": [{"name": "train/loss", "step": s, "value": 1 / (s + 1)} for s in steps]}  # noqa: E731
    served.client.post(f"/runs/{run['id']}/points", json=points(range(20)))
    page.goto("/#/jobs")
    badge = "tr.job-row:has-text('e2e-tracked') .tracked"
    page.wait_for_selector(badge)
    assert page.inner_text(badge) == "tracked on lab-7"
    page.select_option("#source-filter", "tracked")
    page.wait_for_function(
        "(() => { const rows = [...document.querySelectorAll('tr.job-row')]; return rows.length >= 1 && rows.every(r => r.querySelector('.tracked')); })()"
    )
    assert "source=tracked" in page.url
    page.select_option("#source-filter", "server")
    page.wait_for_function("![...document.querySelectorAll('tr.job-row')].some(r => r.querySelector('.tracked'))")
    page.goto(f"/#/jobs/{run['id']}")
    loss_points = "document.getElementById('loss-plot')?.data?.[0]?.x?.length"
    page.wait_for_function(f"document.querySelector('#job-status')?.textContent === 'running' && {loss_points} === 20")
    served.client.post(f"/runs/{run['id']}/points", json=points(range(20, 30)))  # the tracker sends more: the curve grows
    page.wait_for_function(f"{loss_points} === 30")
    served.client.post(f"/runs/{run['id']}/finish", json={"status": "succeeded"})
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'succeeded'")
    facts = page.inner_text("#job-facts")
    assert "tracked on\nlab-7" in facts and "framework\npytorch" in facts and "attempts" not in facts
    assert not page.is_visible("#clone-job") and not page.is_visible("#job-analyses")  # nothing to clone or analyse
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "tracked-run.png"), full_page=True)


def test_hessian_views_draw_sharpness_threshold_and_density(page, served: Serve):
    raw = spec(steps=400, lr=0.5, name="e2e-hessian")
    raw["model"]["activation"] = "tanh"
    raw["probes"] = {"hessian": {"every": 50, "top_k": 3, "density": True, "examples": 600}}
    job = served.client.post("/jobs", json=raw).json()
    page.goto(f"/#/jobs/{job['id']}")
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'succeeded'", timeout=180_000)
    # The density follows the newest result: the one at the end of training, once the job is over.
    page.wait_for_function("document.getElementById('density-plot')?.dataset.step === '400'", timeout=30_000)
    api = served.client.get(f"/jobs/{job['id']}/metrics", params={"names": "hessian/lambda_1,hessian/threshold"}).json()
    lam, thr = api["series"]
    drawn = trace(page, "sharpness-plot", 0)
    assert drawn["x"] == lam["steps"] == list(range(0, 401, 50))
    assert drawn["y"] == lam["values"]
    threshold = trace(page, "sharpness-plot", 3)
    assert threshold["y"] == thr["values"] == [4.0] * 9
    crossing = page.evaluate("document.getElementById('sharpness-plot').dataset.crossing")
    expected = next((s for s, v in zip(lam["steps"], lam["values"]) if v >= 4.0), None)
    assert crossing == ("" if expected is None else str(expected))
    [latest] = served.client.get(f"/jobs/{job['id']}/results/hessian", params={"last": 1}).json()
    density = trace(page, "density-plot", 0)
    assert latest["step"] == 400 and len(density["x"]) == len(latest["data"]["density"]["grid"])
    assert trace(page, "density-plot", 1)["x"] == latest["data"]["eigenvalues"]
    page.wait_for_function("document.querySelector('#job-facts').textContent.includes('hessian')")
    summary = served.client.get(f"/jobs/{job['id']}/results/summary").json()[-1]["data"]
    facts = page.inner_text("#job-facts")
    assert f"hessian {summary['probe_seconds']['hessian']:.1f} s" in facts and "training" in facts
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "hessian-views.png"), full_page=True)


def test_submit_a_sweep_from_the_form(page, served: Serve):
    page.goto("/#/new")
    page.wait_for_function("document.querySelector('#spec-editor').value.includes('digits')")
    text = page.input_value("#spec-editor").replace("steps: 2000", "steps: 50").replace("digits-mlp-lr0.5", "e2e-grid")
    page.fill("#spec-editor", text + "sweep: {optimizer.lr: [0.1, 0.2], train.seed: [0, 1, 2]}\n")
    page.click("#submit-job")
    page.wait_for_url("**/#/jobs?sweep=*")
    page.wait_for_function("document.querySelectorAll('tr.job-row').length === 6")
    page.wait_for_function(
        "[...document.querySelectorAll('tr.job-row td:nth-child(4)')].every(t => t.textContent === 'succeeded')", timeout=120_000
    )
    names = page.eval_on_selector_all("tr.job-row td:nth-child(3)", "els => els.map(e => e.textContent)")
    assert sorted(names) == sorted(f"e2e-grid[lr={lr},seed={s}]" for lr in ("0.1", "0.2") for s in range(3))
    # the sweep as a phase diagram: final validation accuracy over lr × seed, cells open their job
    page.click("#compare-sweep-link")
    page.wait_for_function("document.getElementById('phase-plot')?.dataset.metric === 'final:val/loss'")
    page.fill("#phase-metric", "final:val/accuracy")
    page.click("#phase-draw")
    page.wait_for_function("document.getElementById('phase-plot')?.dataset.metric === 'final:val/accuracy'")
    sweep_id = page.url.split("sweep=")[1].split("&")[0]
    phase = served.client.get(f"/sweeps/{sweep_id}/phase", params={"metric": "final:val/accuracy"}).json()
    drawn = page.evaluate("document.getElementById('phase-plot').data[0].z")
    assert drawn == phase["z"] and len(drawn) == 3 and len(drawn[0]) == 2 and all(0.5 < v <= 1 for row in drawn for v in row)
    assert "metric=final%3Aval%2Faccuracy" in page.url
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "phase-diagram.png"), full_page=True)
    # the sweep's series as one long table: from the job list, and from the CLI
    recorded = sum(
        s["total_points"]
        for j in served.client.get("/jobs", params={"sweep_id": sweep_id}).json()["items"]
        for s in served.client.get(f"/jobs/{j['id']}/metrics", params={"max_points": 10}).json()["series"]
    )
    page.goto(f"/#/jobs?sweep={sweep_id}")
    page.wait_for_function("document.querySelectorAll('tr.job-row').length === 6")
    page.select_option("#export-format", "csv")
    with page.expect_download() as download:
        page.click("#export-link")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0] == '"job_id","job_name","optimizer.lr","train.seed","series","step","value"' and len(lines) - 1 == recorded
    token = served.client.headers["authorization"].removeprefix("Bearer ")
    env = {**os.environ, "DYNASCOPE_URL": f"http://127.0.0.1:{served.port}", "DYNASCOPE_TOKEN": token, "COLUMNS": "150"}
    out = OUTPUT_DIR / "e2e" / "sweep-export.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "dynascope.cli", "export", str(out), "--sweep", sweep_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{recorded:,} rows of 6 jobs (parquet)" in done.stdout
    import pyarrow.parquet as pq

    assert pq.read_metadata(out).num_rows == recorded


def test_smoothing_log_axis_url_state_and_csv_export(page, served: Serve, tmp_path):
    job = served.client.post("/jobs", json=spec(steps=600, name="e2e-views")).json()
    served.job_when(job["id"], lambda j: j["status"] == "succeeded", 120)
    page.goto(f"/#/jobs/{job['id']}?smooth=0.9&logx=1")
    page.wait_for_function("document.getElementById('loss-plot')?.data?.length === 3")
    assert page.input_value("#smoothing") == "0.9" and page.is_checked("#log-x")
    assert page.evaluate("document.getElementById('loss-plot').layout.xaxis.type") == "log"
    yaxes = "['loss-plot', 'acc-plot'].map((id) => document.getElementById(id).layout.yaxis.type)"
    assert page.evaluate(yaxes) == ["log", "linear"] and not page.is_checked("#log-y")  # each chart's default
    page.check("#log-y")
    assert page.evaluate(yaxes) == ["log", "log"] and "logy=1" in page.url
    page.uncheck("#log-y")
    assert page.evaluate(yaxes) == ["linear", "linear"] and "logy=0" in page.url
    api = served.client.get(f"/jobs/{job['id']}/metrics", params={"names": "train/loss"}).json()["series"][0]
    smooth = trace(page, "loss-plot", 2)
    assert smooth["name"] == "train/loss (smoothed)" and smooth["x"] == api["steps"]
    expected, last = [], 0.0
    for n, v in enumerate(api["values"], start=1):  # the debiased EMA, computed independently
        last = 0.9 * last + 0.1 * v
        expected.append(last / (1 - 0.9**n))
    assert smooth["y"] == pytest.approx(expected, rel=1e-9)
    page.evaluate("(() => { const s = document.querySelector('#smoothing'); s.value = '0'; s.dispatchEvent(new Event('input')); })()")
    page.uncheck("#log-x")
    assert page.url.endswith(f"#/jobs/{job['id']}?smooth=0&logy=0"), page.url
    assert page.evaluate("document.getElementById('loss-plot').data[2].visible") is False
    assert page.evaluate("document.getElementById('loss-plot').layout.xaxis.type") == "linear"
    page.reload()
    page.wait_for_function("document.getElementById('loss-plot')?.data?.length === 3")
    assert page.input_value("#smoothing") == "0" and not page.is_checked("#log-x"), "the state came back from the URL"
    assert page.evaluate(yaxes) == ["linear", "linear"]
    with page.expect_download() as download:
        page.click("button.csv-export[data-for='loss-plot']")
    rows = download.value.path().read_text().strip().splitlines()
    assert rows[0] == "series,step,value"
    loss_rows = [r.split(",") for r in rows[1:] if r.startswith('"train/loss"')]
    assert [int(r[1]) for r in loss_rows] == api["steps"]
    assert [float(r[2]) for r in loss_rows] == pytest.approx(api["values"], rel=1e-12)
    lr = trace(page, "lr-plot", 0)
    assert set(lr["y"]) == {0.5} and lr["x"][0] == 0
    # the whole job as one HTML file, which draws its charts with no network at all
    with page.expect_download() as download:
        page.click("#job-report")
    report = tmp_path / "report.html"
    download.value.save_as(report)
    offline = page.context.browser.new_context()
    offline.set_offline(True)
    viewer = offline.new_page()
    viewer.goto(report.as_uri())
    viewer.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=30_000)
    assert "e2e-views" in viewer.title()
    offline.close()


def test_seed_groups_draw_a_band_per_learning_rate(page, served: Serve):
    raw = {**spec(steps=40, name="e2e-seeds"), "sweep": {"optimizer.lr": [0.05, 0.2, 0.5], "train.seed": [0, 1, 2]}}
    made = served.client.post("/sweeps", json=raw).json()
    for job in made["jobs"]:
        served.job_when(job["id"], lambda j: j["status"] == "succeeded", 180)
    page.goto(f"/#/compare?sweep={made['id']}&series=train%2Floss&group=optimizer.lr&band=std")
    page.wait_for_function("document.getElementById('compare-plot')?.dataset.groups === '3'", timeout=30_000)
    api = served.client.get("/compare/groups", params={"sweep_id": made["id"], "by": "optimizer.lr", "series": "train/loss"}).json()
    drawn = page.evaluate(
        "document.getElementById('compare-plot').data.map((t) => ({name: t.name, y: Array.from(t.y), x: Array.from(t.x), band: t.meta?.band}))"
    )
    assert [t["band"] for t in drawn] == ["lower", "upper", "mean"] * 3, "three lines, each with its band"
    for k, group in enumerate(api["groups"]):
        lower, upper, mean = drawn[3 * k : 3 * k + 3]
        assert mean["name"] == f"optimizer.lr={group['key']['optimizer.lr']} (n = 3)" and mean["x"] == group["steps"]
        assert mean["y"] == group["mean"]
        assert lower["y"] == pytest.approx([m - s for m, s in zip(group["mean"], group["std"], strict=True)], rel=1e-12)
        assert upper["y"] == pytest.approx([m + s for m, s in zip(group["mean"], group["std"], strict=True)], rel=1e-12)
    page.select_option("#compare-band", "minmax")
    page.wait_for_function("document.getElementById('compare-plot')?.dataset.band === 'minmax'")
    lower = page.evaluate("Array.from(document.getElementById('compare-plot').data[0].y)")
    assert lower == api["groups"][0]["min"] and "band=minmax" in page.url
    page.reload()
    page.wait_for_function("document.getElementById('compare-plot')?.dataset.band === 'minmax'", timeout=30_000)
    assert page.input_value("#compare-group") == "optimizer.lr", "the grouping came back from the URL"
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "seed-groups.png"), full_page=True)
    # the sweep as one HTML file, opened with no network at all
    with page.expect_download() as download:
        page.click("#compare-report")
    report = OUTPUT_DIR / "e2e" / "sweep-report.html"
    download.value.save_as(report)
    offline = page.context.browser.new_context()
    offline.set_offline(True)
    viewer = offline.new_page()
    viewer.goto(report.as_uri())
    viewer.wait_for_function("document.querySelectorAll('.js-plotly-plot').length === 4", timeout=30_000)  # 3 series, the phase diagram
    assert viewer.title() == f"Dynascope report: Sweep {made['id']}: e2e-seeds"
    assert len(viewer.query_selector_all("table tbody tr")) == 9 + 1, "the runs, and the learning-rate sensitivity's one curve"
    band = viewer.evaluate("document.getElementById('groups-0').data.map((t) => t.meta?.band)")
    assert band == ["lower", "upper", "mean"] * 3 and "Learning-rate sensitivity" in viewer.inner_text("body")
    offline.close()
    import dynascope

    with dynascope.Client(f"http://127.0.0.1:{served.port}", served.client.headers["authorization"].removeprefix("Bearer ")) as notebook:
        assert notebook.groups("train/loss", "optimizer.lr", sweep_id=made["id"])["groups"] == api["groups"]
        table = notebook.runs_table(sweep_id=made["id"], metrics="final:train/loss", where=["optimizer.lr>=0.2"], sort="-final:train/loss")
        assert table["total"] == 6
    # the same runs as a table: sorted by a header, filtered by a range, two of them into Compare
    page.goto(f"/#/runs?sweep={made['id']}&metrics=final:train/loss")
    page.wait_for_function("document.getElementById('runs-table')?.dataset.total === '9'")
    page.click("button.sort[data-key='final:train/loss']")
    page.wait_for_function("document.querySelector('button.sort[data-key=\"final:train/loss\"]').textContent.endsWith('▼')")
    api = served.client.get(
        "/jobs-table", params={"sweep_id": made["id"], "metrics": "final:train/loss", "sort": "-final:train/loss"}
    ).json()
    shown = page.eval_on_selector_all("tr.run-row", "rows => rows.map(r => Number(r.dataset.id))")
    assert shown == [r["id"] for r in api["items"]] and "sort=-final%3Atrain%2Floss" in page.url
    page.fill("#runs-where", "optimizer.lr>=0.2")
    page.click("#runs-draw")
    page.wait_for_function("document.getElementById('runs-table')?.dataset.total === '6'")
    lrs = page.eval_on_selector_all("tr.run-row td:nth-child(5)", "cells => cells.map(c => Number(c.textContent))")
    assert sorted(set(lrs)) == [0.2, 0.5]
    picked = page.eval_on_selector_all("tr.run-row", "rows => rows.slice(0, 2).map(r => r.dataset.id)")
    for job_id in picked:
        page.check(f"input.select-run[data-id='{job_id}']")
    page.click("#runs-compare")
    page.wait_for_function("document.getElementById('compare-plot')?.data?.length === 2", timeout=30_000)
    assert f"jobs={picked[0]}%2C{picked[1]}" in page.url or f"jobs={picked[0]},{picked[1]}" in page.url


def test_compare_a_sweep_sharpness_against_each_threshold(page, served: Serve):
    raw = {**spec(steps=200, name="e2e-eos"), "sweep": {"optimizer.lr": [0.2, 0.5]}}
    raw["probes"] = {"hessian": {"every": 50, "top_k": 1, "examples": 300}}
    sweep = served.client.post("/sweeps", json=raw).json()
    for job in sweep["jobs"]:
        served.job_when(job["id"], lambda j: j["status"] == "succeeded", 120)
    page.goto(f"/#/jobs?sweep={sweep['id']}")
    page.click("#compare-sweep-link")
    page.wait_for_function("document.querySelectorAll('#compare-series option').length > 0")
    page.select_option("#compare-series", "hessian/sharpness")
    page.wait_for_function("document.getElementById('compare-plot')?.data?.length === 4")
    names = page.evaluate("document.getElementById('compare-plot').data.map(t => t.name)")
    assert names == ["optimizer.lr=0.2", "threshold (optimizer.lr=0.2)", "optimizer.lr=0.5", "threshold (optimizer.lr=0.5)"]
    for k, job in enumerate(sweep["jobs"]):
        api = {
            s["name"]: s
            for s in served.client.get(f"/jobs/{job['id']}/metrics", params={"names": "hessian/sharpness,hessian/threshold"}).json()[
                "series"
            ]
        }
        assert trace(page, "compare-plot", 2 * k)["y"] == api["hessian/sharpness"]["values"]
        assert trace(page, "compare-plot", 2 * k + 1)["y"] == api["hessian/threshold"]["values"]
    assert "series=hessian%2Fsharpness" in page.url and f"sweep={sweep['id']}" in page.url
    page.reload()
    page.wait_for_function("document.getElementById('compare-plot')?.data?.length === 4")
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "compare-sweep.png"), full_page=True)


def test_hessian_of_the_latest_checkpoint_from_the_job_page(page, served: Serve):
    job = served.client.post("/jobs", json=spec(steps=200, name="e2e-analyze")).json()
    served.job_when(job["id"], lambda j: j["status"] == "succeeded", 120)
    page.goto(f"/#/jobs/{job['id']}")
    page.click("#analyze-hessian")
    page.wait_for_selector("#analyses-table td.status.succeeded", timeout=120_000)
    [result] = served.client.get(f"/jobs/{job['id']}/results/hessian_analysis").json()
    row = page.inner_text("#analyses-table tbody tr")
    assert f"{result['data']['eigenvalues'][0]:.4g}" in row and "classes" in row
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "checkpoint-analysis.png"), full_page=True)


def test_loss_landscape_draws_while_computed_and_exports(page, served: Serve):
    raw = spec(steps=60, name="e2e-landscape", checkpoint_every=20)
    raw["model"] = {"kind": "cnn", "channels": [32, 32]}
    raw["probes"] = {"landscape": {"at": ["end"], "resolution": 21, "examples": 1000, "span": 0.8}}
    job = served.client.post("/jobs", json=raw).json()
    page.goto(f"/#/jobs/{job['id']}")
    # Progressive: a partial surface (gaps where points are still to come) is drawn before the whole one.
    page.wait_for_function("document.getElementById('landscape-plot')?.dataset.partial === '1'", timeout=120_000)
    gaps = page.evaluate("document.getElementById('landscape-plot').data[0].z.flat().filter(v => v == null).length")
    assert gaps > 0
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'succeeded'", timeout=120_000)
    page.wait_for_function("document.getElementById('landscape-plot')?.dataset.partial === '0'", timeout=30_000)
    [result] = served.client.get(f"/jobs/{job['id']}/results/landscape").json()
    data = result["data"]
    drawn = page.evaluate(
        "(() => { const t = document.getElementById('landscape-plot').data[0]; return {type: t.type, x: Array.from(t.x), y: Array.from(t.y), z: t.z}; })()"
    )
    assert drawn["type"] == "contour" and drawn["x"] == data["xs"] and drawn["y"] == data["ys"]
    assert drawn["z"][3][17] == data["loss"][17][3]  # z[row = y][column = x]: the documented indexing, transposed
    assert data["xs"][10] == 0.0 and not data["partial"] and data["examples"] == 1000
    # log colour and 3-D, kept in the URL across a reload
    page.check("#landscape-log")
    page.check("#landscape-3d")
    page.wait_for_function("document.getElementById('landscape-plot').data[0].type === 'surface'")
    assert "lslog=1" in page.url and "ls3d=1" in page.url
    page.reload()
    page.wait_for_function("document.getElementById('landscape-plot')?.data?.[0]?.type === 'surface'", timeout=30_000)
    z = page.evaluate("document.getElementById('landscape-plot').data[0].z[10][10]")
    assert abs(z - __import__("math").log10(data["centre_loss"])) < 1e-9
    # every array as a file
    href = page.get_attribute("a.landscape-export[data-format='csv']", "href")
    csv_text = served.client.get(href.removeprefix("/api/v1")).text
    assert len(csv_text.strip().splitlines()) == 1 + 21 * 21
    # a surface around a kept checkpoint, from the job page, joins the picker
    page.click("#analyze-landscape")
    page.wait_for_function(
        "[...document.querySelectorAll('#landscape-pick option')].some(o => o.textContent.includes('analysis'))", timeout=120_000
    )
    assert "landscape" in page.inner_text("#analyses-table tbody")
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "landscape.png"), full_page=True)
    # the training path on its principal plane, drawn over the loss surface of that plane
    page.uncheck("#landscape-3d")
    page.click("#analyze-trajectory")
    page.wait_for_function(
        "[...document.querySelectorAll('#landscape-pick option')].some(o => o.textContent.includes('trajectory plane'))", timeout=120_000
    )
    page.select_option(
        "#landscape-pick",
        label=page.eval_on_selector_all(
            "#landscape-pick option", "os => os.map(o => o.textContent).find(t => t.includes('trajectory plane'))"
        ),
    )
    page.wait_for_function("document.getElementById('landscape-plot').data.some(t => t.name === 'training path (checkpoints)')")
    [path] = served.client.get(f"/jobs/{job['id']}/results/trajectory_analysis").json()
    drawn_path = page.evaluate(
        "Array.from(document.getElementById('landscape-plot').data.find(t => t.name === 'training path (checkpoints)').x)"
    )
    assert drawn_path == path["data"]["path"]["x"] and path["data"]["path"]["steps"] == [20, 40, 60]
    assert "% of the path's variance" in page.evaluate("document.getElementById('landscape-plot').layout.xaxis.title.text")
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "landscape-trajectory.png"), full_page=True)
    # the line from this job's last checkpoint to another run's (another seed)
    other = served.client.post(
        "/jobs", json={**raw, "name": "e2e-landscape-seed1", "probes": {}, "train": {**raw["train"], "seed": 1}}
    ).json()
    served.job_when(other["id"], lambda j: j["status"] == "succeeded", 120)
    page.fill("#interpolate-job", str(other["id"]))
    page.click("#analyze-interpolation-job")
    page.wait_for_function(
        "[...document.querySelectorAll('#landscape-pick option')].some(o => o.textContent.includes('line job'))", timeout=120_000
    )
    page.select_option(
        "#landscape-pick",
        label=page.eval_on_selector_all("#landscape-pick option", "os => os.map(o => o.textContent).find(t => t.includes('line job'))"),
    )
    page.wait_for_function("document.getElementById('landscape-plot').layout.xaxis.title.text.startsWith('α')")
    [line] = served.client.get(f"/jobs/{job['id']}/results/interpolation_analysis").json()
    assert line["data"]["to"] == {"job": other["id"], "step": 60} and line["data"]["from"]["step"] == 60
    # the line draws while it is computed; its row reads as finished once the analysis is done
    page.wait_for_function("document.querySelector('#analyses-table tbody').innerText.includes('step 60 → job')", timeout=120_000)
    # and exports like every grid
    page.wait_for_selector("a.landscape-export[data-format='json']", timeout=30_000)
    exported = served.client.get(page.get_attribute("a.landscape-export[data-format='json']", "href").removeprefix("/api/v1")).json()
    assert exported["plane"] == "interpolation" and not exported["partial"] and exported["to"] == line["data"]["to"]
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "landscape-interpolation.png"), full_page=True)


def test_gradient_statistics_view(page, served: Serve):
    raw = spec(steps=200, name="e2e-gradstats")
    raw["probes"] = {"gradstats": {"every": 5, "details_every": 50, "two_batch": 16}}
    job = served.client.post("/jobs", json=raw).json()
    page.goto(f"/#/jobs/{job['id']}")
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'succeeded'", timeout=120_000)
    page.wait_for_function("Number(document.getElementById('gradstats-noise')?.dataset.points) === 40", timeout=30_000)
    api = served.client.get(f"/jobs/{job['id']}/metrics", params={"names": "grad/noise_scale"}).json()["series"][0]
    assert trace(page, "gradstats-noise", 0)["y"] == api["values"]
    two = served.client.get(f"/jobs/{job['id']}/metrics", params={"names": "grad/noise_scale_two_batch"}).json()["series"][0]
    assert trace(page, "gradstats-noise", 2)["y"] == two["values"] and len(two["values"]) == 40
    assert trace(page, "gradstats-noise", 2)["name"] == "per step (two-batch-size estimator)"
    assert page.evaluate("document.getElementById('gradstats-layers').dataset.layers") == "6"  # 3 Linear: weight, bias
    [latest] = served.client.get(f"/jobs/{job['id']}/results/gradstats", params={"last": 1}).json()
    bars = page.evaluate("Array.from(document.getElementById('gradstats-histogram').data[0].y)")
    assert bars == latest["data"]["histogram"]["counts"] and latest["step"] == 150
    assert "every parameter counted" in page.inner_text("#gradstats-info")
    with page.expect_download() as download:  # every chart of a view exports what it draws
        page.click("#gradstats-noise >> xpath=preceding-sibling::div[@class='exports'] >> button[data-format='csv']")
    rows = download.value.path().read_text().strip().splitlines()
    noise = [r.split(",") for r in rows[1:] if r.startswith('"per step (per-example')]
    assert [int(r[1]) for r in noise] == api["steps"]
    for (_, _, value, *_), want in zip(noise, api["values"], strict=True):  # gaps stay gaps
        assert (value == "" and want is None) or float(value) == pytest.approx(want, rel=1e-12)
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "gradstats.png"), full_page=True)


def test_neural_collapse_view(page, served: Serve):
    raw = spec(steps=300, name="e2e-collapse", lr=0.3)
    raw["probes"] = {"collapse": {"every": 50, "examples": 500}}
    job = served.client.post("/jobs", json=raw).json()
    page.goto(f"/#/jobs/{job['id']}")
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'succeeded'", timeout=120_000)
    page.wait_for_function("document.getElementById('collapse-cosines')?.dataset.step === '300'", timeout=30_000)
    for element, index, name in (
        ("collapse-nc1", 0, "collapse/nc1"),
        ("collapse-nc1", 1, "collapse/nc1_val"),
        ("collapse-nc4", 0, "collapse/nc4"),
    ):
        api = served.client.get(f"/jobs/{job['id']}/metrics", params={"names": name}).json()["series"][0]
        assert trace(page, element, index)["y"] == api["values"] and api["steps"] == [0, 50, 100, 150, 200, 250, 300]
    nc1 = served.client.get(f"/jobs/{job['id']}/metrics", params={"names": "collapse/nc1"}).json()["series"][0]["values"]
    assert nc1[-1] < nc1[0]  # the features collapse as the MLP fits the digits
    [latest] = served.client.get(f"/jobs/{job['id']}/results/collapse", params={"last": 1}).json()
    assert page.evaluate("document.getElementById('collapse-cosines').data[0].z") == latest["data"]["cosines"]
    assert "the input of layer 5 (64 features per prediction)" in page.inner_text("#collapse-info")
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "collapse.png"), full_page=True)


def test_representations_view(page, served: Serve):
    raw = spec(steps=200, name="e2e-representations", lr=0.3, checkpoint_every=100)
    raw["probes"] = {"representations": {"every": 50, "examples": 128}}
    job = served.client.post("/jobs", json=raw).json()
    page.goto(f"/#/jobs/{job['id']}")
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'succeeded'", timeout=120_000)
    page.wait_for_function("document.getElementById('cka-layers')?.dataset.step === '200'", timeout=30_000)
    for element, prefix, steps in (
        ("cka-first", "cka/first/", [0, 50, 100, 150, 200]),
        ("cka-previous", "cka/previous/", [50, 100, 150, 200]),
    ):
        for index, layer in enumerate(["1", "3", "5"]):
            api = served.client.get(f"/jobs/{job['id']}/metrics", params={"names": prefix + layer}).json()["series"][0]
            drawn = trace(page, element, index)
            assert drawn["name"] == layer and drawn["y"] == api["values"] and api["steps"] == steps
    [latest] = served.client.get(f"/jobs/{job['id']}/results/representations", params={"last": 1}).json()
    assert page.evaluate("document.getElementById('cka-layers').data[0].z") == latest["data"]["matrix"]
    assert "3 layers" in page.inner_text("#representations-info") and "128 training examples" in page.inner_text("#representations-info")
    page.click("#analyze-representations")  # the last checkpoint against the first, as an analysis
    page.wait_for_selector("#analyses-table tr[data-analysis] td.status.succeeded", timeout=60_000)
    page.wait_for_function("document.getElementById('cka-compare')?.data?.length === 1", timeout=30_000)
    [compared] = served.client.get(f"/jobs/{job['id']}/results/representations_analysis").json()
    assert (compared["data"]["start"]["step"], compared["data"]["end"]["step"]) == (200, 100)  # (the first kept checkpoint)
    assert page.evaluate("document.getElementById('cka-compare').data[0].z") == compared["data"]["matrix"]
    assert page.input_value("#representations-pick") == str(compared["id"])
    assert f"job {job['id']} step 200 against job {job['id']} step 100" in page.inner_text("#representations-compare-info")
    assert "mean diagonal CKA" in page.inner_text("#analyses-table")
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "representations.png"), full_page=True)


def test_modes_view(page, served: Serve):
    job = served.client.post("/jobs", json=deep_linear_job(steps=700, lr=0.024) | {"name": "e2e-deep-linear"}).json()
    page.goto(f"/#/jobs/{job['id']}")
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'succeeded'", timeout=120_000)
    page.wait_for_function("document.getElementById('modes-strength')?.data?.length === 6", timeout=30_000)
    for mode in range(1, len(TEACHER) + 1):
        for index, kind in ((2 * mode - 2, "strength"), (2 * mode - 1, "theory")):
            api = served.client.get(f"/jobs/{job['id']}/metrics", params={"names": f"modes/{kind}/{mode}"}).json()["series"][0]
            drawn = trace(page, "modes-strength", index)
            assert drawn["y"] == api["values"] and drawn["x"] == api["steps"] == list(range(0, 701, 20))
        assert drawn["y"][-1] == pytest.approx(TEACHER[mode - 1], rel=0.01)  # the closed form reaches s
    off = served.client.get(f"/jobs/{job['id']}/metrics", params={"names": "modes/off_diagonal"}).json()["series"][0]
    assert trace(page, "modes-decoupling", 0)["y"] == off["values"]
    info = page.inner_text("#modes-info")
    assert "depth-2 linear network" in info and "a(t) = s / (1 + (s/a₀ − 1)·e^(−2cst))" in info and "Beware" not in info
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "modes.png"), full_page=True)


def test_instability_view_and_the_lr_sensitivity_of_the_example_sweep(page, served: Serve):
    import yaml

    raw = yaml.safe_load((Path(__file__).parents[2] / "examples" / "transformer-instability.yaml").read_text())
    raw |= {
        "name": "e2e-instability",
        "data": {"kind": "text", "max_chars": 20000},
        "sweep": {"optimizer.lr": [0.01, 0.3], "model.qk_layernorm": [False, True]},
    }
    raw["model"] |= {"width": 32, "context": 32}
    raw["train"] |= {"steps": 40, "eval_every": 20, "schedule": {"kind": "cosine", "warmup_steps": 4}}
    raw["probes"] = {"instability": {"every": 10, "spike_window": 5}}
    made = served.client.post("/sweeps", json=raw).json()
    for job in made["jobs"]:
        served.job_when(job["id"], lambda j: j["status"] in ("succeeded", "diverged"), 180)
    first = made["jobs"][0]["id"]
    page.goto(f"/#/jobs/{first}")
    page.wait_for_function("document.getElementById('instability-logits')?.data?.length === 2", timeout=30_000)
    for element, index, name in (
        ("instability-logits", 0, "instability/attn_logit_max/blocks.0.attn"),
        ("instability-logits", 1, "instability/attn_logit_max/blocks.1.attn"),
        ("instability-entropy", 1, "instability/attn_entropy/blocks.1.attn"),
        ("instability-logz", 2, "instability/z_loss"),
        ("instability-loss", 0, "train/loss"),
    ):
        api = served.client.get(f"/jobs/{first}/metrics", params={"names": name}).json()["series"][0]
        drawn = trace(page, element, index)
        assert drawn["y"] == api["values"] and drawn["x"] == api["steps"], name
    assert trace(page, "instability-logits", 0)["x"] == [0, 10, 20, 30], "no step after the last update"
    grads = page.evaluate("document.getElementById('instability-grad').data.map((t) => t.name)")
    assert "all" in grads and "blocks.N.attn.qkv" in grads
    assert page.evaluate("document.getElementById('instability-grad').layout.shapes.at(-1).y0") == 1e-8, "ε marked"
    info = page.inner_text("#instability-info")
    assert "attention logits of 2 site(s) from the step's own forward pass" in info and "ε = 1e-08" in info
    # the sweep: final loss against lr per qk-layernorm setting, each with its LR sensitivity
    page.goto(f"/#/compare?sweep={made['id']}")
    page.wait_for_function("document.getElementById('sensitivity-loss')?.data?.length === 4", timeout=30_000)
    api = served.client.get(f"/sweeps/{made['id']}/sensitivity").json()
    assert api["by"] == "model.qk_layernorm" and [c["value"] for c in api["curves"]] == [False, True]
    for i, curve in enumerate(api["curves"]):
        drawn = trace(page, "sensitivity-loss", 2 * i)
        assert drawn["x"] == curve["lrs"] == [0.01, 0.3] and drawn["y"] == curve["capped"]
        meta = page.evaluate(f"document.getElementById('sensitivity-loss').data[{2 * i}].meta")
        assert meta["sensitivity"] == curve["sensitivity"] and "LR sensitivity" in drawn["name"]
        assert trace(page, "sensitivity-logit", i)["y"] == curve["attention_logit"]
    assert "E_η[min(ℓ(η), ℓ₀) − min_η ℓ(η)]" in page.inner_text("#sensitivity-info")
    import dynascope

    with dynascope.Client(f"http://127.0.0.1:{served.port}", served.client.headers["authorization"].removeprefix("Bearer ")) as notebook:
        assert notebook.lr_sensitivity(made["id"]) == api
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "lr-sensitivity.png"), full_page=True)
    # a sweep that does not vary the learning rate says why it has no such view
    seeds = served.client.post("/sweeps", json={**spec(steps=5, name="e2e-seeds"), "sweep": {"train.seed": [0, 1]}}).json()
    page.goto(f"/#/compare?sweep={seeds['id']}")
    page.wait_for_function("document.getElementById('sensitivity-info')?.textContent.includes('does not vary a learning rate')")
    assert page.is_hidden("#sensitivity-loss")


def test_the_lazy_rich_example_and_the_kernel_view(page, served: Serve):
    script = Path(__file__).parents[2] / "examples" / "lazy_rich_sweep.py"
    token = served.client.headers["authorization"].removeprefix("Bearer ")
    env = {**os.environ, "DYNASCOPE_URL": f"http://127.0.0.1:{served.port}", "DYNASCOPE_TOKEN": token, "COLUMNS": "150"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = [int(i) for i in done.stdout.strip().splitlines()[-1].removeprefix("jobs ").split()]
    distance = [
        served.client.get(f"/jobs/{i}/metrics", params={"names": "kernel/distance"}).json()["series"][0]["values"][-1] for i in jobs
    ]
    assert distance[0] > 10 * distance[1] > 100 * distance[2] and max(distance[2:]) < 1e-3  # rich (small α) to lazy (large α)
    assert "kernel moved" in done.stdout
    rich = jobs[0]
    page.goto(f"/#/jobs/{rich}")
    page.wait_for_function("document.getElementById('kernel-gram')?.dataset.step === '400'", timeout=30_000)
    for element, index, name in (
        ("kernel-motion", 0, "kernel/distance"),
        ("kernel-motion", 1, "kernel/velocity"),
        ("kernel-motion", 2, "kernel/weight_change"),
        ("kernel-alignment", 0, "kernel/alignment"),
        ("kernel-trace", 0, "kernel/trace"),
    ):
        api = served.client.get(f"/jobs/{rich}/metrics", params={"names": name}).json()["series"][0]
        drawn = trace(page, element, index)
        assert drawn["y"] == api["values"] and drawn["x"] == api["steps"], name
    [latest] = served.client.get(f"/jobs/{rich}/results/kernel", params={"last": 1}).json()
    assert page.evaluate("document.getElementById('kernel-gram').data[0].z") == latest["data"]["drawn"]
    assert "summed over 1 output, on a fixed stratified sample of 64 training examples" in page.inner_text("#kernel-info")
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "kernel.png"), full_page=True)


def test_a_labs_own_model_and_data_with_every_probe(page, served: Serve):
    import yaml

    from tests.unit.test_entrypoints import EVERY_PROBE, lab_job

    raw = lab_job() | {"name": "e2e-own-model", "probes": EVERY_PROBE}
    page.goto("/#/new")
    page.wait_for_function("document.querySelector('#spec-editor').value.includes('digits')")
    page.fill("#spec-editor", yaml.safe_dump(raw))
    page.click("#check-spec")
    page.wait_for_function("document.querySelector('#submit-state').textContent.startsWith('valid')")
    assert "parameters counted by the worker when the job starts" in page.inner_text("#submit-state")
    page.click("#submit-job")
    page.wait_for_function("location.hash.startsWith('#/jobs/')")
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'succeeded'", timeout=180_000)
    job_id = int(page.evaluate("location.hash").split("/")[2])
    views = [v["name"] for v in served.client.get(f"/jobs/{job_id}/figures").json()]
    assert views == ["training", "hessian", "gradstats", "signals", "landscape", "collapse", "representations", "kernel"]
    page.wait_for_function("document.querySelector('#job-facts').textContent.includes('1,546')")  # counted by the worker
    page.wait_for_selector("#gradstats-rules table")
    rules = dict(
        page.evaluate(
            "[...document.querySelectorAll('#gradstats-rules tbody tr')].map(r => [r.cells[0].textContent, r.cells[1].textContent])"
        )
    )
    assert rules["position"] == rules["gate"] == "torch.func" and rules["head.weight"] == "linear"
    page.wait_for_function("document.getElementById('kernel-gram')?.dataset.step === '80'", timeout=30_000)
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "own-model.png"), full_page=True)


def test_the_readmes_own_model_example_runs(page, served: Serve):
    """examples/own-model.yaml as the README runs it: the image folder made by the example's script under the
    worker's data root, mylab's ViT (installed in editable mode), submitted with the CLI and watched to its end."""
    examples = Path(__file__).parents[2] / "examples"
    made = subprocess.run(
        [sys.executable, str(examples / "make_image_folder.py"), str(served.data_dir / "shapes")], capture_output=True, text=True
    )
    assert made.returncode == 0 and "600 images" in made.stdout, made.stderr
    token = served.client.headers["authorization"].removeprefix("Bearer ")
    env = {**os.environ, "DYNASCOPE_URL": f"http://127.0.0.1:{served.port}", "DYNASCOPE_TOKEN": token, "COLUMNS": "150"}
    submitted = subprocess.run(
        [sys.executable, "-m", "dynascope.cli", "submit", str(examples / "own-model.yaml"), "--watch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = int(submitted.stdout.split("job ")[1].split()[0])
    accuracy = served.client.get(f"/jobs/{job_id}/metrics", params={"names": "val/accuracy"}).json()["series"][0]["values"]
    assert accuracy[-1] > 0.6  # three shapes (chance: 1/3)
    page.goto(f"/#/jobs/{job_id}")
    page.wait_for_function("document.querySelector('#job-facts').textContent.includes('parameters')")
    page.wait_for_selector("#gradstats-rules table")
    assert "torch.func" in page.inner_text("#gradstats-rules")  # the ViT's class token and position table


def test_opposing_signals_view(page, served: Serve):
    raw = planted_pair_job(6.0)
    job = served.client.post("/jobs", json=raw).json()
    page.goto(f"/#/jobs/{job['id']}")
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'succeeded'", timeout=120_000)
    pairs = served.client.get(f"/jobs/{job['id']}/results/signals").json()
    assert pairs
    page.wait_for_function(f"document.getElementById('signals-loss')?.dataset.pairs === '{len(pairs)}'", timeout=30_000)
    page.wait_for_function("document.getElementById('pair-0-curves')?.data?.length >= 6", timeout=30_000)
    last = raw["train"]["steps"] - 1  # (the view redraws once the job has ended: wait for that drawing, not an earlier one)
    page.wait_for_function(f"document.getElementById('pair-0-curves').data[0].x.at(-1) === {last}", timeout=30_000)
    shapes = page.evaluate("document.getElementById('signals-loss').layout.shapes.map(s => s.x0)")
    assert shapes == [p["step"] for p in pairs]
    first = min(pairs, key=lambda p: p["data"]["cos"])  # the most opposed pair is shown first
    assert f"cos(ḡ_A, ḡ_B) = {first['data']['cos']:.2f}" in page.inner_text("#signals-pairs h3")
    assert first["data"]["trigger"] == ["schedule"] and "(search on schedule)" in page.inner_text("#signals-pairs h3")
    curve, window = trace(page, "pair-0-curves", 0), first["data"]["steps"]  # the window around the search, then after it
    assert curve["x"][: len(window)] == window and curve["y"][: len(window)] == first["data"]["A"]["loss"]
    assert curve["x"][-1] == raw["train"]["steps"] - 1 and curve["x"] == sorted(set(curve["x"]))
    feature = page.evaluate("document.getElementById('pair-0-A-feature').data[0].z")
    assert feature == first["data"]["A"]["mean_input_minus_all"][0]
    assert page.evaluate("document.getElementById('pair-0-A-examples').dataset.examples") == str(len(first["data"]["A"]["examples"]))
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "signals.png"), full_page=True)


@pytest.mark.signed_out
def test_sign_in_by_the_printed_link_then_by_password_switch_team_and_manage_tokens(page, served: Serve):
    from tests.conftest import provision

    # Signed out, the dashboard asks for a sign-in and shows no data.
    page.goto("/#/jobs")
    page.wait_for_selector("#sign-in")
    assert page.query_selector("#jobs-table") is None
    # The link `dynascope serve` printed signs the local user in, once.
    link = next(line for line in (served.workdir / "serve.log").read_text().splitlines() if "#login=" in line)
    code = link.rsplit("#login=", 1)[1].strip()
    page.goto(f"/#login={code}")
    page.wait_for_selector("#nav-account")
    assert page.url.endswith("#/jobs") and code not in page.url
    page.click("#sign-out")
    page.wait_for_selector("#sign-in")
    page.goto(f"/#login={code}")  # spent
    page.wait_for_selector("#sign-in")
    # A password account in two teams: wrong password, then right; the team switch changes the history.
    provision(served.database_url, served.secret_key, "erin", "default", "member", password="erin's password")
    provision(served.database_url, served.secret_key, "erin", "e2e-other", "viewer")
    page.fill("#username", "erin")
    page.fill("#password", "not it")
    page.click("#sign-in button[type=submit]")
    page.wait_for_function("document.querySelector('#sign-in-error')?.textContent.includes('wrong username or password')")
    page.fill("#password", "erin's password")
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#jobs-table tbody tr")
    assert page.is_visible("#nav-new")
    page.select_option("#team-switch", label="e2e-other (viewer)")
    page.wait_for_function("document.querySelector('#jobs-count')?.textContent === '0 jobs'")
    assert not page.is_visible("#nav-new")  # a viewer does not submit
    # Account page: a token is shown once, listed by its prefix, and revoked.
    page.click("#nav-account")
    page.fill("#token-name", "e2e laptop")
    page.click("#token-form button")
    token = page.wait_for_selector("#new-token").inner_text()
    assert token.startswith("dsk_")
    row = page.wait_for_selector("#tokens-table tbody tr:has-text('e2e laptop')")
    assert token[:12] in row.inner_text() and token not in page.inner_text("#tokens-table")
    reader = served.client.get("/auth/me", headers={"authorization": f"Bearer {token}"}).json()
    assert (reader["username"], reader["team"]["name"], reader["team"]["role"]) == ("erin", "e2e-other", "viewer")
    row.query_selector("button.revoke").click()
    page.wait_for_selector("#tokens-table tbody tr:has-text('e2e laptop'):has-text('revoked')")
    assert served.client.get("/auth/me", headers={"authorization": f"Bearer {token}"}).status_code == 401
    page.screenshot(path=str(OUTPUT_DIR / "e2e" / "account.png"), full_page=True)
