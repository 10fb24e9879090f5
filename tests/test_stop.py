"""Stopping the engines' long loops (an interrupt, SIGTERM): a loop polls as it walks the scan; once asked to stop
it raises, never returns a result, and the next call works as before (nnc/_engine.pyx ``poll_stop``,
nnc/engine/python/scan.py ``poll_stop``).

Before: a signal waited for the tensors in flight, 2-60 s on a 49M-weight tensor (21 s with DQ, 58 s with RDOQ, in
``nnc encode``), and a batch scheduler's SIGKILL after a short grace left the temporary output file; the pure-Python
engine's worker threads ran to their end."""

import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import nnc
from nnc.engine import COMPILED_AVAILABLE

needs_compiled = pytest.mark.skipif(not COMPILED_AVAILABLE, reason="the compiled engine is not built")


@pytest.fixture(params=[pytest.param("cython", marks=needs_compiled), "python"])
def eng(request, monkeypatch):
    """The engine under test, its poll interval and a tensor shape above it (also for each of two block-row
    ranges). The pure-Python engine polls every 64 elements here, so that its tests stay small."""
    from nnc.engine import get_engine

    if request.param == "python":
        from nnc.engine.python import scan

        monkeypatch.setattr(scan, "POLL_ELEMENTS", 64)
        return SimpleNamespace(e=get_engine("python"), poll=64, H=24, W=20, name="python")
    return SimpleNamespace(e=get_engine("cython"), poll=1 << 16, H=640, W=300, name="cython")


def _in_thread(where: str, fn) -> None:
    """``fn()`` in the main thread or in a worker thread, waited for."""
    if where == "main":
        fn()
        return
    worker = threading.Thread(target=fn)
    worker.start()
    worker.join()


def _stop_requested(e, where: str, fn) -> None:
    """``fn()`` in ``where`` while a stop request is open."""
    e.request_stop(1)
    try:
        _in_thread(where, fn)
    finally:
        e.request_stop(-1)


def _levels(eng):
    return np.random.default_rng(0).integers(-3, 4, eng.H * eng.W).astype(np.int32)


CALLS = [
    "scan_permutation",
    "encode_tensor",
    "encode_tensor threads",
    "choose_init_sets",
    "estimate_tensor_bits",
    "rdoq_levels",
    "dq_rdoq_levels",
    "dq_trellis",
    "dq levels_to_coded",
    "decode_tensor",
]


def _call(eng, name):
    """The engine entry point ``name``, which walks a tensor, as a call without arguments."""
    e, H, W = eng.e, eng.H, eng.W
    x = np.random.default_rng(1).normal(0, 2, H * W)
    n = _levels(eng)

    def encode(threads):
        enc = e.PayloadEncoder(2)
        enc.encode_tensor(n, H, W, n_gtx=11, scan_order=1, threads=threads)
        return enc.finish()

    if name == "decode_tensor":
        payload = encode(1)
        return lambda: e.PayloadDecoder(payload, 2).decode_tensor(H, W, n_gtx=11, scan_order=1)
    if name == "dq levels_to_coded":
        levels = e.dq_trellis(x)
        return lambda: e.PayloadEncoder(2).choose_init_sets(levels, H, W, n_gtx=11, dq=True)
    return {
        "scan_permutation": lambda: e.scan_permutation(H, W, 2),
        "encode_tensor": lambda: encode(1),
        "encode_tensor threads": lambda: encode(2),
        "choose_init_sets": lambda: e.PayloadEncoder(2).choose_init_sets(n, H, W, n_gtx=11),
        "estimate_tensor_bits": lambda: e.estimate_tensor_bits(n, H, W, n_gtx=11),
        "rdoq_levels": lambda: e.rdoq_levels(x, H, W, lam=0.1),
        "dq_rdoq_levels": lambda: e.dq_rdoq_levels(x, H, W, lam=0.1),
        "dq_trellis": lambda: e.dq_trellis(x),
    }[name]


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("where", ["main", "worker"])
def test_a_stop_request_makes_every_walk_raise_and_the_next_call_work(eng, name, where):
    call = _call(eng, name)
    expected = call()
    outcome = {}

    def stopped():
        try:
            outcome["result"] = call()
        except KeyboardInterrupt as exc:
            outcome["raised"] = exc

    _stop_requested(eng.e, where, stopped)
    assert "result" not in outcome and isinstance(outcome.get("raised"), KeyboardInterrupt), name
    again = call()  # nothing left over: the same result as before
    if isinstance(expected, tuple):
        assert np.array_equal(again[0], expected[0]) and again[1] == expected[1]
    elif isinstance(expected, np.ndarray):
        assert np.array_equal(again, expected)
    else:
        assert again == expected


