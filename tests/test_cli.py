"""The nnc console script, run for real in a subprocess: outputs, JSON and exit codes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnc
import nnc.cli
from nnc.formats import npz_bytes, read_model, safetensors_bytes

EXE = shutil.which("nnc")
CMD = [EXE] if EXE else [sys.executable, "-m", "nnc"]


def run(*args, cwd=None):
    return subprocess.run(CMD + [str(a) for a in args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture()
def model(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"fc.weight": rng.standard_normal((16, 12)).astype(np.float32) * 0.1,
               "fc.bias": rng.standard_normal(16).astype(np.float32) * 0.1,
               "steps": np.array([7], np.int64)}
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(tensors))
    return path, tensors


def test_help_lists_subcommands_and_examples():
    r = run("--help")
    assert r.returncode == 0
    for sub in ("encode", "decode", "info", "verify", "demo"):
        assert sub in r.stdout
    r = run("encode", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout


@pytest.mark.quick
def test_encode_info_decode_round_trip(model, tmp_path):
    path, tensors = model
    out = tmp_path / "m.nnr"
    r = run("encode", path, "-o", out, "--qp", "-30", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["bytes"] == out.stat().st_size and summary["tensors"] == 3
    r = run("info", out, "--json")
    info = json.loads(r.stdout)
    # fc.bias rides in fc.weight's BLOCK unit (the default), coded before it (spec 7.6)
    assert [t["name"] for t in info["tensors"]] == ["fc.bias", "fc.weight", "steps"]
    assert info["tensors"][0]["payload_type"] == "BLOCK"
    assert info["tensors"][0]["qp"] == -30
    r = run("info", out)
    assert r.returncode == 0 and "bits/weight" in r.stdout
    for ext in ("npz", "safetensors"):
        dec = tmp_path / f"d.{ext}"
        r = run("decode", out, "-o", dec)
        assert r.returncode == 0, r.stderr
        back, _ = read_model(dec)
        assert list(back) == ["fc.weight", "fc.bias", "steps"]  # the model's order, though a block codes the bias first
        assert back["steps"].tolist() == [7]


def test_bad_paths_corrupt_streams_and_unknown_formats(model, tmp_path):
    path, _ = model
    r = run("decode", tmp_path / "missing.nnr", "-o", tmp_path / "x.npz")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "error" in r.stderr
    bad = tmp_path / "bad.nnr"
    bad.write_bytes(b"\x00\x04\x02\x01\x00\x09\x06\xff\xff")
    r = run("info", bad)
    assert r.returncode == 1 and r.stderr.startswith("nnc: error:") and r.stderr.count("\n") == 1
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world, not a model")
    r = run("encode", junk, "-o", tmp_path / "j.nnr")
    assert r.returncode == 1 and "unknown model format" in r.stderr
    r = run("decode", path, "-o", tmp_path / "out.xyz")
    assert r.returncode == 1
    r = run("encode", path, "--qp", "notanint")
    assert r.returncode == 2


def test_no_partial_output_on_failure(tmp_path):
    bad = tmp_path / "bad.nnr"
    bad.write_bytes(b"\x00\x04\x02\x01")
    out = tmp_path / "never.npz"
    r = run("decode", bad, "-o", out, "--tensor", "nope")
    assert r.returncode == 1 and not out.exists()
    assert not list(tmp_path.glob(".never*"))


def test_npz_input_and_per_tensor_options(tmp_path):
    arrs = {"a.weight": np.ones((4, 4), np.float32) * 0.3, "b.weight": np.ones((4, 4), np.float32) * 0.3}
    src = tmp_path / "in.npz"
    src.write_bytes(npz_bytes(arrs))
    out = tmp_path / "o.nnr"
    r = run("encode", src, "-o", out, "--qp", "-20", "--tensor-qp", "b.*=-10", "--raw", "a.*", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(run("info", out, "--json").stdout)
    kinds = {t["name"]: (t["payload_type"], t["qp"]) for t in info["tensors"]}
    assert kinds == {"a.weight": ("RAW_FLOAT", None), "b.weight": ("FLOAT", -10)}


def test_encode_warns_of_tensors_that_keep_no_signal(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"big.weight": rng.standard_normal((8, 8)).astype(np.float32),
               "small.weight": rng.standard_normal((8, 8)).astype(np.float32) * 1e-5,  # far below qp -38's step
               "zero.weight": np.zeros((4, 4), np.float32)}                             # nothing to keep
    src = tmp_path / "in.safetensors"
    src.write_bytes(safetensors_bytes(tensors))
    r = run("encode", src, "-o", tmp_path / "o.nnr")
    assert r.returncode == 0, r.stderr
    warning = [line for line in r.stderr.splitlines() if "kept none of their signal" in line]
    assert len(warning) == 1 and warning[0].endswith("small.weight; a finer --qp, --nonweight-qp, --tensor-qp or "
                                                     "--target-snr keeps them")
    r = run("encode", src, "-o", tmp_path / "o.nnr", "--json")
    assert json.loads(r.stdout)["zeroed"] == ["small.weight"]
    r = run("encode", src, "-o", tmp_path / "o.nnr", "--qp", "-90", "--json")
    assert "zeroed" not in json.loads(r.stdout) and "signal" not in r.stderr


def test_encode_names_checkpoint_entries_it_leaves_out(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch)")
    src = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.ones(4, 4)}, "optimizer": {"lr": 0.1}, "epoch": 3}, src)
    r = run("encode", src, "-o", tmp_path / "o.nnr")
    assert r.returncode == 0, r.stderr
    assert (f"nnc: note: {src}: 2 entries besides the model's weights are not encoded (decoding writes the "
            "tensors alone): optimizer, epoch") in r.stderr.splitlines()
    r = run("encode", src, "-o", tmp_path / "o.nnr", "--json")
    assert json.loads(r.stdout)["left_out"] == ["optimizer", "epoch"]
    torch.save({"w": torch.ones(4, 4)}, src)
    r = run("encode", src, "-o", tmp_path / "o.nnr", "--json")
    assert "left_out" not in json.loads(r.stdout) and "note" not in r.stderr


def test_demo_runs(tmp_path):
    r = run("demo", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {row["model"] for row in rows} == {"mlp", "cnn"}
    assert all(row["acc_after"] > 0.8 for row in rows if row["qp"] <= -20)


def test_bench_reports_json(model):
    path, _ = model
    r = run("bench", path, "--qp", "-24", "--json", "--vs", "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    coders = [row["coder"] for row in report["rows"]]
    assert coders[0] == "nnc" and "idx+lzma-6" in coders
    assert all(row["bytes"] > 0 for row in report["rows"])


def test_bench_vs_counts_the_tensors_nnc_stores_raw(tmp_path):
    """Before: the lossless rows compressed the coded tensors' indices alone and divided by every weight: 1000
    float32 values with an inf (stored raw) were "idx+lzma-6 32 B 0.256 bits/w"."""
    path = tmp_path / "raw.npz"
    values = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    values[-1] = np.inf
    path.write_bytes(npz_bytes({"w": values}))
    r = run("bench", path, "--json", "--vs", "-q")
    assert r.returncode == 0, r.stderr
    rows = {row["coder"]: row for row in json.loads(r.stdout)["rows"]}
    assert rows["idx+lzma-6"]["bytes"] > 0.8 * values.nbytes  # random floats do not compress


def test_reference_tools_agree(tmp_path, model):
    path, _ = model
    repo = Path(__file__).resolve().parent.parent
    stream = tmp_path / "s.nnr"
    enc = subprocess.run([sys.executable, str(repo / "tools" / "nnc_encoder.py"), "-i", str(path), "-b", str(stream),
                          "--qp", "-28"], capture_output=True, text=True)
    dec = subprocess.run([sys.executable, str(repo / "tools" / "nnc_decoder.py"), "-b", str(stream)],
                         capture_output=True, text=True)
    assert enc.returncode == 0 and dec.returncode == 0, enc.stderr + dec.stderr
    assert enc.stdout.splitlines()[-1].split()[0] == dec.stdout.splitlines()[-1].split()[0]


def test_errors_on_a_stream_name_its_path(model, tmp_path):
    path, _ = model
    stream = tmp_path / "m.nnr"
    assert run("encode", path, "-o", stream).returncode == 0
    cut = tmp_path / "cut.nnr"
    cut.write_bytes(stream.read_bytes()[:-10])
    out = tmp_path / "o.npz"
    for argv in (("decode", cut, "-o", out), ("info", cut), ("compare", stream, cut)):
        r = run(*argv)
        assert r.returncode == 1 and r.stderr.startswith(f"nnc: error: {cut}: "), (argv, r.stderr)
        assert r.stderr.count("\n") == 1 and "byte offset" in r.stderr
    assert not out.exists()


def test_a_stream_larger_than_its_model_is_not_called_smaller(tmp_path):
    path = tmp_path / "nan.safetensors"       # a tensor with NaN is stored raw: the stream outgrows 16 bytes
    path.write_bytes(safetensors_bytes({"w": np.array([[1.0, np.nan], [0.5, 0.25]], np.float32)}))
    r = run("encode", path, "-o", tmp_path / "n.nnr")
    assert r.returncode == 0 and "x larger than float32" in r.stdout and "smaller" not in r.stdout, r.stdout
    r = run("info", tmp_path / "n.nnr")
    assert r.returncode == 0 and "x larger than the original 16 bytes" in r.stdout, r.stdout


def test_reference_tools_name_the_file_of_an_error(model, tmp_path):
    path, _ = model
    repo = Path(__file__).resolve().parent.parent
    tool = lambda name, *argv: subprocess.run(  # noqa: E731
        [sys.executable, str(repo / "tools" / name), *map(str, argv)], capture_output=True, text=True)
    missing = tmp_path / "missing.nnr"
    r = tool("nnc_decoder.py", "-b", missing)
    assert (r.returncode, r.stderr) == (1, f"error: {missing}: No such file or directory\n")
    nowhere = tmp_path / "no" / "s.nnr"
    r = tool("nnc_encoder.py", "-i", path, "-b", nowhere)
    assert r.returncode == 1 and r.stderr.startswith(f"error: {nowhere}: ") and r.stderr.count("\n") == 1
    stream = tmp_path / "s.nnr"
    assert tool("nnc_encoder.py", "-i", path, "-b", stream).returncode == 0
    cut = tmp_path / "cut.nnr"
    cut.write_bytes(stream.read_bytes()[:-10])
    r = tool("nnc_decoder.py", "-b", stream, cut, "-o", tmp_path / "o.npz")
    assert r.returncode == 1 and r.stderr.startswith(f"error: {cut}: ") and not (tmp_path / "o.npz").exists()
    r = tool("nnc_decoder.py", "-b", stream, "-o", nowhere.with_suffix(".npz"))
    assert r.returncode == 1 and r.stderr.startswith(f"error: {nowhere.with_suffix('.npz')}: ")
    # outputs that are inputs (before: written over, exit 0); an option error does not name the model
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    for argv, victim in ((("nnc_encoder.py", "-i", copy, "-b", copy), copy),
                         (("nnc_decoder.py", "-b", stream, "-o", stream), stream),
                         (("nnc_decoder.py", "-b", stream, "-o", tmp_path / "x", "--state", tmp_path / "x"), None)):
        before = None if victim is None else victim.read_bytes()
        r = tool(*argv)
        assert r.returncode == 1 and "refusing to overwrite an input" in r.stderr and r.stderr.count("\n") == 1
        assert victim is None or victim.read_bytes() == before
    r = tool("nnc_encoder.py", "-i", path, "-b", tmp_path / "y.nnr", "--qp-density", "9")
    assert r.returncode == 1 and r.stderr == "error: qp_density 9 outside 0..7\n"


def test_reference_decoder_decodes_an_incremental_sequence(tmp_path):
    """The conformance sequence, one stream after another with one state: the manifest's hashes."""
    repo = Path(__file__).resolve().parent.parent
    manifest = json.loads((repo / "conformance" / "manifest.json").read_text())
    seq = [e for e in manifest["streams"] if (e.get("sequence") or {}).get("id") == "p1_incremental_encoded"]
    files = [str(repo / "conformance" / e["file"]) for e in sorted(seq, key=lambda e: e["sequence"]["position"])]
    tool = [sys.executable, str(repo / "tools" / "nnc_decoder.py")]
    whole = subprocess.run(tool + ["-b"] + files, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    hashes = [line.split()[0] for line in whole.stdout.splitlines() if "(whole output" in line]
    assert hashes == [e["expected"]["output_sha256"] for e in seq]
    state = tmp_path / "rx.state"  # the same, one run per stream
    for f, e in zip(files, seq):
        r = subprocess.run(tool + ["-b", f, "--state", str(state)], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.splitlines()[-1].split()[0] == e["expected"]["output_sha256"], r.stderr
    alone = subprocess.run(tool + ["-b", files[1]], capture_output=True, text=True)
    assert alone.returncode == 1 and "spec 14" in alone.stderr


def test_encode_search_writes_the_smallest_stream_within_tolerance(tmp_path):
    from nnc import demo

    src = demo.DATA / "mlp.safetensors"
    out = tmp_path / "mlp.nnr"
    r = run("encode", src, "-o", out, "--search", "nnc.demo:mlp_accuracy", "--tolerance", "0.01", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["bytes"] == out.stat().st_size
    assert summary["score"] >= summary["reference_score"] - 0.01
    import nnc

    assert demo.mlp_accuracy(nnc.decode(out.read_bytes())) == summary["score"]
    plain = tmp_path / "plain.nnr"
    assert run("encode", src, "-o", plain, "--qp", "-38").returncode == 0
    assert summary["bytes"] < plain.stat().st_size
    front = summary["pareto"]
    assert [p["bytes"] for p in front] == sorted(p["bytes"] for p in front)
    assert all(a["score"] < b["score"] for a, b in zip(front, front[1:]))


def test_encode_search_with_a_function_from_a_file(model, tmp_path):
    path, tensors = model
    script = tmp_path / "score.py"
    script.write_text("import numpy as np\n"
                      "from nnc.formats import read_model\n"
                      f"REF, _ = read_model({str(path)!r})\n"
                      "def neg_mse(t):\n"
                      "    return -float(np.mean((np.asarray(t['fc.weight']) - REF['fc.weight']) ** 2))\n")
    out = tmp_path / "m.nnr"
    r = run("encode", path, "-o", out, "--search", f"{script}:neg_mse", "--tolerance", "1e-4", "--time-budget", "30")
    assert r.returncode == 0, r.stderr
    assert out.exists() and "Pareto front" in r.stdout


@pytest.mark.parametrize("spec", ["no_colon", "nnc.demo:no_such_function", "no_such_module_xyz:f", ":f"])
def test_encode_search_bad_function_is_a_usage_error(model, tmp_path, spec):
    path, _ = model
    r = run("encode", path, "-o", tmp_path / "x.nnr", "--search", spec)
    assert r.returncode == 2
    assert "--search" in r.stderr or "no function" in r.stderr
    assert not (tmp_path / "x.nnr").exists()


@pytest.mark.parametrize("body", ['raise RuntimeError("boom")\n', "def f(:\n"])
def test_encode_search_module_failing_on_import_is_one_line(model, tmp_path, body):
    """Before: a --search module raising on import or with a syntax error ended in a traceback."""
    path, _ = model
    script = tmp_path / "metric.py"
    script.write_text(body)
    r = run("encode", path, "-o", tmp_path / "x.nnr", "--search", f"{script}:f")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--search" in r.stderr, r.stderr
    assert not (tmp_path / "x.nnr").exists()


def test_encode_lambda_importance_and_target_snr(model, tmp_path):
    path, tensors = model
    base = tmp_path / "base.nnr"
    assert run("encode", path, "-o", base, "--qp", "-20", "--no-dq").returncode == 0
    lam = tmp_path / "lam.nnr"
    r = run("encode", path, "-o", lam, "--qp", "-20", "--no-dq", "--rdoq", "--lambda", "2.0")
    assert r.returncode == 0, r.stderr
    assert lam.stat().st_size < base.stat().st_size            # a large lambda drops levels
    fisher = tmp_path / "fisher.safetensors"
    fisher.write_bytes(safetensors_bytes({k: np.ones_like(v) for k, v in tensors.items() if v.dtype.kind == "f"}))
    out = tmp_path / "alloc.nnr"
    r = run("encode", path, "-o", out, "--target-snr", "25", "--importance", fisher, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert set(summary["allocated_qps"]) == {"fc.weight", "fc.bias"}
    import nnc

    dec = nnc.decode(out.read_bytes())
    energy = sum(float((tensors[k].astype(np.float64) ** 2).sum()) for k in ("fc.weight", "fc.bias"))
    err = sum(float(((tensors[k].astype(np.float64) - dec[k]) ** 2).sum()) for k in ("fc.weight", "fc.bias"))
    assert 10 * np.log10(energy / err) >= 24.9


def test_encode_importance_of_the_wrong_size_is_an_input_error(model, tmp_path):
    path, tensors = model
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(safetensors_bytes({"fc.weight": np.ones(5, np.float32)}))
    for extra in (["--rdoq"], ["--target-snr", "20"]):
        r = run("encode", path, "-o", tmp_path / "x.nnr", "--importance", bad, *extra)
        assert r.returncode == 1, r.stderr
        assert "importance" in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "x.nnr").exists()


def test_encode_with_covariances_codes_the_fed_back_levels(model, tmp_path):
    path, tensors = model
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 12)) @ rng.standard_normal((12, 12))
    h = x.T @ x / len(x)
    cov = tmp_path / "cov.npz"
    cov.write_bytes(npz_bytes({"fc.weight": h}))
    out = tmp_path / "fed.nnr"
    r = run("encode", path, "-o", out, "--qp", "-20", "--covariances", cov)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == nnc.encode(tensors, qp=-20, covariances={"fc.weight": h})


@pytest.mark.parametrize(
    "content, extra, message",
    [
        ({"fc.weight": np.eye(5)}, [], "must be (12, 12)"),
        ({"fc.bias": np.eye(16)}, [], "needs a weight"),
        ({"other.weight": np.eye(12)}, [], "'other.weight' is not a tensor of"),
        ({"fc.weight": np.eye(12) + 5 * np.eye(12, k=1) + 5 * np.eye(12, k=-1)}, [], "not positive semi-definite"),
        ({"fc.weight": np.eye(12)}, ["--target-snr", "20"], "cannot be combined with --target-snr"),
    ],
)
def test_a_wrong_covariances_file_is_an_input_error(model, tmp_path, content, extra, message):
    path, _ = model
    cov = tmp_path / "cov.npz"
    cov.write_bytes(npz_bytes(content))
    r = run("encode", path, "-o", tmp_path / "x.nnr", "--covariances", cov, *extra)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    assert not (tmp_path / "x.nnr").exists()


def test_tensor_lambda_and_bad_assignments(model, tmp_path):
    path, _ = model
    plain, lam = tmp_path / "p.nnr", tmp_path / "l.nnr"
    assert run("encode", path, "-o", plain, "--qp", "-20", "--no-dq").returncode == 0
    r = run("encode", path, "-o", lam, "--qp", "-20", "--no-dq", "--tensor-lambda", "fc.*=3")
    assert r.returncode == 0, r.stderr
    assert lam.stat().st_size < plain.stat().st_size
    for bad in (["--tensor-lambda", "fc.*=x"], ["--tensor-qp", "fc.*=1.5"], ["--tensor-qp", "nolabel"]):
        r = run("encode", path, "-o", tmp_path / "x.nnr", *bad)
        assert r.returncode == 2 and "Traceback" not in r.stderr


def test_encode_search_with_a_check(model, tmp_path):
    path, _ = model
    script = tmp_path / "score.py"
    script.write_text("import numpy as np\n"
                      "from nnc.formats import read_model\n"
                      f"REF, _ = read_model({str(path)!r})\n"
                      "def neg_mse(t):\n"
                      "    return -float(np.mean((np.asarray(t['fc.weight']) - REF['fc.weight']) ** 2))\n"
                      "def exact(t):\n"
                      "    return float(np.array_equal(np.asarray(t['fc.weight']), REF['fc.weight']))\n")
    out = tmp_path / "m.nnr"
    ok = run("encode", path, "-o", out, "--search", f"{script}:neg_mse", "--check", f"{script}:neg_mse",
             "--tolerance", "1e-4", "--json")
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["check"] >= summary["check_reference"] - 1e-4
    # a check that only the original passes: no stream is written
    bad = run("encode", path, "-o", tmp_path / "x.nnr", "--search", f"{script}:neg_mse", "--check",
              f"{script}:exact", "--tolerance", "1e-4")
    assert bad.returncode != 0 and "--check" in bad.stderr
    assert not (tmp_path / "x.nnr").exists()
    # checked during the refinement too
    moves = run("encode", path, "-o", out, "--search", f"{script}:neg_mse", "--check", f"{script}:neg_mse",
                "--check-moves", "--tolerance", "1e-4", "--json")
    assert moves.returncode == 0, moves.stderr
    summary = json.loads(moves.stdout)
    assert summary["check"] >= summary["check_reference"] - 1e-4
    # misused: a check without a search, check moves without a check
    for misused, named in ((["--check", f"{script}:neg_mse"], "--check"),
                           (["--search", f"{script}:neg_mse", "--check-moves"], "--check-moves")):
        r = run("encode", path, "-o", tmp_path / "y.nnr", *misused)
        assert r.returncode != 0 and named in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "y.nnr").exists()


