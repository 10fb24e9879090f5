"""The topology unit (spec 6.2, 6.2.1, 3.5): strings of any length or kind, which unit's nnc metadata applies."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import nnc
from nnc import container as C
from nnc.errors import DecodeError, TruncatedError, UnsupportedError


def _units(stream):
    return C.parse_stream(stream)


def _without_ndu(stream, name):
    return b"".join(bytes(stream[u.offset : u.end]) for u in _units(stream)
                    if not (u.type == C.NNR_NDU and u.header.topology_elem_id == name))


@pytest.mark.parametrize("extra", [C.build_tpl(), C.build_tpl(2, 0, b"\x08\x07\xff\xfe"), C.build_tpl(0, 0, "[1, 2]"),
                                   C.build_tpl(0, 0, '{"other": 1}')])
def test_a_later_topology_unit_without_nnc_metadata_keeps_the_announcement(extra):
    """A cut stream stays cut when a topology unit without nnc metadata follows (spec 3.5, 6.2.1)."""
    stream = nnc.encode({"a": np.arange(4, dtype=np.float32), "b": np.ones(3, np.float32)})
    with pytest.raises(TruncatedError, match="1 of the 2"):
        nnc.decode(_without_ndu(stream, "b") + extra)
    assert set(nnc.decode(stream + extra)) == {"a", "b"}


def test_a_later_topology_unit_without_nnc_metadata_keeps_dtypes_and_shapes():
    model = {"i": np.arange(3, dtype=np.int64), "s": np.float32(2.5), "w": np.ones((2, 2), np.float32)}
    stream = nnc.encode(model) + C.build_tpl(2, 0, b"\x08\x07\xff")
    out = nnc.decode_model(stream)
    assert {k: (v.dtype, v.shape) for k, v in out.items()} == {k: (np.asarray(v).dtype, np.shape(v))
                                                            for k, v in model.items()}


def test_the_last_topology_unit_with_nnc_metadata_applies_whole():
    stream = nnc.encode({"a": np.arange(4, dtype=np.float32), "b": np.ones(3, np.float32)})
    later = C.build_tpl(data=json.dumps({"nnc": {"version": 1, "tensors": ["a"]}}))
    with pytest.raises(DecodeError, match="'b' is not among"):
        nnc.decode(stream + later)


def test_metadata_after_whitespace_is_nnc_metadata():
    stream = nnc.encode({"a": np.arange(4, dtype=np.float32), "b": np.ones(3, np.float32)})
    tpl = next(u for u in _units(stream) if u.type == C.NNR_TPL)
    spaced = stream[: tpl.offset] + C.build_tpl(data=" \n" + tpl.header.data) + stream[tpl.end :]
    with pytest.raises(TruncatedError):
        nnc.decode(_without_ndu(spaced, "b"))


def test_binary_and_long_topologies_do_not_stop_decoding():
    """An ONNX (protobuf) topology is not text and may be long: the decoder keeps it and decodes (spec 6.2)."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    full = nnc.encode({"w": w}, qp=-20)
    units = _units(full)
    head, ndu = full[: units[2].offset], full[units[-1].offset :]     # start unit and MPS; the NDU
    for data in (b"\x08\x07\x12\x04graph\xff\xfe" * 20000, "n" * 200_000):
        stream = head + C.build_tpl(2, 0, data) + ndu
        t0 = time.perf_counter()
        units = _units(stream)
        assert time.perf_counter() - t0 < 5        # read as bytes, not bit by bit (0.7 s for 64 kB before)
        assert units[2].header.data == data
        np.testing.assert_array_equal(nnc.decode(stream)["w"], nnc.decode(full)["w"])


def test_a_topology_string_needs_its_terminator():
    unit = C.build_tpl(data="graph")
    cut = (len(unit) - 1).to_bytes(2, "big") + unit[2:-1]
    with pytest.raises(DecodeError, match="no terminating 0x00"):
        C.parse_stream(C.build_str() + C.build_mps() + cut)


def test_a_unit_string_with_a_zero_byte_is_refused():
    with pytest.raises(nnc.EncodeError, match="0x00"):
        C.build_tpl(data=b"a\x00b")


def test_checkpoints_of_many_tensors_encode_and_decode(tmp_path):
    """A sharded checkpoint whose metadata passes 64 kB (1,600 tensors; Llama-2-70B's bfloat16 checkpoint, 723
    tensors, passed it too) encodes, and decodes back to its own files and dtypes (the metadata was one st string,
    capped at 65536 bytes)."""
    from nnc import formats
    from nnc.cli import main

    names = [f"model.layers.{i // 9}.mlp.some_rather_long_projection_name_{i % 9}.weight" for i in range(1600)]
    folder = tmp_path / "ck"
    folder.mkdir()
    shards, index = {}, {}
    for i, name in enumerate(names):
        shard = f"model-{i % 3 + 1:05d}-of-00003.safetensors"
        shards.setdefault(shard, {})[name] = np.full(2, i, np.float16)
        index[name] = shard
    for shard, tensors in shards.items():
        formats.write_model(str(folder / shard), tensors)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    stream = tmp_path / "ck.nnc"
    nnc.encode_model(str(folder), str(stream), qp=-38)
    tpl = next(u for u in _units(stream.read_bytes()) if u.type == C.NNR_TPL)
    assert len(tpl.header.data.encode()) > 65536
    out = tmp_path / "out"
    assert main(["decode", str(stream), "-o", f"{out}/", "-q"]) == 0
    for shard, tensors in shards.items():
        back = formats.read_model(str(out / shard))[0]
        assert set(back) == set(tensors)
        assert all(back[k].dtype == np.float16 and np.allclose(back[k], v, rtol=1e-3) for k, v in tensors.items())


