"""Third-party chatter (C++ lines on file descriptor 2, prints, warnings) stays out of the notebook and
the terminal and lands in the candidate's log."""
import ctypes
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from nbopt.quiet import candidate_log, quiet, write_log


def test_fd_level_output_goes_to_the_log_not_the_terminal(tmp_path, capfd):
    log = tmp_path / "cand.log"
    libc = ctypes.CDLL(None)
    with candidate_log(log), quiet():
        os.write(2, b"[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\n")
        libc.printf(b"fully_quantize: 0, inference_type: 6\n")  # buffered C stdio, flushed by quiet()
        print("a Python print")
        warnings.warn("torchvision is not installed")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    text = log.read_text()
    assert "cpuinfo_utils.cpp:71" in text and "fully_quantize" in text and "a Python print" in text


def test_output_after_the_block_is_not_captured(tmp_path, capfd):
    with candidate_log(tmp_path / "a.log"), quiet():
        with quiet():  # nested: one capture
            os.write(2, b"inside\n")
    os.write(2, b"outside\n")
    assert capfd.readouterr().err == "outside\n"
    assert (tmp_path / "a.log").read_text() == "inside\n"


def test_write_log_without_a_candidate_is_a_no_op(tmp_path):
    write_log("nowhere to go")  # must not raise
    with candidate_log(tmp_path / "b.log"):
        write_log("traceback text")
    assert (tmp_path / "b.log").read_text() == "traceback text\n"


@pytest.mark.slow
def test_a_torch_sweep_prints_nothing_but_its_own_output(tmp_path):
    """ExecuTorch's cpuinfo lines and exporter warnings never reach a terminal; each row has a log."""
    pytest.importorskip("executorch")
    script = textwrap.dedent("""
        import numpy as np, torch, nbopt
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
        x = np.random.default_rng(0).random((64, 16), dtype=np.float32)
        y = np.random.default_rng(1).integers(0, 4, 64)
        study = nbopt.optimize(net, calib=(x, y), eval=(x, y), backends=["torch", "onnx"],
                               recipes=["fp16", "int8-dynamic"], store="store", progress=False)
        for row in study.results.to_dict("records"):
            print("ROW", row["name"], row["status"], row["log"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONWARNINGS": "default"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "", proc.stderr[:2000]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("ROW")]
    assert len(rows) == 6 and all(r[2] == "ok" for r in rows), proc.stdout
    assert all((tmp_path / r[3]).exists() for r in rows)
