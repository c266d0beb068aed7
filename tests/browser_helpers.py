"""Helpers for the browser tests: a token-less Jupyter server in a temp dir, headless Chromium through
Playwright (the system chromium; never `playwright install`), and running notebook cells by keyboard."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbopt

REPO = Path(nbopt.__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-dev-shm-usage"]


def find_chromium() -> str | None:
    for candidate in (os.environ.get("NBOPT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    """``jupyter lab`` on a free local port, no token, rooted in ``root``. Notebook 7 is served by the
    same server (its server extension is enabled), under /notebooks/."""

    def __init__(self, root: Path, log: Path):
        self.root, self.log_path = root, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "JupyterServer":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["JUPYTER_CONFIG_DIR"] = str(self.root / ".jupyter-config")  # no user settings leak in
        env["JUPYTER_RUNTIME_DIR"] = str(self.root / ".jupyter-runtime")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
        workspaces = self.root / ".workspaces"
        labconfig = self.root / ".jupyter-config" / "labconfig"
        labconfig.mkdir(parents=True, exist_ok=True)
        # no "get notified about news?" toast over the screenshots
        (labconfig / "page_config.json").write_text(json.dumps(
            {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
               "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
               f"--ServerApp.root_dir={self.root}", "--LabApp.news_url=None", "--LabApp.check_for_updates_class="
               "jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
               f"--LabApp.workspaces_dir={workspaces}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({self.proc.returncode}); log: {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"jupyter lab did not start in 90 s; log: {self.log_path}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()

    def shutdown_kernels(self) -> None:
        with urllib.request.urlopen(f"{self.url}/api/kernels", timeout=5) as r:
            kernels = json.load(r)
        for k in kernels:
            req = urllib.request.Request(f"{self.url}/api/kernels/{k['id']}", method="DELETE")
            urllib.request.urlopen(req, timeout=10).close()


def write_notebook(path: Path, cells: list[str]) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def open_notebook(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # the kernel is started and idle once this shows
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status=idle]", state="attached", timeout=90_000)


def cell(page, index: int):
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def _prompt(page, index: int) -> str:
    return cell(page, index).locator(".jp-InputArea-prompt").inner_text().strip()


def _press_run(page, index: int) -> None:
    from playwright.sync_api import Error

    for attempt in range(5):  # the notebook may re-render while the kernel connects: find the cell again
        try:
            c = cell(page, index)
            c.scroll_into_view_if_needed(timeout=10_000)
            c.locator(".jp-InputArea-editor").click(timeout=10_000)
            page.keyboard.press("Shift+Enter")
            return
        except Error:
            if attempt == 4:
                raise
            time.sleep(1)


def run_cell(page, index: int, wait: bool = True, timeout: float = 120) -> None:
    """Run cell ``index`` with Shift+Enter, as a user does, and (``wait``) until it has finished.

    Right after a notebook opens, the kernel can report idle and then reconnect, dropping a request
    sent in between: the prompt goes back to ``[ ]``. Such a run never happened, so it is sent again.
    """
    before = _prompt(page, index)
    _press_run(page, index)
    deadline = time.time() + timeout
    blank_since = None
    started = False
    while time.time() < deadline:
        now = _prompt(page, index)
        if "*" in now:
            started, blank_since = True, None
        elif now != before and any(ch.isdigit() for ch in now):
            return  # finished (a new execution count)
        else:
            blank_since = blank_since or time.time()
            if time.time() - blank_since > 4:  # never started, or dropped: send it again
                _press_run(page, index)
                blank_since = None
        if not wait and started:
            return
        time.sleep(0.1)
    raise AssertionError(f"cell {index} did not finish in {timeout} s (prompt {_prompt(page, index)!r})")


def output_text(page, index: int) -> str:
    return cell(page, index).locator(".jp-OutputArea").inner_text()


def panel(page, index: int):
    return cell(page, index).locator(".nbopt-panel")
