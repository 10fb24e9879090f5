"""Peak memory and throughput of encoding and decoding sharded bf16 checkpoints of growing size.

    python benchmarks/bench_scale.py [--sizes 0.2 1 4] [--rows 4096 --cols 4096] [--qp -30] [--no-dq]
                                     [--threads 1 0] [--ops ...] [--keep --workdir DIR] [--name NAME]
                                     [--out benchmarks/results] [--report]

For each size (GB of bf16 weights) a synthetic checkpoint is written at run time into a
temporary folder (never committed): shards of 8 tensors of rows x cols bf16 values (normal,
sigma 0.02) with model.safetensors.index.json; the largest tensor therefore stays the same as
the model grows. Each measurement runs in a fresh process and records its peak resident set
size (VmHWM), its wall time and the weights per second:

* encode, streaming: ``nnc.models.encode_model_to(folder, out)`` (what ``nnc encode DIR`` runs):
  one tensor read at a time, each NDU written as its turn comes;
* encode, in memory: every tensor loaded, then ``Encoder.encode`` (today's in-memory path),
  the reference for the throughput ratio (run up to ``--memory-max-gb``);
* decode to a folder: ``nnc.writers.decode_to_path(stream, folder/)`` (what ``nnc decode -o
  folder/`` runs): the shards and the index written back, one unit in flight;
* decode in memory: ``nnc.decode(stream)``, the decoder alone, holding the model;
* decode in memory to a file: the whole model decoded, then written as one safetensors file
  in its original dtypes (the in-memory way to a file, which ``nnc decode -o x.pt`` still
  takes): the like-for-like reference for the decode-to-folder throughput ratio.

Each size writes its checkpoint once; ``--keep --workdir DIR`` keeps it and the streams so that
another run (``--ops decode-folder ...``) measures more without encoding again. Rows are merged
into OUT/NAME.json per (size, quantisation, qp, threads, op); ``--report`` renders every
OUT/scale*.json into the table of OUT/scale.md.

The goal (issue 16) is a peak RSS <= 1.5 x the largest tensor's float32 size + 300 MB at every
size, flat as the model grows, with the streaming throughput within 5 % of the in-memory one.
Not a test: peaks and times vary from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, os, sys, time
op, folder, out, qp, dq, threads = sys.argv[1:7]
qp, dq, threads = int(qp), dq == "1", int(threads)

def peak_mb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024

import numpy as np
import nnc
from nnc import models, readers, writers
before = peak_mb()
t0 = time.perf_counter()
if op == "encode-stream":
    s = models.encode_model_to(folder, out, qp=qp, dq=dq, threads=threads)
    weights, size = s.weights, s.stream_bytes
elif op == "encode-memory":
    source = readers.open_model(folder)
    tensors = {t.name: t.load() for t in source}
    stream = nnc.Encoder(qp=qp, dq=dq, threads=threads, dtypes=source.dtypes).encode(
        tensors, extra_metadata=models.checkpoint_metadata(source)).stream
    with open(out + ".memory", "wb") as fh:
        fh.write(stream)
    weights, size = sum(t.size for t in source), len(stream)
elif op == "decode-folder":
    r = writers.decode_to_path(out, out + ".decoded/", threads=threads)
    weights, size = r["weights"], r["bytes"]
elif op == "decode-memory-file":
    # the in-memory decoder's way to a file: the whole model decoded, then one safetensors file
    # in the original dtypes written atomically (what `nnc decode -o x.pt` still does)
    r = writers._decode_in_memory(nnc.Decoder(out), out + ".memory.safetensors", None, None, threads, None)
    os.unlink(out + ".memory.safetensors")
    weights, size = r["weights"], r["bytes"]
else:
    decoded = nnc.decode(out, threads=threads)
    weights, size = sum(int(v.size) for v in decoded.values()), os.path.getsize(out)
seconds = time.perf_counter() - t0
print(json.dumps(dict(before=before, peak=peak_mb(), seconds=seconds, weights=weights, bytes=size)))
"""

OPS = ("encode-stream", "encode-memory", "decode-folder", "decode-memory", "decode-memory-file")


def write_checkpoint(folder: Path, gigabytes: float, rows: int, cols: int, per_shard: int = 8) -> dict:
    """A sharded bf16 checkpoint of about ``gigabytes`` GB; returns its facts."""
    from nnc import formats

    folder.mkdir(parents=True)
    tensor_bytes = 2 * rows * cols
    count = max(1, round(gigabytes * 1e9 / tensor_bytes))
    shards = (count + per_shard - 1) // per_shard
    rng = np.random.default_rng(0)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        names = [f"layers.{i}.weight" for i in range(s * per_shard, min(count, (s + 1) * per_shard))]
        header = {"__metadata__": {"format": "pt"}}
        for j, n in enumerate(names):
            header[n] = {
                "dtype": "BF16",
                "shape": [rows, cols],
                "data_offsets": [j * tensor_bytes, (j + 1) * tensor_bytes],
            }
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        with open(folder / name, "wb") as fh:
            fh.write(len(h).to_bytes(8, "little"))
            fh.write(h)
            for _ in names:
                x = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
                fh.write(formats.float32_to_bfloat16(x).tobytes())
        weight_map.update((n, name) for n in names)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": count * tensor_bytes}, "weight_map": weight_map})
    )
    return dict(tensors=count, shards=shards, bytes=count * tensor_bytes, largest_fp32=4 * rows * cols)


