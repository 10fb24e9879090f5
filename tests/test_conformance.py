"""The conformance suite: our decoder passes every stream; the streams are frozen (spec 15.4)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nnc.verify import format_table, verify_suite

SUITE = Path(__file__).resolve().parent.parent / "conformance"
MANIFEST = json.loads((SUITE / "manifest.json").read_text())


def test_suite_is_large_and_small_enough():
    assert len(MANIFEST["streams"]) >= 40
    assert sum(e["bytes"] for e in MANIFEST["streams"]) < 5 * 2**20
    assert any(e["group"] == "must-fail" for e in MANIFEST["streams"])
    assert {e["profile"] for e in MANIFEST["streams"]} == {0, 1}


@pytest.mark.quick
@pytest.mark.parametrize("decoder", ["nnc", "nnc-python", "nnc-random-access"])
def test_our_decoder_passes_the_whole_suite(decoder):
    results = verify_suite(SUITE, decoder)
    assert len(results) == len(MANIFEST["streams"])
    assert all(r.passed for r in results), format_table([r for r in results if not r.passed])


def test_regeneration_gives_identical_bytes():
    """The generator is deterministic: the published streams cannot change silently."""
    r = subprocess.run([sys.executable, str(SUITE / "generate.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.oracle
def test_profile_1_streams_decode_in_nncodec_as_recorded(oracle):
    """Streams whose sheet says cross-checked 'yes' still decode in NNCodec to the expected hashes."""
    from nnc.verify import _check_expected

    for e in MANIFEST["streams"]:
        sheet = json.loads((SUITE / e["sheet"]).read_text())
        if sheet.get("cross_checked_with_nncodec_2_1_3") != "yes" or e["group"] == "must-fail":
            continue
        seq = (e.get("sequence") or {}).get("id")  # manifest order is decoding order
        ok, detail = _check_expected(e, oracle.decompress((SUITE / e["file"]).read_bytes(), sequence=seq))
        assert ok, (e["name"], detail)


@pytest.mark.oracle
def test_must_fail_cross_checks_hold(oracle):
    """Must-fail sheets say whether NNCodec rejects the stream too; that still holds."""
    from oracle import OracleError

    checked = 0
    for e in MANIFEST["streams"]:
        if e["group"] != "must-fail" or e["profile"] != 1:
            continue
        said = json.loads((SUITE / e["sheet"]).read_text()).get("cross_checked_with_nncodec_2_1_3", "")
        data = (SUITE / e["file"]).read_bytes()
        if said.startswith("yes"):
            with pytest.raises(OracleError):
                oracle.decompress(data)
        elif said.startswith("no: NNCodec decodes it"):
            oracle.decompress(data)
        else:
            continue
        checked += 1
    assert checked >= 40


def test_verify_command_exit_status(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "nnc", "verify", str(SUITE), "--group", "must-fail"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "passed, 0 failed" in ok.stdout
    broken = tmp_path / "suite"
    broken.mkdir()
    entry = dict(next(e for e in MANIFEST["streams"] if e["group"] == "profile-1"))
    (broken / "s.nnr").write_bytes((SUITE / entry["file"]).read_bytes())
    entry["file"] = "s.nnr"
    entry["expected"] = dict(entry["expected"], output_sha256="0" * 64)
    (broken / "manifest.json").write_text(json.dumps({"streams": [entry]}))
    bad = subprocess.run([sys.executable, "-m", "nnc", "verify", str(broken)], capture_output=True, text=True)
    assert bad.returncode == 1 and "FAIL" in bad.stdout


def test_verify_offers_every_decoder_adapter():
    from nnc.cli import build_parser
    from nnc.verify import DECODERS

    for name in DECODERS:
        assert build_parser().parse_args(["verify", "suite", "--decoder", name]).decoder == name


def test_random_access_check_catches_a_wrong_tensor(monkeypatch):
    """The random-access adapter fails a stream when one tensor decoded alone differs."""
    import numpy as np

    import nnc
    from nnc import errors
    from nnc.decoder import Decoder
    from nnc.verify import NNCRandomAccessAdapter

    stream = nnc.encode({"w": np.ones((40, 40), np.float32), "b": np.ones(40, np.float32)}, scan_order=1)
    real = Decoder.decode_tensor
    monkeypatch.setattr(Decoder, "decode_tensor", lambda self, name: real(self, name) + (name == "w"))
    with pytest.raises(errors.DecodeError, match="'w' decoded on its own differs"):
        NNCRandomAccessAdapter()(stream)
