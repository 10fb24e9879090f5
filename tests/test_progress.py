"""Every long-running command shows progress on a terminal, and nothing without one or under -q / --json."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest

from nnc import cli
from nnc.formats import safetensors_bytes

REPO = Path(__file__).resolve().parent.parent


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {f"layer{i}.weight": rng.standard_normal((40, 30)).astype(np.float32) * 0.1 for i in range(4)}
    model = tmp_path / "m.safetensors"
    model.write_bytes(safetensors_bytes(tensors))
    stream = tmp_path / "m.nnr"
    assert cli.main(["encode", str(model), "-o", str(stream), "--qp", "-30", "-q"]) == 0
    return model, stream


def _stderr_of(monkeypatch, argv, terminal: bool) -> str:
    err = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert cli.main(argv) == 0, err.getvalue()
    return err.getvalue()


def _commands(model, stream, tmp_path):
    """(command line, a word its progress bar shows)."""
    return [
        (["encode", str(model), "-o", str(tmp_path / "e.nnr"), "--qp", "-30"], "encoding"),
        (["decode", str(stream), "-o", str(tmp_path / "d.safetensors"), "--overwrite"], "decoding"),
        (["compare", str(model), str(stream)], "decoding m.nnr"),
        (["verify", str(REPO / "conformance"), "--stream", "p1_urq_so0"], "verifying"),
        (["bench", str(model), "--threads", "1", "--vs"], "idx+lzma-6"),
    ]


@pytest.mark.parametrize("index", range(5), ids=["encode", "decode", "compare", "verify", "bench"])
def test_progress_on_a_terminal_only_and_never_under_quiet(files, tmp_path, monkeypatch, index):
    model, stream = files
    argv, shown = _commands(model, stream, tmp_path)[index]
    on_terminal = _stderr_of(monkeypatch, argv, terminal=True)
    assert shown in on_terminal and "\r" in on_terminal  # a bar, redrawn in place
    assert _stderr_of(monkeypatch, argv, terminal=False).count("\r") == 0  # no terminal: no bar
    quiet = _stderr_of(monkeypatch, [*argv, "-q"], terminal=True)
    assert shown not in quiet and "\r" not in quiet