def _with_metadata_text(stream, text, storage=0, compression=0):
    tpl = next(u for u in _units(stream) if u.type == C.NNR_TPL)
    return stream[: tpl.offset] + C.build_tpl(storage, compression, text) + stream[tpl.end :]


@pytest.mark.parametrize("tensors", ['["a", 3]', "2.0", '"a"', "true", "-1"])
def test_an_unreadable_announcement_is_refused(tensors):
    """nnc metadata whose "tensors" is neither a count nor a list of names cannot say whether the stream is whole
    (spec 3.5): refused, not read as no announcement."""
    stream = nnc.encode({"a": np.arange(4, dtype=np.float32)})
    with pytest.raises(DecodeError, match='"tensors" is neither'):
        nnc.decode(_with_metadata_text(stream, '{"nnc": {"version": 1, "tensors": %s}}' % tensors))


@pytest.mark.parametrize("version", ["3", "true", '"1"', '"2"', "0"])
def test_metadata_of_another_version_is_not_read_as_version_1(version):
    stream = nnc.encode({"a": np.arange(4, dtype=np.float32)})
    with pytest.raises(UnsupportedError, match="metadata version"):
        nnc.decode(_with_metadata_text(stream, '{"nnc": {"version": %s, "tensors": 1}}' % version))


@pytest.mark.parametrize("storage, compression", [(0, 1), (2, 0), (3, 0)])
def test_only_uncompressed_format_0_topologies_carry_nnc_metadata(storage, compression):
    stream = nnc.encode({"a": np.arange(4, dtype=np.float32), "b": np.ones(2, np.float32)})
    meta = next(u for u in _units(stream) if u.type == C.NNR_TPL).header.data
    text = _with_metadata_text(_without_ndu(stream, "b"), meta, storage, compression)
    assert set(nnc.decode(text)) == {"a"}                      # someone else's topology: no announcement
    with pytest.raises(TruncatedError):
        nnc.decode(_with_metadata_text(_without_ndu(stream, "b"), meta))


@pytest.mark.parametrize("ptype", [C.NNR_PT_RAW_FLOAT, C.NNR_PT_FLOAT, C.NNR_PT_INT])
@pytest.mark.parametrize("scan", [5, 15])
def test_a_scan_order_above_4_is_refused_with_the_headers(ptype, scan):
    """Spec 11.1, 15.1 item 27: for every payload type, before any payload is decoded."""
    stream = nnc.encode({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, qp=-20)
    units = _units(stream)
    ndu = units[-1]
    fields = dict(ndu.header, nnr_compressed_data_unit_payload_type=ptype, scan_order=scan)
    bad = stream[: ndu.offset] + C.build_ndu(fields, bytes(ndu.payload))
    with pytest.raises(DecodeError, match=f"scan_order {scan} is above 4"):
        nnc.Decoder(bad)


def test_metadata_past_the_limit_is_refused_before_it_is_parsed(monkeypatch):
    """32 MB of JSON empty lists took 874 MB to parse (a probe): nnc metadata is capped (spec 15.2 limit 4)."""
    from nnc.errors import LimitError

    stream = nnc.encode({f"layer{i}.weight": np.ones((2, 2), np.float32) for i in range(50)}, qp=-20)
    tpl = next(u for u in _units(stream) if u.type == C.NNR_TPL)
    size = len(tpl.header.data.encode())
    assert set(nnc.Decoder(stream, limits=nnc.Limits(max_metadata_bytes=size)).names()) == {f"layer{i}.weight"
                                                                                        for i in range(50)}
    with pytest.raises(LimitError, match="max_metadata_bytes"):
        nnc.Decoder(stream, limits=nnc.Limits(max_metadata_bytes=size - 1))
    bomb = _with_metadata_text(stream, '{"nnc": {"version": 1, "x": [' + ",".join(["[]"] * 60_000) + "]}}")
    with pytest.raises(LimitError):
        nnc.Decoder(bomb, limits=nnc.Limits(max_metadata_bytes=100_000))
    monkeypatch.setattr(nnc.Limits, "max_metadata_bytes", size - 1)   # the encoder writes what decoders read
    with pytest.raises(nnc.EncodeError, match="decoders read by default"):
        nnc.encode({f"layer{i}.weight": np.ones((2, 2), np.float32) for i in range(50)}, qp=-20)