def replicate_stream(src: Path, dst: Path, copies: int) -> int:
    """``copies`` x the tensors of a bench_scale stream (its NDUs renamed "layers" -> "layerA"..., same lengths).

    The checkpoint metadata of the topology unit is rewritten for the new tensors and shards, so
    that decoding to a folder writes ``copies`` times the files: a large stream for measuring the
    decoder without encoding it.  Returns the number of tensors.
    """
    import mmap

    from nnc import container as C

    prefixes = ["layers"] + [f"layer{chr(65 + k)}" for k in range(copies - 1)]
    with open(src, "rb") as fh:
        m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)  # left to the GC: the units hold views of it
        units = list(C.iter_units(m))
        tpl = next(u for u in units if u.type == C.NNR_TPL)
        meta = json.loads(tpl.header.data)
        nn, ndus = meta["nnc"], [u for u in units if u.type == C.NNR_NDU]
        names = [u.header.topology_elem_id for u in ndus]

        def renamed(name, k):
            return prefixes[k] + name[len("layers") :]

        for key, value in list(nn.items()):
            if isinstance(value, dict) and set(value) >= set(names):
                nn[key] = {renamed(n, k): v for k in range(copies) for n, v in value.items()}
            elif isinstance(value, list) and set(value) == set(names):
                nn[key] = [renamed(n, k) for k in range(copies) for n in value]
        ck = nn["checkpoint"]
        files = len(ck["files"])
        ck["files"] = [
            {"metadata": {"format": "pt"}, "name": f"model-{i + 1:05d}-of-{copies * files:05d}.safetensors"}
            for i in range(copies * files)
        ]
        first = json.loads(tpl.header.data)["nnc"]["checkpoint"]["file_of"]
        ck["file_of"] = {renamed(n, k): k * files + v for k in range(copies) for n, v in first.items()}
        ck["index"]["metadata"]["total_size"] *= copies
        with open(dst, "wb") as out:
            out.write(m[: tpl.offset])
            out.write(C.build_tpl(data=json.dumps(meta, separators=(",", ":"))))
            out.write(m[tpl.end : ndus[0].offset])
            for k in range(copies):
                for u, name in zip(ndus, names):
                    unit = bytes(m[u.offset : u.end])
                    at = unit.index(name.encode())
                    out.write(unit[:at] + renamed(name, k).encode() + unit[at + len(name) :])
    return copies * len(names)


def run(op, folder, out, qp, dq, threads) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-c", CHILD, op, str(folder), str(out), str(qp), "1" if dq else "0", str(threads)],
        capture_output=True,
        text=True,
        env=env,
    )
    if r.returncode != 0:
        raise SystemExit(f"{op} failed:\n{r.stderr[-3000:]}")
    if op == "decode-folder":
        _remove(Path(str(out) + ".decoded"))
    return json.loads(r.stdout.strip().splitlines()[-1])


