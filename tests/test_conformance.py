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
@pytest.mark.parametrize("decoder", ["nnc", "nnc-python", "nnc-random-access", "nnc-api"])
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
    monkeypatch.setattr(Decoder, "decode_tensor", lambda self, name, out=None: real(self, name) + (name == "w"))
    with pytest.raises(errors.DecodeError, match="'w' decoded on its own differs"):
        NNCRandomAccessAdapter()(stream)


def _entry(name):
    return next(e for e in MANIFEST["streams"] if e["name"] == name)


def _block_scanned_stream():
    import numpy as np

    import nnc

    w = np.random.default_rng(3).laplace(0, 0.02, (40, 20)).astype(np.float32)
    return nnc.encode({"w": w, "b": np.ones(40, np.float32)}, qp=-24, scan_order=1)


def test_api_adapter_decodes_block_rows_in_threads_into_caller_arrays(monkeypatch):
    """The API adapter's threaded way really splits block rows into ranges and fills the caller's arrays."""
    from nnc import _parallel
    from nnc.decoder import Decoder
    from nnc.verify import NNCAPIAdapter

    ranges, filled = [], []
    real_ranges, real_fill = _parallel.block_row_ranges, Decoder._fill
    monkeypatch.setattr(_parallel, "block_row_ranges", lambda n, parts: ranges.append((n, parts)) or real_ranges(n, parts))
    monkeypatch.setattr(Decoder, "_fill", lambda self, name, out, arr: filled.append((name, out.dtype.name))
                        or real_fill(self, name, out, arr))
    assert list(NNCAPIAdapter()(_block_scanned_stream())) == ["w", "b"]
    assert ranges == [(5, 2)]
    assert ("w", "float64") in filled and ("b", "float64") in filled


@pytest.mark.parametrize("route", ["_fill", "iter_tensors"])
def test_api_adapter_fails_a_way_of_decoding_that_differs(monkeypatch, route):
    from nnc.decoder import Decoder
    from nnc.verify import InconsistentDecoding, NNCAPIAdapter

    if route == "_fill":
        real = Decoder._fill
        monkeypatch.setattr(Decoder, "_fill", lambda self, name, out, arr: real(self, name, out, arr + 1))
    else:
        real = Decoder.iter_tensors
        monkeypatch.setattr(Decoder, "iter_tensors", lambda self, names=None, **kw: list(real(self, names, **kw))[:-1])
    with pytest.raises(InconsistentDecoding):
        NNCAPIAdapter()(_block_scanned_stream())


def test_api_adapter_fails_a_must_fail_stream_that_one_way_decodes(monkeypatch, tmp_path):
    """A must-fail stream is not passed when one way of decoding accepts it, whatever the others raise."""
    from nnc import errors
    from nnc.decoder import Decoder

    real = Decoder.decode

    def lenient(self, names=None, progress=None, threads=1, out=None):
        try:
            return real(self, names, progress, threads, out)
        except errors.NNCError:
            if threads == 2:
                return {}
            raise

    monkeypatch.setattr(Decoder, "decode", lenient)
    results = verify_suite(SUITE, "nnc-api", names=["mf_payload_corrupt_tail"])
    assert not results[0].passed and "decoded a stream the decoding rejects" in results[0].detail


@pytest.mark.parametrize("engine", ["python", "cython"])
@pytest.mark.parametrize("name, error, clause", [("p1_entry_point_negative", "DecodeError", "11.4"),
                                                 ("p1_entry_point_beyond_payload", "TruncatedError", "9.7")])
def test_wrong_entry_point_streams_fail_only_where_entry_points_are_used(engine, name, error, clause):
    """Sequential decoding ignores them (expected output); use and verify reject them (spec 9.7, 11.4):
    used, the first wrong one is found where block row 1 starts, by its position past the payload (9.7) or, in
    the bounds, by the state block row 0 ends in (11.4)."""
    import nnc
    from nnc import errors
    from nnc.verify import output_sha256

    entry = _entry(name)
    assert entry["wrong_entry_points"] and entry["group"] == "profile-1"
    data = (SUITE / entry["file"]).read_bytes()
    assert output_sha256(nnc.decode(data, engine=engine)) == entry["expected"]["output_sha256"]
    assert output_sha256(nnc.decode(data, engine=engine, threads=2)) == entry["expected"]["output_sha256"]
    with pytest.raises(getattr(errors, error)) as use:
        nnc.decode(data, engine=engine, entry_points="use")
    assert use.value.clause == clause and type(use.value).__name__ == error
    with pytest.raises(errors.DecodeError) as verify:
        nnc.decode(data, engine=engine, entry_points="verify")
    assert verify.value.clause == "11.4"


