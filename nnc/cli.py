"""The ``nnc`` command line (also ``python -m nnc``).

Exit codes: 0 success; 1 the input could not be processed (invalid stream or
model, a failed verification, an unreadable file); 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

EPILOGS = {
    "encode": """examples:
  nnc encode model.safetensors -o model.nnr --qp -38 --dq
  nnc encode model.pt -o model.nnr --step 0.002 --scan-order 2
  nnc encode model.npz -o model.nnr --qp -32 --tensor-qp 'head.*=-40' --raw '*.num_batches_tracked'
  nnc encode model.safetensors -o model.nnr --rdoq --lambda 0.2
  nnc encode model.safetensors -o model.nnr --target-snr 30 --importance fisher.safetensors
  nnc encode mlp.safetensors -o mlp.nnr --search nnc.demo:mlp_accuracy --tolerance 0.005 --time-budget 60

--search MODULE:FUNCTION (or path/to/file.py:FUNCTION) names a function that takes the
decoded tensors (a dict of name to numpy array) and returns a score, higher is better.
The search (DC-v2: qp sweep, rate-distortion sweep, per-tensor refinement) writes the
smallest stream whose score stays within --tolerance of the original model's score.
""",
    "decode": """examples:
  nnc decode model.nnr -o model.safetensors
  nnc decode model.nnr -o model.onnx --template original.onnx
  nnc decode model.nnr -o model.npz --tensor fc1.weight
""",
    "info": """examples:
  nnc info model.nnr
  nnc info model.nnr --json | jq '.tensors[].bits_per_weight'
""",
    "compare": """examples:
  nnc compare model.safetensors model.nnr                  # per-tensor error of a stream's decoding
  nnc compare model.safetensors decoded.pt --min-snr 30    # exit status 1 if the total SNR is lower
  nnc compare model.safetensors model.nnr --json | jq '.total.snr_db'
""",
    "verify": """examples:
  nnc verify conformance/
  nnc verify conformance/ --decoder nncodec --group profile-1
""",
    "bench": """examples:
  nnc bench model.safetensors --qp -38
  nnc bench model.safetensors --qp -32 --vs --json
""",
    "demo": """examples:
  nnc demo
  nnc demo --json
