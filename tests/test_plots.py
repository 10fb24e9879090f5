"""nnc compare --plot and nnc bench --plot (matplotlib, the `plot` extra), and bench's progress."""

import io
import json
import sys

import numpy as np
import pytest

from nnc import cli
from nnc.formats import safetensors_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def model(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "fc1.weight": rng.standard_normal((32, 24)).astype(np.float32) * 0.1,
        "fc1.bias": rng.standard_normal(32).astype(np.float32) * 0.01,
        "fc2.weight": rng.standard_normal((10, 32)).astype(np.float32) * 0.1,
        "steps": np.array([7], np.int64),
    }
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(tensors))
    return path


def _assert_png(path, min_bytes=10_000):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert len(data) >= min_bytes, f"a {len(data)}-byte PNG is too small to hold the figure"


def test_compare_plot_writes_a_png(model, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the plot extra): plots not tested")
    stream, png = tmp_path / "m.nnr", tmp_path / "compare.png"
    assert cli.main(["encode", str(model), "-o", str(stream), "--qp", "-24", "-q"]) == 0
    assert cli.main(["compare", str(model), str(stream), "--plot", str(png), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plot"] == str(png) and report["passed"]
    _assert_png(png)
    assert not list(tmp_path.glob(".compare.png.*")), "temporary file left behind"


def test_a_failed_comparison_writes_no_plot(model, tmp_path, capsys):
    """The plot was written though the comparison failed (exit 1): a failed command writes nothing."""
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the plot extra): plots not tested")
    stream, png = tmp_path / "m.nnr", tmp_path / "compare.png"
    assert cli.main(["encode", str(model), "-o", str(stream), "--qp", "-24", "-q"]) == 0
    assert cli.main(["compare", str(model), str(stream), "--plot", str(png), "--min-snr", "500", "-q"]) == 1
    assert not png.exists() and not list(tmp_path.glob(".compare.png.*"))
    assert "--plot" in capsys.readouterr().err


def test_bench_plot_draws_rate_against_snr_for_nnc_and_the_lossless_coders(model, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the plot extra): plots not tested")
    png = tmp_path / "rd.png"
    assert cli.main(["bench", str(model), "--qp", "-30", "--vs", "--threads", "1", "--plot", str(png), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    _assert_png(png)
    curves = report["curves"]
    assert {"nnc DQ", "idx+lzma-6", "idx+bz2-9"} <= set(curves)
    nnc_curve = curves["nnc DQ"]
    assert len(nnc_curve) == len(cli.PLOT_QP_OFFSETS)
    rates, snrs = zip(*nnc_curve)
    # qp grows along the sweep: coarser steps, fewer bits and less SNR (about 6 dB per 4 qp)
    assert all(a > b for a, b in zip(rates, rates[1:])) and all(a > b for a, b in zip(snrs, snrs[1:]))
    assert 4 < snrs[0] - snrs[1] < 8
    assert [s for _, s in curves["idx+lzma-6"]] == list(snrs)  # the same indices, the same reconstruction


def test_plot_without_matplotlib_fails_cleanly_before_any_work(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    png = tmp_path / "x.png"
    assert cli.main(["compare", str(model), str(model), "--plot", str(png)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install matplotlib" in err
    assert cli.main(["bench", str(model), "--plot", str(png)]) == 1
    assert not png.exists()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bench_vs_shows_progress_on_a_terminal_only(model, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert cli.main(["bench", str(model), "--vs", "--threads", "1"]) == 0
    shown = sys.stderr.getvalue()
    assert "idx+lzma-6" in shown and "/" in shown  # the stage names and n/total
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert cli.main(["bench", str(model), "--vs", "--threads", "1", "--json"]) == 0
    assert "idx+lzma-6" not in sys.stderr.getvalue()  # --json: no bar
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert cli.main(["bench", str(model), "--vs", "--threads", "1"]) == 0
    assert "idx+lzma-6" not in sys.stderr.getvalue()  # not a terminal: no bar
