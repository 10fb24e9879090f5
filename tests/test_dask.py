"""Encoding and decoding on a Dask LocalCluster give the bytes and values of a local run."""
import json
import os

import numpy as np
import pytest

import nnc
from nnc import formats

distributed = pytest.importorskip("dask.distributed", reason="dask.distributed not installed (pip install 'dask[distributed]')")
import nnc.distributed  # noqa: E402 (after the skip)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _model(rng):
    return {
        "embed.weight": (rng.laplace(size=(300, 64)) * 0.02).astype(np.float32),
        "fc.weight": (rng.normal(size=(96, 40)) * 0.05).astype(np.float32),
        "fc.bias": (rng.normal(size=96) * 0.01).astype(np.float32),
        "norm.weight": np.ones(64, np.float32),
        "half": (rng.normal(size=(33, 7))).astype(np.float16),
        "steps": np.int64(1234),
        "ids": rng.integers(-5, 5, size=(20, 3)).astype(np.int32),
        "attn.mask": np.tril(np.ones((24, 24), np.float32)),              # whole numbers: coded exactly
        "q.scales": (rng.random((4, 16)) * 1e-3 + 1e-5).astype(np.float32),  # positive: stored raw
    }


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
@pytest.mark.parametrize("options", [dict(qp=-30), dict(qp=-28, dq=False, scan_order=2, blocks=True),
                                     dict(qp=-30, qp_per_tensor={"fc.*": -110, "embed.*": 140}),
                                     dict(target_snr_db=30)])