def _commit() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def measure_size(work: Path, size: float, args, record) -> None:
    """Every op of ``args.ops`` at one model size, for each thread count; ``record(row)`` after each."""
    folder = work / f"ckpt-{size}"
    facts_file = work / f"ckpt-{size}.json"
    if facts_file.exists():  # --keep of an earlier run
        facts = json.loads(facts_file.read_text())
    else:
        _remove(folder)
        facts = write_checkpoint(folder, size, args.rows, args.cols)
        facts_file.write_text(json.dumps(facts))
    goal = 1.5 * facts["largest_fp32"] / 2**20 + 300
    base = dict(size_gb=size, quantisation="DQ" if args.dq else "uniform", qp=args.qp, goal_mb=goal, **facts)
    for threads in args.threads:
        stream = work / f"m-{size}-{args.qp}-{int(args.dq)}-{threads}.nnr"
        for op in args.ops:
            if "memory" in op and size > args.memory_max_gb:
                continue
            if op.startswith("decode") and not stream.exists():
                raise SystemExit(f"{stream}: no stream to decode (run encode-stream first, with --keep)")
            runs = [run(op, folder, stream, args.qp, args.dq, threads) for _ in range(args.repeat)]
            r = dict(min(runs, key=lambda x: x["seconds"]), peak=max(x["peak"] for x in runs), runs=len(runs))
            if op == "encode-memory":
                memory = Path(str(stream) + ".memory")
                assert memory.read_bytes() == stream.read_bytes(), "streaming and in-memory streams differ"
                memory.unlink()
            row = dict(base, threads=threads or os.cpu_count(), op=op, commit=_commit(), **r)
            print(json.dumps(row), flush=True)
            record(row)
        if not args.keep:
            stream.unlink(missing_ok=True)
    if not args.keep:
        _remove(folder)
        facts_file.unlink()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.2, 1, 4], help="model sizes in GB of bf16")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--qp", type=int, default=-30)
    ap.add_argument("--no-dq", dest="dq", action="store_false", help="uniform quantisation (faster)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="0: one per CPU")
    ap.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="what to measure, in this order")
    ap.add_argument(
        "--repeat", type=int, default=1, help="runs per measurement: the fastest one's time is kept, the highest peak"
    )
    ap.add_argument("--memory-max-gb", type=float, default=1.0, help="largest size also run in memory")
    ap.add_argument("--workdir", default=None, help="where the checkpoints are written (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep checkpoints and streams in --workdir for a later run")
    ap.add_argument("--name", default="scale", help="results go to OUT/NAME.json (rows merged with earlier ones)")
    ap.add_argument("--report", action="store_true", help="only write OUT/scale.md from every OUT/scale*.json")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument(
        "--replicate",
        nargs=3,
        metavar=("SRC", "DST", "COPIES"),
        help="only write DST: the stream SRC's tensors COPIES times (for decode runs on a larger model)",
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.replicate:
        src, dst, copies = args.replicate
        print(replicate_stream(Path(src), Path(dst), int(copies)), "tensors")
        return 0
    if args.report:
        write_report(out)
        return 0
    if args.keep and args.workdir is None:
        ap.error("--keep needs --workdir")
    results = out / f"{args.name}.json"
    rows = json.loads(results.read_text()) if results.exists() else []
    command = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def record(row):
        key = ("size_gb", "quantisation", "qp", "threads", "op")
        rows[:] = [r for r in rows if any(r.get(k) != row[k] for k in key)] + [dict(row, command=command.strip())]
        out.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(rows, indent=1))

    if args.workdir is not None:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="nnc-scale-"))
    try:
        for size in args.sizes:
            measure_size(work, size, args, record)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _mws(r) -> float:
    return r["weights"] / r["seconds"] / 1e6


def write_report(out: Path) -> None:
    """OUT/scale.md: one table row per (quantisation, size, threads) from every OUT/scale*.json."""
    rows = [r for f in sorted(out.glob("scale*.json")) for r in json.loads(f.read_text()) if isinstance(r, dict)]
    rows = [r for r in rows if "op" in r]
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["quantisation"], r["qp"], r["size_gb"], r["threads"]), {})[r["op"]] = r
    lines = [
        "| quantisation | model GB | tensors | threads | goal MB | encode peak MB, streaming | in memory "
        "| encode M w/s, streaming | streaming / in memory | decode-to-folder peak MB | decode in memory peak MB "
        "| decode M w/s, to folder | to folder / in memory | to folder / in memory to a file |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def peak(c, op):  # * marks a run stopped before the end (its "partial" says how far)
        return f"{c[op]['peak']:.0f}{'*' if c[op].get('partial') else ''}" if op in c else "-"

    def ratio(c, a, b):
        return f"{_mws(c[a]) / _mws(c[b]):.2f}" if a in c and b in c else "-"

    def speed(c, op):
        return f"{_mws(c[op]):.2f}{'*' if c[op].get('partial') else ''}" if op in c else "-"

    for (quant, qp, size, threads), c in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][3])):
        facts = next(iter(c.values()))
        lines.append(
            f"| {quant} (qp {qp}) | {size:g} | {facts['tensors']} | {threads} | {facts['goal_mb']:.0f} "
            f"| {peak(c, 'encode-stream')} | {peak(c, 'encode-memory')} | {speed(c, 'encode-stream')} "
            f"| {ratio(c, 'encode-stream', 'encode-memory')} | {peak(c, 'decode-folder')} "
            f"| {peak(c, 'decode-memory')} | {speed(c, 'decode-folder')} | {ratio(c, 'decode-folder', 'decode-memory')} "
            f"| {ratio(c, 'decode-folder', 'decode-memory-file')} |"
        )
    partial = [
        f"* {r['size_gb']:g} GB {r['op']}, {r['threads']} thread(s): {r['partial']}" for r in rows if r.get("partial")
    ]
    commands = sorted({r["command"] for r in rows if "command" in r})
    text = (out / "scale.md").read_text() if (out / "scale.md").exists() else ""
    begin, end = "<!-- bench_scale table -->", "<!-- end bench_scale table -->"
    notes = ["", "Stopped runs:", "", *partial] if partial else []
    table = "\n".join([begin, "", *lines, *notes, "", "Commands:", "", "```console", *commands, "```", "", end])
    if begin in text and end in text:
        text = text[: text.index(begin)] + table + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + table + "\n"
    (out / "scale.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
