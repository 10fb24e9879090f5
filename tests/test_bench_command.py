"""nnc bench --vs-command: an external encoder on the table and the rate-SNR plot (NNCodec via tools/)."""

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nnc
from nnc import cli
from nnc.formats import safetensors_bytes

REPO = Path(__file__).resolve().parent.parent
NNCODEC_ENCODER = REPO / "tools" / "nncodec_encoder.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def model(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {
        "fc1.weight": rng.standard_normal((48, 32)).astype(np.float32) * 0.1,
        "fc1.bias": rng.standard_normal(48).astype(np.float32) * 0.01,
        "fc2.weight": rng.standard_normal((10, 48)).astype(np.float32) * 0.1,
        "scale": np.array(0.5, np.float32),  # 0-d: NNCodec codes it as (1,)
        "steps": np.array([7], np.int64),
    }
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(tensors))
    return path


def _script(tmp_path, body: str) -> str:
    """A command line running a small Python encoder with the protocol's placeholders."""
    path = tmp_path / "enc.py"
    path.write_text(textwrap.dedent(body))
    return f"{sys.executable} {path} {{model}} {{qp}} {{out}} {{dq}}"


#: An external encoder built on nnc itself, without DQ and with a coarser qp (so its points differ).
NNC_NO_DQ = """
    import sys
    import nnc
    from nnc.formats import read_model
    model, qp, out, dq = sys.argv[1:]
    tensors, _ = read_model(model)
    open(out, "wb").write(nnc.encode(tensors, qp=int(qp) + 2, dq=False))
"""


def _plot_args(model, png, command, *extra):
    return ["bench", str(model), "--qp", "-30", "--threads", "1", "--plot", str(png), "--json",
            "--vs-label", "other", "--vs-command", command, *extra]


def test_the_command_line_is_split_once_and_its_placeholders_filled(tmp_path):
    enc = cli.ExternalEncoder("enc --in {model} --qp={qp} --dq {dq} '{out}' {{literal}}", "my model.st", False)
    assert enc.argv(-40, tmp_path / "a b.nnr") == [
        "enc", "--in", "my model.st", "--qp=-40", "--dq", "0", str(tmp_path / "a b.nnr"), "{literal}"]