def _error_of(data, engine, entry_points, before=()):
    """The error decoding ``data`` raises, after the streams ``before`` it in its sequence (one state)."""
    import nnc
    from nnc import errors

    state = nnc.DecoderState()
    for earlier in before:
        nnc.decode(earlier, engine=engine, entry_points=entry_points, state=state)
    try:
        nnc.decode(data, engine=engine, entry_points=entry_points, state=state)
    except errors.NNCError as exc:
        return type(exc).__name__, exc.clause, exc.offset
    return None


def _before_in_sequence(entry) -> list:
    """The bytes of the streams before ``entry`` in its sequence, in order (none outside a sequence)."""
    seq = entry.get("sequence")
    if not seq:
        return []
    earlier = [e for e in MANIFEST["streams"] if (e.get("sequence") or {}).get("id") == seq["id"]
               and e["sequence"]["position"] < seq["position"]]
    return [(SUITE / e["file"]).read_bytes() for e in sorted(earlier, key=lambda e: e["sequence"]["position"])]


@pytest.mark.parametrize("entry_points", ["ignore", "use"])
def test_both_engines_reject_a_stream_alike(entry_points):
    """Every must-fail stream, and with entry points used every stream whose entry points are wrong: the
    Python and the Cython engine raise the same error class, clause and byte offset (spec 15.1)."""
    checked = 0
    for e in MANIFEST["streams"]:
        if e["group"] != "must-fail" and not (entry_points == "use" and e.get("wrong_entry_points")):
            continue
        data, before = (SUITE / e["file"]).read_bytes(), _before_in_sequence(e)  # (a sequence's streams first)
        python = _error_of(data, "python", entry_points, before)
        cython = _error_of(data, "cython", entry_points, before)
        assert python is not None and python == cython, (e["name"], python, cython)
        checked += 1
    assert checked >= 50


def test_suite_version_4_streams_are_registered():
    added = {e["name"] for e in MANIFEST["streams"] if e.get("added_in") == 4}
    assert MANIFEST["version"] >= 4
    assert added == {"mf_mps_cut", "mf_codebook_index_p1", "p1_entry_point_negative", "p1_entry_point_beyond_payload",
                     "p1_reshaped_update_0_base", "p1_reshaped_update_1_update_grown_hdsp", "p1_recorded_metadata",
                     "p1_entry_points_effective_scan_0", "mf_scan_order_5"}


def test_suite_version_5_streams_are_registered():
    added = {e["name"] for e in MANIFEST["streams"] if e.get("added_in") == 5}
    assert added == {"p1_int_block_rows", "p1_empty_tensor_scan_order_1", "p1_topology_trailing_bytes",
                     "mf_payload_cut_in_qp_offset", "mf_payload_cut_in_context_init", "mf_forced_range_at_start"}


def test_suite_version_6_streams_are_registered():
    added = {e["name"] for e in MANIFEST["streams"] if e.get("added_in") == 6}
    assert added == {"p1_announced_count", "mf_count_cut_after_first_ndu", "mf_count_extra_tensor"}


def test_suite_version_7_streams_are_registered():
    added = {e["name"] for e in MANIFEST["streams"] if e.get("added_in") == 7}
    assert added == {"mf_cut_before_topology", "mf_nncodec_cut_after_topology"}


def test_suite_version_8_streams_are_registered():
    added = {e["name"]: e for e in MANIFEST["streams"] if e.get("added_in") == 8}
    assert set(added) == {"p1_replay_0_base", "p1_replay_1_update", "mf_replayed_update", "p1_gap_0_base",
                          "mf_update_after_a_gap"}
    assert [added[n]["sequence"] for n in ("mf_replayed_update", "mf_update_after_a_gap")] == [
        {"id": "p1_replay", "position": 2}, {"id": "p1_gap", "position": 1}]
    assert {added[n]["clause"] for n in ("mf_replayed_update", "mf_update_after_a_gap")} == {"14.4"}


def test_suite_version_9_streams_are_registered():
    """Suite 9: parents named by payload digests (spec 14.4, 15.1 item 50); the earlier sequences keep node ids."""
    from nnc import container as C

    added = {e["name"]: e for e in MANIFEST["streams"] if e.get("added_in") == 9}
    assert MANIFEST["version"] >= 9
    assert set(added) == {"p1_parent_digest_0_base", "p1_parent_digest_1_update_sha256_tca",
                          "p1_parent_digest_2_update_sha512", "p1_other_model_0_base", "mf_update_of_another_model"}
    assert added["mf_update_of_another_model"]["sequence"] == {"id": "p1_other_model", "position": 1}

    def parent_types(name):
        entry = next(e for e in MANIFEST["streams"] if e["name"] == name)
        units = C.parse_stream((SUITE / entry["file"]).read_bytes())
        return {u.header.parent_node_id_type for u in units if u.type_name == "NNR_NDU"}

    assert parent_types("p1_parent_digest_1_update_sha256_tca") == {1}
    assert parent_types("p1_parent_digest_2_update_sha512") == {2}
    assert parent_types("mf_update_of_another_model") == {1}
    assert parent_types("p1_replay_1_update") == {0}


