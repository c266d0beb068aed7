"""The panel in a real browser: JupyterLab 4 and Notebook 7, headless Chromium through Playwright.

Runs ``%%optimize`` on a tiny digits CNN and checks, as a user would see it: points appear while the
sweep runs, hover shows the candidate, clicking selects it, Export writes the file, Stop stops, a
user mistake is one line. Screenshots go to a folder printed at the start (and end) of the run.

Needs chromium on PATH (or NBOPT_CHROMIUM); skipped with the reason otherwise.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
pytest.importorskip("notebook", reason="notebook 7 is not installed")
pytest.importorskip("onnxruntime", reason="the browser sweep uses the onnx backend")

from browser_helpers import (  # noqa: E402
    CHROMIUM_ARGS,
    JupyterServer,
    cell,
    find_chromium,
    open_notebook,
    output_text,
    panel,
    run_cell,
    write_notebook,
)

CHROMIUM = find_chromium()
if CHROMIUM is None:
    pytest.skip("chromium not found on PATH (install Debian's chromium or set NBOPT_CHROMIUM)",
                allow_module_level=True)
if not (Path(__import__("nbopt").__file__).parent / "static" / "widget.js").exists():
    pytest.skip("the front end is not built: npm --prefix js ci && npm --prefix js run build",
                allow_module_level=True)

SETUP = """\
import time
from nbopt.demo import digits_arrays, train_digits_cnn
from nbopt.metrics import accuracy
xtr, ytr, xval, yval = digits_arrays()
net = train_digits_cnn(epochs=3, width=8, hidden=32, data=(xtr, ytr, xval, yval))
calib, val = xtr[:64], (xval, yval)

def slow_accuracy(outputs, labels):  # takes a moment, so that the test can watch the sweep
    time.sleep(1.0)
    return accuracy(outputs, labels)

calls = []
def flaky_accuracy(outputs, labels):  # fails on its second call: one failed candidate to show
    calls.append(1)
    if len(calls) == 2:
        raise RuntimeError("flaky metric failed on purpose")
    return slow_accuracy(outputs, labels)

%load_ext nbopt
print("ready")"""
SWEEP = """\
%%optimize --model net --calib calib --eval val --backends onnx --metric slow_accuracy --store st -o study
recipes:
  - fp16
  - int8-dynamic"""
STOPPED = """\
%%optimize --model net --calib calib --eval val --backends onnx --metric flaky_accuracy --store st2 -o stopped
- fp16
- int8-dynamic
- int8-static
- int8-static: {calibration: entropy}"""
CHECK = "print(len(study.results), study.stopped, len(study.pareto()), study.candidates.index(study.best(0.01)))"
MISTAKE = "%optimize --model nett --eval val"


@pytest.fixture(scope="module")
def shots(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("nbopt-screenshots")
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def say(text):  # shown even when pytest captures output
        if capture is None:
            print(text)
            return
        with capture.global_and_fixture_disabled():
            print(text)

    say(f"\nnbopt browser screenshots: {folder}")
    yield folder
    say(f"\nnbopt browser screenshots: {folder}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("jupyter-root")
    with JupyterServer(root, root.parent / "jupyter.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, shots, request):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    pg.screenshot(path=str(shots / f"{request.node.name}-last.png"))  # the page as the test left it
    context.close()


def _poll(fn, timeout: float, every: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    return fn()


def _state(p) -> dict:
    return p.evaluate("e => ({...e.dataset})")


def _watch_sweep(pnl, timeout: float = 120) -> list[dict]:
    """Sample the panel's state until the sweep has ended; returns the samples."""
    samples: list[dict] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = _state(pnl)
        samples.append(s)
        if s.get("status") in ("done", "stopped", "error"):
            return samples
        time.sleep(0.1)
    raise AssertionError(f"the sweep did not end in {timeout} s; last state {samples[-1] if samples else None}")