@pytest.mark.parametrize("command, problem", [
    ("enc {model} {qp}", "needs the placeholder {out}"),
    ("enc {model} {qp} {out} {level}", "unknown placeholder {level}"),
    ("enc {model} {qp} {out", "'{out'"),
    ("enc 'unclosed {model} {qp} {out}", "cannot be split"),
    ("", "empty"),
])
def test_a_misused_command_is_a_usage_error_before_any_work(model, command, problem, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", str(model), "--vs-command", command])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and problem in err


def test_the_external_curve_is_drawn_from_its_streams(model, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the plot extra): plots not tested")
    png = tmp_path / "rd.png"
    assert cli.main(_plot_args(model, png, _script(tmp_path, NNC_NO_DQ))) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["skipped"] == {} and png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000
    tensors, _ = nnc.formats.read_model(model)
    n = sum(np.asarray(v).size for v in tensors.values())
    # each point: the stream the command wrote (bytes) and nnc's decoding of it (SNR)
    expected = []
    for offset in cli.PLOT_QP_OFFSETS:
        stream = nnc.encode(tensors, qp=-30 + offset + 2, dq=False)
        snr = cli._float_snr(tensors, nnc.decode(stream))
        expected.append([8 * len(stream) / n, snr])
    assert np.allclose(report["curves"]["other"], expected, rtol=1e-9)
    assert report["curves"]["other"] != report["curves"]["nnc DQ"]
    row = [r for r in report["rows"] if r["coder"] == "other"]
    assert len(row) == 1 and row[0]["bytes"] == len(nnc.encode(tensors, qp=-30 + 2, dq=False))
    assert row[0]["decode_s"] is None  # nnc decodes it: its speed is not the coder's


def test_a_failing_command_is_one_error_line_and_writes_nothing(model, tmp_path, capsys):
    png = tmp_path / "rd.png"
    command = _script(tmp_path, """
        import sys
        print("loading the model", file=sys.stderr)
        print("the encoder broke", file=sys.stderr)
        sys.exit(3)
    """)
    assert cli.main(_plot_args(model, png, command)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "exit status 3" in captured.err and "the encoder broke" in captured.err and "qp -30" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.py", "m.safetensors"]


def test_a_command_failing_later_in_the_sweep_writes_no_plot(model, tmp_path, capsys):
    png = tmp_path / "rd.png"
    command = _script(tmp_path, """
        import sys
        model, qp, out, dq = sys.argv[1:]
        if int(qp) > -30:
            sys.exit("qp too coarse")
        open(out, "wb").write(b"NNR?" * 4)  # not a stream either
    """)
    assert cli.main(_plot_args(model, png, command)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not decode" in err and not png.exists()


@pytest.mark.parametrize("command, problem", [
    ("true {model} {qp} {out}", "wrote no stream"),
    ("/no/such/encoder {model} {qp} {out}", "cannot run '/no/such/encoder'"),
])
def test_a_command_without_a_stream_fails(model, tmp_path, command, problem, capsys):
    assert cli.main(["bench", str(model), "--threads", "1", "--vs-command", command]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and problem in err


def test_exit_status_77_skips_the_coder_visibly(model, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the plot extra): plots not tested")
    png = tmp_path / "rd.png"
    command = _script(tmp_path, """
        import sys
        print("the coder is not installed here", file=sys.stderr)
        sys.exit(77)
    """)
    assert cli.main(_plot_args(model, png, command)) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["skipped"] == {"other": "the coder is not installed here"}
    assert "other" not in report["curves"] and "nnc DQ" in report["curves"]
    assert "(other skipped: the coder is not installed here)" in captured.err
    assert png.stat().st_size > 10_000
    assert cli.main(["bench", str(model), "--threads", "1", "-q", "--vs-command", command]) == 0
    assert "skipped" not in capsys.readouterr().err  # -q: quiet


def test_nncodec_encoder_without_the_oracle_asks_for_a_skip(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NNC_ORACLE_PYTHON", str(tmp_path / "no-oracle" / "python"))
    command = f"{sys.executable} {NNCODEC_ENCODER} {{model}} {{qp}} {{out}} --dq {{dq}}"
    assert cli.main(["bench", str(model), "--threads", "1", "--vs-label", "NNCodec", "--vs-command", command]) == 0
    captured = capsys.readouterr()
    assert "(NNCodec skipped: NNCodec oracle not available: no oracle python at" in captured.err
    assert "NNCodec" not in captured.out


@pytest.mark.oracle
def test_bench_plot_has_the_nncodec_curve(oracle, model, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the plot extra): plots not tested")
    monkeypatch.setattr(cli, "PLOT_QP_OFFSETS", (-4, 4))  # three oracle runs, not six
    png = tmp_path / "rd.png"
    command = f"{sys.executable} {NNCODEC_ENCODER} {{model}} {{qp}} {{out}} --dq {{dq}}"
    args = ["bench", str(model), "--qp", "-30", "--threads", "1", "--vs", "--plot", str(png), "--json",
            "--vs-label", "NNCodec", "--vs-command", command]
    assert cli.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["skipped"] == {}
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000
    curves = report["curves"]
    assert {"nnc DQ", "idx+lzma-6", "NNCodec"} <= set(curves)
    theirs, ours = curves["NNCodec"], curves["nnc DQ"]
    assert len(theirs) == 2
    (rate_fine, snr_fine), (rate_coarse, snr_coarse) = theirs
    assert rate_fine > rate_coarse and snr_fine > snr_coarse + 3  # 8 qp apart: about 12 dB
    for (their_rate, their_snr), (our_rate, our_snr) in zip(theirs, ours):
        # the same qp and DQ: about the same quality and rate as nnc's
        assert abs(their_snr - our_snr) < 1.5 and 0.5 < their_rate / our_rate < 2
    row = [r for r in report["rows"] if r["coder"] == "NNCodec"][0]
    assert row["bytes"] > 0 and np.isfinite(row["snr_db"])


def test_a_coder_that_drops_tensors_is_not_compared(model, tmp_path, capsys):
    """Before: a coder that left out a float tensor was shown with the bytes and SNR of the part it kept."""
    command = _script(tmp_path, """
        import sys, nnc
        from nnc.formats import read_model
        tensors, _ = read_model(sys.argv[1])
        del tensors["fc2.weight"]
        open(sys.argv[3], "wb").write(nnc.encode(tensors, qp=int(sys.argv[2])))
    """)
    assert cli.main(["bench", str(model), "--threads", "1", "--vs-command", command]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "leaves out 1 of the model's float tensors (fc2.weight)" in err[0]


def test_the_vs_label_without_a_command_is_a_usage_error(model, capsys):
    """Before: accepted and ignored."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", str(model), "--vs-label", "peer"])
    assert exc.value.code == 2 and "--vs-command" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")
def test_an_interrupted_bench_ends_the_commands_children(model, tmp_path):
    """Before: SIGTERM to nnc ended the command but not the processes it started (left running under init)."""
    import os
    import signal
    import subprocess
    import time

    marker = tmp_path / "child.pid"
    script = _script(tmp_path, f"""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open({str(marker)!r}, "w").write(str(child.pid))
        child.wait()
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    bench = subprocess.Popen([sys.executable, "-m", "nnc", "bench", str(model), "--vs-command", script, "-q"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # the grandchild is running (at most a minute on a loaded machine)
            if marker.exists() and marker.read_text():
                break
            time.sleep(0.1)
        grandchild = int(marker.read_text())
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) != 0
        for _ in range(100):
            try:
                os.kill(grandchild, 0)
            except ProcessLookupError:
                break
            stat = Path(f"/proc/{grandchild}/stat")
            if stat.exists() and stat.read_text().rpartition(")")[2].split()[0] == "Z":
                break  # killed, not yet reaped by init
            time.sleep(0.1)
        else:
            os.kill(grandchild, signal.SIGKILL)
            pytest.fail("the command's child outlived nnc bench")
    finally:
        bench.kill()