def test_the_count_stream_announces_a_count_and_earlier_streams_names():
    """Suite 6's stream announces by count (spec 6.2.1); the streams of suites 3-5 keep their name lists."""
    from nnc.decoder import Decoder

    def announced(name):
        entry = next(e for e in MANIFEST["streams"] if e["name"] == name)
        return Decoder((SUITE / entry["file"]).read_bytes()).metadata.get("tensors")

    assert announced("p1_announced_count") == 5
    assert announced("p1_announced_tensors") == ["w.weight", "w.bias", "v.weight"]


def test_bytes_after_a_topology_string_are_ignored_unless_strict():
    """Spec 3.2: a TPL unit may carry bytes after its string (no suite stream: NNCodec rejects them)."""
    import numpy as np

    import nnc
    from nnc import container as C
    from nnc import errors

    stream = nnc.encode({"w": np.ones((3, 4), np.float32)}, qp=-20)
    tpl = next(u for u in C.iter_units(stream) if u.type == C.NNR_TPL)
    padded = stream[: tpl.offset] + C.build_unit(C.NNR_TPL, dict(tpl.header), b"\x00\x2a") + stream[tpl.end :]
    assert nnc.decode(padded)["w"].tolist() == nnc.decode(stream)["w"].tolist()
    with pytest.raises(errors.DecodeError, match="left over") as info:
        list(C.iter_units(padded, strict=True))
    assert info.value.clause == "3.2"


def test_suite_version_10_streams_are_registered():
    """Suite 10: tied weights (spec 6.2.1 "tied", 15.1 item 52); the earlier streams tie nothing."""
    import json

    from nnc import container as C
    from nnc.errors import NNCError

    added = {e["name"]: e for e in MANIFEST["streams"] if e.get("added_in") == 10}
    assert MANIFEST["version"] >= 10
    assert set(added) == {"p1_tied_weights", "mf_tied_to_no_tensor", "mf_tied_coded_tensor"}
    assert {added[n]["clause"] for n in ("mf_tied_to_no_tensor", "mf_tied_coded_tensor")} == {"6.2.1"}
    names = [t["name"] for t in added["p1_tied_weights"]["expected"]["tensors"]]
    assert names == ["embed.weight", "head.weight", "fc.weight", "fc.bias"]

    def metadata(entry):
        try:
            units = C.parse_stream((SUITE / entry["file"]).read_bytes())
        except NNCError:                                          # (must-fail streams that do not parse)
            return {}
        for u in units:
            if u.type_name == "NNR_TPL" and isinstance(u.header.data, str) and u.header.data.startswith("{"):
                try:
                    return json.loads(u.header.data).get("nnc", {})
                except ValueError:
                    return {}
        return {}

    assert metadata(added["p1_tied_weights"])["tied"] == {"head.weight": "embed.weight"}
    assert [e["name"] for e in MANIFEST["streams"] if e.get("added_in", 1) < 10 and "tied" in metadata(e)] == []


def test_suite_11_pins_the_exact_edges_of_the_integer_formats_and_the_dc_bit():
    """Suite 11 (a review of spec/ against the decoder): the decoder rounded to integer formats in float32, so 2^31
    passed as int32 (and 2^63 as int64), wrapping to the lowest value, and 2^23 + 1 decoded as 2^23 + 2; an NDU of one
    tensor with the DC bit decoded as a plain tensor."""
    import nnc

    added = {e["name"]: e for e in MANIFEST["streams"] if e.get("added_in") == 11}
    assert MANIFEST["version"] == 11
    assert set(added) == {"p1_int_format_exact_rounding", "mf_int32_format_overflow", "mf_int64_format_overflow",
                          "mf_dc_bit_in_one_tensor_ndu", "mf_str_trailing_byte", "mf_no_input_parameters",
                          "mf_step_underflow", "mf_announced_tensors_not_a_list", "mf_metadata_version_3",
                          "mf_tied_not_an_object", "mf_tied_empty_name", "mf_ndu_name_cut"}
    decoded = nnc.decode((SUITE / added["p1_int_format_exact_rounding"]["file"]).read_bytes())
    assert decoded["a"].tolist() == [8388609, -8388609, 3] and decoded["b"].tolist() == [0, 0, 1, -1]
    assert {added[n]["clause"] for n in added if n.startswith("mf_int")} == {"12.6"}
    assert added["mf_dc_bit_in_one_tensor_ndu"]["expected_error"] == "UnsupportedError"
