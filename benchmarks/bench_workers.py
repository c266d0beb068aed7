"""Where the jobs run, and what it costs: one command, one table of ratios from one run.

    python benchmarks/bench_workers.py              # (a), (b) and (c); (c) is left out without Ray
    python benchmarks/bench_workers.py --skip-ray

(a) The default demo sweep (digits CNN, torch backend) in one warm isolated worker (executor="local",
    workers=1, after a warm-up study paid the worker's imports) against executor="inline" (in this process,
    also after a warm-up study). Goal: ratio <= 1.15.
(b) A 12-candidate ONNX sweep of the digits CNN with workers=2 against workers=1 (local worker processes).
(c) The same sweep on a local Ray of 2 CPUs (executor="ray", workers=2) against local workers=2.

Every timed study has a store of its own in a temporary folder, so nothing is served from a store. (b) and (c)
run with measure_memory=False (no peak-memory probe; latency is still measured, one candidate at a time).
Each side is timed --repeat times (default 3), alternating with the other side, and the medians are compared.
Figures are ratios inside one run; the absolute seconds are printed beside them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

ONNX_GRID = [
    {"int8-dynamic": {"per_channel": [True, False], "reduce_range": [True, False]}},  # 4
    {"int8-static": {"calibration": ["minmax", "entropy"], "per_channel": [True, False]}},  # 4
    "fp16",  # 1
    {"int4-weight-only": {"group_size": [32, 128]}},  # 2
    {"int8-weight-only": {"group_size": 128}},  # 1
]


def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


FAILED_ROWS: list[str] = []  # every failed row of a timed run, for the table


def timed(model, data, root: Path, label: str, **kwargs) -> tuple[float, object]:
    import nbopt

    xtr, ytr, xval, yval = data
    store = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=root))
    t0 = time.perf_counter()
    study = nbopt.optimize(model, calib=(xtr, ytr), eval=(xval, yval), store=store, progress=False, **kwargs)
    seconds = time.perf_counter() - t0
    bad = [f"{c.name}: {c.row['error']}" for c in study.candidates if c.row["status"] == "failed"]
    print(f"  {label:<28} {seconds:7.1f} s  {len(study.candidates)} rows" + (f"  FAILED: {bad}" if bad else ""),
          flush=True)
    FAILED_ROWS.extend(bad)
    return seconds, study


def same_rows(a, b) -> bool:
    cols = ["status", "size_bytes", "accuracy"]
    return a.results.set_index("name")[cols].sort_index().equals(b.results.set_index("name")[cols].sort_index())


def compare(model, data, root: Path, repeat: int, a: tuple[str, dict], b: tuple[str, dict]):
    """Timed runs of a and b, alternating (a b a b ...) so that drift on a noisy machine hits both; medians."""
    times, studies = {a[0]: [], b[0]: []}, {}
    FAILED_ROWS.clear()
    for i in range(repeat):
        for label, kwargs in (a, b):
            seconds, studies[label] = timed(model, data, root, f"{label} #{i + 1}", **kwargs)
            times[label].append(seconds)
    ta, tb = statistics.median(times[a[0]]), statistics.median(times[b[0]])
    return ta, tb, f"{same_rows(studies[a[0]], studies[b[0]])}, {len(FAILED_ROWS)} failed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-ray", action="store_true", help="leave out (c)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each side, alternating (default 3)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of the demo CNN (default 8)")
    args = parser.parse_args(argv)

    from nbopt.demo import digits_arrays, train_digits_cnn

    print(f"CPU: {cpu()}; {os.cpu_count()} cores; Python {sys.version.split()[0]}; median of {args.repeat} "
          "alternating runs per side", flush=True)
    data = digits_arrays(seed=0)
    model = train_digits_cnn(epochs=args.epochs, data=data)
    rows, notes = [], []
    onnx = dict(backends=["onnx"], recipes=ONNX_GRID, measure_memory=False)
    warm = dict(backends=["onnx"], recipes=["fp16", "int8-dynamic"], measure_memory=False)
    with tempfile.TemporaryDirectory(prefix="nbopt-bench-workers-") as tmp:
        root = Path(tmp)

        print("(a) default demo sweep: warm local worker against inline", flush=True)
        timed(model, data, root, "warm-up local w=1", executor="local", workers=1)
        timed(model, data, root, "warm-up inline", executor="inline")
        local, inline, same = compare(model, data, root, args.repeat, ("local w=1", dict(executor="local", workers=1)),
                                      ("inline", dict(executor="inline")))
        rows.append(["(a) default sweep: local w=1 (warm) / inline", f"{local:.1f}", f"{inline:.1f}",
                     f"{local / inline:.2f}", "<= 1.15", same])

        print("(b) 12-candidate ONNX sweep: local workers=2 against workers=1", flush=True)
        timed(model, data, root, "warm-up local w=1", executor="local", workers=1, **warm)
        timed(model, data, root, "warm-up local w=2", executor="local", workers=2, **warm)
        two, one, same = compare(model, data, root, args.repeat,
                                 ("local w=2", dict(executor="local", workers=2, **onnx)),
                                 ("local w=1", dict(executor="local", workers=1, **onnx)))
        rows.append(["(b) ONNX x12: local w=2 / local w=1", f"{two:.1f}", f"{one:.1f}", f"{two / one:.2f}",
                     f"< 1 ({os.cpu_count()} cores)", same])

        if args.skip_ray:
            notes.append("(c) skipped (--skip-ray)")
        else:
            try:
                import ray
            except ImportError:
                ray = None
                notes.append("(c) skipped: Ray is not installed (pip install 'nbopt[ray]')")
            if ray is not None:
                print("(c) the same sweep on a local Ray of 2 CPUs against local workers=2 (Ray running for both)",
                      flush=True)
                t0 = time.perf_counter()
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
                start = time.perf_counter() - t0
                timed(model, data, root, "warm-up ray w=2", executor="ray", workers=2, **warm)
                on_ray, local2, same = compare(model, data, root, args.repeat,
                                               ("ray w=2", dict(executor="ray", workers=2, **onnx)),
                                               ("local w=2", dict(executor="local", workers=2, **onnx)))
                rows.append(["(c) ONNX x12: ray w=2 (2 CPUs) / local w=2", f"{on_ray:.1f}", f"{local2:.1f}",
                             f"{on_ray / local2:.2f}", "~1", same])
                notes.append(f"(c) ray.init(num_cpus=2) took {start:.1f} s (not in the ratio)")
                ray.shutdown()

    header = ["comparison", "seconds", "against (s)", "ratio", "goal", "same rows, failed rows"]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    for note in notes:
        print(note)
    print("seconds: median wall time of a whole study (fresh store); same rows: status, size_bytes and accuracy "
          "of every candidate are equal in the last run of each side; failed rows: in all the timed runs of the "
          "comparison (printed above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
