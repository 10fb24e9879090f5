"""Instruction counts (valgrind callgrind, Ir) of the engine's workloads: deterministic where wall time is not.

    python benchmarks/bench_engine_callgrind.py builds [--baseline-ref 824a8f8] [--size 512] [--out FILE]
    python benchmarks/bench_engine_callgrind.py nncodec [--rows 1024 --cols 1024] [--qp -38] [--out FILE]

``builds``: the workloads of benchmarks/bench_engine_builds.py (encode and decode of
Laplacian levels at about 2, 4 and 6 bits per weight, RDOQ, the DQ trellis, the rate-aware
DQ trellis) plus a DQ decode in block scan 4, each run once under callgrind with this tree's
engine and with the baseline ref's engine (built like bench_engine_builds does).
``nncodec``: nnc.decode and NNCodec 2.1.3's decompress of the same stream (nnc's defaults:
DQ, block scan with entry points for tensors of 1M weights or more), single thread.

Only the workload itself is counted: every child process loads a tiny helper library
whose functions are callgrind's client requests, runs under
``valgrind --tool=callgrind --instr-atstart=no --collect-atstart=no``, sets everything up and
runs each workload once uninstrumented (a warm-up), then switches instrumentation and
collection on for exactly one more run of the workload and dumps its counts as one part
(one child process per build runs all the workloads).
Instruction counts do not measure cache misses or branch mispredictions, so they are a
proxy for time; their value is that they do not move when other jobs load the machine.
Needs valgrind (with its headers, valgrind/callgrind.h) and a C compiler.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CLIENT_C = r"""
#include <valgrind/callgrind.h>
void cg_begin(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; CALLGRIND_TOGGLE_COLLECT; }
void cg_end(void) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_STOP_INSTRUMENTATION; }
void cg_dump(const char* name) { CALLGRIND_DUMP_STATS_AT(name); }
"""

VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no"]


def build_client(folder: Path) -> Path:
    """Compile the client-request helper library into ``folder``."""
    src = folder / "cg_client.c"
    src.write_text(CLIENT_C)
    lib = folder / "cg_client.so"
    subprocess.run(["cc", "-O1", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    return lib


def counted(lib: str, fn):
    """Run fn once with callgrind counting (outside callgrind the requests do nothing)."""
    cg = ctypes.CDLL(lib)
    cg.cg_begin()
    out = fn()
    cg.cg_end()
    return out


def counted_parts(lib: str, jobs: dict) -> None:
    """Count each job once, dumping its counts as a part named after it (callgrind.out.N files)."""
    cg = ctypes.CDLL(lib)
    for name, fn in jobs.items():
        cg.cg_begin()
        fn()
        cg.cg_end()
        cg.cg_dump(name.encode())


def read_parts(out_file: Path) -> dict:
    """name -> Ir of every part dumped by counted_parts."""
    parts = {}
    for f in out_file.parent.glob(out_file.name + ".*"):
        text = f.read_text()
        m = re.search(r"^desc: Trigger: Client Request: (.*)$", text, re.M)
        if m:
            parts[m.group(1).strip()] = read_ir(f)
    return parts


def read_ir(out_file: Path) -> int:
    """Total Ir of a callgrind output file (its 'totals:' line)."""
    text = out_file.read_text()
    m = re.search(r"^totals:\s+(\d+)", text, re.M) or re.search(r"^summary:\s+(\d+)", text, re.M)
    if m is None:
        raise RuntimeError(f"no totals in {out_file}")
    return int(m.group(1))


def run_counted(python: str, args: list, folder: Path, tag: str, env=None, parts=False) -> int:
    """Run ``python this_script.py child ARGS`` under callgrind; return the counted Ir (0 with ``parts``)."""
    out = folder / f"callgrind.{tag}.out"
    cmd = VALGRIND + [f"--callgrind-out-file={out}", python, str(Path(__file__).resolve()), "child"] + args
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{tag} failed:\n{proc.stderr[-3000:]}")
    return 0 if parts else read_ir(out)


# --------------------------------------------------------------------------
# child processes (run under valgrind)
# --------------------------------------------------------------------------
def child_engine(opts):
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import importlib

    import bench_engine_builds

    sys.path.insert(0, opts["folder"])
    if opts.get("tree_ref"):
        # the inputs are made with the tree ref's build too, so this tree's build may change meanwhile
        tree = importlib.import_module("_engine_tree")
        bench_engine_builds.get_engine = lambda name: tree
    else:
        from nnc.engine import get_engine

        tree = get_engine("cython")
    eng = importlib.import_module("_engine_baseline") if opts["build"] == "baseline" else tree
    jobs = bench_engine_builds.workloads(opts["size"], opts["bits"], quantiser_size=opts["qsize"])
    for job in jobs.values():
        job(eng)  # warm-up
    counted_parts(opts["lib"], {name: (lambda job=job: job(eng)) for name, job in jobs.items()})


def _tensor(rows, cols):
    import numpy as np

    return {"w": (np.random.default_rng(0).laplace(size=(rows, cols)) * 0.02).astype(np.float32)}


def child_nnc_decode(opts):
    sys.path.insert(0, str(REPO))
    import numpy as np

    import nnc

    stream = Path(opts["stream"]).read_bytes()
    ref = nnc.decode(stream, threads=1)  # warm-up
    out = counted(opts["lib"], lambda: nnc.decode(stream, threads=1))
    assert all(np.array_equal(out[k], ref[k]) for k in ref)
    np.savez(opts["npz"], **{k: np.asarray(v, np.float32) for k, v in out.items()})


def child_nncodec_decode(opts):
    sys.path.insert(0, str(REPO))
    import contextlib

    import numpy as np

    from tools.oracle.nncodec_worker import _stub_torchvision

    _stub_torchvision()
    from nncodec import nnc as nncodec

    data = bytearray(Path(opts["stream"]).read_bytes())
    keep = [bytearray(data), bytearray(data)]  # persistent buffers, as its binding needs
    with contextlib.redirect_stdout(sys.stderr):
        nncodec.decompress(keep[0], verbose=False)  # warm-up
        out = counted(opts["lib"], lambda: nncodec.decompress(keep[1], verbose=False))
    np.savez(opts["npz"], **{k: np.asarray(v, np.float32) for k, v in out.items()})


# --------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------
def run_builds(args, folder: Path, lib: Path) -> str:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_engine_builds import build_baseline, workloads

    build_baseline(args.baseline_ref, folder)
    if args.tree_ref:
        build_baseline(args.tree_ref, folder, "_engine_tree")
    names = list(workloads(args.size, args.bits, quantiser_size=args.quantiser_size))
    ir = {}
    for build in ("baseline", "tree"):
        opts = dict(build=build, folder=str(folder), size=args.size, bits=args.bits, qsize=args.quantiser_size,
                    lib=str(lib), tree_ref=args.tree_ref)
        run_counted(sys.executable, [json.dumps(opts)], folder, build, parts=True)
        ir[build] = read_parts(folder / f"callgrind.{build}.out")
    rows = [(name, ir["baseline"][name], ir["tree"][name]) for name in names]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.tree_ref or "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "nnc/_engine.pyx"], capture_output=True,
                           text=True).stdout.strip()
    tree = f"{args.tree_ref} ({head})" if args.tree_ref else f"this tree ({head}{' + uncommitted changes' if dirty else ''})"
    lines = [f"Cython engine, instruction counts: {tree} against {args.baseline_ref}", "",
             f"Command: `python benchmarks/bench_engine_callgrind.py builds --baseline-ref {args.baseline_ref} "
             f"{'--tree-ref ' + args.tree_ref + ' ' if args.tree_ref else ''}"
             f"--size {args.size} --quantiser-size {args.quantiser_size}`", "",
             "Ir = instructions executed by one run of the workload (valgrind callgrind, counting switched on "
             "around the call only); ratio = this tree / baseline (below 1: fewer instructions).", "",
             "| workload | baseline Ir | this tree Ir | tree / baseline |", "|---|---:|---:|---:|"]
    for name, a, b in rows:
        lines.append(f"| {name} | {a:,d} | {b:,d} | {b / a:.4f} |")
    return "\n".join(lines)


def oracle_python() -> str | None:
    cand = os.environ.get("NNC_ORACLE_PYTHON") or str(REPO / ".oracle-venv" / "bin" / "python")
    if Path(cand).exists():
        return cand
    cand = "/work/main/.oracle-venv/bin/python"
    return cand if Path(cand).exists() else None


def run_nncodec(args, folder: Path, lib: Path) -> str:
    sys.path.insert(0, str(REPO))
    import numpy as np

    import nnc

    oracle = oracle_python()
    if oracle is None:
        raise SystemExit("NNCodec oracle not found (NNC_ORACLE_PYTHON or .oracle-venv)")
    tensors = _tensor(args.rows, args.cols)
    stream = nnc.encode(tensors, qp=args.qp)
    (folder / "s.nnr").write_bytes(stream)
    base = dict(stream=str(folder / "s.nnr"), lib=str(lib))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ours = run_counted(sys.executable, [json.dumps(dict(base, side="nnc", npz=str(folder / "a.npz")))], folder,
                       "nnc", env)
    theirs = run_counted(oracle, [json.dumps(dict(base, side="nncodec", npz=str(folder / "b.npz")))], folder,
                         "nncodec", env)
    with np.load(folder / "a.npz") as a, np.load(folder / "b.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files), "decoded values differ"
    n = args.rows * args.cols
    wall = wall_times(stream, args.wall_rounds, oracle) if args.wall_rounds else None
    lines = ["Single-thread decode, instruction counts: nnc against NNCodec 2.1.3 on the same stream", "",
             f"Command: `python benchmarks/bench_engine_callgrind.py nncodec --rows {args.rows} --cols {args.cols} "
             f"--qp {args.qp}{' --wall-rounds ' + str(args.wall_rounds) if args.wall_rounds else ''}`", "",
             f"Stream: nnc.encode of one {args.rows}x{args.cols} Laplacian float32 tensor (scale 0.02), qp {args.qp}, "
             f"nnc's defaults (DQ, default scan), {len(stream):,d} bytes; both decoders' values checked equal.",
             "Ir counts one whole decode call (nnc.decode / NNCodec's decompress, unit parsing and reconstruction "
             "included).", "",
             "| decoder | Ir | Ir per weight | NNCodec / nnc |", "|---|---:|---:|---:|",
             f"| nnc | {ours:,d} | {ours / n:.1f} | {theirs / ours:.3f} |",
             f"| NNCodec 2.1.3 | {theirs:,d} | {theirs / n:.1f} | 1 |"]
    if wall:
        lines += ["", f"Wall time of the same decodes (no valgrind), {args.wall_rounds} alternating rounds in one run "
                  f"(load average {wall['load'][0]:.1f} before, {wall['load'][1]:.1f} after; the machine was shared): "
                  "fastest and median seconds; NNCodec's time is taken inside its worker process (import excluded).",
                  "", "| decoder | fastest s | median s | NNCodec / nnc (fastest) | NNCodec / nnc (median) |",
                  "|---|---:|---:|---:|---:|"]
        o, t = wall["nnc"], wall["nncodec"]
        lines.append(f"| nnc | {min(o):.4f} | {statistics.median(o):.4f} | {min(t) / min(o):.3f} | "
                     f"{statistics.median(t) / statistics.median(o):.3f} |")
        lines.append(f"| NNCodec 2.1.3 | {min(t):.4f} | {statistics.median(t):.4f} | 1 | 1 |")
    return "\n".join(lines)


def wall_times(stream: bytes, rounds: int, oracle: str) -> dict:
    """Single-thread decode seconds of nnc (in this process) and NNCodec (in its worker), alternating."""
    import time

    import nnc
    from tools.oracle.client import NNCodecOracle

    os.environ.setdefault("NNC_ORACLE_PYTHON", oracle)
    peer = NNCodecOracle()
    out = {"nnc": [], "nncodec": [], "load": [os.getloadavg()[0]]}
    try:
        nnc.decode(stream, threads=1)
        for _ in range(rounds):
            t0 = time.perf_counter()
            nnc.decode(stream, threads=1)
            out["nnc"].append(time.perf_counter() - t0)
            _, seconds = peer.decompress_timed(stream, 1)
            out["nncodec"].append(seconds[0])
    finally:
        peer.close()
    out["load"].append(os.getloadavg()[0])
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "child":
        opts = json.loads(argv[1])
        if "build" in opts:
            child_engine(opts)
        elif opts["side"] == "nnc":
            child_nnc_decode(opts)
        else:
            child_nncodec_decode(opts)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    b = sub.add_parser("builds")
    b.add_argument("--baseline-ref", default="824a8f8")
    b.add_argument("--tree-ref", help="measure this git ref's engine instead of this tree's built one")
    b.add_argument("--size", type=int, default=512)
    b.add_argument("--quantiser-size", type=int, default=256 * 1024)
    b.add_argument("--bits", type=float, nargs="*", default=[2.0, 4.0, 6.0])
    b.add_argument("--out")
    c = sub.add_parser("nncodec")
    c.add_argument("--rows", type=int, default=1024)
    c.add_argument("--cols", type=int, default=1024)
    c.add_argument("--qp", type=int, default=-38)
    c.add_argument("--wall-rounds", type=int, default=0, help="also time both decoders this many rounds")
    c.add_argument("--out")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lib = build_client(folder)
        text = run_builds(args, folder, lib) if args.what == "builds" else run_nncodec(args, folder, lib)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