def test_encode_on_dask_equals_local(client, tmp_path, fmt, options):
    path = tmp_path / f"model.{fmt}"
    dtypes = {"embed.weight": "bfloat16"} if fmt == "safetensors" else None
    metadata = {"format": "pt"} if fmt == "safetensors" else None     # restored in safetensors output
    formats.write_model(str(path), _model(np.random.default_rng(1)), dtypes, metadata=metadata)
    local = nnc.encode_model(str(path), **options)
    out = tmp_path / "dask.nnr"
    assert nnc.encode_model(str(path), str(out), client=client, **options) == local
    assert out.read_bytes() == local
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no spool left
    tensors = nnc.decode_model(str(out), str(tmp_path / "back.safetensors"), client=client, threads=2)
    head = (tmp_path / "back.safetensors").read_bytes()
    assert json.loads(head[8:8 + int.from_bytes(head[:8], "little")]).get("__metadata__") == metadata
    expected = nnc.decode_model(local)
    assert list(tensors) == list(expected)
    for name in expected:
        assert tensors[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(tensors[name], expected[name])


def test_large_tensor_row_threads_on_dask(client, tmp_path, monkeypatch):
    from nnc import _parallel

    monkeypatch.setattr(_parallel, "MIN_ELEMENTS_PER_THREAD", 1)   # the workers run in this process
    path = tmp_path / "m.safetensors"
    formats.write_model(str(path), {"w": (np.random.default_rng(2).laplace(size=(200, 90)) * 0.03).astype(np.float32)})
    local = nnc.encode_model(str(path), qp=-30, scan_order=1, threads=2)
    assert nnc.encode_model(str(path), client=client, qp=-30, scan_order=1, threads=2) == local


def test_errors_come_back_from_workers(client, tmp_path):
    path = tmp_path / "m.npz"
    formats.write_model(str(path), {"w": np.ones((4, 4), np.float32)})
    with pytest.raises(nnc.EncodeError, match="not available on a Dask cluster"):
        nnc.encode_model(str(path), str(tmp_path / "o.nnr"), client=client, state=nnc.EncoderState())
    with pytest.raises(nnc.EncodeError, match="must be a path"):
        nnc.encode_model({"w": np.ones(3)}, str(tmp_path / "o.nnr"), client=client)
    stream = bytearray(nnc.encode({"w": np.random.default_rng(0).normal(size=(64, 64))}, qp=-30))
    stream[-5] ^= 0x55
    bad = tmp_path / "bad.nnr"
    bad.write_bytes(bytes(stream))
    with pytest.raises(nnc.DecodeError) as local:
        nnc.decode_model(bytes(stream))
    with pytest.raises(nnc.DecodeError) as remote:
        nnc.decode_model(str(bad), client=client)
    assert str(remote.value) == str(local.value)
    assert not os.path.exists(tmp_path / "o.nnr")


def test_cli_scheduler_local_processes(tmp_path):
    from nnc.cli import main

    path = tmp_path / "m.safetensors"
    formats.write_model(str(path), _model(np.random.default_rng(3)))
    assert main(["encode", str(path), "-o", str(tmp_path / "d.nnr"), "--qp", "-30", "--scheduler", "local:2",
                 "--quiet"]) == 0
    assert main(["encode", str(path), "-o", str(tmp_path / "l.nnr"), "--qp", "-30", "--quiet"]) == 0
    assert (tmp_path / "d.nnr").read_bytes() == (tmp_path / "l.nnr").read_bytes()
    assert main(["decode", str(tmp_path / "d.nnr"), "-o", str(tmp_path / "d.npz"), "--scheduler", "local:2",
                 "--quiet"]) == 0
    assert main(["decode", str(tmp_path / "d.nnr"), "-o", str(tmp_path / "l.npz"), "--quiet"]) == 0
    a, _ = formats.read_model(str(tmp_path / "d.npz"))
    b, _ = formats.read_model(str(tmp_path / "l.npz"))
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_cli_scheduler_bad_value(tmp_path, capsys):
    from nnc.cli import main

    path = tmp_path / "m.npz"
    formats.write_model(str(path), {"w": np.ones((3, 3), np.float32)})
    assert main(["encode", str(path), "-o", str(tmp_path / "o.nnr"), "--scheduler", "local:zero"]) != 0
    assert "local:N needs a worker count" in capsys.readouterr().err
    assert not (tmp_path / "o.nnr").exists()


def test_zarr_example_on_a_cluster(client, tmp_path):
    zarr = pytest.importorskip("zarr", reason="zarr not installed")
    pytest.importorskip("numcodecs", reason="numcodecs not installed")
    if not hasattr(zarr, "create_array"):
        pytest.skip("zarr < 3: create_array missing")
    import importlib.util

    import dask.array as da

    spec = importlib.util.spec_from_file_location(
        "dask_zarr", os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "dask_zarr.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    x = (da.random.default_rng(0).standard_normal((96, 80), chunks=(32, 40)) * 0.02).astype(np.float32)
    z = example.compress_to_zarr(x, str(tmp_path / "w.zarr"), qp=-30)
    back = zarr.open_array(str(tmp_path / "w.zarr"), mode="r")[...]
    expected = x.compute()
    step = 2.0 ** (-30 / 4)
    assert back.shape == expected.shape and back.dtype == np.float32
    assert np.abs(back - expected).max() <= 2 * step  # DQ: within two steps (trellis)
    # every chunk is a one-tensor NNC stream, equal to coding that chunk alone
    from nnc.codec import NNC

    chunk = expected[32:64, 40:80]
    np.testing.assert_array_equal(back[32:64, 40:80], NNC(qp=-30).decode(NNC(qp=-30).encode(chunk)))
    assert z.nbytes_stored() < expected.nbytes / 2


def test_encoding_keeps_at_most_a_window_of_units_submitted():
    """Before: every unit was submitted at once, so finished units piled up on the workers until their turn."""
    import io

    from nnc.distributed import _write_in_order

    outstanding, peak = set(), [0]

    class Future:
        def __init__(self, i):
            self.i = i
            outstanding.add(i)
            peak[0] = max(peak[0], len(outstanding))

        def result(self):
            return bytes([self.i]), {"i": self.i}

        def release(self):
            outstanding.discard(self.i)

        def cancel(self):
            outstanding.discard(self.i)

    fh = io.BytesIO()
    summaries = _write_in_order([lambda i=i: Future(i) for i in range(50)], 4, fh)
    assert fh.getvalue() == bytes(range(50)) and [s["i"] for s in summaries] == list(range(50))
    assert peak[0] == 4 and not outstanding


def test_dask_arguments_are_checked_before_any_work(client, tmp_path):
    """Before: threads=-1, 2.5 or True were accepted, threads='2' failed on a worker, a string client was an
    AttributeError, and decode_model ignored client= beside template=."""
    from nnc import distributed as nd

    stream = tmp_path / "m.nnr"
    stream.write_bytes(nnc.encode({"w": np.ones((4, 4), np.float32)}))
    for threads in (-1, 2.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be an int"):
            nd.decode_to_path(stream, tmp_path / "out.safetensors", client, threads=threads)
        with pytest.raises(ValueError, match="threads must be an int"):
            nd.decode_model(stream, None, client, threads=threads)
    for in_flight in (0, 1.5, "2", True):
        with pytest.raises(ValueError, match="in_flight must be an int"):
            nd.decode_to_path(stream, tmp_path / "out.safetensors", client, in_flight=in_flight)
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(TypeError, match="dask.distributed.Client.*get_client"):
        nnc.decode_model(stream, client="local:2")
    model = tmp_path / "m.npz"
    model.write_bytes(formats.npz_bytes({"w": np.ones((4, 4), np.float32)}))
    with pytest.raises(TypeError, match="dask.distributed.Client"):
        nnc.encode_model(model, tmp_path / "x.nnr", client="local:2")
    with pytest.raises(ValueError, match="template"):
        nnc.decode_model(stream, tmp_path / "x.onnx", client=client, template=tmp_path / "t.onnx")
    assert nd.decode_model(stream, None, client, threads=np.int64(2))["w"].shape == (4, 4)


def _on_a_worker():
    try:
        distributed.get_worker()
        return True
    except ValueError:
        return False


def test_workers_that_see_another_file_refuse_it(client, tmp_path, monkeypatch):
    """Before: workers read the stream or the model at its path with nothing compared to what the client planned
    from: another file there (a stale copy, a checkpoint replaced meanwhile) gave tensors of other shapes, no error,
    or a raw IndexError / ValueError."""
    import nnc.readers
    import nnc.writers

    rng = np.random.default_rng(4)
    planned, other = tmp_path / "m.safetensors", tmp_path / "other.safetensors"
    formats.write_model(str(planned), {"w": rng.normal(size=(64, 64)).astype(np.float32)})
    formats.write_model(str(other), {"w": rng.normal(size=(32, 64)).astype(np.float32)})
    nnc.encode_model(str(planned), str(tmp_path / "m.nnr"), qp=-30)
    nnc.encode_model(str(other), str(tmp_path / "other.nnr"), qp=-30)
    map_stream, open_model = nnc.writers.map_stream, nnc.readers.open_model
    monkeypatch.setattr(nnc.writers, "map_stream", lambda path: map_stream(
        str(tmp_path / "other.nnr") if _on_a_worker() else path))
    monkeypatch.setattr(nnc.readers, "open_model", lambda path, *a, **k: open_model(
        other if _on_a_worker() else path, *a, **k))
    with pytest.raises(nnc.DecodeError, match="m.nnr: the stream a worker reads there is not the one the client read"):
        nnc.decode_model(str(tmp_path / "m.nnr"), client=client)
    with pytest.raises(nnc.DecodeError, match="the workers see another file"):
        nnc.distributed.decode_to_path(str(tmp_path / "m.nnr"), str(tmp_path / "out.safetensors"), client)
    with pytest.raises(nnc.EncodeError, match=r"m.safetensors: tensor 'w' reads as float32\[32, 64\] on a worker"):
        nnc.encode_model(str(planned), str(tmp_path / "o.nnr"), client=client, qp=-30)
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "o.nnr").exists()


@pytest.mark.parametrize("value", ["local:0", "local:99999999999999999999", "local:\u0661", "local:2.5"])
def test_a_local_cluster_needs_a_sensible_worker_count(value):
    """Before: local:99999999999999999999 hung starting workers until killed; local:\u0661 (an Arabic-Indic 1) ran."""
    with pytest.raises(ValueError, match="local:N needs a worker count N from 1 to"):
        nnc.distributed.get_client(value)


def test_cluster_encodes_and_decodes_say_what_local_ones_say(client, tmp_path, capsys, monkeypatch):
    """Before: on a cluster, tensors that decode as zeros drew no warning, and bfloat16 tensors written to .npz as
    float32 no note."""
    from nnc.cli import main

    path = tmp_path / "m.safetensors"
    tiny = np.where(np.arange(64) % 2, 1e-6, -1e-6).astype(np.float32).reshape(8, 8)  # (mixed signs: not kept raw)
    formats.write_model(str(path), {"w": tiny, "b": np.ones(8, np.float32)},
                        {"b": "bfloat16"})
    with pytest.warns(nnc.PrecisionWarning, match="kept none of their signal.*'w'"):
        nnc.encode_model(str(path), str(tmp_path / "api.nnr"), client=client, qp=0)
    coarse = tmp_path / "coarse.safetensors"
    formats.write_model(str(coarse), {"m": (1e-3 + np.random.default_rng(2).normal(0, 5e-4, (4, 4))).astype(np.float32)})
    with pytest.warns(nnc.PrecisionWarning, match="kept little of their signal.*'m'"):
        nnc.encode_model(str(coarse), str(tmp_path / "coarse.nnr"), client=client, qp=-38)
    monkeypatch.setattr(nnc.distributed, "get_client", lambda scheduler: (client, False))
    assert main(["encode", str(path), "-o", str(tmp_path / "m.nnr"), "--qp", "0", "--scheduler", "local:1"]) == 0
    assert "nnc: warning: 1 tensor(s) kept none of their signal" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "m.nnr"), "-o", str(tmp_path / "m.npz"), "--scheduler", "local:1"]) == 0
    assert "float8: b written as float32" in capsys.readouterr().err


