"""Line and branch coverage of the decoder and the engines' decoding code over the conformance suite.

    python tools/conformance_coverage.py [SUITE_DIR] [--jobs N] [--missing] [--html DIR] [--streams PATTERN]
    python tools/conformance_coverage.py --cython-gcov [--missing]   # the Cython engine, through gcov
    python tools/conformance_coverage.py --cython [--missing]        # the same, traced (slow)

The default measures the pure-Python engine with coverage.py (lines and branches):
nnc/decoder.py, nnc/container.py (parsing), nnc/reconstruction.py, nnc/_parallel.py and the
decoding half of the Python engine (nnc/engine/python/). ``--cython-gcov`` compiles
nnc/_engine.pyx with gcc --coverage in a temporary directory, decodes the suite with that
build at native speed and maps gcov's counts of the C lines back to the .pyx lines (lines of
the decoding functions; the installed engine is not touched). Argument checks of the APIs that
only a caller can fail are marked ``# api-check`` in the source and left out of both, with the
count of lines reported (conformance/README.md, Coverage).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DECODER_FILES = ["nnc/decoder.py", "nnc/container.py", "nnc/reconstruction.py", "nnc/_parallel.py",
                 "nnc/engine/python/arithmetic.py",
                 "nnc/engine/python/binarisation.py", "nnc/engine/python/scan.py", "nnc/engine/python/payload.py"]

# Encoder-side code in those files (building units, encoding payloads, estimating rates) is not
# part of the decoding path: a block whose first line matches is left out of the measurement.
ENCODER_SIDE = [
    r"class ArithmeticEncoder\b", r"class PayloadEncoder\b", r"def _coded_values\(", r"def _tensor_bins\(",
    r"def _skipped_rows\(", r"def _estimate_costs\(", r"def scan_permutation\(", r"def _choose_init_sets\(", r"def _cost_table\(",
    r"def bin_cost\(", r"def estimate_tensor_bits\(", r"def compute_entry_points\(", r"def binarise\(",
    r"def dq_coded_value\(", r"def zero_run_table\(", r"def rdoq_levels\(",
    r"def _build\(", r"def _encode\(", r"def build_", r"def _build_struct\(", r"def _complete\(",
    r"def _unflatten_ndu\(", r"def _size_prefix\(", r"def best_codebook_egk\(", r"def codebook_zero_offset\(",
    r"def parse_stream\(", r"_NDU_DEFAULTS = ",
]


# Application-side code in nnc/decoder.py that decodes nothing (state files, adding an update to a model,
# restoring a model file's shapes and dtypes, the model's order of names for files, dropping pages of a
# caller's memory map): unit tests cover it; no stream can.
APPLICATION_SIDE = [
    r"def save\(", r"def load\(", r"def _meta\(", r"def _set_meta\(", r"def _extra_arrays\(",
    r"def apply_update\(", r"def restore_model_view\(", r"def model_order\(", r"def release_pages\(",
]

# Slices of a reconstruction in threads (nnc/reconstruction.py) start at this many elements while measuring,
# not at RECONSTRUCT_CHUNK (2^20): the suite's tensors take that path too, as the verifier's block-row
# threads start at one element (row_thread_min_elements = 1). The values are the same either way.
RECONSTRUCT_CHUNK_MEASURED = 16


# Argument checks of the decoder's and the engines' APIs that only a caller can fail, never a stream: the
# decoder's header checks come first, or the syntax's bit widths bound the value (conformance/README.md lists
# them). A check is marked where it stands, ``if ...:  # api-check``, and the statement with its block is left
# out; the report says how many lines. tests/test_api_checks.py fails each of them in both engines.
API_CHECK = r"#\s*api-check\b"

# Members of the engines' interface that decoding never calls (tests and tools use them).
ENGINE_API_ONLY = [r"def bytes_consumed\(", r"def bit_position\("]


# The decoding functions of the Cython engine (nnc/_engine.pyx): every other top-level definition there
# (the arithmetic encoder, bin sinks, payload encoding, rate estimation, RDOQ, the trellis, and the interface
# functions context_count and block_row_count, which the decoder does not call) is left out.
CYTHON_DECODING = {
    "ctx_init", "contexts_init", "ctx_reset", "ctx_update", "prob_class", "_check_edition", "make_layout",
    "make_shape", "first_range_forced", "has_row_flags", "walk_rows", "walk_next", "enters_block_row",
    "skips_segment", "skip_row_states", "tca_base_at", "hdsp_at", "dq_n_from_k", "dq_step",
    "neighbour_class", "sig_context", "sign_context", "gtx_context", "init_signalled_contexts",
    "next_byte", "decode_bin", "decode_bypass", "decode_bypass_bits", "decode_terminate", "decoder_position",
    "decoder_seek", "decode_value", "contexts_reset", "decode_tensor_data", "_check_tensor_args", "_as_array",
    "PayloadDecoder",
}

_TOP_LEVEL = re.compile(r"^(?:cdef\s+class\s+(\w+)|class\s+(\w+)|(?:cp?def|def)\b[^=(]*?(\w+)\s*\()")


def cython_decoding_lines(path: Path) -> dict:
    """{line number: name of its top-level definition} for the decoding definitions of a .pyx file."""
    lines, current, out = path.read_text().splitlines(), None, {}
    for number, text in enumerate(lines, 1):
        if text and not text[0].isspace() and not text.startswith("#"):
            m = _TOP_LEVEL.match(text)
            current = next((g for g in m.groups() if g), None) if m else None
        if current in CYTHON_DECODING:
            out[number] = current
    return out


def marked_blocks(lines: list, patterns: list) -> dict:
    """{line number: pattern} of the statements whose first line matches one of ``patterns``, with the
    block such a statement opens and the decorators above a ``def`` (as coverage.py excludes them)."""
    out = {}
    for i, text in enumerate(lines):
        hit = next((p for p in patterns if re.search(p, text)), None)
        if hit is None:
            continue
        j = i
        while j > 0 and lines[j - 1].strip().startswith("@"):
            j -= 1
            out[j + 1] = hit
        indent = len(text) - len(text.lstrip())
        depth, k = 0, i
        while True:  # the statement's lines: until its brackets close
            code = lines[k].split("#")[0]
            depth += sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")
            out[k + 1] = hit
            if depth <= 0 or k + 1 == len(lines):
                break
            k += 1
        if lines[k].split("#")[0].rstrip().endswith(":"):
            k += 1
            while k < len(lines) and (not lines[k].strip() or len(lines[k]) - len(lines[k].lstrip()) > indent):
                if lines[k].strip():
                    out[k + 1] = hit
                k += 1
    return out


def excluded_report(files) -> None:
    """How many statement lines of ``files`` the API exclusions leave out (the marked lines and their blocks)."""
    counts = {}
    for f in files:
        lines = (REPO / f).read_text().splitlines()
        for line, pattern in marked_blocks(lines, [API_CHECK] + ENGINE_API_ONLY).items():
            text = lines[line - 1].strip()
            if text and not text.startswith(("#", '"', "'")):
                kind = ("argument checks that no stream can fail (# api-check)" if pattern == API_CHECK
                        else "engine interface members that decoding never calls")
                counts.setdefault(kind, {}).setdefault(f, [0, 0])[0] += 1
        checks = sum(bool(re.search(API_CHECK, t)) for t in lines)
        if checks:
            counts.setdefault("argument checks that no stream can fail (# api-check)", {}).setdefault(f, [0, 0])[1] = checks
    for kind, per_file in counts.items():
        detail = ", ".join(f"{f} {n}" + (f" ({c} checks)" if c else "") for f, (n, c) in per_file.items() if n)
        print(f"left out, {kind}: lines {detail}")


def cython_excluded(pyx: Path) -> set:
    """Lines of the .pyx file left out: API checks, interface members and the usual pragma."""
    return set(marked_blocks(pyx.read_text().splitlines(), [API_CHECK, r"pragma: no cover"] + ENGINE_API_ONLY))


def cython_report(cov, missing: bool) -> float:
    """Line coverage of the decoding functions of nnc/_engine.pyx (Cython.Coverage gives lines, not branches)."""
    pyx = REPO / "nnc" / "_engine.pyx"
    decoding = cython_decoding_lines(pyx)
    excluded = cython_excluded(pyx)
    _, statements, _, not_run, _ = cov.analysis2(str(pyx))
    statements = [n for n in statements if n in decoding and n not in excluded]
    not_run = [n for n in not_run if n in decoding and n not in excluded]
    if not statements:
        raise SystemExit("no line of nnc/_engine.pyx was traced: build the engine with NNC_CYTHON_COVERAGE=1 "
                         "(python setup.py build_ext --inplace) first")
    return cython_lines_report(statements, not_run, decoding, missing)


def cython_lines_report(measured, not_run, decoding: dict, missing: bool) -> float:
    """Print the line coverage of the Cython engine's decoding functions (and, with ``missing``,
    the lines not run); return it in percent."""
    share = 100.0 * (len(measured) - len(not_run)) / len(measured)
    print(f"nnc/_engine.pyx (decoding functions): {len(measured)} lines, {len(not_run)} missed, {share:.1f} %")
    excluded_report(["nnc/_engine.pyx"])
    if missing:
        for n in not_run:
            print(f"  {n}: {decoding[n]}")
    return share


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", nargs="?", default=str(REPO / "conformance"))
    ap.add_argument("--html", help="also write an HTML report to this directory")
    ap.add_argument("--missing", action="store_true", help="list the lines not covered")
    ap.add_argument("--cython", action="store_true",
                    help="decode with the Cython engine instead and also report its decoding lines (needs an engine "
                    "built with NNC_CYTHON_COVERAGE=1)")
    ap.add_argument("--cython-gcov", action="store_true",
                    help="decode with the Cython engine compiled with gcc --coverage (built here, in a temporary "
                    "directory) and report the line coverage of its decoding functions from gcov's counts")
    ap.add_argument("--streams", metavar="PATTERN",
                    help="only the streams whose name matches this shell pattern, e.g. 'mf_*' (to iterate quickly: "
                    "the figures of the README are for the whole suite)")
    ap.add_argument("--jobs", type=int, default=1, help="measure in this many processes (streams split among them)")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # "I/N": one process of --jobs N
    ap.add_argument("--data-file", help=argparse.SUPPRESS)
    ap.add_argument("--engine-so", help=argparse.SUPPRESS)  # --cython-gcov: decode with this build of nnc._engine
    args = ap.parse_args(argv)
    try:
        import coverage  # noqa: F401
    except ImportError:
        print("conformance_coverage.py needs coverage.py: pip install -e '.[dev]' (or pip install coverage)",
              file=sys.stderr)
        return 2
    if args.engine_so:
        return run_with_engine(args.suite, args.engine_so, args.part, args.streams)
    if args.cython_gcov:
        return main_cython_gcov(args)
    if args.cython:
        return main_cython(args)
    if args.jobs > 1:
        return main_jobs(args)
    cov = _python_coverage(args.data_file)
    cov.start()
    results = _decode_suite(args.suite, args.part, args.streams)
    cov.stop()
    if args.part:
        cov.save()
        print(json.dumps([[r.name, r.group, r.passed, r.detail, r.seconds] for r in results]))
        return 0
    return _report(cov, results, args)


def _python_coverage(data_file=None):
    import coverage

    cov = coverage.Coverage(branch=True, include=[str(REPO / f) for f in DECODER_FILES], data_file=data_file)
    cov.exclude("pragma: no cover")
    for pattern in ENCODER_SIDE + APPLICATION_SIDE + [API_CHECK] + ENGINE_API_ONLY:
        cov.exclude(pattern)
    return cov


def _decode_suite(suite, part=None, streams=None, decoders=("nnc-python-random-access", "nnc-python-api")):
    """Each tensor on its own from its entry points; then the whole stream through every API path
    (decode_with_info; threads with block rows in threads, into caller arrays; iter_tensors; entry points used).
    ``part`` "I/N": only the I-th of N shares of the streams (a sequence's streams stay together);
    ``streams``: only the streams whose name matches this shell pattern (and their sequences' others)."""
    from fnmatch import fnmatchcase

    from nnc import reconstruction
    from nnc.verify import verify_suite

    reconstruction.RECONSTRUCT_CHUNK = RECONSTRUCT_CHUNK_MEASURED
    entries = json.loads((Path(suite) / "manifest.json").read_text())["streams"]

    def key(e):
        return (e.get("sequence") or {}).get("id") or e["name"]

    keys = list(dict.fromkeys(key(e) for e in entries if streams is None or fnmatchcase(e["name"], streams)))
    if part:
        i, n = (int(x) for x in part.split("/"))
        keys = keys[i::n]
    mine = set(keys)
    names = [e["name"] for e in entries if key(e) in mine]
    return [r for decoder in decoders for r in verify_suite(suite, decoder, names=names)]


def main_jobs(args) -> int:
    """Run --jobs processes over shares of the suite and combine their coverage data."""
    import subprocess
    import tempfile

    from nnc.verify import Result

    with tempfile.TemporaryDirectory(prefix="nnc-coverage-") as tmp:
        procs = [subprocess.Popen([sys.executable, __file__, args.suite, "--part", f"{i}/{args.jobs}",
                                   "--data-file", str(Path(tmp) / f"part{i}")]
                                  + (["--streams", args.streams] if args.streams else []), stdout=subprocess.PIPE, text=True)
                 for i in range(args.jobs)]
        results = []
        for p in procs:
            out, _ = p.communicate()
            if p.returncode:
                raise SystemExit(f"a measuring process failed (status {p.returncode})")
            results += [Result(*r) for r in json.loads(out.strip().splitlines()[-1])]
        cov = _python_coverage(str(Path(tmp) / "combined"))
        cov.combine([str(Path(tmp) / f"part{i}") for i in range(args.jobs)])
        return _report(cov, results, args)


def _report(cov, results, args) -> int:
    from nnc.verify import format_table

    failed = [r for r in results if not r.passed]
    if failed:
        print(format_table(failed))
    print(f"suite: {len(results) - len(failed)}/{len(results)} stream decodings passed with the Python engine "
          "(tensor by tensor, and whole through every API path)\n")
    total = cov.report(show_missing=args.missing, skip_covered=False)
    excluded_report(DECODER_FILES)
    if args.html:
        cov.html_report(directory=args.html)
    print(f"\ntotal decoder coverage (lines and branches): {total:.1f} %")
    return 1 if failed else 0


def main_cython(args) -> int:
    """The suite through the Cython engine: the decoding lines of nnc/_engine.pyx, traced by Cython.Coverage."""
    import coverage

    files = [str(REPO / f) for f in DECODER_FILES if "engine/python" not in f] + [str(REPO / "nnc" / "_engine.pyx")]
    cov = coverage.Coverage(include=files)
    cov.set_option("run:plugins", ["Cython.Coverage"])
    cov.start()
    from nnc.verify import format_table, verify_suite

    results = verify_suite(args.suite, "nnc-random-access") + verify_suite(args.suite, "nnc-api")
    cov.stop()
    failed = [r for r in results if not r.passed]
    if failed:
        print(format_table(failed))
    print(f"suite: {len(results) - len(failed)}/{len(results)} stream decodings passed with the Cython engine\n")
    share = cython_report(cov, args.missing)
    print(f"\nCython engine decoding coverage (lines): {share:.1f} %")
    return 1 if failed else 0


# --cython-gcov: the Cython engine compiled with gcc --coverage, run at native speed; gcov's C line counts
# are mapped back to .pyx lines through the '/* "nnc/_engine.pyx":N' comments and __Pyx_TraceLine(N, ...)
# probes Cython writes into the C file when it is generated with linetrace (the probes compile to nothing
# without CYTHON_TRACE). A .pyx line is measured when its C carries a probe, as Cython.Coverage counts it,
# and run when the first counted C line after one of its probes ran.

_BUILD_GCOV = """
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension
from setuptools.dist import Distribution

out = sys.argv[1]
ext = Extension("nnc._engine", ["nnc/_engine.pyx"], include_dirs=[numpy.get_include()],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O0", "--coverage"], extra_link_args=["--coverage"])
directives = {"language_level": 3, "embedsignature": True, "linetrace": True}
exts = cythonize([ext], build_dir=out + "/c", compiler_directives=directives, quiet=True)
dist = Distribution({"ext_modules": exts, "script_name": "build",
                     "script_args": ["build_ext", "--build-lib", out + "/lib", "--build-temp", out + "/obj"]})
dist.parse_command_line()
dist.run_commands()
"""

_PYX_COMMENT = re.compile(r'^\s*/\* "(.+)":(\d+)$')
_TRACE_LINE = re.compile(r"^\s*__Pyx_TraceLine\((\d+),")


def build_gcov_engine(build: Path) -> tuple[Path, Path, Path]:
    """Compile nnc/_engine.pyx for gcov into ``build``: (the module, its C file, the directory of its object)."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", _BUILD_GCOV, str(build)], cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"building the engine with --coverage failed:\n{r.stdout}{r.stderr}")
    module = next((build / "lib" / "nnc").glob("_engine*.so"))
    c_file = build / "c" / "nnc" / "_engine.c"
    gcno = next((build / "obj").rglob("_engine.gcno"))
    return module, c_file, gcno.parent


def run_with_engine(suite, module_path, part=None, streams=None) -> int:
    """Decode the suite with the Cython engine loaded from ``module_path`` (a --cython-gcov build)."""
    import importlib.abc
    import importlib.util

    class EngineFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            return importlib.util.spec_from_file_location(name, module_path) if name == "nnc._engine" else None

    sys.meta_path.insert(0, EngineFinder())
    import nnc._engine

    if Path(nnc._engine.__file__).resolve() != Path(module_path).resolve():
        raise SystemExit(f"nnc._engine was loaded from {nnc._engine.__file__}, not {module_path}")
    results = _decode_suite(suite, part, streams, ("nnc-random-access", "nnc-api"))
    print(json.dumps([[r.name, r.group, r.passed, r.detail, r.seconds] for r in results]))
    return 0


def gcov_counts(gcov_text: str) -> dict:
    """{C line number: execution count, None for a line without code} from gcov's text output."""
    counts = {}
    for row in gcov_text.splitlines():
        count, _, rest = row.partition(":")
        number, _, _ = rest.partition(":")
        count, number = count.strip(), number.strip()
        if not number.isdigit() or number == "0":
            continue
        if count == "-":
            counts[int(number)] = None
        elif count in ("#####", "====="):
            counts[int(number)] = 0
        else:
            counts[int(number)] = int(count.rstrip("*"))
    return counts


def pyx_line_runs(c_lines: list, counts: dict, pyx_name: str) -> dict:
    """{.pyx line: run (bool)} for the lines of ``pyx_name`` that have a trace probe in the C file.

    A line ran when the first C line with code after one of its probes (up to the next probe or
    source comment) ran. A probed line without C code of its own there (the ``def`` line of a cdef
    function, whose probe sits in the module's initialisation; ``try:``, ``while True:``) ran when the
    first C line with code under one of its source comments ran (a function's entry), and failing
    that when the first C line with code after its probe ran (the statement it falls through to)."""

    def first_counted(start, stop_at_boundary):
        for j in range(start, len(c_lines)):
            if stop_at_boundary and (_PYX_COMMENT.match(c_lines[j]) or _TRACE_LINE.match(c_lines[j])):
                return None
            if counts.get(j + 1) is not None:
                return counts[j + 1] > 0
        return None

    probes, comments, current = {}, {}, None
    for i, text in enumerate(c_lines):
        m = _PYX_COMMENT.match(text)
        if m:
            current = m.group(1)
            if current == pyx_name:
                comments.setdefault(int(m.group(2)), []).append(i)
            continue
        m = _TRACE_LINE.match(text)
        if m and current == pyx_name:
            probes.setdefault(int(m.group(1)), []).append(i)
    runs = {}
    for line, at in probes.items():
        for evidence in ([first_counted(i + 1, True) for i in at],
                         [first_counted(_comment_end(c_lines, i), True) for i in comments.get(line, [])],
                         [first_counted(i + 1, False) for i in at]):
            seen = [ran for ran in evidence if ran is not None]
            if seen:
                runs[line] = any(seen)
                break
    return runs


def _comment_end(c_lines: list, start: int) -> int:
    """The line after the source comment that starts at ``start``."""
    end = start
    while end < len(c_lines) and not c_lines[end].rstrip().endswith("*/"):
        end += 1
    return end + 1


def main_cython_gcov(args) -> int:
    """The suite through the Cython engine compiled with gcc --coverage: decoding lines of nnc/_engine.pyx."""
    import shutil
    import subprocess
    import tempfile

    from nnc.verify import Result

    if not shutil.which("gcov"):
        raise SystemExit("--cython-gcov needs gcc and gcov")
    with tempfile.TemporaryDirectory(prefix="nnc-gcov-") as tmp:
        module, c_file, obj_dir = build_gcov_engine(Path(tmp))
        jobs = max(1, args.jobs)
        procs = [subprocess.Popen([sys.executable, __file__, args.suite, "--engine-so", str(module)]
                                  + (["--part", f"{i}/{jobs}"] if jobs > 1 else [])
                                  + (["--streams", args.streams] if args.streams else []), stdout=subprocess.PIPE, text=True)
                 for i in range(jobs)]
        results = []
        for p in procs:
            out, _ = p.communicate()
            if p.returncode:
                raise SystemExit(f"a measuring process failed (status {p.returncode})")
            results += [Result(*r) for r in json.loads(out.strip().splitlines()[-1])]
        gcov = subprocess.run(["gcov", "-t", "-o", str(obj_dir), str(c_file)], capture_output=True, text=True,
                              cwd=tmp, check=True)
        c_lines = c_file.read_text().splitlines()
        runs = pyx_line_runs(c_lines, gcov_counts(gcov.stdout), "nnc/_engine.pyx")
    from nnc.verify import format_table

    failed = [r for r in results if not r.passed]
    if failed:
        print(format_table(failed))
    print(f"suite: {len(results) - len(failed)}/{len(results)} stream decodings passed with the Cython engine "
          "(gcov build)\n")
    share = gcov_report(runs, args.missing)
    print(f"\nCython engine decoding coverage (lines, gcov): {share:.1f} %")
    return 1 if failed else 0


def gcov_report(runs: dict, missing: bool) -> float:
    """Line coverage of the decoding functions of nnc/_engine.pyx from mapped gcov counts."""
    pyx = REPO / "nnc" / "_engine.pyx"
    decoding = cython_decoding_lines(pyx)
    excluded = cython_excluded(pyx)
    measured = sorted(n for n in runs if n in decoding and n not in excluded)
    not_run = [n for n in measured if not runs[n]]
    return cython_lines_report(measured, not_run, decoding, missing)


if __name__ == "__main__":
    sys.exit(main())
