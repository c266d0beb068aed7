"""Peak-memory probe: a helper process that imports a runtime once, then measures each artifact in a fork.

Answers each request with ``{"peak_memory_mb": ...}``: the peak resident memory while loading and running the artifact,
minus the resident memory once the runtime is imported (the interpreter and framework are not counted).
The kernel's high-water mark (VmHWM) is reset after the imports, so an import's transient peak does not
count either.
"""
from __future__ import annotations

import json
import sys

import numpy as np


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def measure(backend, spec: dict) -> dict:
    from nbopt.backends.base import Artifact

    example = dict(np.load(spec["example"]))
    _reset_peak()
    before = _status_mb("VmRSS")
    artifact = Artifact(spec["path"], spec["format"], spec["files"], info=spec.get("info", {}))
    runner = backend.load(artifact)
    for _ in range(5):
        runner(example)
    return {"peak_memory_mb": max(_status_mb("VmHWM") - before, 0.0)}


def serve(backend_name: str, package: str | None = None, cls: str | None = None) -> None:
    """Import the runtime once, then fork a fresh child per request line (a spec as JSON on stdin).

    Forking from this idle, already-imported process gives each artifact a clean process in milliseconds
    instead of seconds of imports. The parent never runs a model, so no runtime thread pool is forked.
    """
    import os

    from nbopt.backends import get_backend, register_backend

    if package and cls:
        register_backend(backend_name, package, cls)
    backend = get_backend(backend_name)
    backend.warm_imports()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(read)
            try:
                result = measure(backend, json.loads(line))
            except BaseException as exc:  # noqa: BLE001
                result = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write, json.dumps(result).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            answer = pipe.read()
        os.waitpid(pid, 0)
        print(answer or json.dumps({"error": "the probe process died"}), flush=True)


if __name__ == "__main__":
    serve(*sys.argv[1:4])