def test_tied_weights_on_dask_equal_local(client, tmp_path):
    """A .pt file's tied weights (one storage) are coded once on the cluster too (spec 6.2.1 "tied")."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
    model = {k: torch.from_numpy(v) for k, v in _model(np.random.default_rng(3)).items() if v.ndim}
    model["head.weight"] = model["embed.weight"]
    path = tmp_path / "tied.pt"
    torch.save(model, path)
    local = nnc.encode_model(str(path), qp=-30)
    assert nnc.Decoder(local).tied == {"head.weight": "embed.weight"}
    assert nnc.encode_model(str(path), client=client, qp=-30) == local
    back = nnc.decode_model(local)
    np.testing.assert_array_equal(back["head.weight"], back["embed.weight"])
    stream = tmp_path / "tied.nnr"
    stream.write_bytes(local)
    on_dask = nnc.decode_model(str(stream), client=client)        # before: without head.weight
    assert list(on_dask) == list(back)
    for output in (str(tmp_path / "file.safetensors"), str(tmp_path / "folder") + os.sep):
        nnc.distributed.decode_to_path(str(stream), output, client)
    files = [tmp_path / "file.safetensors", *(tmp_path / "folder").iterdir()]
    for file in files:
        written, _ = formats.read_model(str(file))
        assert list(written) == list(back), file
        for name in back:
            np.testing.assert_array_equal(written[name], back[name])