""",
}


class Progress:
    """A one-line progress bar on stderr, shown only on a terminal and when not quiet."""

    def __init__(self, total: int, label: str, quiet: bool = False):
        self.total = max(total, 1)
        self.label = label
        self.done = 0
        self.start = time.monotonic()
        self.enabled = not quiet and sys.stderr.isatty()
        self._shown = False

    def step(self, n: int = 1, what: str = "") -> None:
        self.done += n
        if not self.enabled or time.monotonic() - self.start < 1.0:
            return
        frac = self.done / self.total
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}% {what[:40]:<40}")
        sys.stderr.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\n")


def _fail(message: str) -> int:
    print(f"nnc: error: {message}", file=sys.stderr)
    return EXIT_FAIL


def _usage_error(message: str):
    sys.stderr.write(f"nnc: error: {message}\n")
    raise SystemExit(EXIT_USAGE)


def _parse_assignments(items, what, kind=int) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            _usage_error(f"{what} must look like PATTERN=VALUE, not {item!r}")
        k, v = item.rsplit("=", 1)
        try:
            out[k] = kind(v)
        except ValueError:
            _usage_error(f"{what}: {v!r} is not a{'n integer' if kind is int else ' number'}")
    return out


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, not {text!r}")
    return value


# -- encode --------------------------------------------------------------------------


def cmd_encode(args) -> int:
    from . import formats
    from .encoder import Encoder, EncoderState

    if args.state and args.search:
        return _fail("--state (incremental coding) cannot be combined with --search")
    # on a cluster the workers read the tensors (nnc.distributed)
    tensors, dtypes = (None, None) if args.scheduler else formats.read_model(args.model)
    options = dict(
        qp=args.qp, step=args.step, dq=args.dq, scan_order=args.scan_order, n_gtx=args.n_gtx,
        qp_density=args.qp_density, qp_per_tensor=_parse_assignments(args.tensor_qp, "--tensor-qp"),
        raw=args.raw or (), lossless_int=args.lossless_int, blocks=args.blocks, profile=args.profile,
        param_opt=not args.no_param_opt, row_skip=args.row_skip,
        lambda_per_tensor=_parse_assignments(args.tensor_lambda, "--tensor-lambda", float),
        rdoq_lambda=args.lam if args.lam is not None else (args.rdoq or 0.0), dcv1_s=args.dcv1_s,
        dtypes=dtypes,
        threads=args.threads if args.threads is not None else (1 if args.search and args.workers > 1 else 0),
    )
    if args.sigmas:
        options["sigmas"], _ = formats.read_model(args.sigmas)
    if args.importance:
        options["importance"], _ = formats.read_model(args.importance)
    if args.nonweight_qp is not None:
        options["nonweight_qp"] = args.nonweight_qp
    if args.qp is None and args.step is None:
        options.pop("step")
    if args.scheduler:
        return _encode_on_cluster(args, options)
    if args.search:
        return _encode_search(args, tensors, options)
    if args.state:
        state = EncoderState.load(args.state) if Path(args.state).exists() else EncoderState()
        options.update(state=state, tca=args.tca, hdsp=args.hdsp, differences=args.differences)
    elif args.differences:
        return _fail("--differences needs --state")
    allocated = None
    if args.target_snr is not None:
        from .allocation import allocate_qps

        fixed = {k: v for k, v in options.items() if k not in ("qp", "step", "qp_per_tensor", "importance", "sigmas")}
        allocated = allocate_qps(tensors, target_snr_db=args.target_snr, importance=options.get("importance"), **fixed)
        options["qp_per_tensor"] = dict(allocated, **options["qp_per_tensor"])   # explicit --tensor-qp wins
    t0 = time.perf_counter()
    progress = Progress(sum(int(np.asarray(v).size) for v in tensors.values()), "encoding", args.quiet)
    try:
        result = Encoder(**options).encode(tensors, progress=lambda name, n: progress.step(n, name))
    finally:
        progress.close()
    elapsed = time.perf_counter() - t0
    out = args.output or str(Path(args.model).with_suffix(".nnr"))
    formats.write_atomic(out, result.stream)
    if args.state:
        options["state"].save(args.state)  # after the stream: a failed write leaves the state as it was
    n = sum(int(np.asarray(v).size) for v in tensors.values())
    orig = sum(int(np.asarray(v).nbytes) for v in tensors.values())
    summary = dict(input=str(args.model), output=out, tensors=len(tensors), weights=n, bytes=len(result.stream),
                   input_bytes=orig, bits_per_weight=8 * len(result.stream) / max(n, 1),
                   ratio_fp32=4 * n / max(len(result.stream), 1), seconds=elapsed)
    if allocated is not None:
        summary["allocated_qps"] = allocated
    snr = ""
    if not args.state:   # (an update's reconstruction is not the model's)
        from .models import compare_tensors

        summary["snr_db"] = compare_tensors(tensors, result.reconstruction)["total"]["snr_db"]
        snr = f", weight SNR {summary['snr_db']:.2f} dB"
    if args.json:
        print(json.dumps(_finite_json(summary), indent=2))
    elif not args.quiet:
        print(f"{out}: {len(tensors)} tensors, {n} weights -> {len(result.stream)} bytes "
              f"({summary['bits_per_weight']:.3f} bits/weight, {summary['ratio_fp32']:.1f}x smaller than fp32{snr})")
    return EXIT_OK


def _encode_on_cluster(args, options) -> int:
    """``nnc encode --scheduler``: one task per unit on a Dask cluster (nnc.distributed)."""
    from . import distributed

    for flag, used in (("--search", args.search), ("--state", args.state), ("--target-snr", args.target_snr),
                       ("--sigmas", args.sigmas), ("--importance", args.importance)):
        if used:
            return _fail(f"{flag} cannot be combined with --scheduler")
    options.pop("dtypes", None)
    if args.threads is None:
        options["threads"] = 1
    out = args.output or str(Path(args.model).with_suffix(".nnr"))
    try:
        client, owned = distributed.get_client(args.scheduler)
    except (ImportError, ValueError, OSError) as exc:
        return _fail(f"--scheduler {args.scheduler}: {exc}")
    t0 = time.perf_counter()
    try:
        length = distributed.encode_model(args.model, out, client, **options)
    finally:
        if owned:
            distributed.close_client(client)
    summary = dict(input=str(args.model), output=out, bytes=length, seconds=time.perf_counter() - t0)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"{out}: {length} bytes (on {args.scheduler})")
    return EXIT_OK


def _decode_on_cluster(args) -> int:
    """``nnc decode --scheduler``: one task per unit on a Dask cluster (nnc.distributed)."""
    from . import distributed

    for flag, used in (("--state", args.state), ("--tensor", args.tensor), ("--add-to", args.add_to),
                       ("--template", args.template)):
        if used:
            return _fail(f"{flag} cannot be combined with --scheduler")
    from . import formats

    formats.format_from_extension(args.output)      # a bad extension fails before any work
    try:
        client, owned = distributed.get_client(args.scheduler)
    except (ImportError, ValueError, OSError) as exc:
        return _fail(f"--scheduler {args.scheduler}: {exc}")
    try:
        out = distributed.decode_model(args.stream, args.output, client, threads=args.threads or 1,
                                       entry_points=args.entry_points)
    finally:
        if owned:
            distributed.close_client(client)
    summary = dict(stream=str(args.stream), output=args.output, tensors=len(out),
                   weights=int(sum(np.asarray(v).size for v in out.values())))
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"{args.output}: {summary['tensors']} tensors, {summary['weights']} weights (on {args.scheduler})")
    return EXIT_OK


def load_callable(spec: str, option: str = "--search"):
    """The function named by ``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``.

    Parameters
    ----------
    spec : str
        A dotted module name or a ``.py`` file path, a colon, and a function name.
    option : str
        The command-line option that named it, for error messages.

    Returns
    -------
    callable

    Raises
    ------
    SystemExit
        With exit status 2 (a usage error) if the module or the function cannot be found.

    Examples
    --------
    >>> load_callable("nnc.demo:mlp_accuracy").__name__
    'mlp_accuracy'
    """
    import importlib
    import importlib.util

    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        _usage_error(f"{option} needs MODULE:FUNCTION, not {spec!r}")
    try:
        if module_name.endswith(".py"):
            loader_spec = importlib.util.spec_from_file_location("nnc_user_evaluation", module_name)
            if loader_spec is None or loader_spec.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules["nnc_user_evaluation"] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, OSError) as exc:
        _usage_error(f"cannot import {module_name!r} for {option}: {exc}")
    func = getattr(module, func_name, None)
    if not callable(func):
        _usage_error(f"{module_name!r} has no function {func_name!r}")
    return func


def _encode_search(args, tensors, options) -> int:
    from . import formats
    from .search import search

    evaluate = load_callable(args.search)
    check = load_callable(args.check, "--check") if args.check else None
    for chosen_by_search in ("qp", "step", "dq", "rdoq_lambda", "qp_per_tensor", "lambda_per_tensor", "sigmas",
                             "dcv1_s"):
        options.pop(chosen_by_search, None)
    t0 = time.perf_counter()
    result = search(tensors, evaluate, tolerance=args.tolerance, dq=args.dq, workers=args.workers,
                    time_budget=args.time_budget, check=check,
                    progress=not args.quiet and not args.json and sys.stderr.isatty(), **options)
    elapsed = time.perf_counter() - t0
    if result.best is None:
        checked = " and the --check score" if check else ""
        return _fail(f"no setting kept the score{checked} within {args.tolerance} of the original's "
                     f"({result.reference_score:.6g}; {len(result.candidates)} candidates tried)")
    best = result.best
    out = args.output or str(Path(args.model).with_suffix(".nnr"))
    formats.write_atomic(out, best.stream)
    n = sum(int(np.asarray(v).size) for v in tensors.values())
    summary = dict(input=str(args.model), output=out, tensors=len(tensors), weights=n, bytes=best.bytes,
                   bits_per_weight=8 * best.bytes / max(n, 1), ratio_fp32=4 * n / max(best.bytes, 1),
                   reference_score=result.reference_score, score=best.score, tolerance=args.tolerance,
                   settings=best.settings, candidates=len(result.candidates), seconds=elapsed,
                   check_reference=result.check_reference, check=best.check,
                   pareto=[dict(bytes=c.bytes, score=c.score) for c in result.pareto])
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"{out}: {best.bytes} bytes ({summary['bits_per_weight']:.3f} bits/weight), score "
              f"{best.score:.6g} (original {result.reference_score:.6g}, tolerance {args.tolerance}), "
              f"{len(result.candidates)} candidates in {elapsed:.1f} s")
        print("Pareto front (bytes: score): " + ", ".join(f"{c.bytes}: {c.score:.6g}" for c in result.pareto))
    return EXIT_OK


# -- decode --------------------------------------------------------------------------


def cmd_decode(args) -> int:
    from . import formats
    from .decoder import Decoder, DecoderState

    if args.scheduler:
        return _decode_on_cluster(args)
    if args.state and args.tensor:
        return _fail("--state needs every tensor of the stream decoded; leave out --tensor")
    state = None
    if args.state:
        state = DecoderState.load(args.state) if Path(args.state).exists() else DecoderState()
    dec = Decoder(args.stream, entry_points=args.entry_points, state=state)
    names = args.tensor or None
    if names:
        missing = [n for n in names if n not in dec.names()]
        if missing:
            return _fail(f"no tensor named {missing[0]!r} in {args.stream}")
    infos = [t for t in dec.tensors() if names is None or t.name in names]
    progress = Progress(sum(t.size for t in infos), "decoding", args.quiet)
    try:
        out = dec.decode(names, progress=lambda info: progress.step(info.size, info.name), threads=args.threads)
    finally:
        progress.close()
    from .decoder import restore_model_view

    fmt = formats.format_from_extension(args.output)
    out, dtypes = restore_model_view(out, dec.metadata)
    if args.add_to:
        from .decoder import apply_update

        previous, previous_dtypes = formats.read_model(args.add_to)
        try:
            out = apply_update(previous, out)
        except ValueError as exc:
            return _fail(f"--add-to {args.add_to}: {exc}")
        dtypes = dict(dtypes, **previous_dtypes)
    formats.write_model(args.output, out, dtypes, fmt=fmt, template=args.template)
    if state is not None:
        state.save(args.state)
    summary = dict(stream=str(args.stream), output=args.output, tensors=len(out),
                   weights=int(sum(np.asarray(v).size for v in out.values())))
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"{args.output}: {summary['tensors']} tensors, {summary['weights']} weights")
    return EXIT_OK


# -- compare ---------------------------------------------------------------------------


def _read_model_or_stream(path, threads: int):
    """{name: array} of a model file, or of an NNC stream's decoding with shapes and dtypes restored."""
    from . import formats
    from .models import decode_model

    return formats.read_model(path)[0] if formats.detect_format(path) != "nnr" else decode_model(path, threads=threads)