def test_compare_reports_the_encoders_snr_and_fails_below_min_snr(model, tmp_path):
    path, tensors = model
    out = tmp_path / "m.nnr"
    summary = json.loads(run("encode", path, "-o", out, "--qp", "-24", "--json").stdout)
    r = run("compare", path, out, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    x = {k: np.asarray(v, np.float64) for k, v in tensors.items() if v.dtype.kind == "f"}
    back = nnc.decode(out.read_bytes())
    snr = 10 * np.log10(sum((v**2).sum() for v in x.values())
                        / sum(((v - back[k].astype(np.float64)) ** 2).sum() for k, v in x.items()))
    assert result["total"]["snr_db"] == pytest.approx(snr) == pytest.approx(summary["snr_db"])
    assert [t["name"] for t in result["tensors"]] == list(tensors) and result["passed"]
    assert next(t for t in result["tensors"] if t["name"] == "steps")["equal"] is True
    r = run("compare", path, out, "--min-snr", snr + 0.01)
    assert r.returncode == 1 and "below --min-snr" in r.stderr
    assert run("compare", path, out, "--min-snr", snr - 0.01).returncode == 0


def test_compare_lists_missing_reshaped_and_changed_tensors(model, tmp_path):
    path, tensors = model
    other = dict(tensors)
    del other["fc.bias"]
    other["fc.weight"] = other["fc.weight"].T.copy()
    other["steps"] = np.array([8], np.int64)
    other["new"] = np.zeros(2, np.float32)
    p2 = tmp_path / "o.npz"
    p2.write_bytes(npz_bytes(other))
    r = run("compare", path, p2, "--json")
    assert r.returncode == 1
    result = json.loads(r.stdout)
    assert result["missing"] == ["fc.bias"] and result["extra"] == ["new"]
    assert result["shape_mismatches"][0]["name"] == "fc.weight"
    assert result["total"]["exact_mismatches"] == ["steps"] and not result["passed"]
    r = run("compare", path, path, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["total"]["snr_db"] == "inf"


def test_info_names_the_engine(model, tmp_path, capsys):
    from nnc import cli
    from nnc.engine import engine_name

    out = tmp_path / "m.nnr"
    assert cli.main(["encode", str(model[0]), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    assert cli.main(["info", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == engine_name()
    assert cli.main(["info", str(out)]) == 0
    assert f"read by the {engine_name()} engine" in capsys.readouterr().out.splitlines()[0]


def test_info_shows_each_codebook_s_size(tmp_path, capsys):
    from nnc import cli

    rng = np.random.default_rng(3)
    stream = tmp_path / "m.nnr"
    stream.write_bytes(nnc.encode({"c": np.full((64, 64), 0.3, np.float32),
                                   "g": (rng.standard_normal((64, 64)) * 0.05).astype(np.float32)}))
    assert cli.main(["info", str(stream)]) == 0
    lines = capsys.readouterr().out.splitlines()
    book = lines[1].split().index("book")
    assert lines[3].split()[0] == "c" and lines[3].split()[book] == "1"
    assert lines[4].split()[0] == "g" and len(lines[4].split()) == len(lines[1].split()) - 1  # (none)


def test_a_closed_pipe_ends_the_output_quietly(tmp_path):
    # `nnc info big.nnr | head -1` printed "nnc: error: : Broken pipe"
    stream = tmp_path / "many.nnr"
    stream.write_bytes(nnc.encode({f"layer{i}.w": np.full((2, 2), 0.5, np.float32) for i in range(2000)}, qp=-8))
    proc = subprocess.Popen(CMD + ["info", str(stream)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(str(stream).encode())
    proc.stdout.close()                      # 2000 lines do not fit the pipe: the writer meets EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and err == ""


def test_encode_into_a_folder_named_with_a_slash(model, tmp_path):
    path, _ = model
    (tmp_path / "out").mkdir()
    r = run("encode", path, "-o", f"{tmp_path / 'out'}/")      # wrote a file named "out" beside the folder before
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["m.nnr"]
    r = run("encode", path, "-o", f"{tmp_path / 'nowhere'}/")
    assert r.returncode == 1 and "folder" in r.stderr and not (tmp_path / "nowhere").exists()


def test_the_nnc_command_imports_an_evaluation_module_from_the_current_folder(tmp_path):
    """README: ``nnc encode ... --search my_eval:correct`` with my_eval.py in the current folder. The ``nnc``
    command's sys.path lacks that folder (``python -m nnc`` has it): the import failed, exit 2."""
    command = shutil.which("nnc")
    if command is None:
        pytest.skip("the nnc command is not on PATH (pip install .)")
    (tmp_path / "my_eval.py").write_text("import helper\n\ndef correct(tensors):\n    return helper.score(tensors)\n")
    (tmp_path / "helper.py").write_text("def score(tensors):\n    return float(abs(tensors['w']).sum() > 0)\n")
    (tmp_path / "m.npz").write_bytes(npz_bytes({"w": np.random.default_rng(0).normal(0, 1, (32, 32)).astype(np.float32)}))
    run = subprocess.run([command, "encode", "m.npz", "-o", "s.nnr", "--search", "my_eval:correct",
                          "--time-budget", "5", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert nnc.decode(tmp_path / "s.nnr")["w"].shape == (32, 32)
    missing = subprocess.run([command, "encode", "m.npz", "-o", "t.nnr", "--search", "not_here:correct", "-q"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "No module named 'not_here'" in missing.stderr
    assert not (tmp_path / "t.nnr").exists()


def test_encoding_a_checkpoint_folder_by_dot_names_the_stream_after_it_and_notes_the_files_beside(tmp_path):
    """Before: `nnc encode .` was a ValueError traceback, `nnc encode ..` wrote a hidden `...nnr`, a folder
    "Llama-3.1-8B" became "Llama-3.nnr", and config.json and the tokenizer were left behind without a word."""
    folder = tmp_path / "tiny-3.1"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(safetensors_bytes({"w": np.ones((4, 4), np.float32)}))
    (folder / "config.json").write_text("{}")
    r = run("encode", ".", "-o", tmp_path / "a.nnr", cwd=folder)
    assert r.returncode == 0 and (tmp_path / "a.nnr").exists(), r.stderr
    assert "1 file beside the weights is not in the stream" in r.stderr and "config.json" in r.stderr
    (folder / "sub").mkdir()
    r = run("encode", "..", cwd=folder / "sub")
    assert r.returncode == 0 and (tmp_path / "tiny-3.1.nnr").exists(), r.stderr
    assert not (folder / "...nnr").exists()


def test_decode_does_not_replace_an_existing_file_without_overwrite(tmp_path):
    """Before: `nnc decode m.nnr -o model.safetensors` replaced the original model with the lossy decode, exit 0."""
    src = tmp_path / "model.safetensors"
    src.write_bytes(safetensors_bytes({"w": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)}))
    original = src.read_bytes()
    assert run("encode", src, "-o", tmp_path / "m.nnr").returncode == 0
    r = run("decode", tmp_path / "m.nnr", "-o", src)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--overwrite" in r.stderr, r.stderr
    assert src.read_bytes() == original
    assert run("decode", tmp_path / "m.nnr", "-o", src, "--overwrite").returncode == 0
    assert src.read_bytes() != original


def test_compare_holds_a_tensor_or_two_not_the_models(tmp_path):
    """Before: `nnc compare` read the model and decoded the stream whole (about 3x the model in memory)."""
    import tracemalloc

    from nnc.cli import main

    rng = np.random.default_rng(5)
    tensors = {f"layer{i}.weight": rng.normal(0, 0.1, (500, 1000)).astype(np.float32) for i in range(20)}
    src = tmp_path / "m.safetensors"
    src.write_bytes(safetensors_bytes(tensors))
    assert main(["encode", str(src), "-o", str(tmp_path / "m.nnr"), "-q"]) == 0
    model = 20 * 500 * 1000 * 4
    tracemalloc.start()
    try:
        assert main(["compare", str(src), str(tmp_path / "m.nnr"), "-q"]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < model / 2, f"{peak:,} bytes traced comparing a {model:,}-byte model with its stream"


def test_encode_into_an_existing_folder_without_a_trailing_slash(tmp_path):
    """Before: `nnc encode m.safetensors -o .` was refused ("a folder, not a file"); decode -o . was not."""
    src = tmp_path / "m.safetensors"
    src.write_bytes(safetensors_bytes({"w": np.ones((4, 4), np.float32)}))
    (tmp_path / "out").mkdir()
    r = run("encode", src, "-o", ".", cwd=tmp_path / "out")
    assert r.returncode == 0 and (tmp_path / "out" / "m.nnr").exists(), r.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
@pytest.mark.parametrize("command", [["info"], ["decode", "-o", "out.npz"], ["compare", "other.npz"],
                                     ["encode", "-o", "out.nnr"]])
def test_a_named_pipe_is_refused_not_read_twice_or_waited_on(tmp_path, command):
    """Before: nnc info on a FIFO waited forever; on a pipe given as /dev/stdin it read the first bytes to tell
    the format, then failed on the rest ("not an NNC stream")."""
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "other.npz").write_bytes(npz_bytes({"w": np.ones(3, np.float32)}))
    args = [command[0], "pipe"] + command[1:]
    r = subprocess.run([sys.executable, "-m", "nnc", *args], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 1 and r.stderr.strip() == "nnc: error: pipe: not a regular file (a pipe, socket or " \
        "device): save it to a file first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.npz", "pipe"]


def test_compare_says_an_empty_stream_is_empty(tmp_path, capsys):
    """Before: "unknown model format (supported: npz, ...)" for an empty .nnr, which nnc info calls empty."""
    from nnc.cli import main

    (tmp_path / "e.nnr").write_bytes(b"")
    (tmp_path / "m.npz").write_bytes(npz_bytes({"w": np.ones(3, np.float32)}))
    assert main(["compare", str(tmp_path / "e.nnr"), str(tmp_path / "m.npz")]) == 1
    assert "e.nnr: empty stream" in capsys.readouterr().err


def test_a_qp_beyond_float32_steps_names_its_option_once():
    """Before: "qp: qp 1000 (qp_density 2) ..."; a per-tensor qp did not say it was one."""
    with pytest.raises(nnc.EncodeError, match=r"^qp 1000 \(qp_density 2\) gives a step size"):
        nnc.encode({"w": np.ones(3)}, qp=1000)
    with pytest.raises(nnc.EncodeError, match=r"^qp_per_tensor\['w'\]: qp 999 "):
        nnc.encode({"w": np.ones(3)}, qp_per_tensor={"w": 999})


def test_a_tensor_name_with_a_newline_stays_on_its_row(tmp_path, capsys):
    """Before: info and compare printed the name raw, splitting its row in two."""
    from nnc.cli import main

    model = tmp_path / "odd.npz"
    model.write_bytes(npz_bytes({"ü/名前 weird\nname": np.ones((4, 4), np.float32)}))
    assert main(["encode", str(model), "-o", str(tmp_path / "odd.nnr"), "-q"]) == 0
    capsys.readouterr()
    for args in (["info", str(tmp_path / "odd.nnr")], ["compare", str(model), str(tmp_path / "odd.nnr")]):
        assert main(args) == 0
        rows = [line for line in capsys.readouterr().out.splitlines() if "名前" in line]
        assert len(rows) == 1 and "ü/名前 weird\\nname" in rows[0] and "4x4" in rows[0]


@pytest.mark.parametrize("argv", [["demo", "extra"], ["info", "m.nnr", "--bogus"], ["encode", "m.safetensors", "-x"]])
def test_an_unknown_argument_is_said_with_the_command_s_own_usage(argv, capsys):
    """`nnc demo extra` printed the top-level usage line (nnc [-h] [--version] COMMAND ...), not demo's."""
    with pytest.raises(SystemExit) as exit_:
        nnc.cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"usage: nnc {argv[0]}" in err and f"nnc {argv[0]}: error: unrecognized arguments: {argv[-1]}" in err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["encode", "m.safetensors", "-o", ""], "-o/--output"),  # was: the default output, replacing m.nnr
        (["encode", ""], "model"),
        (["encode", "m.safetensors", "--state", ""], "--state"),  # was: no state written, silently
        (["encode", "m.safetensors", "--importance", "", "--rdoq"], "--importance"),
        (["decode", "m.nnr", "-o", "x.npz", "--state", ""], "--state"),
        (["info", ""], "stream"),
        (["compare", "m.safetensors", "m.nnr", "--plot", ""], "--plot"),  # was "--plot .: give a file name..."
    ],
)
def test_an_empty_value_is_a_usage_error(argv, named, capsys):
    """Empty values were dropped as if the option were not given (exit 0, the output written)."""
    with pytest.raises(SystemExit) as exit_:
        nnc.cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert (f"{named} is empty" in err and err.count("\n") == 1) or f"argument {named}: is empty" in err


def test_encode_never_writes_over_its_search_module_nor_under_a_model_s_name(tmp_path, capsys):
    """`nnc encode m -o score.py --search score.py:score` replaced the user's script with the stream (exit 0), and
    `-o other.safetensors` wrote a stream under a model's name."""
    model = tmp_path / "m.safetensors"
    model.write_bytes(safetensors_bytes({"w": np.ones((4, 4), np.float32)}))
    script = tmp_path / "score.py"
    script.write_text("def score(model):\n    return 1.0\n")
    for argv in (
        ["-o", str(script), "--search", f"{script}:score"],
        ["-o", str(script), "--search", f"{script}:score", "--check", f"{script}:score"],
        ["-o", str(tmp_path / "other.safetensors")],
        ["-o", str(tmp_path / "other.PT")],
    ):
        assert nnc.cli.main(["encode", str(model), *argv, "-q"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("--search module" in err or "give a .nnr name" in err), err
    assert script.read_text().startswith("def score") and not (tmp_path / "other.safetensors").exists()


def test_json_is_printed_with_quiet_by_every_command(tmp_path, capsys):
    """`nnc info m.nnr --json -q` and `nnc verify --json -q` printed nothing (a | jq pipeline got no input), while
    encode, compare and bench printed their JSON."""
    model = tmp_path / "m.safetensors"
    model.write_bytes(safetensors_bytes({"w": np.ones((4, 4), np.float32)}))
    stream = tmp_path / "m.nnr"
    assert nnc.cli.main(["encode", str(model), "-o", str(stream), "-q"]) == 0
    capsys.readouterr()
    assert nnc.cli.main(["info", str(stream), "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] == stream.stat().st_size
    suite = Path(__file__).resolve().parent.parent / "conformance"
    assert nnc.cli.main(["verify", str(suite), "--stream", "p1_urq_so0", "--json", "-q"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["p1_urq_so0"]


def test_options_that_would_change_nothing_are_refused(tmp_path, capsys):
    """--search with --qp, --sigmas covering every float tensor with --qp, and --tensor-qp of an integer tensor
    coded exactly each wrote the stream the option-less command writes, exit 0."""
    model = tmp_path / "m.safetensors"
    model.write_bytes(safetensors_bytes({"w": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8),
                                         "steps": np.array([3, 5, 7], np.int64)}))
    sigmas = tmp_path / "s.safetensors"
    sigmas.write_bytes(safetensors_bytes({"w": np.full((8, 8), 0.1, np.float32)}))
    out = tmp_path / "m.nnr"
    for argv, words in (
        (["--search", "nnc.demo:mlp_accuracy", "--qp", "-20"], "--qp would be ignored: --search"),
        (["--search", "nnc.demo:mlp_accuracy", "--qp", "0"], "--qp would be ignored: --search"),
        (["--sigmas", str(sigmas), "--qp", "-20"], "--qp would be ignored: --sigmas"),
        (["--sigmas", str(sigmas), "--step", "0.01"], "--step would be ignored: --sigmas"),
        (["--tensor-qp", "steps=-20"], "'steps' would never apply: lossless integer coding"),
    ):
        usage = "--search" in argv  # (options alone tell: a usage error)
        assert nnc.cli.main(["encode", str(model), "-o", str(out), *argv, "-q"]) == (2 if usage else 1), argv
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, (argv, err)
    assert not out.exists()
    assert nnc.cli.main(["encode", str(model), "-o", str(out), "--tensor-qp", "steps=-20", "--no-lossless-int",
                         "-q"]) == 0
    # the qp still sets the integer tensor's step when it is quantised (a review found this refused)
    assert nnc.cli.main(["encode", str(model), "-o", str(out), "--sigmas", str(sigmas), "--qp", "-20",
                         "--no-lossless-int", "-q"]) == 0
    assert nnc.cli.main(["encode", str(model), "-o", str(tmp_path / "m.bin"), "-q"]) == 0  # .bin: a stream name too


def test_encoding_a_stream_says_it_is_a_stream(tmp_path, capsys):
    """`nnc encode m.nnr` said "the output is the model (m.nnr); refusing to overwrite an input"."""
    model = tmp_path / "m.safetensors"
    model.write_bytes(safetensors_bytes({"w": np.ones((4, 4), np.float32)}))
    assert nnc.cli.main(["encode", str(model), "-q"]) == 0
    assert nnc.cli.main(["encode", str(tmp_path / "m.nnr")]) == 1
    err = capsys.readouterr().err
    assert "an NNC stream, not a model" in err and err.count("\n") == 1


def test_bench_names_the_model_of_a_tensor_nnc_cannot_code(tmp_path, capsys):
    path = tmp_path / "m.npz"
    np.savez(path, u=np.array([2**40, 1], np.uint64), w=np.ones((4, 4), np.float32))
    assert nnc.cli.main(["bench", str(path), "-q"]) == 1
    assert capsys.readouterr().err.startswith(f"nnc: error: {path}: integer tensor 'u'")


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--qp", "1000"], "--qp 1000 (qp_density 2) gives a step size outside the float32 range"),
        (["--n-gtx", "0"], "--n-gtx 0 outside 1..256"),
        (["--qp-density", "9"], "--qp-density 9 outside 0..7"),
        (["--nonweight-qp", "5000"], "--nonweight-qp: qp 5000"),
        (["--tensor-qp", "fc.weight=900"], "--tensor-qp['fc.weight']: qp 900"),
        (["--step", "1e-60"], "step size 1e-60 is beyond the float32 steps"),
    ],
)
def test_an_option_value_the_encoder_refuses_is_a_usage_error(model, tmp_path, argv, words, capsys):
    """The encoder's settings refused these values after the model was opened: exit 1, the message naming the model
    and the setting's Python name (n_gtx) rather than the option."""
    out = tmp_path / "y.nnr"
    assert nnc.cli.main(["encode", str(model[0]), "-o", str(out), *argv, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nnc: error: {words}") and err.count("\n") == 1, err
    assert not out.exists()