@pytest.mark.parametrize("where", ["main", "worker"])
def test_a_stopped_loop_ends_at_its_first_poll(eng, where):
    """The decoder writes into the caller's array: once stopped, the walk does not go on (before the fix the
    compiled walk went on after a stop until its end in the DQ trellis, for lack of a sticky end)."""
    e = eng.e
    enc = e.PayloadEncoder(2)
    enc.encode_tensor(_levels(eng), eng.H, eng.W, n_gtx=11)
    payload = enc.finish()
    out = np.full(eng.H * eng.W, 99, np.int32)

    def decode():
        with pytest.raises(KeyboardInterrupt):
            e.PayloadDecoder(payload, 2).decode_tensor(eng.H, eng.W, n_gtx=11, out=out)

    _stop_requested(e, where, decode)
    written = int(np.count_nonzero(out != 99))
    assert written <= eng.poll + eng.W, written
    assert written > 0 or eng.name == "python"  # (the Python decoder fills ``out`` once its walk has ended)


def test_an_encoder_stopped_in_a_tensor_cannot_be_finished(eng, monkeypatch):
    from nnc.errors import EncodeError

    enc = eng.e.PayloadEncoder(2)

    def encode():
        with pytest.raises(KeyboardInterrupt):
            enc.encode_tensor(_levels(eng), eng.H, eng.W, n_gtx=11, param_opt=False)  # stopped in its bins

    if eng.name == "python":  # its plan walks the scan before a bin is written: ask to stop once it is made
        from nnc.engine.python import payload

        def plan_then_stop(*args, real=payload._tensor_bins):
            bins = real(*args)
            eng.e.request_stop(1)
            return bins

        monkeypatch.setattr(payload, "_tensor_bins", plan_then_stop)
        try:
            encode()
        finally:
            eng.e.request_stop(-1)
    else:
        _stop_requested(eng.e, "main", encode)
    with pytest.raises(EncodeError, match="already finished"):
        enc.finish()


def test_small_tensors_are_not_polled_and_requests_nest(eng):
    e, small = eng.e, eng.poll // 2
    x = np.random.default_rng(2).normal(0, 2, small)
    e.request_stop(1)
    e.request_stop(1)
    try:
        assert e.dq_trellis(x).shape == (small,)  # under one poll interval: runs to its end
        e.request_stop(-1)
        with pytest.raises(KeyboardInterrupt):
            e.dq_trellis(np.repeat(x, 6))
    finally:
        e.request_stop(-1)
    e.request_stop(-1)  # (never below zero)
    assert e.dq_trellis(np.repeat(x, 6)).shape == (6 * small,)


