"""nnc.formats.PtWriter: PyTorch files written one tensor at a time, read back by torch as torch.save's are."""

import io
import os
import subprocess
import sys
import tempfile
import textwrap
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from nnc.formats import PtWriter, pt_bytes  # noqa: E402

DTYPES = ["float32", "float64", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int8", "int16", "int32",
          "int64", "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128"]
NARROW = {"bfloat16", "float8_e4m3fn", "float8_e5m2"}


def values_of(dtype, shape, rng):
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    if dtype.startswith("complex"):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return rng.standard_normal(shape).astype("float32" if dtype in NARROW else dtype)


def as_torch(dtype, values):
    """What torch.save would have been given for these values."""
    if dtype in NARROW:
        return torch.from_numpy(np.array(values, np.float32)).to(getattr(torch, dtype))
    return torch.from_numpy(np.array(values))


def bits(t):
    return t.reshape(-1).contiguous().view(torch.uint8).tolist() if t.numel() else []


shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)
plans = st.lists(st.tuples(st.sampled_from(DTYPES), shapes), min_size=1, max_size=6)


@given(plan=plans, order_seed=st.integers(0, 2**32 - 1), mmap=st.booleans())
def test_written_in_any_order_torch_reads_the_planned_state_dict(plan, order_seed, mmap):
    rng = np.random.default_rng(order_seed)
    names = [f"layer{i}.{dtype}" for i, (dtype, _) in enumerate(plan)]
    values = {n: values_of(dtype, shape, rng) for n, (dtype, shape) in zip(names, plan)}
    buf = io.BytesIO()
    writer = PtWriter(buf, [(n, dtype, shape) for n, (dtype, shape) in zip(names, plan)], {"": {"version": 1}})
    for i in rng.permutation(len(names)):
        writer.write(names[i], values[names[i]])
    writer.close()
    if mmap:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "m.pt")
            with open(path, "wb") as fh:
                fh.write(buf.getvalue())
            loaded = torch.load(path, weights_only=True, mmap=True)
            loaded = {k: v.clone() for k, v in loaded.items()} | {"_metadata": loaded._metadata}
            aligned = [v.data_ptr() % 64 == 0 for v in torch.load(path, weights_only=True, mmap=True).values() if v.numel()]
        assert all(aligned)  # records aligned as torch's writer aligns them
        metadata = loaded.pop("_metadata")
    else:
        loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
        metadata = loaded._metadata
    assert list(loaded) == names
    assert dict(metadata) == {"": {"version": 1}}
    for n, (dtype, shape) in zip(names, plan):
        want = as_torch(dtype, values[n])
        got = loaded[n]
        assert got.dtype == want.dtype and tuple(got.shape) == shape and got.is_contiguous()
        assert bits(got) == bits(want), n


def test_records_start_at_multiples_of_64_bytes():
    data = pt_bytes({"a": np.ones(3, np.float32), "b": np.ones((2, 7), np.int16), "c": np.zeros(1, bool)})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            name_length, extra_length = np.frombuffer(data, "<u2", 2, info.header_offset + 26)
            assert (info.header_offset + 30 + int(name_length) + int(extra_length)) % 64 == 0, info.filename


def test_same_tensors_and_metadata_as_torch_save():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    state = model.state_dict()
    mine = torch.load(io.BytesIO(pt_bytes({k: v.numpy() for k, v in state.items()}, metadata=state._metadata)),
                      weights_only=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    theirs = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert list(mine) == list(theirs) and mine._metadata == theirs._metadata
    for k in theirs:
        assert mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k])
    torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).load_state_dict(mine)


def test_misuse_is_refused():
    buf = io.BytesIO()
    writer = PtWriter(buf, [("w", "float32", (2,))])
    with pytest.raises(ValueError, match="shape"):
        writer.write("w", np.ones(3, np.float32))
    with pytest.raises(ValueError, match="not planned"):
        writer.write("x", np.ones(2, np.float32))
    with pytest.raises(ValueError, match="not written"):
        writer.close()
    writer.write("w", np.ones(2, np.float32))
    with pytest.raises(ValueError, match="written already"):
        writer.write("w", np.ones(2, np.float32))
    with pytest.raises(ValueError, match="twice"):
        PtWriter(io.BytesIO(), [("w", "float32", (2,)), ("w", "float32", (2,))])


CHILD = textwrap.dedent(
    """
    import sys
    import torch
    import nnc.cli
    def hwm():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    before = hwm()
    assert nnc.cli.main(["decode", sys.argv[1], "-o", sys.argv[2], "-q"]) == 0
    print(before, hwm())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory read from /proc (Linux only)")
def test_decoding_to_a_pt_file_holds_one_tensor_not_the_model(tmp_path):
    """`nnc decode -o model.pt` gathered the whole model for torch.save (1.7 times it); now each tensor is written
    as it is decoded."""
    from test_scale_decode import many_unit_stream

    src = tmp_path / "many.nnr"
    x = many_unit_stream(src, units=512, values=65536)  # 512 raw tensors of 256 KiB: 128 MiB
    out = tmp_path / "model.pt"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    before, peak = map(float, r.stdout.split()[-2:])
    assert peak - before < 40, f"decoding a 128 MiB stream to .pt raised the peak by {peak - before:.0f} MB"
    loaded = torch.load(out, weights_only=True, mmap=True)
    assert len(loaded) == 512
    for name in ("t00000", "t00511"):
        np.testing.assert_array_equal(loaded[name].numpy(), x)
