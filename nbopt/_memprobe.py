"""Child process for peak-memory measurement: import the runtime, then load and run one artifact.

Prints ``{"peak_memory_mb": ...}``: the peak RSS after loading and running, minus the RSS once the
runtime is imported (so the interpreter and framework themselves are not counted).
"""
import json
import resource
import sys

import numpy as np


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def main(spec: dict) -> None:
    from nbopt.backends import get_backend
    from nbopt.backends.base import Artifact

    backend = get_backend(spec["backend"])
    example = dict(np.load(spec["example"]))
    backend.warm_imports() if hasattr(backend, "warm_imports") else None
    before = _rss_mb()
    artifact = Artifact(spec["path"], spec["format"], spec["files"], info=spec.get("info", {}))
    runner = backend.load(artifact)
    for _ in range(5):
        runner(example)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_memory_mb": max(peak - before, 0.0)}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
