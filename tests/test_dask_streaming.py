"""Decoding on Dask into files streams: bounded units in flight, each written into its place, same files as local."""

import numpy as np
import pytest

import nnc
from nnc import writers

distributed = pytest.importorskip("dask.distributed", reason="dask.distributed not installed (pip install 'dask[distributed]')")
from test_decode_to_files import sharded_checkpoint  # noqa: E402

from nnc import distributed as nd  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


class CountingClient:
    """A client that records how many submitted tasks were not yet released, at most."""

    def __init__(self, client):
        self.client, self.outstanding, self.most, self.submitted = client, 0, 0, 0

    def submit(self, *args, **kwargs):
        future = self.client.submit(*args, **kwargs)
        self.outstanding += 1
        self.submitted += 1
        self.most = max(self.most, self.outstanding)
        release, released = future.release, []

        def counted_release():  # Dask calls it again when the future goes
            if not released:
                released.append(True)
                self.outstanding -= 1
            release()

        future.release = counted_release
        return future

    def run(self, *args, **kwargs):
        return self.client.run(*args, **kwargs)

    def nthreads(self):
        return self.client.nthreads()


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _many_tensors_stream(tmp_path, n=12):
    rng = np.random.default_rng(4)
    tensors = {f"layer.{i}.weight": (rng.normal(size=(40, 24)) * 0.05).astype(np.float32) for i in range(n)}
    tensors.update({f"layer.{i}.bias": (rng.normal(size=40) * 0.01).astype(np.float32) for i in range(n)})
    path = tmp_path / "many.nnr"
    path.write_bytes(nnc.encode(tensors, qp=-30, blocks=True, dtypes={"layer.0.weight": "bfloat16"}))
    return path


@pytest.mark.parametrize("target", ["folder/", "model.safetensors", "model.npz", "model.pt"])
def test_decode_to_path_on_dask_writes_the_local_files(client, tmp_path, target):
    if target.endswith(".pt"):  # written tensor by tensor on the client too (was gathered for torch.save)
        pytest.importorskip("torch")
    stream, *_ = sharded_checkpoint()
    sharded = tmp_path / "sharded.nnr"
    sharded.write_bytes(stream)
    for src in (sharded, _many_tensors_stream(tmp_path)):
        local, remote = tmp_path / f"local-{src.stem}", tmp_path / f"remote-{src.stem}"
        local.mkdir()
        remote.mkdir()
        a = writers.decode_to_path(str(src), f"{local}/{target}")
        b = nd.decode_to_path(str(src), f"{remote}/{target}", client, in_flight=2)
        assert a["tensors"] == b["tensors"] and a["weights"] == b["weights"] and a["bytes"] == b["bytes"]
        assert [p.rsplit("/", 1)[-1] for p in b["files"]] == [p.rsplit("/", 1)[-1] for p in a["files"]]
        files = _files(local)
        assert files and files == _files(remote)


@pytest.mark.parametrize("in_flight", [1, 3])
def test_units_in_flight_are_bounded(client, tmp_path, in_flight):
    src = _many_tensors_stream(tmp_path)
    counting = CountingClient(client)
    summary = nd.decode_to_path(str(src), f"{tmp_path}/out/", counting, in_flight=in_flight)
    units = len(nnc.Decoder(src.read_bytes())._ndus)
    assert summary["tensors"] == 24 and counting.submitted == units > in_flight
    assert counting.most == in_flight and counting.outstanding == 0
    assert nd._WORKER_DECODER == {}  # the workers let go of the stream at the end


def test_a_bad_unit_on_a_worker_writes_nothing(client, tmp_path):
    src = _many_tensors_stream(tmp_path)
    data = bytearray(src.read_bytes())
    data[-30] ^= 0x5A
    bad = tmp_path / "bad.nnr"
    bad.write_bytes(bytes(data))
    with pytest.raises(nnc.DecodeError) as local:
        writers.decode_to_path(str(bad), f"{tmp_path}/local/")
    with pytest.raises(nnc.DecodeError) as remote:
        nd.decode_to_path(str(bad), f"{tmp_path}/out/", client)
    assert str(remote.value) == str(local.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "local").exists()
    with pytest.raises(ValueError, match="in_flight"):
        nd.decode_to_path(str(src), f"{tmp_path}/out/", client, in_flight=0)