def test_jupyterlab_live_panel(server, page, shots):
    write_notebook(server.root / "lab.ipynb", [SETUP, SWEEP, CHECK, STOPPED,
                                                 "print('stopped:', stopped.stopped, len(stopped.results))", MISTAKE])
    open_notebook(page, f"{server.url}/lab/tree/lab.ipynb")
    run_cell(page, 0)
    assert "ready" in output_text(page, 0)

    # --- points appear while the sweep runs
    run_cell(page, 1)
    pnl = panel(page, 1)
    pnl.wait_for(timeout=60_000)
    samples = _watch_sweep(pnl)
    assert samples[-1]["status"] == "done", samples[-1]
    total = int(samples[-1]["total"])
    assert total == 3 and samples[-1]["points"] == "3"
    live = [s for s in samples if s.get("status") == "running" and 0 < int(s.get("points", 0)) < total]
    assert live, f"no sample showed points while the sweep was running: {samples[::10]}"
    page.wait_for_timeout(300)
    pnl.screenshot(path=str(shots / "lab-1-done.png"))

    # --- the front as a step line, the baseline marked, the failed list empty
    assert pnl.locator(".scatterlayer .trace").count() >= 3
    assert "baseline" in pnl.locator(".legend").text_content()
    assert _state(pnl)["failed"] == "0"

    # --- hover shows recipe, params and the metrics
    points = pnl.locator(".scatterlayer .trace .points path")
    assert points.count() >= 3
    pnl.locator(".nbopt-plot").scroll_into_view_if_needed()
    target = None
    for i in range(points.count()):
        box = points.nth(i).bounding_box()
        if box:
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            hover = pnl.locator(".hoverlayer .hovertext")
            if _poll(lambda: hover.count() > 0 and "int8-dynamic" in hover.first.text_content(), 2):
                target = box
                break
    assert target is not None, "no hover label for the int8-dynamic point"
    text = pnl.locator(".hoverlayer .hovertext").text_content()
    for needle in ("recipe: int8-dynamic", "params:", "slow_accuracy:", "vs baseline (95 % interval):", "size:",
                   "latency (median):", "peak memory:"):
        assert needle in text, text
    pnl.screenshot(path=str(shots / "lab-2-hover.png"))

    # --- clicking the point selects it and shows the details with Export
    page.mouse.click(target["x"] + target["width"] / 2, target["y"] + target["height"] / 2)
    details = pnl.locator(".nbopt-details")
    details.wait_for(state="visible")
    assert "int8-dynamic" in details.locator(".nbopt-details-head").inner_text()
    assert pnl.locator("tr.nbopt-selected").count() == 1
    pnl.locator(".nbopt-export").click()
    status = pnl.locator(".nbopt-export-status")
    _poll(lambda: "Written to" in status.inner_text() or "failed" in status.inner_text(), 30)
    written = re.search(r"Written to (.+)$", status.inner_text().strip())
    assert written, status.inner_text()
    exported = Path(written.group(1))
    assert exported.exists() and exported.suffix == ".onnx" and exported.with_suffix(".json").exists()
    assert server.root in exported.parents
    pnl.screenshot(path=str(shots / "lab-3-selected-export.png"))

    # --- a table row selects too; the table sorts
    # the row whose name cell is the fp16 candidate (another row's notes may mention fp16)
    pnl.locator(".nbopt-table tbody tr").filter(has=page.locator("td:first-child", has_text="fp16")).click()
    _poll(lambda: "fp16" in details.locator(".nbopt-details-head").inner_text(), 10)
    assert "fp16" in details.locator(".nbopt-details-head").inner_text()
    header = pnl.locator(".nbopt-table th[data-column=size_bytes]")
    sizes = []
    for _ in range(2):
        header.click()
        sizes.append([r for r in pnl.locator(".nbopt-table tbody tr td:nth-child(6)").all_inner_texts()])
    assert sizes[0] == sizes[1][::-1] and len(sizes[0]) == 3

    # --- the axis switches; the budget slider re-filters without re-running
    pnl.locator("select.nbopt-axis").select_option("latency")
    _poll(lambda: "Latency" in pnl.locator(".xtitle").text_content(), 10)
    assert "Latency" in pnl.locator(".xtitle").text_content()
    pnl.locator("select.nbopt-axis").select_option("size")
    front = _state(pnl)["front"]
    pnl.locator(".nbopt-budget-on").check()  # a budget of 0.01
    assert pnl.locator(".nbopt-budget").is_enabled()
    assert pnl.locator(".nbopt-budget-text").inner_text() == "0.01"  # a custom metric: no percent
    recommended = _state(pnl)["recommended"]
    assert recommended != "" and _state(pnl)["done"] == "3"  # nothing re-ran

    # --- layer sensitivity (onnx, calibration data): a collapsed section; opened, bars with op type and rank
    t_sens = time.perf_counter()
    sens = pnl.locator(".nbopt-sens")
    n_layers = int(_state(pnl)["sensitivity"])
    assert n_layers >= 4 and sens.is_visible()  # conv, conv, linear, linear
    assert "most sensitive:" in sens.locator("summary").inner_text()
    sens.locator("summary").click()
    bars = sens.locator(".barlayer .point path")
    assert _poll(lambda: bars.count() == min(15, n_layers), 10), bars.count()
    sens.scroll_into_view_if_needed()
    box = bars.first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    hover = sens.locator(".hoverlayer .hovertext")
    assert _poll(lambda: hover.count() > 0 and "rank 1 of" in hover.first.text_content(), 5)
    text = hover.first.text_content()
    assert "relative output error:" in text and re.search(r"(Conv|Gemm|MatMul) · rank 1 of \d+", text), text
    pnl.screenshot(path=str(shots / "lab-3b-sensitivity.png"))
    page.mouse.move(0, 0)
    print(f"sensitivity checks: {time.perf_counter() - t_sens:.2f} s")

    # --- the study is in the namespace once done; the panel agrees with study.pareto() / best()
    run_cell(page, 2)
    assert output_text(page, 2).strip() == f"3 False {front} {recommended}"

    # --- Stop ends the sweep after the running candidate and keeps what finished
    run_cell(page, 3)
    pnl2 = panel(page, 3)
    pnl2.wait_for(timeout=60_000)
    assert _poll(lambda: int(_state(pnl2).get("done", 0)) >= 2 and _state(pnl2).get("status") == "running", 90)
    failed = pnl2.locator(".nbopt-failed")  # the second candidate (fp16) failed: listed with its error
    assert "onnx:fp16" in failed.inner_text() and "flaky metric failed on purpose" in failed.inner_text()
    pnl2.locator(".nbopt-stop").click()
    samples = _watch_sweep(pnl2)
    end = samples[-1]
    assert end["status"] == "stopped", end
    assert 2 <= int(end["done"]) < int(end["total"]) == 5
    pnl2.screenshot(path=str(shots / "lab-4-stopped.png"))
    run_cell(page, 4)
    assert output_text(page, 4).strip() == f"stopped: True {end['done']}"

    # --- a user mistake: one line, no traceback, the kernel carries on
    run_cell(page, 5)
    text = output_text(page, 5).strip()
    assert text.startswith("UsageError: --model: there is no notebook variable named 'nett'"), text
    assert "\n" not in text and "Traceback" not in text
    cell(page, 5).screenshot(path=str(shots / "lab-5-usage-error.png"))
    server.shutdown_kernels()


def test_notebook7_smoke(server, page, shots):
    sweep = SWEEP.replace("--store st ", "--store st7 ")
    write_notebook(server.root / "nb7.ipynb", [SETUP, sweep])
    open_notebook(page, f"{server.url}/notebooks/nb7.ipynb")
    run_cell(page, 0)
    run_cell(page, 1)
    pnl = panel(page, 1)
    pnl.wait_for(timeout=60_000)
    samples = _watch_sweep(pnl)
    assert samples[-1]["status"] == "done" and samples[-1]["points"] == "3"
    assert any(s.get("status") == "running" and 0 < int(s.get("points", 0)) < 3 for s in samples)
    pnl.locator(".nbopt-plot").scroll_into_view_if_needed()
    box = pnl.locator(".scatterlayer .trace .points path").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert _poll(lambda: pnl.locator(".hoverlayer .hovertext").count() > 0, 5)
    pnl.screenshot(path=str(shots / "nb7-done.png"))
    server.shutdown_kernels()