def _finite_json(value):
    """``value`` with infinite floats as the strings "inf" / "-inf" (JSON has no infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    return value


def cmd_compare(args) -> int:
    from .models import compare_tensors

    result = compare_tensors(_read_model_or_stream(args.reference, args.threads),
                             _read_model_or_stream(args.other, args.threads))
    total = result["total"]
    problems = [f"{len(result['missing'])} tensor(s) missing: {', '.join(result['missing'][:5])}"] if result["missing"] else []
    problems += [f"{m['name']}: shape {tuple(m['shape'])} against {tuple(m['other_shape'])}"
                 for m in result["shape_mismatches"]]
    problems += [f"{name}: not equal (not a float tensor, so it should be exact)" for name in total["exact_mismatches"]]
    below = args.min_snr is not None and not total["snr_db"] >= args.min_snr
    if below:
        problems.append(f"total SNR {total['snr_db']:.2f} dB is below --min-snr {args.min_snr} dB")
    result["passed"] = not problems
    if args.json:
        print(json.dumps(_finite_json(result), indent=2))
    elif not args.quiet:
        print(f"{'name':<48} {'shape':>16} {'SNR dB':>8} {'max |error|':>12}")
        print("-" * 87)
        for row in result["tensors"]:
            shape = "x".join(map(str, row["shape"])) or "scalar"
            if "snr_db" in row:
                print(f"{row['name'][:48]:<48} {shape[:16]:>16} {row['snr_db']:>8.2f} {row['max_abs_error']:>12.4g}")
            else:
                print(f"{row['name'][:48]:<48} {shape[:16]:>16} {'exact' if row['equal'] else 'DIFFERS':>8} {'':>12}")
        print(f"total: {total['weights']} float weights, SNR {total['snr_db']:.2f} dB"
              + (f"; {len(result['extra'])} tensor(s) only in {args.other}" if result["extra"] else ""))
    for problem in problems:
        print(f"nnc: {problem}", file=sys.stderr)
    return EXIT_FAIL if problems else EXIT_OK


# -- info ----------------------------------------------------------------------------


def stream_info(path) -> dict:
    """A JSON-ready description of a stream: units, tensors and totals (``nnc info --json``).

    Parameters
    ----------
    path : str or pathlib.Path or bytes
        The stream, as :class:`nnc.decoder.Decoder` accepts it.

    Returns
    -------
    dict
        ``bytes``, ``profile``, ``units`` (index, type, offset, size), ``tensors`` (name,
        shape, dtype, qp, step, ``unit_index`` into ``units``, ``ndu_index`` among the NDUs,
        bits per weight, whether it updates a parent and with TCA, and ``needs_parent``:
        an update coded with TCA, which decodes only after its parent, so that its qp
        can be unknown (None)...), ``weights``, ``bits_per_weight``, ``ratio_fp32``.

    Raises
    ------
    nnc.errors.DecodeError
        If the stream does not decode.

    Examples
    --------
    >>> import numpy as np, nnc
    >>> info = stream_info(nnc.encode({"w": np.zeros((4, 4), np.float32)}))
    >>> info["profile"], [t["name"] for t in info["tensors"]], info["weights"]
    (1, ['w'], 16)
    >>> t = info["tensors"][0]
    >>> info["units"][t["unit_index"]]["type"], t["ndu_index"]
    ('NNR_NDU', 0)
    """
    from .decoder import Decoder
    from .errors import DecodeError

    dec = Decoder(path)
    by_unit: dict[int, list[str]] = {}
    for t in dec.tensors():
        by_unit.setdefault(t.unit_index, []).append(t.name)
    needs_parent = set()
    for names in by_unit.values():
        try:
            dec.decode(names)  # fills qp and step of these tensors
        except DecodeError as exc:
            if exc.clause != "14":
                raise
            needs_parent.update(names)  # an update coded with TCA: its levels need the parent's (spec 14)
    units = [dict(index=i, type=u.type_name, offset=u.offset, size=u.size) for i, u in enumerate(dec.units)]
    unit_at = {u.offset: i for i, u in enumerate(dec.units)}
    tensors = []
    for t in dec.tensors():
        h = dec.units[unit_at[t.unit_offset]].header
        unit_bytes = t.unit_size
        share = unit_bytes / max(len(t.block) or 1, 1)
        tensors.append(dict(
            name=t.name, shape=list(t.shape), dtype=t.dtype, payload_type=t.payload_type, qp=t.qp, step=t.step,
            dq=t.dq, scan_order=t.scan_order, n_gtx=t.n_gtx, codebook_size=len(t.codebook) if t.codebook else None,
            row_skip=t.row_skip, unit_index=unit_at.get(t.unit_offset), ndu_index=t.unit_index,
            unit_bytes=unit_bytes, block=list(t.block),
            bits_per_weight=8 * share / max(t.size, 1),
            parent=bool(h.get("parent_node_id_present_flag")), tca=bool(h.get("temporal_context_modeling_flag")),
            needs_parent=t.name in needs_parent,
        ))
    n = sum(t.size for t in dec.tensors())
    total = len(dec.data)
    profile = next((int(u.header.general_profile_idc) for u in dec.units if u.type_name == "NNR_STR"), None)
    return dict(bytes=total, profile=profile, units=units, tensors=tensors, weights=n,
                bits_per_weight=8 * total / max(n, 1), ratio_fp32=4 * n / max(total, 1))


def cmd_info(args) -> int:
    info = stream_info(args.stream)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"{args.stream}: {info['bytes']} bytes, profile {info['profile']}, {len(info['units'])} units, "
          f"{len(info['tensors'])} tensors, {info['weights']} weights")
    header = f"{'name':40} {'shape':>16} {'dtype':>8} {'type':>9} {'qp':>5} {'dq':>3} {'scan':>4} {'bytes':>8} {'bits/w':>7}"
    print(header)
    print("-" * len(header))
    for t in info["tensors"]:
        qp = t["qp"] if t["qp"] is not None else ("?" if t["needs_parent"] else "")
        print(f"{t['name'][:40]:40} {'x'.join(map(str, t['shape'])):>16} {t['dtype']:>8} {t['payload_type']:>9} "
              f"{qp:>5} {('on' if t['dq'] else 'off'):>3} {t['scan_order']:>4} {t['unit_bytes']:>8} "
              f"{t['bits_per_weight']:>7.3f}")
    print(f"total: {info['bits_per_weight']:.3f} bits/weight, {info['ratio_fp32']:.1f}x smaller than fp32")
    if any(t["needs_parent"] for t in info["tensors"]):
        print("an update coded with temporal context adaptation: it decodes only after its parent "
              "(nnc decode --state); a qp '?' is known only then")
    return EXIT_OK


# -- verify ----------------------------------------------------------------------------


def cmd_verify(args) -> int:
    from .verify import format_table, verify_suite

    suite = Path(args.suite)
    if not (suite / "manifest.json").exists():
        return _fail(f"{suite}: no manifest.json (not a conformance suite)")
    try:
        results = verify_suite(suite, args.decoder, groups=args.group or None, names=args.stream or None)
    except RuntimeError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        print(format_table(results))
    return EXIT_OK if all(r.passed for r in results) else EXIT_FAIL


# -- bench ---------------------------------------------------------------------------


def _peer_rows(tensors, result, n_weights, quiet):
    """Lossless coders on the same uniform indices, and NNCodec at the same qps (``--vs``)."""
    import bz2
    import lzma

    rows = []
    idx = [t.levels for t in result.tensors.values() if t.levels is not None]
    raw = b"".join(np.asarray(v, np.int32).astype(np.int16 if np.abs(v).max(initial=0) < 2**15 else np.int32)
                   .tobytes() for v in idx)
    peers = [("idx+lzma-6", lambda b: lzma.compress(b, preset=6), lzma.decompress),
             ("idx+bz2-9", lambda b: bz2.compress(b, 9), bz2.decompress)]
    try:
        import zstandard

        peers.append(("idx+zstd-19", zstandard.ZstdCompressor(level=19).compress,
                      zstandard.ZstdDecompressor().decompress))
    except ImportError:
        if not quiet:
            print("(zstd skipped: pip install zstandard)", file=sys.stderr)
    for name, comp, decomp in peers:
        t0 = time.perf_counter()
        blob = comp(raw)
        t1 = time.perf_counter()
        decomp(blob)
        t2 = time.perf_counter()
        rows.append(dict(coder=name, bytes=len(blob), bits_per_weight=8 * len(blob) / n_weights,
                         encode_s=t1 - t0, decode_s=t2 - t1))
    try:
        repo = Path(__file__).resolve().parent.parent
        sys.path.insert(0, str(repo))
        from tools.oracle.client import NNCodecOracle
    except ImportError:
        NNCodecOracle = None
    if NNCodecOracle is not None and NNCodecOracle.available():
        with NNCodecOracle() as oracle:
            qps = {k: t.qp for k, t in result.tensors.items() if t.qp is not None}
            floats = {k: np.asarray(v, np.float32) for k, v in tensors.items() if np.asarray(v).dtype.kind == "f"}
            stream, te = oracle.compress_timed(floats, 1, qp_per_tensor=qps, use_dq=any(
                t.dq for t in result.tensors.values()))
            _, td = oracle.decompress_timed(stream, 1)
            rows.append(dict(coder="NNCodec 2.1.3", bytes=len(stream), bits_per_weight=8 * len(stream) / n_weights,
                             encode_s=te[0], decode_s=td[0]))
    elif not quiet:
        print("(NNCodec skipped: its oracle environment is not set up, see tools/setup_oracle.sh)", file=sys.stderr)
    return rows


def cmd_bench(args) -> int:
    from . import formats
    from .decoder import decode
    from .encoder import Encoder

    tensors, _ = formats.read_model(args.model)
    n = sum(int(np.asarray(v).size) for v in tensors.values())
    settings = dict(qp=args.qp, dq=args.dq, scan_order=args.scan_order)
    t0 = time.perf_counter()
    result = Encoder(**settings).encode(tensors)
    t1 = time.perf_counter()
    decode(result.stream)
    t2 = time.perf_counter()
    rows = [dict(coder="nnc", bytes=len(result.stream), bits_per_weight=8 * len(result.stream) / n,
                 encode_s=t1 - t0, decode_s=t2 - t1)]
    threads = args.threads or os.cpu_count() or 1
    if threads > 1:
        t0 = time.perf_counter()
        Encoder(**settings, threads=threads).encode(tensors)
        t1 = time.perf_counter()
        decode(result.stream, threads=threads)
        rows.append(dict(rows[0], coder=f"nnc {threads} threads", encode_s=t1 - t0, decode_s=time.perf_counter() - t1))
    if args.vs:
        rows += _peer_rows(tensors, result, n, args.quiet)
    for r in rows:
        r["encode_mw_s"] = n / r["encode_s"] / 1e6 if r["encode_s"] else None
        r["decode_mw_s"] = n / r["decode_s"] / 1e6 if r["decode_s"] else None
    if args.json:
        print(json.dumps(dict(model=str(args.model), weights=n, rows=rows), indent=2))
        return EXIT_OK
    print(f"{args.model}: {n} weights, qp {args.qp}, dq {'on' if args.dq else 'off'} (one run; machines are noisy)")
    print(f"{'coder':16} {'bytes':>10} {'bits/w':>7} {'enc Mw/s':>9} {'dec Mw/s':>9}")
    for r in rows:
        speeds = " ".join("        -" if r[k] is None else f"{r[k]:>9.2f}" for k in ("encode_mw_s", "decode_mw_s"))
        print(f"{r['coder']:16} {r['bytes']:>10} {r['bits_per_weight']:>7.3f} {speeds}")
    return EXIT_OK


# -- demo ----------------------------------------------------------------------------


def cmd_demo(args) -> int:
    from . import demo

    rows = demo.run(out=(lambda *a: None) if args.json else print)
    if args.json:
        print(json.dumps(rows, indent=2))
    return EXIT_OK


# -- parser --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``nnc`` command-line parser, with one sub-parser per command.

    The documentation's CLI reference is generated from it.

    Returns
    -------
    argparse.ArgumentParser

    Examples
    --------
    >>> args = build_parser().parse_args(["encode", "m.safetensors", "--qp", "-30"])
    >>> args.command, args.qp, args.dq
    ('encode', -30, True)
    """
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="nnc",
        description="Compress neural-network weights with DeepCABAC / MPEG NNC (ISO/IEC 15938-17).",
        epilog="Exit codes: 0 success, 1 invalid input or failed check, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"nnc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOGS.get(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")
        p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
        return p

    p = add("encode", "Encode a model (safetensors, PyTorch, ONNX or npz) into an NNC stream.")
    p.add_argument("model", help="model file; the format is detected from its content")
    p.add_argument("-o", "--output", help="output stream (default: MODEL with .nnr)")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--qp", type=int, help="global quantisation parameter (default -38)")
    q.add_argument("--step", type=float, help="target step size, mapped to the nearest qp")
    p.add_argument("--dq", action=argparse.BooleanOptionalAction, default=True,
                   help="dependent (trellis) quantisation (default: on)")
    p.add_argument("--scan-order", type=int, default=None, choices=range(5),
                   help="0 row-major, 1-4 block scans (default: 4 for tensors of at least 2^20 elements and more "
                        "than 64 rows, else 0)")
    p.add_argument("--n-gtx", type=int, default=11, help="greater-than flags N, 1-256 (default 11)")
    p.add_argument("--qp-density", type=int, default=2, help="qp steps per octave as a power of two (default 2)")
    p.add_argument("--tensor-qp", action="append", metavar="PATTERN=QP", help="per-tensor qp by name or glob")
    p.add_argument("--nonweight-qp", type=int, help="qp of 1-D tensors (default -75)")
    p.add_argument("--raw", action="append", metavar="PATTERN", help="store matching tensors uncompressed")
    p.add_argument("--lossless-int", action=argparse.BooleanOptionalAction, default=True,
                   help="code integer tensors losslessly (default: on)")
    p.add_argument("--blocks", action="store_true", help="pair X.weight with X.bias in block units")
    p.add_argument("--profile", type=int, default=1, choices=(0, 1), help="1: 2nd edition (default), 0: 1st")
    p.add_argument("--no-param-opt", action="store_true", help="do not optimise context initialisation")
    p.add_argument("--row-skip", action="store_true", help="2nd edition: skip all-zero rows")
    p.add_argument("--rdoq", type=float, metavar="LAMBDA", nargs="?", const=0.1,
                   help="rate-distortion quantisation with this lambda (squared steps per bit; 0.1 if "
                        "omitted, chosen by benchmarks/bench_rd.py), with or without DQ")
    p.add_argument("--lambda", dest="lam", type=float, metavar="LAMBDA",
                   help="the lambda of rate-distortion quantisation (implies --rdoq)")
    p.add_argument("--tensor-lambda", action="append", metavar="PATTERN=LAMBDA",
                   help="per-tensor rate-distortion lambda by name or glob")
    p.add_argument("--importance", metavar="FILE",
                   help="a model file of per-weight importances F (same names and shapes), weighting the "
                        "squared error of --rdoq and of --target-snr (e.g. an empirical Fisher diagonal)")
    p.add_argument("--target-snr", type=float, metavar="DB",
                   help="bit allocation: per-tensor qps with the fewest estimated bits for this total weight "
                        "SNR (importance-weighted with --importance); --tensor-qp still wins")
    p.add_argument("--sigmas", metavar="FILE",
                   help="DC-v1: a model file of per-weight standard deviations (same names); sets each "
                        "tensor's step by eq. 12 and, with --rdoq, the importance 1/sigma^2")
    p.add_argument("--dcv1-s", type=int, default=64, metavar="S", help="DC-v1 global integer S (default 64)")
    p.add_argument("--search", metavar="MODULE:FUNCTION",
                   help="DC-v2: find the smallest stream whose score (FUNCTION(decoded tensors): a number, or "
                        "better one score per sample; higher is better) stays within --tolerance of the "
                        "original's; ignores --qp/--step/--rdoq")
    p.add_argument("--tolerance", type=float, default=0.005,
                   help="with --search: allowed score drop (default 0.005)")
    p.add_argument("--check", metavar="MODULE:FUNCTION",
                   help="with --search: a second score on other data; the result must also stay within "
                        "--tolerance of the original's on it (a guard against fitting --search's data)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS", help="with --search: stop after this time")
    p.add_argument("--workers", type=int, default=1, help="with --search: worker processes (default 1)")
    p.add_argument("--threads", type=_non_negative_int, metavar="N",
                   help="tensors quantised and coded at a time, same stream for every N, more memory for "
                        "larger N (default: one per CPU; with --search --workers > 1: 1 per worker)")
    p.add_argument("--state", metavar="FILE",
                   help="incremental coding: the sender's state file (created if missing, updated after the "
                        "stream is written); a model whose tensors it holds is coded as an update to them")
    p.add_argument("--tca", action=argparse.BooleanOptionalAction, default=True,
                   help="with --state: temporal context adaptation in updates (default: on)")
    p.add_argument("--hdsp", action="store_true",
                   help="with --state: history-dependent significance in updates (NNCodec cannot decode them)")
    p.add_argument("--differences", action="store_true",
                   help="with --state: MODEL is the whole new model; an update codes its difference to the model "
                        "the receiver holds (kept in the state file), so errors do not pile up")
    p.add_argument("--scheduler", metavar="ADDRESS|local:N",
                   help="encode on a Dask cluster (pip install 'nnc[dask]'): a scheduler address, or local:N for "
                        "N local worker processes; the workers read MODEL themselves (shared filesystem)")
    p.set_defaults(func=cmd_encode)

    p = add("decode", "Decode an NNC stream into a model file.")
    p.add_argument("stream", help="NNC stream")
    p.add_argument("-o", "--output", required=True, help="output model: .npz, .safetensors, .pt or .onnx")
    p.add_argument("--template", help="for .onnx output: the original model whose initializers are replaced")
    p.add_argument("--tensor", action="append", help="decode only this tensor (repeatable)")
    p.add_argument("--entry-points", choices=("ignore", "use", "verify"), default="ignore",
                   help="how to treat transmitted entry points (default: ignore, decode sequentially)")
    p.add_argument("--threads", type=_non_negative_int, default=0, metavar="N",
                   help="decode N units at a time (default 0: one per CPU; 1: one after another)")
    p.add_argument("--state", metavar="FILE",
                   help="incremental decoding: the receiver's state file (created if missing, updated after "
                        "the output is written); decode a base stream and its updates in order with one file")
    p.add_argument("--add-to", metavar="MODEL",
                   help="the stream is an update of differences: write MODEL plus the decoded update")
    p.add_argument("--scheduler", metavar="ADDRESS|local:N",
                   help="decode on a Dask cluster (pip install 'nnc[dask]'): a scheduler address, or local:N for "
                        "N local worker processes; the workers read STREAM themselves (shared filesystem)")
    p.set_defaults(func=cmd_decode)

    p = add("info", "Describe the units and tensors of an NNC stream.")
    p.add_argument("stream", help="NNC stream")
    p.set_defaults(func=cmd_info)

    p = add("compare", "Compare a model with another or with an NNC stream's decoding: error and SNR per tensor.")
    p.add_argument("reference", help="the original model (or stream)")
    p.add_argument("other", help="the model or NNC stream to compare with it (formats detected from content)")
    p.add_argument("--min-snr", type=float, metavar="DB",
                   help="fail (exit status 1) if the total weight SNR over float tensors is below DB")
    p.add_argument("--threads", type=_non_negative_int, default=0, metavar="N",
                   help="threads for decoding a stream (default 0: one per CPU)")
    p.set_defaults(func=cmd_compare)

    p = add("verify", "Decode every stream of a conformance suite and print a pass/fail table.")
    p.add_argument("suite", help="suite directory (with manifest.json), e.g. conformance/")
    p.add_argument("--decoder", default="nnc", choices=("nnc", "nnc-python", "nnc-random-access",
                                                        "nnc-python-random-access", "nncodec"),
                   help="decoder under test (*-random-access: also each tensor on its own, from its entry "
                        "points; nncodec: NNCodec 2.1.3 through tools/oracle)")
    p.add_argument("--group", action="append", help="only this group (profile-0, profile-1, must-fail)")
    p.add_argument("--stream", action="append", help="only this stream (repeatable)")
    p.set_defaults(func=cmd_verify)

    p = add("bench", "Time encoding and decoding of a model; with --vs, compare with other coders.")
    p.add_argument("model", help="model file")
    p.add_argument("--qp", type=int, default=-38, help="quantisation parameter (default -38)")
    p.add_argument("--dq", action=argparse.BooleanOptionalAction, default=True, help="dependent quantisation")
    p.add_argument("--scan-order", type=int, default=0, choices=range(5))
    p.add_argument("--vs", action="store_true",
                   help="also run lzma, bz2, zstd (if installed) on the same indices, and NNCodec if set up")
    p.add_argument("--threads", type=_non_negative_int, default=0, metavar="N",
                   help="also time encoding and decoding with N threads (default 0: one per CPU)")
    p.set_defaults(func=cmd_bench)

    p = add("demo", "Encode, decode and evaluate the bundled digits models.")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    """Run the ``nnc`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 success, 1 invalid input or failed check (the message, from an
        :class:`nnc.errors.NNCError` or an I/O error, goes to stderr), 2 usage error.

    Examples
    --------
    >>> main(["info", "/no/such/file.nnr"])
    1
    """
    from .errors import NNCError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except NNCError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}")
    except KeyError as exc:
        return _fail(str(exc.args[0]) if exc.args else str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "build_parser", "load_callable", "stream_info"]