@needs_compiled
def test_a_signal_in_the_main_thread_is_raised_from_inside_the_loop():
    """The compiled engine's loop in the main thread runs Python's signal handlers as it polls: the handler's own
    exception comes out of the engine call. (The interrupt is sent 0.3 s into a call of several seconds.)"""
    import signal

    from nnc import _engine as e

    x = np.random.default_rng(3).normal(0, 2, 4_000_000)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # (pytest-xdist's workers ignore SIGINT)
    timer = threading.Timer(0.3, __import__("_thread").interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            e.dq_rdoq_levels(x, 2000, 2000, lam=0.1)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert any("_engine" in str(entry.path) for entry in info.traceback), info.traceback
    assert sum("run_signal_handlers" in str(entry.name) for entry in info.traceback) == 1  # the handler's raise
    assert e.dq_trellis(x[:100_000]).shape == (100_000,)


def test_a_pool_left_by_an_interrupt_stops_its_workers(eng):
    """``worker_pool``: an interrupt in the waiting thread asks the workers' loops to stop; the pool is left
    without waiting for the work in flight, and a normal exit waits for it."""
    from nnc._threads import worker_pool

    e = eng.e
    side = 2000 if eng.name == "cython" else 300
    x = np.random.default_rng(4).normal(0, 2, side * side)
    started = threading.Event()
    outcome = []

    def job():
        started.set()
        try:
            return e.dq_rdoq_levels(x, side, side, lam=0.1)
        except KeyboardInterrupt as exc:
            outcome.append(exc)
            raise

    with pytest.raises(KeyboardInterrupt), worker_pool(1) as pool:
        future = pool.submit(job)
        started.wait()
        raise KeyboardInterrupt
    assert future.done() and len(outcome) == 1  # the worker's loop stopped, it did not finish
    with worker_pool(1) as pool:
        assert pool.submit(e.dq_trellis, x[: eng.poll * 2]).result().shape == (eng.poll * 2,)


@pytest.mark.parametrize("engine", [pytest.param("cython", marks=needs_compiled), "python"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_during_a_long_encode_ends_it_and_leaves_nothing(tmp_path, sig, engine):
    """``nnc encode`` of a tensor whose RDOQ takes a minute, signalled once its quantisation has started: exit 1,
    no output, no temporary file (the signal is sent from inside the quantiser, so it lands in the loop)."""
    import signal

    from nnc.formats import npz_bytes

    model = tmp_path / "m.npz"
    side = 4000 if engine == "cython" else 1000
    model.write_bytes(npz_bytes({"w": np.random.default_rng(5).normal(0, 0.02, (side, side)).astype(np.float32)}))
    script = (
        "import os, signal, sys, threading\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as in a shell (pytest-xdist ignores it)
        "from nnc.encoding import quantiser\n"
        "real = quantiser.Quantiser.levels\n"
        "def levels(self, *a, **k):\n"
        f"    threading.Timer(0.5, os.kill, (os.getpid(), signal.{sig})).start()\n"
        "    return real(self, *a, **k)\n"
        "quantiser.Quantiser.levels = levels\n"
        "from nnc.cli import main\n"
        f"sys.exit(main(['encode', {str(model)!r}, '-o', {str(tmp_path / 'out.nnr')!r}, '--rdoq', '-q']))\n"
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    r = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, NNC_ENGINE=engine),
    )
    assert r.returncode != 0, r.stderr
    assert r.returncode == 1 if sig == "SIGTERM" else r.returncode in (1, 130, -signal.SIGINT), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _run_signalled_at_first_rename(argv, sig, tmp_path):
    """``nnc ARGV`` in a child whose first rename into place (of an output) sends it ``sig``."""
    script = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as in a shell (pytest-xdist ignores it)
        "real = os.replace\n"
        "def replace(a, b, *args, **kwargs):\n"
        "    if not os.environ.get('SIGNALLED'):\n"
        "        os.environ['SIGNALLED'] = '1'\n"
        f"        os.kill(os.getpid(), signal.{sig})\n"
        "    return real(a, b, *args, **kwargs)\n"
        "os.replace = replace\n"
        "real_link = os.link\n"  # (an output not asked to replace a file is committed by a hard link)
        "def link(a, b, *args, **kwargs):\n"
        "    if not os.environ.get('SIGNALLED') and not str(b).endswith('.old'):\n"
        "        os.environ['SIGNALLED'] = '1'\n"
        f"        os.kill(os.getpid(), signal.{sig})\n"
        "    return real_link(a, b, *args, **kwargs)\n"
        "os.link = link\n"
        "from nnc.cli import main\n"
        f"sys.exit(main({[str(a) for a in argv]!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_between_the_output_and_its_state_waits_for_both(tmp_path, sig):
    """``--state``: the output is renamed into place, then the state file. A signal in between left the output
    written and the state old (a probe: 9 of 334 signalled runs); it is now held until both are in place."""
    from nnc import EncoderState
    from nnc.formats import npz_bytes

    rng = np.random.default_rng(6)
    for i in range(2):
        (tmp_path / f"m{i}.npz").write_bytes(npz_bytes({"w": rng.normal(0, 0.1, (64, 64)).astype(np.float32)}))
    from nnc.cli import main

    assert main(["encode", str(tmp_path / "m0.npz"), "-o", str(tmp_path / "u0.nnr"), "--state",
                 str(tmp_path / "s.state"), "-q"]) == 0
    before = (tmp_path / "s.state").read_bytes()
    run = _run_signalled_at_first_rename(["encode", "m1.npz", "-o", "u1.nnr", "--state", "s.state", "-q"], sig,
                                         tmp_path)
    assert run.returncode == 1 and "after its outputs were written" in run.stderr, run.stderr
    assert (tmp_path / "s.state").read_bytes() != before  # the state of u1.nnr, written with it
    assert main(["decode", str(tmp_path / "u0.nnr"), "-o", str(tmp_path / "d0.npz"), "--state",
                 str(tmp_path / "r.state"), "-q"]) == 0
    assert main(["decode", str(tmp_path / "u1.nnr"), "-o", str(tmp_path / "d1.npz"), "--state",
                 str(tmp_path / "r.state"), "-q"]) == 0
    assert EncoderState.load(tmp_path / "s.state").levels.keys() == {"w"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_signal_during_a_checkpoints_renames_waits_for_all_its_files(tmp_path):
    """A decode into a folder renames each shard and the index into place: a signal after the first left the
    others out; it is now held until all are in place."""
    from nnc.formats import safetensors_bytes

    folder = tmp_path / "ckpt"
    folder.mkdir()
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (folder / names[0]).write_bytes(safetensors_bytes({"a": np.ones((8, 8), np.float32)}))
    (folder / names[1]).write_bytes(safetensors_bytes({"b": np.zeros((8, 8), np.float32)}))
    index = {"metadata": {}, "weight_map": {"a": names[0], "b": names[1]}}
    (folder / "model.safetensors.index.json").write_text(__import__("json").dumps(index))
    from nnc.cli import main

    assert main(["encode", str(folder), "-o", str(tmp_path / "m.nnr"), "-q"]) == 0
    run = _run_signalled_at_first_rename(["decode", "m.nnr", "-o", "out/", "-q"], "SIGTERM", tmp_path)
    assert run.returncode == 1 and "after its outputs were written" in run.stderr, run.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*names, "model.safetensors.index.json"])


def test_a_held_signal_is_raised_once_and_never_left_for_the_next_command():
    """Two signals during renames: the first is raised when they end, the second dropped; a signal still held at a
    command's end is forgotten, so that the next command in the process does not raise it (a review found one left
    behind when the second signal came as the renames ended)."""
    from nnc import _files
    from nnc.cli import main

    with pytest.raises(KeyboardInterrupt, match="first"):
        with _files.renaming():
            assert _files.hold_signal(KeyboardInterrupt("first"))
            assert _files.hold_signal(KeyboardInterrupt("second"))
    assert _files._held == [] and not _files.hold_signal(KeyboardInterrupt())
    _files._held.append(KeyboardInterrupt("left behind"))
    assert main(["info", "/no/such/file.nnr"]) == 1
    assert _files._held == []


def test_renames_in_a_worker_thread_hold_no_signal():
    """Signals are handled in the main thread: a rename in another thread neither holds one nor starts the main
    thread's group."""
    from nnc import _files

    seen = []

    def worker():
        with _files.committed_together(), _files.renaming():
            seen.append(_files.hold_signal(KeyboardInterrupt()))

    _in_thread("worker", worker)
    assert seen == [False] and _files._held == []


def test_a_signal_held_during_renames_that_fail_is_raised_instead_of_the_error():
    """A rename that fails while a signal is held: the signal ends the command (a caller that handles the error
    could otherwise go on, the signal lost), without the words "after its outputs were written"."""
    from nnc import _files

    with pytest.raises(KeyboardInterrupt) as info:
        with _files.renaming():
            assert _files.hold_signal(KeyboardInterrupt("after its outputs were written"))
            raise OSError("disk full")
    assert info.value.args == () and isinstance(info.value.__context__, OSError)
    assert _files._held == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_whose_exception_python_dropped_still_ends_the_command(monkeypatch, capsys):
    """SIGTERM arriving while a weakref callback ran (the stream maps' WeakSet) raised inside it, where Python only
    prints "Exception ignored in ..."; the command went on to exit 0. It now ends as a held signal does."""
    import signal

    from nnc import cli

    class SignalledOnCollection:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs here, inside __del__, which drops its exception
                pass

    def info(args):
        holder = SignalledOnCollection()
        del holder
        return cli.EXIT_OK

    monkeypatch.setattr(cli, "cmd_info", info)
    parser_func = cli.build_parser  # the parser binds cmd_info when built

    def build():
        parser = parser_func()
        cli._subparsers(parser)["info"].set_defaults(func=info)
        return parser

    monkeypatch.setattr(cli, "build_parser", build)
    assert cli.main(["info", "any.nnr"]) == 1
    assert "terminated (SIGTERM) after its outputs were written" in capsys.readouterr().err


@pytest.mark.parametrize("scheduler", [["--workers", "2"], ["--scheduler", "local:2"]])
def test_ctrl_c_to_the_process_group_is_one_line_without_worker_tracebacks(tmp_path, scheduler):
    """A terminal's Ctrl-C reaches every process of its group. Before: the search's worker processes and a local
    Dask cluster's each printed a KeyboardInterrupt traceback (25-76 lines) before "nnc: error: interrupted"."""
    import signal

    from nnc import demo

    if scheduler[0] == "--scheduler":
        pytest.importorskip("dask.distributed", reason="dask.distributed is not installed (pip install 'dask[distributed]')")
    hook = tmp_path / "hook.py"
    hook.write_text(
        "import multiprocessing, os, signal, threading\n"
        "from nnc.demo import mlp_accuracy\n"
        "def score(tensors):\n"  # Ctrl-C a second after the first evaluation in a worker
        "    if multiprocessing.parent_process() and not os.path.exists(os.environ['NNC_TEST_FLAG']):\n"
        "        open(os.environ['NNC_TEST_FLAG'], 'w').close()\n"
        "        threading.Timer(1.0, os.killpg, (os.getpgid(0), signal.SIGINT)).start()\n"
        "    return mlp_accuracy(tensors)\n"
    )
    script = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as in a shell (pytest-xdist ignores it)
        "from nnc import distributed\n"
        "real = distributed.get_client\n"
        "def get_client(*a, **k):\n"  # Ctrl-C once the cluster's workers run
        "    client = real(*a, **k)\n"
        "    os.killpg(os.getpgid(0), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "    return client\n"
        "distributed.get_client = get_client\n"
        "from nnc.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    if scheduler[0] == "--workers":
        argv = ["encode", str(demo.DATA / "mlp.safetensors"), "-o", str(tmp_path / "m.nnr"), "--search",
                f"{hook}:score", "--time-budget", "120", *scheduler]
    else:
        (tmp_path / "m.nnr").write_bytes(nnc.encode({"w": np.ones((64, 64), np.float32)}))
        argv = ["decode", str(tmp_path / "m.nnr"), "-o", str(tmp_path / "d.npz"), *scheduler]
    env = dict(os.environ, NNC_TEST_FLAG=str(tmp_path / "flag"))
    child = subprocess.Popen([sys.executable, "-c", script, *argv], stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 1 and err == "nnc: error: interrupted\n", err
    assert not (tmp_path / "d.npz").exists()


def test_ctrl_c_while_the_command_line_is_imported_is_one_line():
    """Before: a Ctrl-C in the first 0.3 s of ``nnc`` (numpy and the command line being imported) printed a
    KeyboardInterrupt traceback. ``import nnc`` imports no numpy now, and the entry point guards the rest."""
    script = (
        "import sys\n"
        "class Interrupt:\n"  # a finder that interrupts the import of nnc.cli, as a Ctrl-C there would
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'nnc.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "import nnc._console\n"
        "assert 'numpy' not in sys.modules, 'import nnc imported numpy'\n"
        "sys.exit(nnc._console.main(['--version']))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (1, "nnc: error: interrupted\n")
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert 'nnc = "nnc._console:main"' in pyproject  # the command the installer writes
