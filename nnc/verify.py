"""Conformance verification: decode every stream of a suite and compare with its expected hashes.

A suite is a directory with ``manifest.json`` (see conformance/README.md).  Each
entry names a stream and either the expected tensors (name, dtype, shape,
SHA-256 of the C-order little-endian bytes) and the hash of the whole output,
or, for must-fail streams, the error class a conforming decoder raises.

Decoders are adapters: a callable ``bytes -> OrderedDict[name, ndarray]`` that
raises on invalid input.  ``nnc`` is built in; ``nncodec`` uses the oracle of
tools/oracle when it is available.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import errors


def tensor_sha256(a: np.ndarray) -> str:
    """SHA-256 of an array's C-order, little-endian bytes."""
    a = np.ascontiguousarray(a)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(a.tobytes()).hexdigest()


def output_sha256(tensors) -> str:
    """SHA-256 of a whole decoded output: per tensor, in order, name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        h.update(name.encode() + b"\0" + a.dtype.str.replace("<", "").replace("|", "").encode() + b"\0")
        h.update(json.dumps(list(a.shape)).encode() + b"\0")
        h.update(bytes.fromhex(tensor_sha256(a)))
    return h.hexdigest()


def describe_output(tensors) -> dict:
    return {
        "tensors": [{"name": k, "dtype": str(np.asarray(v).dtype), "shape": list(np.asarray(v).shape),
                     "sha256": tensor_sha256(np.asarray(v))} for k, v in tensors.items()],
        "output_sha256": output_sha256(tensors),
    }


@dataclass
class Result:
    name: str
    group: str
    passed: bool
    detail: str
    seconds: float


class NNCAdapter:
    """Our decoder; one DecoderState per incremental sequence of the suite."""

    def __init__(self, engine: str | None = None):
        self.engine = engine
        self.states: dict = {}

    def __call__(self, data: bytes, sequence: str | None = None):
        from .decoder import DecoderState, decode

        state = self.states.setdefault(sequence, DecoderState()) if sequence else None
        return decode(data, engine=self.engine, state=state)


class NNCodecAdapter:
    """NNCodec 2.1.3 through the black-box oracle (repository checkouts only)."""

    def __init__(self):
        import sys

        repo = Path(__file__).resolve().parent.parent
        if str(repo) not in sys.path:
            sys.path.insert(0, str(repo))
        try:
            from tools.oracle.client import NNCodecOracle
        except ImportError:
            raise RuntimeError("the NNCodec adapter needs a repository checkout (tools/oracle)") from None
        if not NNCodecOracle.available():
            raise RuntimeError(f"NNCodec oracle not available: {NNCodecOracle.reason}")
        self.oracle = NNCodecOracle()

    def __call__(self, data: bytes, sequence: str | None = None):
        if sequence:
            raise NotImplementedError("the NNCodec adapter keeps no state across incremental streams")
        return self.oracle.decompress(data)

    def close(self):
        self.oracle.close()


DECODERS = {"nnc": NNCAdapter, "nnc-python": lambda: NNCAdapter("python"), "nncodec": NNCodecAdapter}


def _check_expected(entry: dict, out) -> tuple[bool, str]:
    expected = entry["expected"]
    names = [t["name"] for t in expected["tensors"]]
    if list(out) != names:
        return False, f"tensor names/order differ: {list(out)[:4]}... vs {names[:4]}..."
    for t in expected["tensors"]:
        a = np.asarray(out[t["name"]])
        if str(a.dtype) != t["dtype"]:
            return False, f"{t['name']}: dtype {a.dtype}, expected {t['dtype']}"
        if list(a.shape) != t["shape"]:
            return False, f"{t['name']}: shape {list(a.shape)}, expected {t['shape']}"
        if tensor_sha256(a) != t["sha256"]:
            return False, f"{t['name']}: values differ (sha256)"
    if output_sha256(out) != expected["output_sha256"]:
        return False, "whole-output hash differs"
    return True, "ok"


def verify_suite(suite: str | Path, decoder: Callable | str = "nnc", *, groups=None, names=None,
                 profiles=None) -> list[Result]:
    """Decode every stream of a suite with ``decoder``; return one Result per stream."""
    suite = Path(suite)
    manifest = json.loads((suite / "manifest.json").read_text())
    run = DECODERS[decoder]() if isinstance(decoder, str) else decoder
    results = []
    try:
        _run_entries(suite, manifest, run, results, groups, names, profiles)
    finally:
        if isinstance(decoder, str) and hasattr(run, "close"):
            run.close()
    return results


def _run_entries(suite, manifest, run, results, groups, names, profiles):
    for entry in manifest["streams"]:
        if (groups and entry["group"] not in groups) or (names and entry["name"] not in names) \
                or (profiles is not None and entry["profile"] not in profiles):
            continue
        data = (suite / entry["file"]).read_bytes()
        seq = entry.get("sequence", {}).get("id")
        t0 = time.perf_counter()
        try:
            out = run(data, seq)
        except NotImplementedError as exc:
            results.append(Result(entry["name"], entry["group"], True, f"skipped: {exc}", 0.0))
            continue
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a verdict
            dt = time.perf_counter() - t0
            if entry["group"] != "must-fail":
                results.append(Result(entry["name"], entry["group"], False,
                                      f"{type(exc).__name__}: {str(exc)[:120]}", dt))
                continue
            want = getattr(errors, entry["expected_error"])
            # a foreign decoder passes by rejecting; ours must raise the stated class and clause
            if isinstance(exc, errors.NNCError):
                ok = isinstance(exc, want) and exc.clause == entry["clause"]
                detail = (f"rejected with {type(exc).__name__} (spec {exc.clause})" if ok else
                          f"raised {type(exc).__name__} (spec {exc.clause}), expected "
                          f"{entry['expected_error']} (spec {entry['clause']})")
            else:
                ok, detail = True, f"rejected with {type(exc).__name__}"
            results.append(Result(entry["name"], entry["group"], ok, detail, dt))
            continue
        dt = time.perf_counter() - t0
        if entry["group"] == "must-fail":
            results.append(Result(entry["name"], entry["group"], False, "decoded a stream that must fail", dt))
        else:
            ok, detail = _check_expected(entry, out)
            results.append(Result(entry["name"], entry["group"], ok, detail, dt))


def format_table(results: list[Result]) -> str:
    width = max([len(r.name) for r in results] + [6])
    lines = [f"{'stream':<{width}}  {'group':<9}  {'result':<6}  {'ms':>8}  detail",
             "-" * (width + 45)]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.group:<9}  {'PASS' if r.passed else 'FAIL':<6}  "
                     f"{1000 * r.seconds:>8.1f}  {r.detail}")
    passed = sum(r.passed for r in results)
    lines.append("-" * (width + 45))
    lines.append(f"{passed} passed, {len(results) - passed} failed")
    return "\n".join(lines)
