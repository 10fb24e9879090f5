"""Reading a model tensor by tensor holds memory bounded by the tensor in flight, not by the model."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

TENSORS, ROWS, COLS = 8, 1024, 4096  # eight float32 tensors of 16 MiB: a 128 MiB file
BOUND_MB = 56  # growth of the peak while reading (33 MB measured); the file's pages were all resident before

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import nnc.readers
    def hwm():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    before = hwm()
    source = nnc.readers.open_model(sys.argv[1])
    sums = [float(np.sum(t.load(), dtype=np.float64)) for t in source]
    print(before, hwm(), *sums)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory read from /proc (Linux only)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reading_a_pt_file_does_not_keep_its_pages_or_grow_the_heap(tmp_path, dtype):
    """torch.load(mmap=True) maps the file; the reader copies a tensor out and then drops the map's pages, and
    copies with numpy rather than torch (whose freed 16 MiB clones left the heap larger)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    state = {
        f"layer{i}.weight": torch.from_numpy(rng.standard_normal((ROWS, COLS), dtype=np.float32)).to(
            getattr(torch, dtype)
        )
        for i in range(TENSORS * 4 // (4 if dtype == "float32" else 2))
    }
    path = tmp_path / "model.pt"
    torch.save(state, path)
    assert os.path.getsize(path) > 120 * 2**20
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", "import torch\n" + CHILD, str(path)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    before, peak, *sums = map(float, r.stdout.split())
    assert sums == [float(np.sum(t.float().numpy(), dtype=np.float64)) for t in state.values()]
    assert peak - before < BOUND_MB, f"reading a 128 MiB .pt file raised the peak by {peak - before:.0f} MB"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory read from /proc (Linux only)")
def test_reading_an_onnx_file_leaves_its_tensor_data_in_the_file(tmp_path):
    """onnx.load read the whole model into memory (and numpy_helper copied each tensor again); the reader now
    opens the graph with each initializer's raw data left in the file (nnc.formats.load_onnx_graph) and reads
    one tensor at a time."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal((ROWS, COLS), dtype=np.float32) for _ in range(TENSORS)]
    inits = [numpy_helper.from_array(a, f"layer{i}.weight") for i, a in enumerate(arrays)]
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [], inits)), path)
    del inits
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", "import onnx\n" + CHILD, str(path)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    before, peak, *sums = map(float, r.stdout.split())
    assert sums == [float(np.sum(a, dtype=np.float64)) for a in arrays]
    assert peak - before < BOUND_MB, f"reading a 128 MiB .onnx file raised the peak by {peak - before:.0f} MB"
