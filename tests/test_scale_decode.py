"""Decoding a stream file to a folder holds memory bounded by the work in flight, not by the number of units."""

import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nnc
from nnc import container as C
from nnc.decoder import RELEASABLE_MAPS, Decoder
from nnc.writers import map_stream

UNITS, VALUES = 1024, 32768  # 1024 raw float32 tensors of 128 KiB: a 128 MiB stream
BOUND_MB = 24  # growth of the peak over the imports (3 MB measured); the pages the scan touched were 65 MB before


def many_unit_stream(path, units=UNITS, values=VALUES):
    """``units`` raw float32 tensors named t00000... (one NDU spliced under new names), written to ``path``."""
    x = np.random.default_rng(5).standard_normal(values).astype(np.float32)
    one = nnc.Encoder(raw=["t00000"]).encode({"t00000": x}, extra_metadata=None).stream
    parsed = list(C.iter_units(one))
    ndu = parsed[-1]
    head = bytes(one[: ndu.offset])
    body = bytes(one[ndu.offset : ndu.end])
    at = body.index(b"t00000")
    with open(path, "wb") as fh:
        fh.write(_announce(head, units))
        for i in range(units):
            fh.write(body[:at] + f"t{i:05d}".encode() + body[at + 6 :])
    return x


def _announce(head: bytes, units: int) -> bytes:
    """The start of the stream with the topology unit announcing every spliced tensor."""
    import json

    for unit in C.iter_units(head):
        if unit.type == C.NNR_TPL:
            meta = json.loads(unit.header.get("data") or "{}")
            meta.setdefault("nnc", {"version": 1})["tensors"] = [f"t{i:05d}" for i in range(units)]
            tpl = C.build_tpl(data=json.dumps(meta, separators=(",", ":")))
            return head[: unit.offset] + tpl + head[unit.end :]
    raise AssertionError("no topology unit")


CHILD = textwrap.dedent(
    """
    import sys
    import nnc, nnc.cli, nnc.writers
    def hwm():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    how, src, out = sys.argv[1:4]
    before = hwm()
    if how == "library":
        summary = nnc.writers.decode_to_path(src, out)
    else:
        assert nnc.cli.main(["decode", src, "-o", out, "-q"]) == 0
    print(before, hwm())
    """
)


@pytest.mark.parametrize("how", ["library", "cli"])
def test_decode_to_folder_peak_does_not_grow_with_the_units(tmp_path, how):
    src = tmp_path / "many.nnr"
    x = many_unit_stream(src)
    assert os.path.getsize(src) > UNITS * VALUES * 4
    out = tmp_path / "out"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-c", CHILD, how, str(src), str(out) + "/"], capture_output=True, text=True, env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    before, peak = map(float, r.stdout.split()[-2:])
    assert peak - before < BOUND_MB, f"decode-to-folder peak grew by {peak - before:.0f} MB for a 128 MiB stream"
    path = out / "model.safetensors"
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
    data = np.memmap(path, dtype="<f4", mode="r", offset=8 + n, shape=(UNITS, VALUES))
    for i in (0, UNITS // 2, UNITS - 1):
        np.testing.assert_array_equal(data[i], x)
    del data


def test_header_scan_of_a_map_leaves_the_values_unchanged(tmp_path):
    """Pages dropped during the scan are read again from the file: same tensors as decoding the bytes."""
    src = tmp_path / "few.nnr"
    x = many_unit_stream(src, units=40, values=5000)
    mapped = map_stream(src)
    assert mapped in RELEASABLE_MAPS
    dec = Decoder(mapped)
    from_map = dec.decode()
    from_bytes = nnc.decode(src.read_bytes())
    assert list(from_map) == list(from_bytes) == [f"t{i:05d}" for i in range(40)]
    for k in from_bytes:
        np.testing.assert_array_equal(from_map[k], from_bytes[k])
        np.testing.assert_array_equal(from_map[k], x)


def test_a_decoder_given_a_path_maps_the_file_instead_of_reading_it(tmp_path):
    """Decoder(path) read the whole file into memory (a 602 MB stream: 716 MB to decode one 64 MiB tensor); it
    now maps it, guarded, as `nnc decode` does: the same tensors, a file replaced by rename meanwhile keeps the
    map's, a file cut meanwhile is a TruncatedError."""
    from nnc.decoder import GuardedMap

    src = tmp_path / "few.nnr"
    many_unit_stream(src, units=8, values=5000)
    expected = nnc.decode(src.read_bytes())
    dec = Decoder(src)
    assert isinstance(dec.data, memoryview) and isinstance(dec.data.obj, GuardedMap)
    assert dec.data.obj in RELEASABLE_MAPS
    other = tmp_path / "other.nnr"
    other.write_bytes(nnc.encode({"t00000": np.zeros(3, np.float32)}))
    os.replace(other, src)  # another program saves the path anew, by rename
    got = dec.decode()
    assert list(got) == list(expected) and all(np.array_equal(got[k], expected[k]) for k in expected)
    many_unit_stream(src, units=8, values=5000)
    cut = Decoder(src)
    with open(src, "r+b") as fh:
        fh.truncate(len(cut.data) // 2)
    with pytest.raises(nnc.TruncatedError, match="was cut"):
        cut.decode()
    empty = tmp_path / "empty.nnr"
    empty.write_bytes(b"")  # (no map of an empty file: read, and refused on the path's bytes)
    with pytest.raises(nnc.DecodeError):
        Decoder(empty)


def test_a_decode_without_a_state_does_not_read_the_stream_again_for_digests(tmp_path, monkeypatch):
    """Every decode hashed every payload again once the last unit had decoded (SHA-256 and SHA-512, for the
    decoder's own throwaway state): the whole stream was paged back in at the end (a 73 MB stream's map: 69 MB
    resident, where the units decoded one at a time kept it under 11 MB). Only a kept state needs them."""
    import nnc.decoder as decoder_module

    src = tmp_path / "few.nnr"
    rng = np.random.default_rng(2)
    nnc.encode_model({f"w{i}": rng.standard_normal((40, 50)).astype(np.float32) for i in range(8)}, str(src))
    hashed = []
    real = decoder_module._payload_digests
    monkeypatch.setattr(decoder_module, "_payload_digests", lambda payload: hashed.append(1) or real(payload))
    nnc.decode(src)
    assert hashed == []
    state = nnc.DecoderState()
    nnc.decode(src, state=state)
    assert len(hashed) == 8 and len(state.payload_digests) == 8
