"""Coverage-guided fuzzing of the decoder with atheris (libFuzzer for Python).

    python benchmarks/fuzz_decoder.py --runs N [--seconds S] [--rss-limit-mb M]
                                       [--out DIR] [--replay FILE_OR_DIR ...]

Not a test and not a CI step: a campaign (results in benchmarks/results/fuzz.md).

What is fuzzed.  Every input is a candidate stream; a checksum of its bytes picks
one of the decoder's entry points, so all of them are exercised by one campaign:
``nnc.decode``; ``Decoder(...).tensors()`` followed by ``decode_tensor`` of each
name (random access); ``entry_points="use"`` and ``"verify"``; the incremental
path, a ``DecoderState`` pre-loaded from the conformance base streams; and the
pure-Python engine (with tighter limits, it is slower).  The corpus is seeded
from every stream of conformance/ (valid and must-fail).

Mutation.  Half of the mutations are libFuzzer's byte mutations.  The other half
are structure-aware: the input is parsed into units with
:func:`nnc.container.iter_units` (the ``construct`` declarations), then one unit
has a header field rewritten (an interesting or random value, a list grown or
shrunk, a name changed), its payload mutated with the size field kept right, or
units are dropped, duplicated or swapped; the stream is rebuilt with
:func:`nnc.container.build_unit`.  A byte mutator rarely gets past the headers.

Instrumentation.  nnc's Python modules are instrumented (``atheris.instrument_imports``).
The Cython engine is not: atheris needs clang's ``-fsanitize=fuzzer-no-link`` for
native code and the machine this was written on has only gcc.  The engine is still
exercised (crashes and hangs in it are caught) but its branches do not guide the
search; ``--replay`` runs a corpus again, e.g. against an engine built with gcc's
AddressSanitizer (see benchmarks/results/fuzz.md), or under coverage.py for line figures:

    python -m coverage run --branch --include='nnc/*' benchmarks/fuzz_decoder.py --replay OUT/corpus

Failure criteria (each is a *finding*, saved under OUT/findings/ and counted):
any exception that is not an ``nnc.NNCError``; a crash (libFuzzer stops and
writes ``crash-*``); a hang, more than 1 s of CPU time for a stream under 64 KiB
(checked twice, to ignore a noisy machine, then re-timed in a fresh process without
atheris' instrumentation, which slows the Python engine 20-30 fold: only the decoder's
own time counts; inputs slow only under the tracer are listed in stats.json as
``slow_under_instrumentation``; libFuzzer's own ``-timeout`` catches
endless loops in native code); an allocation beyond the ``Limits`` in force
(``MemoryError`` under an address-space limit, ``resource.RLIMIT_AS``).
Findings do not stop the run, so one run counts all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # fewer threads, less address space
os.environ.setdefault("OMP_NUM_THREADS", "1")

import atheris  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFORMANCE = REPO / "conformance"

#: Set in the subprocess that re-times a hang candidate without atheris' instrumentation.
UNINSTRUMENTED = os.environ.get("NNC_FUZZ_UNINSTRUMENTED") == "1"

with contextlib.nullcontext() if UNINSTRUMENTED else atheris.instrument_imports(include=["nnc"]):
    import nnc  # noqa: E402
    from nnc import container as C  # noqa: E402
    from nnc import decoder as D  # noqa: E402
    from nnc.errors import NNCError  # noqa: E402
    import nnc.engine.python  # noqa: E402,F401  (the pure-Python engine: instrument it here)

#: Limits of the fuzzed decoders: small enough that a stream under 64 KiB decodes in well under 1 s.
LIMITS = nnc.Limits(max_tensor_elements=1 << 20, max_total_bytes=32 << 20)
#: The pure-Python engine, instrumented, decodes about 4,500 weights per CPU second (a valid
#: 4,590-weight stream took 1.05 s in run 3, 0.06 s uninstrumented): 2,048 weights in all keep a
#: valid stream near 0.5 s, so the 1-s hang check is left to real hangs.
PY_LIMITS = nnc.Limits(max_tensor_elements=1 << 11, max_total_bytes=1 << 13)
HANG_SECONDS = 1.0
HANG_MAX_BYTES = 64 * 1024

MODES = ("decode", "decode", "random_access", "entry_points_use", "entry_points_verify",
         "incremental", "incremental", "python_engine")


def seed_streams() -> list[Path]:
    """Every stream of conformance/ (valid and must-fail), smallest first."""
    return sorted(CONFORMANCE.glob("*/*/stream.nnr"), key=lambda p: p.stat().st_size)


def _base_states() -> list[D.DecoderState]:
    """Decoder states after each incremental base stream of conformance/ (spec 14)."""
    states = []
    for path in sorted(CONFORMANCE.glob("streams/*incremental*_0_base/stream.nnr")):
        state = D.DecoderState()
        nnc.decode(path.read_bytes(), state=state)
        states.append(state)
    return states


BASE_STATES = _base_states()


def _copy_state(state: D.DecoderState) -> D.DecoderState:
    out = D.DecoderState()
    out.levels = {k: v.copy() for k, v in state.levels.items()}
    out.history = {k: v.copy() for k, v in state.history.items()}
    return out


def mode_of(data: bytes) -> str:
    """The entry point an input exercises: a checksum of its bytes picks it (reproducible)."""
    return MODES[zlib.crc32(data) % len(MODES)]


def run_one(data: bytes, mode: str) -> None:
    """Decode ``data`` through ``mode``; an ``NNCError`` is the expected way to refuse it."""
    if mode == "decode":
        nnc.decode(data, limits=LIMITS)
    elif mode == "random_access":
        dec = nnc.Decoder(data, limits=LIMITS)
        for info in reversed(dec.tensors()):
            dec.decode_tensor(info.name)
    elif mode == "entry_points_use":
        nnc.decode(data, limits=LIMITS, entry_points="use")
    elif mode == "entry_points_verify":
        nnc.decode(data, limits=LIMITS, entry_points="verify")
    elif mode == "incremental":
        state = _copy_state(BASE_STATES[zlib.adler32(data) % len(BASE_STATES)]) if BASE_STATES else D.DecoderState()
        nnc.decode(data, limits=LIMITS, state=state)
        nnc.decode(data, limits=LIMITS, state=state)  # the same update again, on top of itself
    elif mode == "python_engine":
        nnc.decode(data, limits=PY_LIMITS, engine="python")
    else:
        raise ValueError(mode)


class Finding(Exception):
    """A hang or another failure that is not an exception of its own."""


class Campaign:
    """Counts executions and records findings (deduplicated by signature) under ``out``."""

    def __init__(self, out: Path):
        self.out = out
        self.findings_dir = out / "findings"
        self.findings_dir.mkdir(parents=True, exist_ok=True)
        self.executions = 0
        self.modes = {m: 0 for m in MODES}
        self.findings: dict[str, dict] = {}
        self.slow_under_instrumentation: list[dict] = []  # over the hang limit only with the tracer
        self.started = time.time()
        self.stats_path = out / "stats.json"
        self._last_write = 0.0

    def signature(self, exc: BaseException) -> str:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/nnc/" in f.filename]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        return f"{type(exc).__name__}@{where}"

    def record(self, data: bytes, mode: str, exc: BaseException) -> None:
        sig = self.signature(exc)
        entry = self.findings.setdefault(sig, {"count": 0, "mode": mode, "message": str(exc)[:300]})
        entry["count"] += 1
        if entry["count"] == 1:
            name = hashlib.sha1(data).hexdigest()[:16]
            (self.findings_dir / f"{name}.nnr").write_bytes(data)
            entry["input"] = f"{name}.nnr"
            entry["traceback"] = "".join(traceback.format_exception(exc))[-2000:]
            print(f"\n*** finding {sig} in mode {mode}: {str(exc)[:200]} -> {name}.nnr", file=sys.stderr, flush=True)
            self.write_stats(force=True)

    def write_stats(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_write < 10 and self.executions % 10_000:
            return
        self._last_write = now
        stats = {"executions": self.executions, "seconds": round(now - self.started, 1),
                 "modes": self.modes, "findings": self.findings,
                 "slow_under_instrumentation": self.slow_under_instrumentation}
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats, indent=1))
        os.replace(tmp, self.stats_path)

    def test_one_input(self, data: bytes) -> None:
        mode = mode_of(data)
        self.executions += 1
        self.modes[mode] += 1
        try:
            self.check(data, mode)
        except Exception as exc:  # every finding is recorded; the run goes on
            self.record(data, mode, exc)
        self.write_stats()

    def check(self, data: bytes, mode: str) -> None:
        """Raise if ``data`` makes the decoder fail in any way but an NNCError."""
        for _attempt in range(2):
            elapsed = cpu_seconds(data, mode)
            if elapsed <= HANG_SECONDS or len(data) >= HANG_MAX_BYTES or sys.gettrace() is not None:
                # (under a tracer, e.g. coverage.py replaying a corpus, times say nothing)
                return
        # Over the limit twice: the decoder's own time, without atheris' instrumentation, decides.
        plain = uninstrumented_cpu_seconds(data, mode)
        if plain <= HANG_SECONDS:
            self.slow_under_instrumentation.append(
                {"mode": mode, "bytes": len(data), "instrumented_s": round(elapsed, 2), "uninstrumented_s": plain}
            )
            self.write_stats(force=True)
            return
        raise Finding(f"hang: {plain:.2f} s of CPU time ({elapsed:.2f} s instrumented) for {len(data)} bytes")


def cpu_seconds(data: bytes, mode: str) -> float:
    """CPU time of one decoding of ``data`` through ``mode`` (an NNCError is a normal outcome)."""
    t0 = time.process_time()
    try:
        run_one(data, mode)
    except NNCError:
        pass
    return time.process_time() - t0


def uninstrumented_cpu_seconds(data: bytes, mode: str) -> float:
    """The fastest of two decodings of ``data`` in a fresh process without instrumentation."""
    with tempfile.NamedTemporaryFile(suffix=".nnr") as f:
        f.write(data)
        f.flush()
        result = subprocess.run(
            [sys.executable, __file__, "--time-uninstrumented", mode, f.name],
            env={**os.environ, "NNC_FUZZ_UNINSTRUMENTED": "1"}, capture_output=True, text=True, timeout=120,
        )
    if result.returncode != 0:
        raise Finding(f"the uninstrumented re-timing failed: {result.stderr.strip()[-300:]}")
    return float(result.stdout.split()[-1])


# -- structure-aware mutation ---------------------------------------------------------------

INTERESTING = (0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 1023, 4096, 32767, 32768,
               65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, -1, -2, -128, -32768, -(2**31))


_UNIT_CACHE: dict[bytes, list] = {}


def _units(data: bytes) -> list[tuple[C.Unit, dict]]:
    """As many units as parse, each with the build context in force (profile, MPS flags).

    Cached by content: libFuzzer mutates the same corpus entries again and again.
    """
    data = bytes(data)
    cached = _UNIT_CACHE.get(data)
    if cached is not None:
        return cached
    if len(_UNIT_CACHE) > 4096:
        _UNIT_CACHE.clear()
    units = _UNIT_CACHE[data] = []
    ctx = dict(profile=0, parent_signalling=False, indexed=False)
    try:
        for unit in C.iter_units(data):
            units.append((unit, dict(ctx)))  # the unit's views point into the cached key, which stays alive
            if unit.type == C.NNR_STR:
                ctx["profile"] = unit.header.general_profile_idc
            elif unit.type == C.NNR_MPS:
                ctx["parent_signalling"] = bool(unit.header.get("mps_parent_signalling_enabled_flag"))
                ctx["indexed"] = bool(unit.header.get("mps_topology_indexed_reference_flag"))
    except NNCError:
        pass
    return units


def _mutate_value(value, rng: random.Random):
    if isinstance(value, bool) or value in (0, 1) and isinstance(value, int) and rng.random() < 0.5:
        return 1 - int(value)
    if isinstance(value, int):
        choice = rng.random()
        if choice < 0.4:
            return rng.choice(INTERESTING)
        if choice < 0.7:
            return value + rng.choice((-2, -1, 1, 2))
        if choice < 0.85:
            return value ^ (1 << rng.randrange(32))
        return rng.randrange(-(2**31), 2**32)
    if isinstance(value, float):
        return rng.choice((0.0, -0.0, 1.0, -1.0, 1e38, -1e-38, float("inf"), float("nan"), value * 2))
    if isinstance(value, str):
        choice = rng.random()
        if choice < 0.3:
            return ""
        if choice < 0.6 and value:
            i = rng.randrange(len(value))
            return value[:i] + value[i + 1:]
        if choice < 0.8:
            return value + rng.choice(("x", "\u00e9", "\x00", "{", "}", '"'))
        return rng.choice(('{"nnc": 1}', '{"nnc": {"version": 1, "shapes": {"w": [1e9]}}}', "[]", "null"))
    if isinstance(value, list):
        value = list(value)
        choice = rng.random()
        if choice < 0.3 and value:
            del value[rng.randrange(len(value))]
        elif choice < 0.6 and value:
            value.append(value[rng.randrange(len(value))])
        elif value:
            i = rng.randrange(len(value))
            value[i] = _mutate_value(value[i], rng)
        else:
            value.append(rng.choice(INTERESTING))
        return value
    if value is None:
        return rng.choice((0, 1, 2, [1], "w"))
    return value


def _build(unit: C.Unit, header: dict, payload: bytes, ctx: dict) -> bytes:
    return C.build_unit(unit.type, header, payload, profile=ctx["profile"],
                        parent_signalling=ctx["parent_signalling"], indexed=ctx["indexed"])


def structure_mutate(data: bytes, max_size: int, rng: random.Random) -> bytes | None:
    """Rewrite one unit's header field or payload, or reorder units; None if ``data`` has no units."""
    units = _units(data)
    if not units:
        return None
    parsed_end = units[-1][0].end
    pieces = [bytes(data[u.offset:u.end]) for u, _ in units]
    tail = bytes(data[parsed_end:])
    k = rng.randrange(len(units))
    unit, ctx = units[k]
    op = rng.random()
    try:
        if op < 0.55:  # rewrite a header field
            header = {key: (list(v) if isinstance(v, (list, tuple)) else v) for key, v in unit.header.items()
                      if key not in ("nnr_unit_type", "partial_data_counter_present_flag")}
            if unit.type == C.NNR_NDU and header.get("entry_points"):
                header["entry_points"] = [dict(e) for e in header["entry_points"]]
            keys = sorted(header)
            if not keys:
                return None
            key = rng.choice(keys)
            if key == "entry_points" and header[key] and rng.random() < 0.5:
                e = rng.choice(header[key])
                field = rng.choice(sorted(e))
                e[field] = _mutate_value(e[field], rng)
            else:
                header[key] = _mutate_value(header[key], rng)
            pieces[k] = _build(unit, header, bytes(unit.payload), ctx)
        elif op < 0.8:  # mutate the payload only, keep the header and fix the size
            payload = bytes(unit.payload)
            room = max(1, max_size - len(data) + len(payload))
            new = atheris.Mutate(payload, min(room, 4 * len(payload) + 64)) if payload else bytes([rng.randrange(256)])
            header = dict(unit.header)
            header.pop("nnr_unit_type", None)
            header.pop("partial_data_counter_present_flag", None)
            pieces[k] = _build(unit, header, new, ctx)
        elif op < 0.88 and len(pieces) > 1:
            del pieces[k]
        elif op < 0.94:
            pieces.insert(rng.randrange(len(pieces) + 1), pieces[k])
        else:
            j = rng.randrange(len(pieces))
            pieces[k], pieces[j] = pieces[j], pieces[k]
    except Exception:  # the new value cannot be built (the builder is not under test): fall back to bytes
        return None
    out = b"".join(pieces) + (tail if rng.random() < 0.5 else b"")
    return out[:max_size]


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.5:
        out = structure_mutate(data, max_size, rng)
        if out is not None:
            return out
    return atheris.Mutate(data, max_size)


