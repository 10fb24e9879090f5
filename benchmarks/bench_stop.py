"""How long ``nnc encode`` / ``nnc decode`` take to end after SIGTERM, and what they leave behind.

    python benchmarks/bench_stop.py [--rows 7000 --cols 7000] [--fractions 0.1 0.4 0.7 0.9]
                                    [--out benchmarks/results/stop.md]

A model of one rows x cols float32 tensor (Laplace, scale 0.02) is written to a temporary folder.
For each job (encode with the defaults, with ``--rdoq``, and decode of the default stream) the
job is first run to its end to learn its time T; then, for each fraction f, it is started again
and sent SIGTERM at f * T. Recorded: the latency from the signal to the process's exit, its exit
status, and the files left in the output folder (there should be none). A batch scheduler that
follows SIGTERM with SIGKILL after a grace period leaves the temporary file of a job that is
still running then. Not a test: latencies vary from run to run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nnc.formats import npz_bytes  # noqa: E402


def _run(cmd, out_dir: Path, delay: float | None) -> tuple[float, int, list[str], float]:
    """(seconds from the signal to the exit, exit status, files left, the run's total seconds)."""
    for p in out_dir.iterdir():
        p.unlink()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    sent = None
    if delay is not None:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
    proc.wait()
    end = time.monotonic()
    left = sorted(p.name for p in out_dir.iterdir())
    return (end - sent if sent else float("nan")), proc.returncode, left, end - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=7000)
    ap.add_argument("--cols", type=int, default=7000)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.4, 0.7, 0.9])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/stop.md"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nnc-stop-"))
    try:
        model = work / "m.npz"
        w = np.random.default_rng(0).laplace(0, 0.02, (args.rows, args.cols)).astype(np.float32)
        model.write_bytes(npz_bytes({"w": w}))
        stream = work / "m.nnr"
        subprocess.run(["nnc", "encode", str(model), "-o", str(stream), "-q"], check=True)
        out_dir = work / "out"
        out_dir.mkdir()
        jobs = {
            "encode": ["nnc", "encode", str(model), "-o", str(out_dir / "x.nnr"), "-q"],
            "encode --rdoq": ["nnc", "encode", str(model), "-o", str(out_dir / "x.nnr"), "--rdoq", "-q"],
            "decode": ["nnc", "decode", str(stream), "-o", str(out_dir / "x.npz"), "-q"],
        }
        lines = [
            "# Ending on SIGTERM",
            "",
            f"`python benchmarks/bench_stop.py --rows {args.rows} --cols {args.cols} --fractions "
            + " ".join(str(f) for f in args.fractions)
            + "`",
            "",
            f"One {args.rows} x {args.cols} float32 tensor ({args.rows * args.cols / 1e6:.0f}M weights), "
            f"{os.cpu_count()} CPUs. T: the job's time run to its end.",
            "",
            "| job | T (s) | signal at | latency (s) | exit | files left |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, cmd in jobs.items():
            _, status, _, total = _run(cmd, out_dir, None)
            assert status == 0, (name, status)
            for f in args.fractions:
                latency, status, left, _ = _run(cmd, out_dir, f * total)
                lines.append(
                    f"| {name} | {total:.1f} | {f:.0%} | {latency:.2f} | {status} | {', '.join(left) or 'none'} |"
                )
                print(lines[-1], flush=True)
        args.out.write_text("\n".join(lines) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
