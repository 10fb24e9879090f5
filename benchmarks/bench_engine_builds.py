"""Two builds of the Cython engine side by side: this tree's and a baseline git ref's.

    python benchmarks/bench_engine_builds.py [--baseline-ref main] [--size 2048] [--rounds 5] [--out FILE]

Builds the baseline's nnc/_engine.pyx (``git show REF:nnc/_engine.pyx``) in a temporary
folder as module ``_engine_baseline``, then times both engines in the same run,
alternating them round by round: the encode and decode of benchmarks/bench_engine.py
(4M Laplacian levels at about 2, 4 and 6 bits per weight), and the quantisers (RDOQ,
the distortion-only DQ trellis, the rate-aware DQ trellis) on 1M weights.  Reports the
fastest and the median time of each build and the ratios baseline / this tree (above 1:
this tree is faster).  Not a test: machines are noisy; shared machines more so.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_engine import N_GTX, levels_for  # noqa: E402
from nnc.engine import get_engine  # noqa: E402

SETUP = """
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
ext = Extension("{name}", ["{name}.pyx"], include_dirs=[numpy.get_include()],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")], extra_compile_args=["-O3"])
setup(name="baseline", ext_modules=cythonize([ext], compiler_directives={"language_level": 3,
                                                                          "embedsignature": True}))
"""


def build_baseline(ref: str, folder: Path, name: str = "_engine_baseline"):
    """Compile ``ref``'s engine as module ``name`` in ``folder`` (same flags as setup.py) and import it."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:nnc/_engine.pyx"], check=True,
                            capture_output=True).stdout
    (folder / f"{name}.pyx").write_bytes(source)
    for header in ("_pricer.h",):  # C headers the engine includes (since the engine restructuring)
        found = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:nnc/{header}"], capture_output=True)
        if found.returncode == 0:
            (folder / header).write_bytes(found.stdout)
    (folder / "setup.py").write_text(SETUP.replace("{name}", name))
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=folder, check=True,
                   capture_output=True)
    sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def workloads(size: int, bits_list, quantiser_size: int = 1024 * 1024) -> dict:
    """name -> function(engine) that runs once; the quantisers work on ``quantiser_size`` weights."""
    jobs = {}
    for bits in bits_list:
        levels = levels_for(bits, size)
        h, w = levels.shape
        flat = levels.reshape(-1)

        def encode(eng, flat=flat, h=h, w=w):
            e = eng.PayloadEncoder(2)
            e.write_qp_offset(0, 8)
            e.encode_tensor(flat, h, w, n_gtx=N_GTX)
            return e.finish()

        payload = encode(get_engine("cython"))

        def decode(eng, payload=payload, h=h, w=w):
            d = eng.PayloadDecoder(payload, 2)
            d.read_qp_offset(8)
            out = d.decode_tensor(h, w, n_gtx=N_GTX)
            d.finish()
            return out

        jobs[f"encode {bits:g} bits"] = encode
        jobs[f"decode {bits:g} bits"] = decode
    # DQ levels in block scan 4 (the encoder's default for large tensors), coded and decoded
    dq_levels = get_engine("cython").dq_rdoq_levels(np.random.default_rng(5).laplace(0, 3.0, size * size), size,
                                                    size, lam=0.0, scan_order=4)

    def encode_dq(eng, h=size, w=size):
        e = eng.PayloadEncoder(2)
        e.encode_tensor(dq_levels, h, w, n_gtx=N_GTX, dq=True, scan_order=4)
        return e.finish()

    dq_payload = encode_dq(get_engine("cython"))

    def decode_dq(eng, h=size, w=size):
        d = eng.PayloadDecoder(dq_payload, 2)
        out = d.decode_tensor(h, w, n_gtx=N_GTX, dq=True, scan_order=4)
        d.finish()
        return out

    jobs["encode dq scan 4"] = encode_dq
    jobs["decode dq scan 4"] = decode_dq
    q = quantiser_size
    tag = f"{q // (1024 * 1024)}M" if q % (1024 * 1024) == 0 else f"{q // 1024}K"
    x = np.random.default_rng(3).laplace(0, 3.0, q)
    jobs[f"rdoq lambda 0.1 ({tag})"] = lambda eng: eng.rdoq_levels(x, q // 1024, 1024, lam=0.1, scan_order=2)
    jobs[f"dq trellis ({tag})"] = lambda eng: eng.dq_rdoq_levels(x, q // 1024, 1024, lam=0.0, scan_order=2,
                                                                 chunk=x.size)
    small = x[: q // 4]
    tag4 = f"{q // 4 // 1024}K"
    jobs[f"dq rdoq lambda 0.1 ({tag4})"] = lambda eng: eng.dq_rdoq_levels(small, q // 4 // 1024, 1024, lam=0.1,
                                                                          scan_order=2)
    return jobs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-ref", default="main")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bits", type=float, nargs="*", default=[2.0, 4.0, 6.0])
    ap.add_argument("--out", help="also write the table here")
    args = ap.parse_args(argv)
    new = get_engine("cython")
    with tempfile.TemporaryDirectory() as tmp:
        old = build_baseline(args.baseline_ref, Path(tmp))
        jobs = workloads(args.size, args.bits)
        times = {name: {"baseline": [], "this tree": []} for name in jobs}
        for name, job in jobs.items():
            a, b = job(old), job(new)
            assert np.array_equal(np.asarray(a if not isinstance(a, bytes) else np.frombuffer(a, np.uint8)),
                                  np.asarray(b if not isinstance(b, bytes) else np.frombuffer(b, np.uint8))), name
            for _ in range(args.rounds):
                for label, eng in (("baseline", old), ("this tree", new)):
                    t0 = time.perf_counter()
                    job(eng)
                    times[name][label].append(time.perf_counter() - t0)
    lines = [f"# Cython engine: this tree against {args.baseline_ref}, same run, alternating rounds",
             f"# command: python benchmarks/bench_engine_builds.py --baseline-ref {args.baseline_ref} "
             f"--size {args.size} --rounds {args.rounds}",
             "# fastest and median seconds of each build; ratio = baseline / this tree (above 1: this tree is",
             "# faster); on a shared machine the fastest round is the steadier figure",
             "# outputs (bytes, arrays, levels) checked equal between the builds",
             f"{'workload':28s} {'baseline min':>12s} {'tree min':>9s} {'ratio min':>9s} "
             f"{'baseline med':>12s} {'tree med':>9s} {'ratio med':>9s}"]
    for name, t in times.items():
        base, ours = min(t["baseline"]), min(t["this tree"])
        base_m, ours_m = statistics.median(t["baseline"]), statistics.median(t["this tree"])
        lines.append(f"{name:28s} {base:12.4f} {ours:9.4f} {base / ours:9.3f} "
                     f"{base_m:12.4f} {ours_m:9.4f} {base_m / ours_m:9.3f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