# -- driver ---------------------------------------------------------------------------------


def limit_address_space(extra_mb: int) -> int:
    """Cap the address space at what the process maps now plus ``extra_mb``; returns the cap in MiB."""
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) // 1024
    cap = vm + extra_mb
    resource.setrlimit(resource.RLIMIT_AS, (cap << 20, cap << 20))
    return cap


def replay(paths: list[str]) -> int:
    """Run files (or directories of files) through every mode; print findings; return their count."""
    files = []
    for p in map(Path, paths):
        files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    campaign = Campaign(Path(os.environ.get("TMPDIR", "/tmp")) / "nnc-fuzz-replay")
    bad = 0
    for f in files:
        data = f.read_bytes()
        for mode in dict.fromkeys(MODES):
            try:
                campaign.check(data, mode)
            except Exception as exc:
                bad += 1
                print(f"{f}: {mode}: {campaign.signature(exc)}: {str(exc)[:200]}")
    print(f"replayed {len(files)} inputs x {len(set(MODES))} modes: {bad} findings")
    return bad


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000, help="executions (libFuzzer -runs)")
    ap.add_argument("--seconds", type=int, default=0, help="stop after this many seconds (0: no limit)")
    ap.add_argument("--rss-limit-mb", type=int, default=1024,
                    help="address space allowed on top of the start-up mapping (RLIMIT_AS), and libFuzzer's RSS limit")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "fuzz-out"),
                    help="working directory: corpus/, findings/, stats.json")
    ap.add_argument("--replay", nargs="*", help="run these inputs through every mode instead of fuzzing")
    ap.add_argument("--seed", type=int, default=0, help="libFuzzer's random seed (0: from the clock)")
    ap.add_argument("--time-uninstrumented", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    args, extra = ap.parse_known_args(argv)
    if args.time_uninstrumented:
        mode, path = args.time_uninstrumented
        data = Path(path).read_bytes()
        print(min(cpu_seconds(data, mode) for _ in range(2)))
        return
    if args.replay is not None:
        sys.exit(1 if replay(args.replay) else 0)
    out = Path(args.out)
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for p in seed_streams():
        target = corpus / f"seed-{p.parent.name}"
        if not target.exists():
            target.write_bytes(p.read_bytes())
    campaign = Campaign(out)
    cap = limit_address_space(args.rss_limit_mb)
    print(f"address space capped at {cap} MiB; limits {LIMITS}; python engine {PY_LIMITS}", file=sys.stderr)
    libfuzzer_args = [sys.argv[0], str(corpus), f"-runs={args.runs}", f"-max_len={HANG_MAX_BYTES}",
                      f"-rss_limit_mb={args.rss_limit_mb * 2}", "-timeout=20", "-print_final_stats=1",
                      f"-artifact_prefix={out}/", f"-seed={args.seed}", "-reload=0"]
    if args.seconds:
        libfuzzer_args.append(f"-max_total_time={args.seconds}")
    atheris.Setup(libfuzzer_args + extra, campaign.test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
