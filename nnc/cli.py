"""The ``nnc`` command line (also ``python -m nnc``).

Exit codes: 0 success; 1 the input could not be processed (invalid stream or
model, a failed verification, an unreadable file); 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import stat
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import narrow_floats

if TYPE_CHECKING:
    from .errors import NNCError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
#: ``nnc encode --codebook`` choices: the encoder's ``codebook`` setting (spec A.8).
CODEBOOK_MODES = {"few": "few", "auto": "auto", "always": True, "never": False}

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
  nnc decode llm.nnr -o llm/        # the original shards, index and dtypes, one tensor in memory at a time
""",
    "info": """examples:
  nnc info model.nnr
  nnc info model.nnr --json | jq '.tensors[].bits_per_weight'
""",
    "compare": """examples:
  nnc compare model.safetensors model.nnr                  # per-tensor error of a stream's decoding
  nnc compare model.safetensors decoded.pt --min-snr 30    # exit status 1 if the total SNR is lower
  nnc compare model.safetensors model.nnr --json | jq '.total.snr_db'
  nnc compare model.safetensors model.nnr --plot compare.png  # per-tensor SNR, error histogram

exit status 1 on a missing tensor, another shape or dtype, integers that differ, inf or NaN
against another value, or (with --min-snr) a total SNR below the bound.
""",
    "verify": """examples:
  nnc verify conformance/
  nnc verify conformance/ --decoder-command "python tools/nncodec_decoder.py" --group profile-1
""",
    "bench": """examples:
  nnc bench model.safetensors --qp -38
  nnc bench model.safetensors --qp -32 --vs --json
  nnc bench model.safetensors --vs --plot rd.png           # rate against SNR, qp -46 ... -30
  nnc bench model.safetensors --vs --plot rd.png --vs-label NNCodec \\
      --vs-command "python tools/nncodec_encoder.py {model} {qp} {out} --dq {dq}"
""",
    "demo": """examples:
  nnc demo
  nnc demo --json
""",
}


def _fail(message: str) -> int:
    """Print the error as one line (a library's message of several lines joined) and give the failure status."""
    line = re.sub(r"\s*[\r\n]+\s*", " ", message.strip())
    print(f"nnc: error: {line}", file=sys.stderr)
    return EXIT_FAIL


def _path(text: str) -> Path:
    """An argparse type: a path, not an empty one (``Path("")`` is the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("is empty: give a file name, or leave the option out")
    return Path(text)


def _misused(message: str) -> int:
    """A usage error found by the command itself (options that contradict or need one another): one line, exit 2."""
    print(f"nnc: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _usage_error(message: str):
    sys.stderr.write(f"nnc: error: {message}\n")
    raise SystemExit(EXIT_USAGE)


def _parse_assignments(items, what, kind=int) -> dict:
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            _usage_error(f"{what} must look like PATTERN=VALUE, not {item!r}")
        k, v = item.rsplit("=", 1)
        try:
            value = kind(v)
        except ValueError:
            _usage_error(f"{what}: {v!r} is not a{'n integer' if kind is int else ' number'}")
        if k in out and out[k] != value:
            _usage_error(f"{what} {k!r} is given twice, ={out[k]} and ={value}: give it once")
        out[k] = value
    return out


def _argument(convert, valid, expected: str):
    """An argparse ``type``: ``convert(text)`` when that succeeds and ``valid`` holds, else "expected ..."."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}")
        return value

    return parse


_finite_number = _argument(float, math.isfinite, "a finite number")
_positive_seconds = _argument(float, lambda v: 0 < v < math.inf, "a number of seconds > 0")
_non_negative_int = _argument(int, lambda v: v >= 0, "an integer >= 0")
_non_negative_number = _argument(float, lambda v: 0 <= v < math.inf, "a finite number >= 0")
_positive_number = _argument(float, lambda v: 0 < v < math.inf, "a finite number > 0")


class _DefaultLambda(float):
    """The lambda of --rdoq given without one (told apart from an explicit 0.1: --lambda may go with it)."""


_RDOQ_DEFAULT = _DefaultLambda(0.1)


def _refuse_overwriting_inputs(output, inputs: dict):
    """A message if ``output`` is one of the command's input files ({option: path}), else None."""
    from ._files import same_file

    for option, path in inputs.items():
        if path and same_file(output, path):
            return f"{output}: the output is the {option} ({path}); refusing to overwrite an input"
    return _folder_missing(output, "")


def _refuse_replacing_a_file(output, overwrite: bool) -> str | None:
    """A message if ``nnc decode`` would replace an existing file without --overwrite (it may be the original
    model, which a lossy decode would replace), else None."""
    from .writers import is_directory_target

    if overwrite or is_directory_target(output):
        return None
    if os.path.exists(output):  # (a dangling link: replaced)
        return (
            f"{output}: the file exists (it may be the original model, which the decoded one would replace): "
            "give another name, or --overwrite to replace it"
        )
    companion = f"{output}.data"  # an ONNX output's external data (written beside it)
    if str(output).lower().endswith(".onnx") and os.path.exists(companion):
        return (
            f"{companion}: the file exists (an ONNX output {output} may put its external data there, replacing "
            "it): give another name, or --overwrite to replace it"
        )
    return None


def _folder_missing(path, what: str) -> str | None:
    """A message if ``path``'s folder does not exist, or is a file (``what``: "the state " or ""), else None."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder):
        return None
    shown = os.path.dirname(path) or folder
    why = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
    return f"{path}: cannot write {what}there: {shown} {why}"


def _state_folder_missing(state) -> str | None:
    """A message if the --state file cannot be written because its folder does not exist (checked before any
    output is written: a failure after it would leave a new output beside an old state), else None."""
    return _folder_missing(state, "the state ") if state else None


def _unmatched_patterns(names, options: dict, exact=()):
    """A message naming the first --tensor-qp/--raw/... pattern that has no effect, else None: one that matches
    no tensor, or (for the assignments, where the first matching pattern applies) one whose every tensor an
    earlier pattern already takes, or that --raw stores or lossless integer coding codes exactly (``exact``)."""
    import fnmatch

    matches = lambda pattern, n: pattern == n or fnmatch.fnmatchcase(n, pattern)  # noqa: E731
    raw = {n: f"--raw {p!r} stores" for p in options.get("--raw") or () for n in names if matches(p, n)}
    unquantised = {n: "lossless integer coding (--lossless-int) codes" for n in exact if n not in raw}
    unquantised.update(raw)
    for option, patterns in options.items():
        # tensor -> why the pattern would not apply to it: an earlier pattern, --raw or an exact integer tensor
        taken: dict = dict(unquantised) if isinstance(patterns, dict) else {}
        for pattern in patterns or ():
            matched = [n for n in names if matches(pattern, n)]
            if not matched:
                return f"{option} {pattern!r} matches no tensor of the model (tensors: {_first_few(list(names)) or 'none'})"
            if isinstance(patterns, dict) and all(n in taken for n in matched):
                why = (
                    "a raw tensor has no qp or lambda"
                    if taken[matched[0]] == raw.get(matched[0])
                    else "an integer tensor coded exactly has no qp or lambda; --no-lossless-int quantises it"
                    if taken[matched[0]] == unquantised.get(matched[0])
                    else "the first pattern that matches a tensor applies"
                )
                return f"{option} {pattern!r} would never apply: {taken[matched[0]]} {_first_few(matched)} ({why})"
            for n in matched:
                taken.setdefault(n, f"the earlier pattern {pattern!r} takes")
    return None


@contextlib.contextmanager
def _errors_name(path, kind: type[NNCError] | None = None):
    """An error of ``kind`` (default :class:`~nnc.errors.DecodeError`) raised inside names the file it is about:
    ``"PATH: message"`` (clause and offset kept)."""
    from .errors import DecodeError

    caught: type[NNCError] = kind or DecodeError
    try:
        yield
    except caught as exc:
        message = exc.message
        if isinstance(exc, DecodeError) and not exc.offset and not _starts_like_a_stream(path):
            if "start unit" not in message:
                message = f"not an NNC stream (it does not begin with a start unit, spec 3.1): {message}"
        raise type(exc)(f"{os.fspath(path)}: {message}", clause=exc.clause, offset=exc.offset) from exc


def _starts_like_a_stream(path) -> bool:
    """Whether a file begins as NNC streams do, with an NNR_STR unit (spec 3.1), or cannot be read to tell."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except (OSError, TypeError):
        return True
    from .formats import NNR_START_UNIT

    return head[:3] == NNR_START_UNIT


def _shown_name(name: str) -> str:
    """A tensor name for a table row: as it is, or with its control characters escaped (a newline would split the
    row)."""
    return name if name.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def _not_a_regular_file(path):
    """A message if ``path`` exists but is neither a regular file nor a folder (a pipe, a socket, a device), else
    None: nnc reads its inputs more than once (the format from the first bytes, then the file; a pipe would hang or
    lose those bytes)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None  # (missing: the reader names it)
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return f"{path}: not a regular file (a pipe, socket or device): save it to a file first"


def _is_stream_file(path) -> bool:
    """Whether ``path`` holds an NNC stream by its content, or, when no format is recognised (an empty or damaged
    file), by a stream's extension (.nnr, .nnc): the decoder then says what is wrong with it."""
    from . import formats

    try:
        return formats.detect_format(path) == "nnr"
    except formats.FormatError:
        if Path(path).suffix.lower() in (".nnr", ".nnc"):
            return True
        raise


def _model_file_format(path) -> str | None:
    """The model format of an existing regular file at ``path`` (by its content), None for no such file, an NNC
    stream or anything else."""
    from . import formats

    if not os.path.isfile(path):
        return None
    try:
        fmt = formats.detect_format(path)
    except formats.FormatError:
        return None
    return None if fmt == "nnr" else fmt


def _not_a_stream(path):
    """A message if ``path`` is a model file rather than an NNC stream, else None."""
    from . import formats

    if problem := _not_a_regular_file(path):
        return problem
    try:
        fmt = formats.detect_format(path)
    except formats.FormatError:
        return None  # not a model either: the decoder says what is wrong with it
    if fmt == "nnr" or (fmt == "onnx" and not str(path).lower().endswith(".onnx")):
        return None
    return f"{path}: not an NNC stream (a {fmt} model file; `nnc encode` makes a stream of it)"


# -- encode --------------------------------------------------------------------------


def _module_file(spec: str | None) -> str | None:
    """The file of a ``path/to/file.py:FUNCTION`` option, None for a module name or no option."""
    module = (spec or "").rpartition(":")[0]
    return module if module.endswith(".py") else None


def _stream_output(args) -> str:
    """Where ``nnc encode`` writes: ``-o``, inside it when it is a folder (or ends in a slash), else beside the model: a
    file's name with its suffix replaced by .nnr, a folder's (``.``, ``..`` by their own names) with .nnr added."""
    model = Path(args.model)
    if model.name in ("", ".", ".."):
        model = model.resolve()
    beside = model.parent / f"{model.name or 'model'}.nnr" if model.is_dir() else model.with_suffix(".nnr")
    if not args.output:
        return str(beside)
    if args.output.endswith(("/", os.sep)) or os.path.isdir(args.output):  # a folder: the model's name.nnr in it
        return os.path.join(args.output, beside.name)
    return args.output


def _load_state(cls, path, quiet: bool = False):
    """The state in the --state file (a new one if there is none), noting which file it was read from; its arrays
    stay in the file, and those entered go to a temporary file beside it, until they are used.

    The file is locked (an advisory lock, where the system has them) until the command has saved the state after
    it, or ends: a second command on the same state waits for the first, then reads the state the first wrote."""
    from .errors import UpdateError
    from .readers import path_identity

    links = os.stat(path).st_nlink if os.path.exists(path) else 1
    if links > 1:  # (the state is replaced by a rename: its other names would keep the state before, silently)
        raise UpdateError(
            f"{path}: the --state file has {links} names (hard links); saving the state replaces this one and would "
            "leave the others stale: give a copy with one name"
        )
    lock = _lock_state_file(path, quiet)
    before = path_identity(path)
    state = cls.load(path) if before is not None else cls()
    try:
        state.spill_to(os.path.dirname(os.path.abspath(path)))  # (its arrays on disk: memory bounded by the tensors)
    except OSError as exc:  # (the folder takes no new file: said of the user's path, not a temporary one)
        raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(path)) from None
    state.loaded_identity = before  # (_state_saved_after refuses to replace a file another command wrote since)
    state.lock_file = lock
    return state


def _lock_state_file(path, quiet: bool):
    """The --state file open and locked, the lock taken on the file that is at ``path`` once it is held; None where
    there is no file yet or the system or file system takes no locks (the identity check still applies)."""
    try:
        import fcntl
    except ImportError:  # (Windows)
        return None
    from .readers import file_identity, path_identity

    while True:
        try:
            fh = open(path, "rb")  # noqa: SIM115 (held until the state is saved)
        except OSError:  # (none yet, or unreadable: loading says so)
            return None
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _tell(quiet, f"nnc: note: waiting for another command that uses {path}")
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except OSError:  # (a file system without locks)
            fh.close()
            return None
        if file_identity(os.fstat(fh.fileno())) == path_identity(path):
            _STATE_LOCKS.append(fh)
            return fh
        fh.close()  # the other command replaced the file meanwhile: lock the new one


#: The --state files this process holds locked (released by the command, or by main when it ends otherwise).
_STATE_LOCKS: list = []


def _release_state(state) -> None:
    lock = getattr(state, "lock_file", None)
    if lock is not None:
        _unlock(lock)
        state.lock_file = None


def _unlock(lock) -> None:
    lock.close()
    if lock in _STATE_LOCKS:
        _STATE_LOCKS.remove(lock)


@contextlib.contextmanager
def _state_saved_after(path, state):
    """A --state file renamed into place after the block's output, its bytes written and flushed right before the
    output's first rename (the state is complete then): a state that cannot be written (a full disk) fails before
    the output is replaced, not after it, with the output changed and the state not."""
    if path is None or state is None:
        try:
            yield
        finally:
            _release_state(state)
        return
    from ._files import AtomicFile, committed_together, naming
    from .errors import UpdateError
    from .readers import path_identity

    # (a state not read by _load_state: the file as it is now)
    loaded = state.loaded_identity if hasattr(state, "loaded_identity") else path_identity(path)
    file = AtomicFile(path)
    written = []

    def write_state():
        try:
            write_state_bytes()
        except OSError as exc:  # (a full disk: the state's, not the output's)
            raise naming(exc, path) from None

    def write_state_bytes():
        if path_identity(path) != loaded:  # another command moved the state on meanwhile: an update would be lost
            raise UpdateError(
                f"{path}: the --state file changed while this command ran (another command updated it); nothing "
                "is written: run this one again"
            )
        state._write(file.fh)
        file.fh.flush()
        os.fsync(file.fh.fileno())
        written.append(True)

    try:
        with committed_together(before_first_rename=write_state):  # a signal after the output's rename waits
            yield
            if not written:  # (no rename in the main thread)
                write_state()
            file.commit()
    except BaseException:
        file.discard()
        raise
    finally:
        _release_state(state)


def _ignored_options(args) -> str | None:
    """Why a combination of encode options would leave one of them without effect (a one-line error), or None."""
    given = lambda *options: [o for o, v in options if v is not None and v is not False and v != []]  # noqa: E731
    if args.search:
        chosen = given(
            ("--tensor-qp", args.tensor_qp),
            ("--tensor-lambda", args.tensor_lambda),
            ("--sigmas", args.sigmas),
            ("--dcv1-s", args.dcv1_s),
            ("--rdoq", args.rdoq),
            ("--lambda", args.lam),
            ("--target-snr", args.target_snr),
        )
        chosen = chosen or given(("--qp", args.qp), ("--step", args.step))
        if chosen:
            return f"{chosen[0]} would be ignored: --search chooses every tensor's qp and lambda itself"
    if args.target_snr is not None:
        chosen = given(
            ("--qp", args.qp), ("--step", args.step), ("--nonweight-qp", args.nonweight_qp), ("--sigmas", args.sigmas)
        )
        if chosen:
            return f"{chosen[0]} would be ignored: --target-snr chooses every tensor's qp (--tensor-qp still wins)"
    if args.rdoq is not None and args.rdoq is not _RDOQ_DEFAULT and args.lam is not None:
        return f"--rdoq {args.rdoq} and --lambda {args.lam} both give the lambda; give one"
    if args.sigmas and args.importance:
        return "--sigmas and --importance both weight the error (DC-v1's importance is 1/sigma^2); give one"
    if args.dcv1_s is not None and not args.sigmas:
        return "--dcv1-s scales the steps of --sigmas (DC-v1); give --sigmas too"
    if args.importance and args.rdoq is None and args.lam is None and args.target_snr is None and not args.search:
        return "--importance weights the error of --rdoq or --target-snr; give one of them"
    if args.time_budget is not None and not (math.isfinite(args.time_budget) and args.time_budget > 0):
        return f"--time-budget must be a positive number of seconds, not {args.time_budget}"
    return None


# nnc encode's options by the names of the encoder's settings (for messages about their values)
_ENCODE_FLAGS = {
    "qp_per_tensor": "--tensor-qp",
    "lambda_per_tensor": "--tensor-lambda",
    "nonweight_qp": "--nonweight-qp",
    "nonweight_snr_db": "--nonweight-snr",
    "qp_density": "--qp-density",
    "scan_order": "--scan-order",
    "n_gtx": "--n-gtx",
    "rdoq_lambda": "--lambda",
    "dcv1_s": "--dcv1-s",
    "threads": "--threads",
    "profile": "--profile",
    "step": "--step",
    "qp": "--qp",
}


def _refused_option_values(options: dict) -> str | None:
    """What the encoder's settings refuse in the values given on the command line (a usage error), in the
    options' own names; None when they take them."""
    import re

    from .encoding.settings import EncoderSettings
    from .errors import EncodeError

    given = {k: v for k, v in options.items() if k in _ENCODE_FLAGS}
    if given.get("step") is None:
        given.pop("step", None)
    try:
        EncoderSettings(**given)
    except EncodeError as exc:
        flags = "|".join(sorted(_ENCODE_FLAGS, key=len, reverse=True))  # the option the message begins with
        return re.sub(rf"^({flags})(?=[ :\[])(?! size)", lambda m: _ENCODE_FLAGS[m.group(1)], exc.message)
    return None


def cmd_encode(args) -> int:
    import re
    import warnings

    from . import formats, models, readers
    from .encoder import FULL_VALUES_NOTE, EncoderState
    from .encoding.writer import differences_without_a_model
    from .errors import EncodeError

    if problem := _encode_usage_problem(args):
        return _misused(problem)
    args.dcv1_s = 64 if args.dcv1_s is None else args.dcv1_s
    args.tolerance = 0.005 if args.tolerance is None else args.tolerance
    args.workers = 1 if args.workers is None else args.workers
    args.tca = True if args.tca is None else args.tca
    named_as_model = Path(args.model).suffix.lower().lstrip(".") in formats.MODEL_EXTENSIONS
    if not named_as_model and os.path.isfile(args.model) and _starts_like_a_stream(args.model):
        return _fail(f"{args.model}: an NNC stream, not a model: nnc decode turns it into one")
    out = _stream_output(args)
    refused = (
        _refuse_overwriting_inputs(
            out,
            {
                "model": args.model,
                "--state file": args.state,
                "--sigmas file": args.sigmas,
                "--importance file": args.importance,
                "--covariances file": args.covariances,
                "--search module": _module_file(args.search),
                "--check module": _module_file(args.check),
            },
        )
        or _state_folder_missing(args.state)
        or _not_a_regular_file(args.model)
    )
    if refused:
        return _fail(refused)
    source = readers.open_model(args.model)  # headers only: tensors are read when their turn comes
    for read in source.files:  # the file or index, each shard, ONNX external data
        refused = _refuse_overwriting_inputs(out, {"model's file": read})
        if refused:
            return _fail(refused)
    suffix = Path(out).suffix.lower()
    if suffix not in formats.NNR_EXTENSIONS and suffix.lstrip(".") in formats.MODEL_EXTENSIONS:
        return _fail(
            f"-o {out}: nnc encode writes an NNC stream, which a {Path(out).suffix} name would pass off as a model "
            "file; give a .nnr name"
        )
    held = _model_file_format(out)
    if held:
        return _fail(f"-o {out}: the file holds a {held} model, which the stream would replace; give another name")
    names = [t.name for t in source]
    if not names:
        return _fail(f"{args.model}: no tensors found (nothing to encode)")
    unmatched = _unmatched_patterns(
        names,
        {
            "--tensor-qp": _parse_assignments(args.tensor_qp, "--tensor-qp"),
            "--raw": args.raw,
            "--tensor-lambda": _parse_assignments(args.tensor_lambda, "--tensor-lambda", float),
        },
        exact=[t.name for t in source if np.dtype(t.dtype).kind in "iub"] if args.lossless_int else (),
    )
    if unmatched:
        return _fail(unmatched)
    options = dict(
        qp=args.qp,
        step=args.step,
        dq=args.dq,
        scan_order=args.scan_order,
        n_gtx=args.n_gtx,
        qp_density=args.qp_density,
        qp_per_tensor=_parse_assignments(args.tensor_qp, "--tensor-qp"),
        raw=args.raw or (),
        lossless_int=args.lossless_int,
        profile=args.profile,
        param_opt=not args.no_param_opt,
        row_skip=args.row_skip,
        codebook=CODEBOOK_MODES[args.codebook],
        lambda_per_tensor=_parse_assignments(args.tensor_lambda, "--tensor-lambda", float),
        rdoq_lambda=args.lam if args.lam is not None else float(args.rdoq or 0.0),
        dcv1_s=args.dcv1_s,
        threads=args.threads if args.threads is not None else (1 if args.search and args.workers > 1 else 0),
    )
    if args.nonweight_qp is not None:
        options["nonweight_qp"] = args.nonweight_qp
    if args.nonweight_snr is not None:
        options["nonweight_snr_db"] = args.nonweight_snr
    if problem := _refused_option_values(options):
        return _misused(problem)
    if problem := _read_side_files(args, options, names, source):
        return _fail(problem)
    if args.blocks is not None:
        options["blocks"] = args.blocks
    if args.raw_when_smaller is not None:
        options["raw_when_smaller"] = args.raw_when_smaller
    if not args.tie_shared:
        options["tie_shared"] = False
    if args.qp is None and args.step is None:
        options.pop("step")
    _note_files_beside(args.model, source, args.quiet or args.json)
    exact = models.keep_quantisation_parameters_exact(options, source)
    if exact:
        _tell(
            args.quiet or args.json,
            f"nnc: note: {len(exact)} quantisation parameter(s) (scales of a quantised model's weights) are stored "
            f"exactly, uncompressed: {_first_few(exact)}; --tensor-qp NAME=QP quantises one",
        )
    if args.scheduler:
        _note_left_out(args.model, source.left_out, args.quiet or args.json)
        return _encode_on_cluster(args, options)
    if args.search:
        tensors, dtypes, layout = models.load_model(args.model)
        _note_left_out(args.model, source.left_out, args.quiet or args.json)
        return _encode_search(args, tensors, dict(options, dtypes=dtypes), layout)
    if args.state:
        state = _load_state(EncoderState, args.state, args.quiet or args.json)
        options.update(
            state=state,
            tca=args.tca,
            hdsp=args.hdsp,
            differences=args.differences,
            parent_id=args.parent_id or "sha256",
        )
        if differences_without_a_model(args.differences, state):
            _tell(
                args.quiet or args.json,
                f"nnc: note: {args.state} holds no model (its streams were not coded with --differences), so "
                "this stream carries full values; the updates after it carry differences",
            )
    elif args.differences:
        return _fail("--differences needs --state")
    allocated = None
    if args.target_snr is not None:
        from .allocation import REPLACED_BY_TARGET, with_allocated_qps

        # (read a tensor at a time; --tensor-qp's tensors keep their qps: the allocation makes up for their error;
        # bfloat16 tensors: the error of the values their file holds)
        given = {k: v for k, v in options.items() if k not in REPLACED_BY_TARGET}
        with _errors_name(args.model, EncodeError), _AllocationProgress(source, args.quiet or args.json) as shown:
            options, allocated = with_allocated_qps(
                source, args.target_snr, given, progress=shown, dtypes=source.dtypes
            )
    with _state_saved_after(args.state, options.get("state")):  # noqa: SIM117 (Python 3.9: no parenthesised with)
        with _EncodeProgress(source, args.quiet or args.json) as progress, _errors_name(args.model, EncodeError):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", re.escape(FULL_VALUES_NOTE))  # the note above says it
                summary = models.encode_model_to(source, out, progress=progress, measure=not args.state, **options)
    return _encode_report(args, out, summary, source, options, allocated)


def _encode_usage_problem(args) -> str | None:
    """What the options of ``nnc encode`` given together do not allow (a usage error), or None."""
    if args.state and args.search:
        return "--state (incremental coding) cannot be combined with --search"
    if args.check and not args.search:
        return "--check guards a --search; give --search too"
    if args.check_moves and not args.check:
        return "--check-moves checks the --check score during the search; give --check too"
    given = {"--tolerance": args.tolerance, "--time-budget": args.time_budget, "--workers": args.workers}
    unused = [option for option, value in given.items() if value is not None]
    if unused and not args.search:
        return f"{unused[0]} is an option of --search; give --search too"
    unused = [
        o
        for o, v in (("--tca/--no-tca", args.tca), ("--hdsp", args.hdsp or None), ("--parent-id", args.parent_id))
        if v is not None
    ]
    if unused and not args.state:
        return f"{unused[0]} codes updates; give --state too"
    if args.row_skip and args.profile == 0:
        return "--row-skip is a 2nd-edition tool; profile 0 (1st edition) has no row skipping"
    return _ignored_options(args)


def _read_side_files(args, options: dict, names: list, source) -> str | None:
    """Read ``--sigmas``, ``--importance`` and ``--covariances`` into ``options``, checked against the model's
    tensors (``source``, their ``names``); what is wrong with them (one line), or None."""
    from . import formats
    from .encoding.settings import check_importance
    from .errors import EncodeError

    for option, path in (("sigmas", args.sigmas), ("importance", args.importance)):
        if path:
            options[option], _ = formats.read_model(path)
            stray = [k for k in options[option] if k not in names]
            if stray:  # (a name of another model would be ignored: no tensor takes it)
                return f"{path}: {stray[0]!r} is not a tensor of {args.model}"
            if not options[option]:
                return f"{path}: holds no tensor, so --{option} would change nothing"
            if option == "importance" and not any(np.any(np.asarray(v)) for v in options[option].values()):
                return f"{path}: every importance is 0, which makes every weight's error free: RDOQ would drop them all"
            for t in source:  # one value per weight, in the weight's own layout (the same count is not enough)
                given = options[option].get(t.name)
                if given is not None and np.shape(given) != tuple(t.shape):
                    return f"{path}: {t.name!r} has shape {list(np.shape(given))}, the model's tensor {list(t.shape)}"
                sigmas = np.asarray(given) if given is not None and option == "sigmas" else None
                if sigmas is not None and (sigmas.dtype.kind != "f" or not np.all(np.isfinite(sigmas) & (sigmas > 0))):
                    return f"{path}: the sigmas of {t.name!r} must be finite and positive floats"
                if given is not None and option == "importance":
                    try:
                        check_importance(t.name, np.asarray(given).reshape(-1), t.size)
                    except EncodeError as exc:
                        return f"{path}: {exc.message}"
    if args.sigmas and (args.qp is not None or args.step is not None):
        quantised = {t.name for t in source if np.dtype(t.dtype).kind in ("f" if args.lossless_int else "fiub")}
        if quantised and quantised <= set(options["sigmas"]):
            return (
                f"{'--qp' if args.qp is not None else '--step'} would be ignored: --sigmas {args.sigmas} gives every "
                "quantised tensor its step (DC-v1, from its sigmas and --dcv1-s)"
            )
    if args.covariances:
        if args.target_snr is not None:
            return (
                "--covariances cannot be combined with --target-snr (error feedback trades the weights' "
                "own SNR for the layers' output error)"
            )
        options["covariances"], _ = formats.read_model(args.covariances)
        stray = [k for k in options["covariances"] if k not in names]
        if stray:
            return f"{args.covariances}: {stray[0]!r} is not a tensor of {args.model}"
        from .encoding.feedback import check_covariance, covariance_columns

        for t in source:
            if t.name in options["covariances"]:
                try:
                    columns = covariance_columns(t.name, tuple(t.shape))
                    check_covariance(t.name, options["covariances"][t.name], columns, factor=True)
                except EncodeError as exc:
                    return f"{args.covariances}: {exc}"
    return None


def _encode_report(args, out, summary, source, options: dict, allocated) -> int:
    """Tell what ``nnc encode`` wrote (``summary``): its notes and warnings, then one line, or the JSON report."""
    original = sorted({t.original_dtype for t in source if np.dtype(t.dtype).kind == "f"})
    report = dict(
        input=str(args.model),
        output=out,
        tensors=summary.tensors,
        weights=summary.weights,
        bytes=summary.stream_bytes,
        input_bytes=summary.original_bytes,
        original_dtypes=original,
        bits_per_weight=summary.bits_per_weight,
        ratio=summary.ratio,
        ratio_fp32=4 * summary.weights / max(summary.stream_bytes, 1),
        seconds=summary.seconds,
    )
    if allocated is not None:
        report["allocated_qps"] = allocated
    quiet = args.quiet or args.json
    if summary.kept_raw:
        reasons = summary.kept_raw_reasons
        report["non_finite_kept_raw"] = [k for k in summary.kept_raw if reasons.get(k) == "holds inf or NaN"]
        report["kept_raw"] = dict(reasons)
        kept = [f"{k} ({reasons.get(k, 'cannot be quantised')})" for k in summary.kept_raw]
        _tell(
            quiet,
            f"nnc: note: {len(kept)} tensor(s) are stored uncompressed instead of quantised "
            f"(RAW_FLOAT, float32 values): {_first_few(kept)}",
        )
    from .encoding.settings import matches

    raw = set(summary.kept_raw) | {t.name for t in source if matches(t.name, options.get("raw") or ())}
    rounded = [t.name for t in source if t.name in raw and t.original_dtype in ("float64", "longdouble")]
    if rounded:  # (RAW_FLOAT holds float32: exact for float32 and narrower inputs only, spec 7.5)
        report["raw_rounded_to_float32"] = rounded
        _tell(quiet, f"nnc: note: stored raw as float32, so rounded from float64: {_first_few(rounded)}")
    if summary.tied:
        report["tied"] = dict(summary.tied)
        ties = [f"{k} (as {v})" for k, v in summary.tied.items()]
        _tell(
            quiet, f"nnc: note: {len(ties)} tied tensor(s) stored once, with the tensor they share: {_first_few(ties)}"
        )
    if summary.left_out:
        report["left_out"] = list(summary.left_out)
        _note_left_out(args.model, summary.left_out, quiet)
    if summary.zeroed:
        report["zeroed"] = list(summary.zeroed)
        _tell(
            quiet,
            f"nnc: warning: {len(summary.zeroed)} tensor(s) kept none of their signal (their quantisation step is too "
            f"coarse for their weights, which decode as zeros): {_first_few(summary.zeroed)}; a finer --qp, "
            "--nonweight-qp, --tensor-qp or --target-snr keeps them",
        )
    if summary.float32_precision:
        from .encoder import float32_precision_message

        report["float32_precision"] = list(summary.float32_precision)
        _tell(quiet, f"nnc: warning: {float32_precision_message(summary.float32_precision)}")
    if summary.coarse:
        from .encoding.stream import COARSE_SNR_DB

        report["coarse"] = dict(summary.coarse)
        shown = [f"{k} ({v:.1f} dB)" for k, v in summary.coarse.items()]
        _tell(
            quiet,
            f"nnc: warning: {len(shown)} tensor(s) kept little of their signal (SNR under {COARSE_SNR_DB:g} dB: "
            f"their quantisation step is coarse for their values): {_first_few(shown)}; a finer --qp, "
            "--nonweight-qp, --tensor-qp, --target-snr or --raw keeps them",
        )
    snr = ""
    if not args.state:  # (an update's reconstruction is not the model's)
        report["snr_db"] = summary.snr_db
        report["relative_snr_db"] = summary.relative_snr_db
        snr = f", weight SNR {summary.snr_db:.2f} dB"
        if args.target_snr is not None and args.importance is None:
            snr += f", {summary.relative_snr_db:.2f} dB against each tensor's scale (--target-snr's measure)"
    if args.json:
        print(json.dumps(_finite_json(report), indent=2))
    elif not args.quiet:
        against = "/".join(original) if original else "the input"
        measures = (
            f"{summary.bits_per_weight:.3f} bits/weight, {_times_smaller(summary.ratio)} {against}{snr}"
            if summary.weights
            else "headers only: its tensors are empty"
        )
        print(
            f"{out}: {summary.tensors} tensors, {summary.weights} weights -> {summary.stream_bytes} bytes ({measures})"
        )
    return EXIT_OK


def _times_smaller(ratio: float) -> str:
    """``"4.1x smaller than"`` for an original-to-stream size ratio, ``"5.0x larger than"`` below 1
    (``"larger than"`` for an empty original)."""
    if ratio >= 1:
        return f"{ratio:.1f}x smaller than"
    return f"{1 / ratio:.1f}x larger than" if ratio > 0 else "larger than"


def _tell(quiet: bool, line: str) -> None:
    """Print a note or warning line to stderr, unless ``quiet`` (``--quiet`` or ``--json``)."""
    if not quiet:
        print(line, file=sys.stderr)


def _first_few(names: list, shown: int = 5) -> str:
    """The first ``shown`` names, comma-separated, then "..." when there are more."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


class _Bar:
    """A progress callable around a tqdm bar (``self.bar``, None when hidden), closed at the end of a ``with``."""

    bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


class _EncodeProgress(_Bar):
    """tqdm bar of an encode, in bytes of the model (original dtypes) and tensors, with an ETA driven by
    the tensors written; shown on a terminal unless quiet."""

    def __init__(self, source, quiet: bool):
        self.sizes = {t.name: t.size * t.original_bits // 8 for t in source}
        self.count = len(self.sizes)
        self.done = 0
        self.bar = _progress_bar(sum(self.sizes.values()), "B", "encoding", quiet, leave=True)

    def __call__(self, name: str, n: int) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.sizes.get(name, 0))
            self.bar.set_postfix_str(f"{self.done}/{self.count} tensors", refresh=False)


class _AllocationProgress(_Bar):
    """tqdm bar of ``--target-snr``'s measuring of each tensor's curve, in weights; on a terminal unless quiet."""

    def __init__(self, source, quiet: bool):
        # (each tensor's curve is measured in two passes: one qp an octave, then near its choice)
        total = 2 * sum(t.size for t in source if np.dtype(t.dtype).kind == "f")
        self.bar = _progress_bar(total, "weights", "choosing qps", quiet)

    def __call__(self, name: str, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)


def _encode_on_cluster(args, options) -> int:
    """``nnc encode --scheduler``: one task per unit on a Dask cluster (nnc.distributed)."""
    import warnings

    from . import distributed
    from .errors import EncodeError, PrecisionWarning

    for flag, used in (
        ("--search", args.search),
        ("--state", args.state),
        ("--target-snr", args.target_snr),
        ("--sigmas", args.sigmas),
        ("--importance", args.importance),
        ("--covariances", args.covariances),
        (f"--codebook {args.codebook}", args.codebook in ("auto", "always")),
    ):
        if used:
            return _fail(f"{flag} cannot be combined with --scheduler")
    options.pop("dtypes", None)
    if args.threads is None:
        options["threads"] = 1
    out = _stream_output(args)
    try:
        client, owned = distributed.get_client(args.scheduler)
    except (ImportError, ValueError, OSError) as exc:
        return _fail(str(exc) if str(exc).startswith("--scheduler") else f"--scheduler {args.scheduler}: {exc}")
    t0 = time.perf_counter()
    try:
        with _errors_name(args.model, EncodeError), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PrecisionWarning)
            length = distributed.encode_model(args.model, out, client, **options)
    finally:
        if owned:
            distributed.close_client(client)
    for warning in caught:  # (tensors that keep none of their signal, as a local encode says)
        if issubclass(warning.category, PrecisionWarning) and not args.quiet:
            print(f"nnc: warning: {warning.message}", file=sys.stderr)
    summary = dict(input=str(args.model), output=out, bytes=length, seconds=time.perf_counter() - t0)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"{out}: {length} bytes (on {args.scheduler})")
    return EXIT_OK


def _decode_on_cluster(args) -> int:
    """``nnc decode --scheduler``: one task per unit on a Dask cluster (nnc.distributed)."""
    from . import distributed

    for flag, used in (
        ("--state", args.state),
        ("--tensor", args.tensor),
        ("--add-to", args.add_to),
        ("--template", args.template),
    ):
        if used:
            return _fail(f"{flag} cannot be combined with --scheduler")
    from . import formats
    from .decoder import Decoder, Limits
    from .writers import is_directory_target

    if not is_directory_target(args.output):
        formats.format_from_extension(args.output)  # a bad extension fails before any work
    try:
        client, owned = distributed.get_client(args.scheduler)
    except (ImportError, ValueError, OSError) as exc:
        return _fail(str(exc) if str(exc).startswith("--scheduler") else f"--scheduler {args.scheduler}: {exc}")
    try:  # streaming: each unit's tensors are written into the output as they arrive
        with _errors_name(args.stream):
            written = distributed.decode_to_path(
                args.stream,
                args.output,
                client,
                threads=1 if args.threads is None else args.threads,  # (0: one per CPU of each worker)
                entry_points=args.entry_points,
                overwrite=args.overwrite,
            )
    finally:
        if owned:
            distributed.close_client(client)
    _note_narrow_in_npz(Decoder(args.stream, limits=Limits.for_stream(args.stream)), args)
    summary = dict(stream=str(args.stream), output=args.output, tensors=written["tensors"], weights=written["weights"])
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
        With exit status 2 (a usage error) if the module or the function cannot be found, or the
        module fails on import.

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
    try:  # (a module that exits on import, e.g. a script with its own argparse, is a usage error too)
        if module_name.endswith(".py"):
            loader_spec = importlib.util.spec_from_file_location("nnc_user_evaluation", module_name)
            if loader_spec is None or loader_spec.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules["nnc_user_evaluation"] = module
            loader_spec.loader.exec_module(module)
        else:
            module = _import_from_here(module_name)
    except (ImportError, OSError) as exc:
        _usage_error(f"cannot import {module_name!r} for {option}: {exc}")
    except SystemExit as exc:
        _usage_error(f"importing {module_name!r} for {option} exited (status {exc.code})")
    except Exception as exc:  # the user's module failed on import (a syntax error, a raise at top level)
        _usage_error(f"importing {module_name!r} for {option} failed: {type(exc).__name__}: {exc}")
    func = getattr(module, func_name, None)
    if not callable(func):
        _usage_error(f"{module_name!r} has no function {func_name!r}")
    return func


def _import_from_here(module_name: str):
    """Import the user's ``module_name``, also from the current folder, as ``python -m nnc`` would: the ``nnc``
    command's sys.path lacks that folder, so it is put first on it when the module is found there (the module's
    own imports of its neighbours, and the search's worker processes, then find them too)."""
    import importlib
    import importlib.machinery

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        top = module_name.partition(".")[0]
        if exc.name != top or here in sys.path or importlib.machinery.PathFinder.find_spec(top, [here]) is None:
            raise
    sys.path.insert(0, here)  # (the one place nnc edits sys.path: for the user's module, at the user's request)
    return importlib.import_module(module_name)


def _note_files_beside(model, source, quiet: bool) -> None:
    """The note naming the files of a checkpoint folder that are not its weights (config.json, the tokenizer...):
    the stream does not carry them."""
    folder = Path(model) if Path(model).is_dir() else Path(model).parent if str(model).endswith(".index.json") else None
    if folder is None:
        return
    inputs = {Path(f).resolve() for f in source.files}
    beside = sorted(p.name for p in folder.iterdir() if p.is_file() and p.resolve() not in inputs)
    if beside:
        _tell(
            quiet,
            f"nnc: note: {model}: {len(beside)} file{'' if len(beside) == 1 else 's'} beside the weights "
            f"{'is' if len(beside) == 1 else 'are'} not in the stream (copy {'it' if len(beside) == 1 else 'them'} "
            f"beside the decoded model): {_first_few(beside)}",
        )


def _note_left_out(model, left_out, quiet: bool, what: str = "encoded (decoding writes the tensors alone)") -> None:
    """The note naming a model's entries that are not encoded, or not ``what`` (ModelSource.left_out)."""
    if left_out:
        _tell(
            quiet,
            f"nnc: note: {model}: {len(left_out)} entr{'y' if len(left_out) == 1 else 'ies'} besides the "
            f"model's weights {'is' if len(left_out) == 1 else 'are'} not {what}: "
            f"{_first_few(left_out)}",
        )


def _encode_search(args, tensors, options, layout=None) -> int:
    from . import formats, models
    from .errors import NNCError
    from .search import search

    evaluate = load_callable(args.search)
    check = load_callable(args.check, "--check") if args.check else None
    for chosen_by_search in (
        "qp",
        "step",
        "dq",
        "rdoq_lambda",
        "qp_per_tensor",
        "lambda_per_tensor",
        "sigmas",
        "dcv1_s",
    ):
        options.pop(chosen_by_search, None)
    t0 = time.perf_counter()
    try:
        result = search(
            tensors,
            evaluate,
            tolerance=args.tolerance,
            dq=args.dq,
            workers=args.workers,
            time_budget=args.time_budget,
            check=check,
            check_moves=args.check_moves,
            progress=not args.quiet and not args.json and sys.stderr.isatty(),
            **options,
        )
    except NNCError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's metric failed: one line, not a traceback
        what = f"exited (status {exc.code})" if isinstance(exc, SystemExit) else f"raised {type(exc).__name__}: {exc}"
        return _fail(f"--search {args.search}{f' / --check {args.check}' if args.check else ''}: the metric {what}")
    elapsed = time.perf_counter() - t0
    if result.best is None:
        checked = " and the --check score" if check else ""
        nan = sum(1 for c in result.candidates if c.score != c.score)
        return _fail(
            f"no setting kept the score{checked} within {args.tolerance} of the original's "
            f"({result.reference_score:.6g}; {len(result.candidates)} candidates tried"
            + (f", {nan} of them scored NaN" if nan else "")
            + ")"
        )
    best = result.best
    out = _stream_output(args)
    stream = best.stream if layout is None else models.with_metadata(best.stream, layout)  # the checkpoint's files
    formats.write_atomic(out, stream)
    n = sum(int(np.asarray(v).size) for v in tensors.values())
    summary = dict(
        input=str(args.model),
        output=out,
        tensors=len(tensors),
        weights=n,
        bytes=len(stream),
        bits_per_weight=8 * len(stream) / max(n, 1),
        ratio_fp32=4 * n / max(len(stream), 1),
        reference_score=result.reference_score,
        score=best.score,
        tolerance=args.tolerance,
        settings=best.settings,
        candidates=len(result.candidates),
        seconds=elapsed,
        check_reference=result.check_reference,
        check=best.check,
        pareto=[dict(bytes=c.bytes, score=c.score) for c in result.pareto],
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(
            f"{out}: {len(stream)} bytes ({summary['bits_per_weight']:.3f} bits/weight), score "
            f"{best.score:.6g} (original {result.reference_score:.6g}, tolerance {args.tolerance}), "
            f"{len(result.candidates)} candidates in {elapsed:.1f} s"
        )
        print("Pareto front (bytes: score): " + ", ".join(f"{c.bytes}: {c.score:.6g}" for c in result.pareto))
    return EXIT_OK


# -- decode --------------------------------------------------------------------------


def cmd_decode(args) -> int:
    from ._files import new_files_only
    from .decoder import Decoder, DecoderState, Limits
    from .writers import decode_to_path, is_directory_target

    if args.state and args.tensor:
        return _fail("--state needs every tensor of the stream decoded; leave out --tensor")
    refused = _refuse_overwriting_inputs(
        args.output,
        {"stream": args.stream, "--template": args.template, "--add-to model": args.add_to, "--state file": args.state},
    )
    refused = refused or _not_a_stream(args.stream) or _state_folder_missing(args.state)
    refused = refused or _refuse_replacing_a_file(args.output, args.overwrite)
    if refused:
        return _fail(refused)
    if args.scheduler:
        return _decode_on_cluster(args)
    state = None
    if args.state:
        state = _load_state(DecoderState, args.state, args.quiet or args.json)
    per_tensor = {} if args.max_tensor_elements is None else {"max_tensor_elements": args.max_tensor_elements}
    limits = Limits.for_stream(args.stream, **per_tensor)  # written one unit at a time
    with _errors_name(args.stream):
        dec = Decoder(args.stream, entry_points=args.entry_points, state=state, limits=limits)
    if not dec.names() and not (args.add_to and dec.skipped):  # (an update may skip every tensor)
        if dec.parent_signalling and not dec.skipped:
            return _fail(
                f"{args.stream}: an update that sends no tensor (all zero, spec 3.5): nothing written"
                + ("; the state file is unchanged" if args.state else "")
            )
        return _fail(f"{args.stream}: the stream holds no tensors; nothing written")
    if args.add_to:
        from .decoder import refuse_full_values
        from .errors import UpdateError

        try:
            refuse_full_values(dec, "decode it without --add-to")
        except UpdateError as exc:
            return _fail(f"--add-to: {args.stream}: {exc.message}")
    names = args.tensor or None
    missing = [n for n in names or [] if n not in dec.names()]
    if missing:
        return _fail(f"no tensor named {missing[0]!r} in {args.stream}")
    onnx_file = _writes_onnx(args.output)  # (None: an extension the writer will refuse, naming it)
    if args.template and onnx_file is False:
        return _fail(f"--template {args.template}: a template is for ONNX output only, not {args.output}")
    if not args.template and onnx_file:
        return _fail(f"{args.output}: writing ONNX needs the original model as a template (--template ORIGINAL.onnx)")
    if onnx_file and names and set(names) != set(dec.names()):
        return _fail(
            f"{args.output}: an ONNX output holds every weight of its template, and --tensor selects "
            f"{len(set(names))} of the stream's {len(dec.names())}: decode them all, or to .safetensors, .npz or .pt"
        )
    if args.add_to:
        from .readers import open_model

        with _errors_name(args.add_to):
            held = open_model(args.add_to)
        _note_left_out(
            args.add_to, held.left_out, args.quiet or args.json, "written (the output holds the tensors alone)"
        )
        # tensors the sender's model no longer has (an update names every tensor it keeps, spec 3.5)
        named = set(dec.names()) | set(dec.skipped)
        gone = [t.name for t in held if t.name not in named]
    bar = _DecodeBar(args.quiet or args.json)
    try:
        # differences written as they are leave the state file as it was: it moves on with the model (--add-to)
        kept_state = args.state if args.add_to or not dec.differences else None
        unasked = () if args.overwrite or is_directory_target(args.output) else (args.output,)
        with _state_saved_after(kept_state, state), _errors_name(args.stream), new_files_only(*unasked):
            summary = decode_to_path(
                dec,
                args.output,
                names=names,
                threads=args.threads,
                progress=bar,
                add_to=args.add_to,
                template=args.template,
                inputs={"stream": args.stream, "--state file": args.state},
                overwrite=args.overwrite,
            )
    finally:
        bar.close()
    summary = dict(stream=str(args.stream), output=args.output, **summary)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        files = summary["files"]
        where = files[0] if len(files) == 1 else f"{args.output} ({len(files)} files)"
        print(f"{where}: {summary['tensors']} tensors, {summary['weights']} weights")
    if args.add_to and gone:
        _tell(
            args.quiet or args.json,
            f"nnc: note: {args.add_to}: {len(gone)} tensor(s) the update does not name are written as they are: "
            f"{_first_few(gone)}",
        )
    if dec.differences and not args.add_to and not args.quiet:
        print(
            f"nnc: note: {args.stream} holds differences to a model (encoded with --differences): written as "
            "they are; give --add-to MODEL to apply them"
            + (f" (the state file {args.state} is unchanged: it moves on with the model)" if args.state else ""),
            file=sys.stderr,
        )
    _note_narrow_in_npz(dec, args)
    return EXIT_OK


def _note_narrow_in_npz(dec, args) -> None:
    """A note naming the bfloat16 / float8 tensors an .npz output holds as float32 (not with -q or --json)."""
    narrow = _narrow_in_npz(dec, args.output)
    if narrow:
        _tell(
            args.quiet or args.json,
            f"nnc: note: .npz has no bfloat16 or float8: {_first_few(narrow)} written as float32 (the same values); "
            "a .safetensors or .pt output keeps the dtype",
        )


def _narrow_in_npz(dec, output) -> list:
    """The bfloat16 / float8 tensors of a stream that an .npz output (one file, not a folder) holds as float32."""
    from .decoder import recorded_dtype
    from .formats import FormatError, format_from_extension
    from .writers import is_directory_target

    try:
        if is_directory_target(output) or format_from_extension(output) != "npz":
            return []
    except FormatError:
        return []
    return [
        t.name for t in dec.tensors() if narrow_floats.is_narrow(str(recorded_dtype(dec.metadata, t.name, t.dtype)))
    ]


def _writes_onnx(output) -> bool | None:
    """Whether ``output`` is an ONNX file (a folder is not: a stream recording an ONNX model is refused there,
    and any other is written as safetensors); None for a file of an unknown extension."""
    from .formats import FormatError, format_from_extension
    from .writers import is_directory_target

    if is_directory_target(output):
        return False
    try:
        return format_from_extension(output) == "onnx"
    except FormatError:  # an unknown extension: the writer names it
        return None


class _DecodeBar:
    """tqdm progress of a decode in bytes written, with tensors done and an ETA; silent under -q, and where stderr
    is not a terminal (:func:`_progress_bar`)."""

    def __init__(self, quiet: bool):
        self.bar: Any = None  # a tqdm bar (tqdm has no type information), made at the first event
        self.quiet = quiet

    def __call__(self, event) -> None:
        if self.quiet:
            return
        if self.bar is None:
            self.bar = _progress_bar(
                event.bytes_total, "B", "decoding", False, postfix=f"{event.tensors_done}/{event.tensors_total} tensors"
            )
        self.bar.set_postfix_str(f"{event.tensors_done}/{event.tensors_total} tensors", refresh=False)
        self.bar.update(event.bytes_done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- compare ---------------------------------------------------------------------------


class _OneAtATime(Mapping):
    """A model's tensors read when asked for and not kept (``nnc compare`` holds two tensors, not two models): a
    model file's from its reader, a stream's decoded unit by unit (the other tensors of a unit are kept until
    asked for); each read advances ``bar``."""

    def __init__(self, names, load, bar=None):
        self.names, self.load, self.bar = list(names), load, bar
        self.known = set(self.names)

    def __getitem__(self, name):
        if name not in self.known:
            raise KeyError(name)
        array = self.load(name)
        if self.bar is not None:
            self.bar.update()
        return array

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)

    def __contains__(self, name):
        return name in self.known


def _read_model_or_stream(path, threads: int, quiet: bool = True, stack=None):
    """(lazy {name: array}, {name: dtype name}) of a model file, or of an NNC stream's decoding with shapes and
    dtypes restored (bfloat16 and float8 tensors are float32 arrays named by their format in the dtypes); see
    :class:`_OneAtATime`. A stream's decoding shows a progress bar over its tensors (on a terminal, unless
    ``quiet``), closed with ``stack`` (a ``contextlib.ExitStack``)."""

    from .decoder import Decoder, Limits, model_order, restore_model_view
    from .errors import DecodeError

    if os.path.isdir(path) or str(path).endswith(".index.json") or not _is_stream_file(path):
        from .readers import open_model

        source = open_model(path)  # a file, or a checkpoint folder or index
        _note_left_out(path, source.left_out, quiet, "compared")
        by_name = {t.name: t for t in source}
        return _OneAtATime(by_name, lambda name: by_name[name].load()), source.dtypes
    with _errors_name(path):
        # (pages read as the units are decoded; a tensor or a unit at a time, as a decoding to files)
        dec = Decoder(path, limits=Limits.for_stream(path))  # (the file memory-mapped: nnc.decoder.map_file)
    if dec.differences:
        _tell(quiet, f"nnc: note: {path} holds differences to a model (an update): its values are the changes")
    held: dict = {}  # decoded tensors of units not yet asked for (a bias the reference lists far from its weight)
    dtypes: dict = {}
    units: dict = {}
    for t in dec.tensors():
        units.setdefault(t.unit_index, []).append(t.name)

    def load(name):
        try:
            with _errors_name(path):
                if name not in held:
                    if sum(a.nbytes for a in held.values()) > 1 << 28:  # (at most 256 MB kept: else decoded again)
                        held.clear()
                    held.update(dec.iter_tensors(units[dec.info(name).unit_index], threads=threads))
                view, restored = restore_model_view({name: held.pop(name)}, dec.metadata)
        except DecodeError as exc:
            if exc.clause != "14":
                raise
            raise DecodeError(  # (nnc.Decoder's advice, a DecoderState, is not a command's)
                f"{os.fspath(path)}: an update coded with temporal context adaptation decodes only after its parent "
                "stream: decode the sequence with nnc decode --state FILE, then compare the decoded model",
                clause="14",
            ) from None
        dtypes.update(restored)
        return view[name]

    bar = _progress_bar(len(dec.names()), "tensor", f"decoding {Path(path).name}", quiet)
    if stack is not None:
        stack.callback(bar.close)
    return _OneAtATime(model_order(dec.names(), dec.metadata), load, bar), dtypes


def _finite_json(value):
    """``value`` with infinite floats as the strings "inf" / "-inf" (JSON has no infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    return value


def _plotting_unavailable(args) -> str | None:
    """Why ``--plot`` cannot be honoured (matplotlib missing), checked before any work; None if it can."""
    if not getattr(args, "plot", None):
        return None
    try:
        from .plots import _pyplot

        plt = _pyplot()
    except ImportError as exc:
        return f"--plot {args.plot}: {exc}"
    kinds = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    suffix = Path(args.plot).suffix.lower().lstrip(".")
    if suffix not in kinds:
        return f"--plot {args.plot}: give a file name ending in one of .{', .'.join(sorted(kinds))}"
    inputs = {k: getattr(args, k, None) for k in ("model", "reference", "other")}
    return _refuse_overwriting_inputs(args.plot, inputs)


def cmd_compare(args) -> int:
    """``nnc compare``: fails (exit 1) on a tensor in only one of the two, another shape or dtype, an integer
    tensor that differs, inf or NaN against another value, or a total SNR below ``--min-snr``."""
    from .errors import DecodeError
    from .models import compare_tensors

    def read(path, bars):
        try:
            return _read_model_or_stream(path, args.threads, quiet, bars)
        except DecodeError as exc:  # restoring the recorded dtypes (spec 6.2.1) fails outside its decoding
            if exc.message.startswith(f"{os.fspath(path)}: "):
                raise
            raise type(exc)(f"{os.fspath(path)}: {exc.message}", clause=exc.clause, offset=exc.offset) from exc

    if problem := _plotting_unavailable(args) or _not_a_regular_file(args.reference) or _not_a_regular_file(args.other):
        return _fail(problem)
    quiet = args.quiet or args.json
    with contextlib.ExitStack() as bars:  # tensor by tensor: a stream's decoding has its own bar
        reference, reference_dtypes = read(args.reference, bars)
        other, other_dtypes = read(args.other, bars)
        result = compare_tensors(reference, other, reference_dtypes, other_dtypes)
    total = result["total"]
    problems = (
        [f"{len(result['missing'])} tensor(s) missing: {', '.join(result['missing'][:5])}"] if result["missing"] else []
    )
    if result["extra"]:  # the models differ, whichever is given first
        problems.append(f"{len(result['extra'])} tensor(s) only in {args.other}: {', '.join(result['extra'][:5])}")
    problems += [
        f"{m['name']}: shape {tuple(m['shape'])} against {tuple(m['other_shape'])}" for m in result["shape_mismatches"]
    ]
    problems += [f"{name}: not equal (not a float tensor, so it should be exact)" for name in total["exact_mismatches"]]
    rows = {row["name"]: row for row in result["tensors"]}
    problems += [
        f"{name}: {rows[name]['nonfinite_mismatches']} inf or NaN value(s) against another value"
        for name in total["nonfinite_mismatches"]
    ]
    problems += [
        f"{name}: dtype {rows[name]['dtype']} against {rows[name]['other_dtype']}" for name in total["dtype_mismatches"]
    ]
    below = args.min_snr is not None and not total["snr_db"] >= args.min_snr
    if below:
        problems.append(f"total SNR {total['snr_db']:.2f} dB is below --min-snr {args.min_snr} dB")
    result["passed"] = not problems
    if args.plot and not problems:  # a failed comparison writes nothing
        from .plots import compare_figure

        compare_figure(result, reference, other, args.plot, title=f"{args.other} against {args.reference}")
        result["plot"] = str(args.plot)
    elif args.plot:
        problems.append(f"--plot {args.plot} not written: the comparison failed")
    if args.json:
        print(json.dumps(_finite_json(result), indent=2))
    elif not args.quiet:
        print(f"{'name':<48} {'shape':>16} {'SNR dB':>8} {'max |error|':>12}")
        print("-" * 87)
        for row in result["tensors"]:
            shape = "x".join(map(str, row["shape"])) or "scalar"
            dtype = f"  dtype {row['dtype']} against {row['other_dtype']}" if row["dtype"] != row["other_dtype"] else ""
            if "snr_db" in row:
                print(
                    f"{_shown_name(row['name'])[:48]:<48} {shape[:16]:>16} {row['snr_db']:>8.2f} "
                    f"{row['max_abs_error']:>12.4g}" + dtype
                )
            else:
                verdict = "DIFFERS" if not row["equal"] else "DTYPE" if dtype else "exact"
                print(f"{_shown_name(row['name'])[:48]:<48} {shape[:16]:>16} {verdict:>8} {'':>12}" + dtype)
        print(
            f"total: {total['weights']} float weights, SNR {total['snr_db']:.2f} dB"
            + (f"; {len(result['extra'])} tensor(s) only in {args.other}" if result["extra"] else "")
        )
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
        shape and dtype as coded, ``original_shape`` and ``original_dtype`` as the model had
        them (spec 6.2.1: a 0-d tensor is coded with shape [1]), ``payload_type``, qp, step,
        ``dq``, ``scan_order``, ``n_gtx``, ``codebook_size`` (None without a codebook),
        ``row_skip`` (always None: the flag sits in the CABAC payload after the qp offset,
        spec 8.3, which ``info`` does not decode), ``block`` (the members of its BLOCK NDU),
        ``tied_to``, ``size``, ``unit_index`` into ``units``, ``ndu_index`` among the NDUs,
        ``unit_bytes`` and ``header_bytes`` (its NDU's size and the part before the payload),
        bits per weight, whether it updates a parent (``parent``, ``parent_id``) and with TCA,
        and ``needs_parent``: an update coded with TCA, which decodes only after its parent,
        so that its qp can be unknown (None)...), ``weights``, ``bits_per_weight``, ``ratio_fp32``.

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
    from .decoder import Decoder, Limits
    from .errors import DecodeError

    dec = Decoder(path, limits=Limits.for_stream(path))  # headers only
    unit_at = {u.offset: i for i, u in enumerate(dec.units)}
    by_unit: dict[int, list[str]] = {}
    for t in dec.tensors():
        by_unit.setdefault(t.unit_index, []).append(t.name)
    needs_parent = set()
    for names in by_unit.values():
        try:
            dec.read_qps(names)  # the qp offsets, not the levels (but those of a block NDU's first members)
        except DecodeError as exc:
            if exc.clause != "14":
                raise
            needs_parent.update(names)  # a block NDU's members coded with TCA need the parent's levels (spec 14)
    for t in dec.tensors():
        if dec.units[unit_at[t.unit_offset]].header.get("temporal_context_modeling_flag"):
            needs_parent.add(t.name)  # an update coded with TCA decodes only after its parent
    units = [dict(index=i, type=u.type_name, offset=u.offset, size=u.size) for i, u in enumerate(dec.units)]
    sizes = {t.name: t.size for t in dec.tensors()}
    tensors: list[dict[str, Any]] = []
    for t in dec.tensors():
        h = dec.units[unit_at[t.unit_offset]].header
        unit_bytes = 0 if t.tied_to else t.unit_size  # (a tied tensor is its coded tensor's bytes)
        # a block unit's bytes shared by element count (a bias is not charged half of its weight's bytes)
        share = unit_bytes * t.size / max(sum(sizes[n] for n in t.block) if t.block else t.size, 1)
        tensors.append(
            dict(
                name=t.name,
                shape=list(t.shape),
                dtype=t.dtype,
                payload_type=t.payload_type,
                qp=t.qp,
                step=t.step,
                dq=t.dq,
                scan_order=t.scan_order,
                n_gtx=t.n_gtx,
                codebook_size=len(t.codebook) if t.codebook else None,
                row_skip=None,  # (the flag follows the qp offset in the CABAC payload, spec 8.3: not read here)
                unit_index=unit_at.get(t.unit_offset),
                ndu_index=t.unit_index,
                unit_bytes=unit_bytes,
                block=list(t.block),
                header_bytes=0 if t.tied_to else dec.units[unit_at[t.unit_offset]].payload_offset - t.unit_offset,
                bits_per_weight=None if t.tied_to else 8 * share / max(t.size, 1),
                tied_to=t.tied_to,
                size=t.size,
                parent=bool(h.get("parent_node_id_present_flag")),
                parent_id=_parent_id_text(h),
                tca=bool(h.get("temporal_context_modeling_flag")),
                needs_parent=t.name in needs_parent,
            )
        )
    n = sum(t.size for t in dec.tensors() if not t.tied_to)  # (a tied tensor's weights are its coded tensor's)
    total = len(dec.data)
    profile = next((int(u.header.general_profile_idc) for u in dec.units if u.type_name == "NNR_STR"), None)
    original = _original_dtypes(tensors, dec.metadata)
    original_bytes = sum(row["size"] * _dtype_bytes(original[row["name"]]) for row in tensors if not row["tied_to"])
    for row in tensors:
        row["original_dtype"] = original[row["name"]]
        row["original_shape"] = _original_shape(row, dec.metadata)
        if row["size"] == 0:
            row["bits_per_weight"] = None
        del row["size"]
    return dict(
        bytes=total,
        profile=profile,
        units=units,
        tensors=tensors,
        weights=n,
        bits_per_weight=8 * total / n if n else None,
        ratio_fp32=4 * n / max(total, 1),
        original_bytes=original_bytes,
        ratio_original=original_bytes / max(total, 1),
        skipped=list(dec.skipped),
        differences=dec.differences,
        engine=_engine_name(),
    )


def _engine_name() -> str:
    """The engine that runs ("cython" or "python"), for ``nnc info``."""
    from .engine import engine_name

    return engine_name()


def _parent_id_text(header) -> str | None:
    """How an NDU names its parent (spec 7.4): ``"ids"``, ``"sha256:HEX"``, ``"sha512:HEX"``; None without one."""
    if not header.get("parent_node_id_present_flag"):
        return None
    kind = header.get("parent_node_id_type")
    if kind in (1, 2):
        digest = header.get("parent_node_payload_sha256" if kind == 1 else "parent_node_payload_sha512")
        return f"sha{256 * kind}:{bytes(digest).hex()}"
    return "ids" if kind == 0 else f"type {kind}"


def _original_dtypes(tensors, metadata) -> dict:
    """The model's own dtype of each tensor (from the stream's metadata, spec 6.2.1), else the decoded one."""
    from .decoder import restorable_dtype

    recorded = metadata.get("dtypes") if isinstance(metadata.get("dtypes"), dict) else {}
    return {t["name"]: restorable_dtype(recorded.get(t["name"])) or str(t["dtype"]) for t in tensors}


def _original_shape(row: dict, metadata: dict) -> list:
    """The model's own shape of a tensor (from the stream's metadata, spec 6.2.1: 0-d tensors are coded as 1-d)."""
    from .decoder import recorded_shape

    recorded = recorded_shape(metadata, row["name"], row["size"])
    return list(row["shape"]) if recorded is None else list(recorded)


def _shape_text(shape) -> str:
    """A shape as ``nnc info`` prints it: ``4x4``, ``10``, or ``scalar`` for a 0-d tensor."""
    return "x".join(map(str, shape)) if len(shape) else "scalar"


def _dtype_bytes(name: str) -> int:
    """Bytes per element of a dtype name (bfloat16 and float8 included); 4 for a name no tensor is restored to."""
    from .decoder import restorable_dtype

    restorable = restorable_dtype(name)
    return 4 if restorable is None else narrow_floats.itemsize(restorable)


def cmd_info(args) -> int:
    refused = _not_a_stream(args.stream)
    if refused:
        return _fail(refused)
    with _errors_name(args.stream):
        info = stream_info(args.stream)
    if args.json:  # (with -q too, as every command's --json: a pipeline reads it)
        print(json.dumps(info, indent=2))
        return EXIT_OK
    if args.quiet:
        return EXIT_OK
    print(
        f"{args.stream}: {info['bytes']} bytes, profile {info['profile']}, {len(info['units'])} units, "
        f"{len(info['tensors'])} tensors, {info['weights']} weights (read by the {info['engine']} engine)"
    )
    width = max([4] + [len(_shown_name(t["name"])) for t in info["tensors"]])  # whole names: rows never read the same
    header = (
        f"{'name':{width}} {'shape':>16} {'dtype':>8} {'type':>9} {'qp':>5} {'dq':>3} {'book':>5} {'scan':>4} "
        f"{'bytes':>8} {'header':>6} {'bits/w':>7}"
    )
    print(header)
    print("-" * len(header))
    for t in info["tensors"]:
        qp = t["qp"] if t["qp"] is not None else ("?" if t["needs_parent"] else "")
        bits = "-" if t["bits_per_weight"] is None else f"{t['bits_per_weight']:.3f}"
        if t["tied_to"]:
            print(
                f"{_shown_name(t['name']):{width}} {_shape_text(t['original_shape']):>16} {t['original_dtype']:>8} "
                f"{'tied to':>9} {_shown_name(t['tied_to'])}"
            )
            continue
        print(
            f"{_shown_name(t['name']):{width}} {_shape_text(t['original_shape']):>16} {t['original_dtype']:>8} "
            f"{t['payload_type']:>9} {qp:>5} {('on' if t['dq'] else 'off'):>3} {t['codebook_size'] or '':>5} "
            f"{t['scan_order']:>4} "
            f"{t['unit_bytes']:>8} {t['header_bytes']:>6} {bits:>7}"
        )
    if info["weights"]:
        print(
            f"total: {info['bits_per_weight']:.3f} bits/weight, {_times_smaller(info['ratio_original'])} "
            f"the original {info['original_bytes']} bytes"
        )
    else:
        print("total: no weights")
    if info["skipped"]:
        print(
            f"an incremental update: {len(info['skipped'])} tensor(s) skipped (all zero in it, spec 3.5): "
            f"{_first_few(info['skipped'])}"
        )
    if info["differences"]:
        print("its tensors are differences to the receiver's model (nnc decode --add-to MODEL)")
    tied = [t["name"] for t in info["tensors"] if t["tied_to"]]
    if tied:
        print(f"{len(tied)} tensor(s) tied to another (one copy stored, spec 6.2.1): {_first_few(tied)}")
    if any(t["needs_parent"] for t in info["tensors"]):
        print(
            "an update coded with temporal context adaptation: it decodes only after its parent "
            "(nnc decode --state); a qp '?' is known only then"
        )
    return EXIT_OK


# -- verify ----------------------------------------------------------------------------


class _CountingDecoder:
    """A verify adapter that advances a progress bar after each stream; everything else is the adapter's."""

    def __init__(self, run, bar):
        self._run, self._bar = run, bar

    def __call__(self, data, sequence):
        try:
            return self._run(data, sequence)
        finally:
            self._bar.update()

    def __getattr__(self, name):
        return getattr(self._run, name)


def cmd_verify(args) -> int:
    from .verify import CommandAdapter, format_table, read_manifest, verify_suite

    suite = Path(args.suite)
    if not suite.is_dir():
        return _fail(f"{suite}: no such folder (give the conformance suite's folder)")
    if not (suite / "manifest.json").exists():
        return _fail(f"{suite}: no manifest.json (not a conformance suite)")
    if args.decoder_command is not None and args.decoder is not None:
        _usage_error("give --decoder or --decoder-command, not both")
    if args.decoder_command is not None and not args.decoder_command.strip():
        _usage_error("--decoder-command is empty")
    if args.timeout is not None and args.decoder_command is None:
        _usage_error("--timeout is for a --decoder-command; give one too")

    from .verify import DECODERS

    groups, names = args.group or None, args.stream or None
    manifest = read_manifest(suite)
    total = sum(
        1
        for e in manifest.get("streams", [])
        if (not groups or e.get("group") in groups) and (not names or e.get("name") in names)
    )
    try:
        try:
            decoder = (
                CommandAdapter(args.decoder_command, timeout=600.0 if args.timeout is None else args.timeout)
                if args.decoder_command is not None
                else DECODERS[args.decoder or "nnc"]()
            )
        except ValueError as exc:
            _usage_error(f"--decoder-command: {exc}")
        bar = _progress_bar(total, "stream", "verifying", args.quiet or args.json)
        try:
            results = verify_suite(suite, _CountingDecoder(decoder, bar), groups=groups, names=names)
        finally:
            bar.close()
            if hasattr(decoder, "close"):
                decoder.close()
    except RuntimeError as exc:
        return _fail(str(exc))
    if args.json:  # (a skipped stream neither passed nor failed; with -q too, as every command's --json)
        print(
            json.dumps(
                [dict(r.__dict__, passed=r.passed and not _skipped(r), skipped=_skipped(r)) for r in results], indent=2
            )
        )
    elif args.quiet:
        for r in results:
            if not r.passed:
                print(f"nnc: {r.name}: FAIL {r.detail}", file=sys.stderr)
    else:
        print(format_table(results))
    decoding = [r for r in results if r.group != "must-fail"]
    if decoding and all(_skipped(r) for r in decoding):
        return _fail(f"{suite}: every stream to decode was skipped (the decoder implements none): nothing verified")
    if results and all(_skipped(r) for r in results):  # (--group must-fail, --stream of one)
        return _fail(f"{suite}: every stream was skipped (the decoder implements none): nothing verified")
    skipped = [r.name for r in results if _skipped(r)]
    if skipped and all(r.passed for r in results):  # (conformance asks for every stream of a group, spec 15.4)
        return _fail(
            f"{suite}: {len(skipped)} stream(s) skipped (the decoder does not implement them: {_first_few(skipped)}): "
            "conformance is not shown; --group or --stream selects what the decoder implements"
        )
    return EXIT_OK if all(r.passed for r in results) else EXIT_FAIL


def _skipped(result) -> bool:
    """Whether a verify result is a stream the decoder under test said it does not implement."""
    return result.passed and result.detail.startswith("skipped")


# -- bench ---------------------------------------------------------------------------


def _progress_bar(total: int, unit: str, desc: str, quiet: bool, *, leave: bool = False, **options):
    """The one kind of progress bar of the commands: tqdm on stderr, shown only on a terminal (tqdm's
    ``disable=None``) and never with -q or --json; ``unit="B"`` counts bytes in KiB, MiB, ..."""
    from tqdm import tqdm

    if unit == "B":
        options.update(unit_scale=True, unit_divisor=1024)
    return tqdm(
        total=total,
        unit=unit,
        desc=desc,
        disable=True if quiet else None,
        leave=leave,
        file=sys.stderr,
        dynamic_ncols=True,
        **options,
    )


def _stage_bar(total: int, quiet: bool):
    """A progress bar over a command's stages."""
    return _progress_bar(total, "step", "", quiet, bar_format="{desc:<28} {n_fmt}/{total_fmt} [{elapsed}] {bar:20}")


def _float_snr(tensors, decoded) -> float:
    """Total weight SNR (dB) of ``decoded`` over the float tensors of ``tensors``."""
    from .models import compare_tensors

    floats = {k: v for k, v in tensors.items() if np.asarray(v).dtype.kind == "f"}
    return compare_tensors(floats, decoded)["total"]["snr_db"]


def _peer_rows(tensors, result, n_weights, quiet, bar=None, external=False):
    """Lossless coders on the same uniform indices, and the values of the tensors nnc stores raw (``--vs``).

    ``bar`` (a tqdm bar from :func:`_stage_bar`) advances by one per coder.  The lossless
    coders code nnc's indices, so their SNR is nnc's.  NNCodec is compared through
    ``--vs-command`` (``external``: one is given): nnc never imports the oracle in tools/.
    """
    import bz2
    import lzma

    def stage(name):
        if bar is not None:
            bar.set_description_str(name)

    rows = []
    idx = [t.levels for t in result.tensors.values() if t.levels is not None]
    raw = b"".join(
        np.asarray(v, np.int32).astype(np.int16 if np.abs(v).max(initial=0) < 2**15 else np.int32).tobytes()
        for v in idx
    )
    # the tensors nnc stores raw or exactly count too, as their values (before: left out, yet divided by every weight)
    raw += b"".join(np.asarray(t.reconstruction).tobytes() for t in result.tensors.values() if t.levels is None)
    peers = [
        ("idx+lzma-6", lambda b: lzma.compress(b, preset=6), lzma.decompress),
        ("idx+bz2-9", lambda b: bz2.compress(b, 9), bz2.decompress),
    ]
    try:
        import zstandard

        peers.append(
            ("idx+zstd-19", zstandard.ZstdCompressor(level=19).compress, zstandard.ZstdDecompressor().decompress)
        )
    except ImportError:
        if not quiet:
            print("(zstd skipped: pip install zstandard)", file=sys.stderr)
    for name, comp, decomp in peers:
        stage(name)
        t0 = time.perf_counter()
        blob = comp(raw)
        t1 = time.perf_counter()
        decomp(blob)
        t2 = time.perf_counter()
        rows.append(
            dict(
                coder=name,
                bytes=len(blob),
                bits_per_weight=8 * len(blob) / n_weights,
                encode_s=t1 - t0,
                decode_s=t2 - t1,
            )
        )
        if bar is not None:
            bar.update()
    if not quiet and not external:  # nnc stands alone: the NNCodec oracle lives in the repository's tools/
        print('(NNCodec: --vs-command "python tools/nncodec_encoder.py ..." in a checkout)', file=sys.stderr)
    return rows


#: Exit status of a ``--vs-command`` that says its coder is not available here (a skip; automake's SKIP).
EXIT_COMMAND_UNAVAILABLE = 77


class _CommandFailed(Exception):
    """A ``--vs-command`` failed: the message is the one line the user sees."""


class ExternalEncoder:
    """An external encoder run as a command, once per qp (``nnc bench --vs-command``).

    The encoder-command protocol: ``template`` is split as a POSIX shell would split it,
    and in each word ``{model}`` (the model file), ``{qp}`` (the qp, an integer), ``{dq}``
    (1 or 0) and ``{out}`` (a path in a temporary folder) are replaced (``{{``/``}}`` are
    literal braces).  The command writes an NNC stream to ``{out}`` and exits 0; it exits
    with status 77 when its coder is not available here, the reason on stderr (nnc bench
    then skips it, saying why).  Anything else fails the bench with the last line of the
    command's stderr.  nnc decodes the stream with its own decoder: the coder's rate is the
    stream's size, its quality the SNR of that decoding.

    Parameters
    ----------
    template : str
        The command line with placeholders; ``{model}``, ``{qp}`` and ``{out}`` are required.
    model : str or path-like
        The model file passed as ``{model}``.
    dq : bool
        Passed as ``{dq}``.

    Raises
    ------
    ValueError
        If the template cannot be split or names an unknown placeholder or lacks a required one.

    Examples
    --------
    >>> import sys
    >>> cmd = ExternalEncoder(sys.executable + " enc.py {model} --qp={qp} -o {out}", "m.safetensors", True)
    >>> cmd.argv(-38, "/tmp/s.nnr")[1:]
    ['enc.py', 'm.safetensors', '--qp=-38', '-o', '/tmp/s.nnr']
    >>> ExternalEncoder("enc {model} {out}", "m", True)
    Traceback (most recent call last):
        ...
    ValueError: --vs-command needs the placeholder {qp}
    """

    PLACEHOLDERS = ("model", "qp", "dq", "out")
    REQUIRED = ("model", "qp", "out")

    def __init__(self, template: str, model, dq: bool):
        import shlex
        import string

        try:
            self.words = shlex.split(template)
        except ValueError as exc:
            raise ValueError(f"--vs-command cannot be split: {exc}") from None
        if not self.words:
            raise ValueError("--vs-command is empty")
        used = set()
        for word in self.words:
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(word) if f is not None]
            except ValueError as exc:
                raise ValueError(f"--vs-command word {word!r}: {exc}") from None
            for field in fields:
                if field not in self.PLACEHOLDERS:
                    known = ", ".join(f"{{{p}}}" for p in self.PLACEHOLDERS)
                    raise ValueError(f"--vs-command has an unknown placeholder {{{field}}} (known: {known})")
                used.add(field)
        for field in self.REQUIRED:
            if field not in used:
                raise ValueError(f"--vs-command needs the placeholder {{{field}}}")
        self.model, self.dq = str(model), dq

    def argv(self, qp: int, out) -> list:
        """The command line for one run."""
        values = dict(model=self.model, qp=qp, dq=int(self.dq), out=str(out))
        return [word.format(**values) for word in self.words]

    def encode(self, qp: int, out) -> tuple:
        """Run the command for ``qp``: (stream bytes, seconds), or (None, reason) when it skips.

        Raises :class:`_CommandFailed` when the command fails.
        """
        import subprocess

        argv = self.argv(qp, out)
        t0 = time.perf_counter()
        try:  # in a session of its own: interrupted, nnc ends the command's children too
            run = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=hasattr(os, "killpg"),
            )
        except OSError as exc:
            raise _CommandFailed(f"--vs-command: cannot run {argv[0]!r}: {exc.strerror or exc}") from None
        try:
            _, stderr = run.communicate()
        except BaseException:
            _end_process_group(run)
            raise
        seconds = time.perf_counter() - t0
        said = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
        last = said[-1][:300] if said else "(nothing on stderr)"
        if run.returncode == EXIT_COMMAND_UNAVAILABLE:
            return None, last
        if run.returncode != 0:
            raise _CommandFailed(f"--vs-command failed at qp {qp} (exit status {run.returncode}): {last}")
        path = Path(out)
        if not path.is_file() or path.stat().st_size == 0:
            raise _CommandFailed(f"--vs-command exited 0 at qp {qp} but wrote no stream to {out}")
        return path.read_bytes(), seconds


def _end_process_group(process) -> None:
    """Kill a command started in a session of its own, with every process it started, and reap it."""
    import signal

    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except OSError:  # (already gone)
        pass
    process.wait()


def _external_point(external, label, tensors, qp, threads, tmp, n) -> dict:
    """The external coder's bench row at ``qp`` (bytes, bits per weight, SNR of nnc's decoding)."""
    from .decoder import decode
    from .errors import NNCError

    stream, seconds = external.encode(qp, Path(tmp) / f"qp{qp}.nnr")
    if stream is None:
        return dict(skipped=seconds)
    try:
        decoded = decode(stream, threads=threads)
    except NNCError as exc:
        raise _CommandFailed(f"--vs-command's stream at qp {qp} does not decode: {exc}") from None
    common = [k for k in decoded if k in tensors]
    if not common:
        raise _CommandFailed(f"--vs-command's stream at qp {qp} holds none of the model's tensors")
    dropped = [k for k, v in tensors.items() if k not in decoded and np.asarray(v).dtype.kind == "f" and np.size(v)]
    if dropped:  # its bytes and SNR would be those of part of the model
        raise _CommandFailed(
            f"--vs-command's stream at qp {qp} leaves out {len(dropped)} of the model's float tensors "
            f"({_first_few(dropped)}): it cannot be compared"
        )
    for name in common:  # a coder may not keep 0-d shapes (NNCodec codes them as (1,))
        want = np.shape(tensors[name])
        if decoded[name].shape != want and decoded[name].size == int(np.prod(want)):
            decoded[name] = decoded[name].reshape(want)
    return dict(
        coder=label,
        bytes=len(stream),
        bits_per_weight=8 * len(stream) / n,
        encode_s=seconds,
        decode_s=None,
        snr_db=_float_snr(tensors, decoded),
    )


#: qp offsets from --qp swept by ``nnc bench --plot``.
PLOT_QP_OFFSETS = (-8, -4, 0, 4, 8)
#: Stages of --vs after nnc itself: lzma, bz2, zstd (a bar's total, not a promise).
_PEER_STAGES = 3


def _rate_snr_curves(tensors, args, n, bar, external=None) -> dict:
    """{coder: [(bits per weight, SNR dB), ...]} over the qps of ``nnc bench --plot``.

    ``external`` is ``(ExternalEncoder, label, temporary folder)`` for ``--vs-command``.
    """
    from .decoder import decode
    from .encoder import Encoder

    curves: dict = {}
    for offset in PLOT_QP_OFFSETS:
        qp = args.qp + offset
        bar.set_description_str(f"sweep qp {qp}: nnc")
        result = Encoder(qp=qp, dq=args.dq, scan_order=args.scan_order, threads=args.threads).encode(tensors)
        snr = _float_snr(tensors, decode(result.stream, threads=args.threads))
        curves.setdefault("nnc" + (" DQ" if args.dq else ""), []).append((8 * len(result.stream) / n, snr))
        bar.update()
        if args.vs:
            for row in _peer_rows(tensors, result, n, True, bar):
                curves.setdefault(row["coder"], []).append((row["bits_per_weight"], row.get("snr_db", snr)))
        if external is not None:
            command, label, tmp = external
            bar.set_description_str(f"sweep qp {qp}: {label}")
            row = _external_point(command, label, tensors, qp, args.threads, tmp, n)
            if "skipped" not in row:
                curves.setdefault(label, []).append((row["bits_per_weight"], row["snr_db"]))
            bar.update()
    return curves


def cmd_bench(args) -> int:
    import contextlib
    import tempfile

    from . import models
    from .decoder import decode
    from .encoder import Encoder
    from .errors import EncodeError

    if problem := _plotting_unavailable(args):
        return _fail(problem)
    external = None
    if args.vs_label is not None and args.vs_command is None:
        _usage_error("--vs-label names the --vs-command coder; give --vs-command too")
    label = args.vs_label or "external"
    if args.vs_command is not None:
        try:
            external = ExternalEncoder(args.vs_command, args.model, args.dq)
        except ValueError as exc:
            _usage_error(str(exc))
    threads = args.threads or os.cpu_count() or 1
    per_qp = 1 + (_PEER_STAGES if args.vs else 0) + (external is not None)
    stages = 1 + (threads > 1) + (_PEER_STAGES if args.vs else 0) + (external is not None)
    stages += len(PLOT_QP_OFFSETS) * per_qp if args.plot else 0
    skipped: dict = {}
    try:  # the bar is closed and the temporary folder removed before an error is printed
        with contextlib.ExitStack() as stack:
            bar = _stage_bar(stages, args.quiet or args.json)
            stack.callback(bar.close)
            bar.set_description_str("reading the model")
            tensors = models.load_model(args.model)[0]  # (the lazy readers' checks: one parser per format)
            n = sum(int(np.asarray(v).size) for v in tensors.values())
            if n == 0:
                return _fail(f"{args.model}: the model holds no weights to measure")
            external_rows: list = []
            if external is not None:  # first, so that a failing command fails the bench early
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="nnc-bench-"))
                bar.set_description_str(label)
                row = _external_point(external, label, tensors, args.qp, args.threads, tmp, n)
                bar.update()
                if "skipped" in row:
                    skipped[label] = row["skipped"]
                    bar.total -= len(PLOT_QP_OFFSETS) if args.plot else 0
                    external = None
                else:
                    external_rows.append(row)
            settings = dict(qp=args.qp, dq=args.dq, scan_order=args.scan_order)
            bar.set_description_str("nnc")
            t0 = time.perf_counter()
            with _errors_name(args.model, EncodeError):  # (a tensor nnc cannot code: the model's)
                result = Encoder(**settings).encode(tensors)
            t1 = time.perf_counter()
            decoded = decode(result.stream)
            t2 = time.perf_counter()
            rows: list[dict[str, Any]] = [
                dict(
                    coder="nnc",
                    bytes=len(result.stream),
                    bits_per_weight=8 * len(result.stream) / n,
                    encode_s=t1 - t0,
                    decode_s=t2 - t1,
                    snr_db=_float_snr(tensors, decoded),
                )
            ]
            del decoded
            bar.update()
            if threads > 1:
                bar.set_description_str(f"nnc {threads} threads")
                t0 = time.perf_counter()
                Encoder(**settings, threads=threads).encode(tensors)
                t1 = time.perf_counter()
                decode(result.stream, threads=threads)
                rows.append(
                    dict(rows[0], coder=f"nnc {threads} threads", encode_s=t1 - t0, decode_s=time.perf_counter() - t1)
                )
                bar.update()
            if args.vs:
                rows += _peer_rows(tensors, result, n, args.quiet, bar, external=args.vs_command is not None)
            rows += external_rows
            with_external = (external, label, tmp) if external is not None else None
            curves = _rate_snr_curves(tensors, args, n, bar, with_external) if args.plot else None
    except _CommandFailed as exc:
        return _fail(str(exc))
    if curves is not None:
        from .plots import rate_snr_figure

        rate_snr_figure(
            curves,
            args.plot,
            title=f"{Path(args.model).name}: rate against weight SNR "
            f"(qp {args.qp + PLOT_QP_OFFSETS[0]} ... {args.qp + PLOT_QP_OFFSETS[-1]})",
        )
    for r in rows:
        r["encode_mw_s"] = n / r["encode_s"] / 1e6 if r["encode_s"] else None
        r["decode_mw_s"] = n / r["decode_s"] / 1e6 if r["decode_s"] else None
    for label, reason in skipped.items():
        if not args.quiet:
            print(f"({label} skipped: {reason})", file=sys.stderr)
    if args.json:
        report = dict(model=str(args.model), weights=n, rows=rows, skipped=skipped)
        if curves is not None:
            report.update(plot=str(args.plot), curves={k: [list(p) for p in v] for k, v in curves.items()})
        print(json.dumps(_finite_json(report), indent=2))
        return EXIT_OK
    print(f"{args.model}: {n} weights, qp {args.qp}, dq {'on' if args.dq else 'off'} (one run; machines are noisy)")
    print(f"{'coder':16} {'bytes':>10} {'bits/w':>7} {'SNR dB':>7} {'enc Mw/s':>9} {'dec Mw/s':>9}")
    for r in rows:
        snr = r.get("snr_db", rows[0]["snr_db"])  # the lossless coders code nnc's indices
        speeds = " ".join("        -" if r[k] is None else f"{r[k]:>9.2f}" for k in ("encode_mw_s", "decode_mw_s"))
        print(f"{r['coder'][:16]:16} {r['bytes']:>10} {r['bits_per_weight']:>7.3f} {snr:>7.2f} {speeds}")
    return EXIT_OK


# -- demo ----------------------------------------------------------------------------


def cmd_demo(args) -> int:
    from . import demo

    rows = demo.run(out=(lambda *a: None) if args.json else print)
    if args.json:
        print(json.dumps(rows, indent=2))
    return EXIT_OK


# -- parser --------------------------------------------------------------------------


def _engine_line() -> str:
    """Which entropy-coding engine runs by default, for ``nnc --version``: "engine cython (compiled)"."""
    from . import engine

    try:
        name = engine.engine_name()
    except (ImportError, ValueError) as exc:  # asked for an engine that is not built or not known
        return f"engine unavailable: {exc}"
    return f"engine {name} ({'compiled' if name == 'cython' else 'pure Python'})"


def _empty_value(parser: argparse.ArgumentParser, args) -> str | None:
    """The first option (or argument) of ``args`` given as an empty string, by the name the user typed; None."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if value == "" or (isinstance(value, list) and "" in value):
            return "/".join(action.option_strings) if action.option_strings else str(action.metavar or action.dest)
    return None


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    """{command: its parser} of ``nnc``'s parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


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
    parser.add_argument("--version", action="version", version=f"nnc {__version__}, {_engine_line()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, help_text):
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOGS.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")
        quiet = (
            "no progress, notes or warnings (the results table still prints: it is the output)"
            if name in ("bench", "demo")
            else "print nothing but errors"
        )
        p.add_argument("-q", "--quiet", action="store_true", help=quiet)
        return p

    p = add("encode", "Encode a model (safetensors, PyTorch, ONNX or npz) into an NNC stream.")
    p.add_argument(
        "model",
        help="model file (the format is detected from its content), or a sharded "
        "checkpoint: its folder or its model.safetensors.index.json",
    )
    p.add_argument(
        "-o",
        "--output",
        help="output stream, or an existing folder to write MODEL's name with .nnr in (default: MODEL with .nnr); "
        "an existing stream is replaced, a model file never",
    )
    q = p.add_mutually_exclusive_group()
    q.add_argument("--qp", type=int, help="global quantisation parameter (default -38)")
    q.add_argument("--step", type=float, help="target step size, mapped to the nearest qp")
    p.add_argument(
        "--dq",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="dependent (trellis) quantisation (default: on)",
    )
    p.add_argument(
        "--scan-order",
        type=int,
        default=None,
        choices=range(5),
        help="0 row-major, 1-4 block scans (default: 4 for tensors of at least 2^20 elements and more "
        "than 64 rows, else 0)",
    )
    p.add_argument("--n-gtx", type=int, default=11, help="greater-than flags N, 1-256 (default 11)")
    p.add_argument("--qp-density", type=int, default=2, help="qp steps per octave as a power of two (default 2)")
    p.add_argument(
        "--tensor-qp",
        action="append",
        metavar="PATTERN=QP",
        help="per-tensor qp by name or glob (repeatable; the first pattern that matches a tensor applies)",
    )
    p.add_argument(
        "--nonweight-qp",
        type=int,
        help="qp of tensors of at most one dimension (a (1, n) one keeps the weights' qp; default: the weights' qp)",
    )
    p.add_argument(
        "--nonweight-snr",
        type=float,
        metavar="DB",
        help="least SNR of a 1-D tensor (also shaped (1, n)) whose qp no option names: coded at a finer qp when the "
        "weights' would leave it under this (default: 20; 0: off)",
    )
    p.add_argument("--raw", action="append", metavar="PATTERN", help="store matching tensors uncompressed")
    p.add_argument(
        "--lossless-int",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="code integer tensors losslessly (default: on)",
    )
    p.add_argument(
        "--blocks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pair every X.weight with its X.bias in block units (default: where NNCodec does too)",
    )
    p.add_argument(
        "--raw-when-smaller",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store a tensor as float32 when coding it would not make it smaller (default: on)",
    )
    p.add_argument(
        "--tie-shared",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="store tensors that share one storage (tied weights) once, as nnc metadata records (default: on; "
        "other decoders then give only the first)",
    )
    p.add_argument("--profile", type=int, default=1, choices=(0, 1), help="1: 2nd edition (default), 0: 1st")
    p.add_argument("--no-param-opt", action="store_true", help="do not optimise context initialisation")
    p.add_argument(
        "--row-skip",
        action="store_true",
        help="2nd edition: skip all-zero rows of the tensors coded without DQ (--no-dq, integer tensors)",
    )
    p.add_argument(
        "--codebook",
        choices=tuple(CODEBOOK_MODES),
        default="few",
        help="codebooks (spec A.8): 'few' (default) for float tensors of at most 256 distinct values where smaller, "
        "decoded in their own dtype; 'auto' for any float tensor where smaller, 'always' for every one (both "
        "decode as float64, and encode in memory); 'never'",
    )
    p.add_argument(
        "--rdoq",
        type=_non_negative_number,
        metavar="LAMBDA",
        nargs="?",
        const=_RDOQ_DEFAULT,
        help="rate-distortion quantisation with this lambda (squared steps per bit; 0.1 if "
        "omitted, chosen by benchmarks/bench_rd.py), with or without DQ",
    )
    p.add_argument(
        "--lambda",
        dest="lam",
        type=_non_negative_number,
        metavar="LAMBDA",
        help="the lambda of rate-distortion quantisation (implies --rdoq)",
    )
    p.add_argument(
        "--tensor-lambda",
        action="append",
        metavar="PATTERN=LAMBDA",
        help="per-tensor rate-distortion lambda by name or glob (repeatable; the first pattern that matches a "
        "tensor applies)",
    )
    p.add_argument(
        "--importance",
        metavar="FILE",
        help="a model file of per-weight importances F (same names and shapes), weighting the "
        "squared error of --rdoq (scaled to mean 1 per tensor) and of --target-snr (e.g. an empirical "
        "Fisher diagonal)",
    )
    p.add_argument(
        "--target-snr",
        type=_positive_number,
        metavar="DB",
        help="bit allocation: per-tensor qps with the fewest estimated bits for this SNR, each "
        "tensor's error measured against its own scale (importance-weighted with --importance); "
        "--tensor-qp still wins",
    )
    p.add_argument(
        "--sigmas",
        metavar="FILE",
        help="DC-v1: a model file of per-weight standard deviations (same names); sets each "
        "tensor's step by eq. 12 and, with --rdoq, the importance 1/sigma^2",
    )
    p.add_argument(
        "--covariances",
        metavar="FILE",
        help="a model file of input covariances E[x x^T] per weight (an (n, n) matrix for a weight with n inputs, "
        "nnc.torch.input_covariances): those weights are quantised with error feedback (spec A.16)",
    )
    p.add_argument(
        "--dcv1-s", type=_non_negative_int, metavar="S", help="with --sigmas: DC-v1's global integer S (default 64)"
    )
    p.add_argument(
        "--search",
        metavar="MODULE:FUNCTION",
        help="DC-v2: find the smallest stream whose score (FUNCTION(decoded tensors): a number, or "
        "better one score per sample; higher is better) stays within --tolerance of the "
        "original's; ignores --qp/--step/--rdoq",
    )
    p.add_argument("--tolerance", type=float, help="with --search: allowed score drop (default 0.005)")
    p.add_argument(
        "--check",
        metavar="MODULE:FUNCTION",
        help="with --search: a second score on other data; the result must also stay within "
        "--tolerance of the original's on it (a guard against fitting --search's data)",
    )
    p.add_argument(
        "--check-moves",
        action="store_true",
        help="with --check: check each stream the per-tensor refinement moves to, not only its "
        "result, so that the refinement stays where the check holds (one check per move taken)",
    )
    p.add_argument("--time-budget", type=float, metavar="SECONDS", help="with --search: stop after this time")
    p.add_argument("--workers", type=int, help="with --search: worker processes (default 1)")
    p.add_argument(
        "--threads",
        type=_non_negative_int,
        metavar="N",
        help="tensors quantised and coded (with --target-snr also measured) at a time, same stream for every N, "
        "more memory for larger N (default: one per CPU; with --search --workers > 1: 1 per worker)",
    )
    p.add_argument(
        "--state",
        metavar="FILE",
        help="incremental coding: the sender's state file (created if missing, updated after the "
        "stream is written); a model whose tensors it holds is coded as an update to them",
    )
    p.add_argument(
        "--tca",
        action=argparse.BooleanOptionalAction,
        help="with --state: temporal context adaptation in updates (default: on)",
    )
    p.add_argument(
        "--hdsp",
        action="store_true",
        help="with --state: history-dependent significance in updates (NNCodec cannot decode them)",
    )
    p.add_argument(
        "--parent-id",
        choices=("sha256", "sha512", "ids"),
        help="with --state: how an update names its parent: the SHA-256 (default) or SHA-512 of the parent's "
        "payload, so that a receiver refuses it with another model's state (32 or 64 bytes per tensor), or node "
        "ids alone (a few bits)",
    )
    p.add_argument(
        "--differences",
        action="store_true",
        help="with --state: MODEL is the whole new model; an update codes its difference to the model "
        "the receiver holds (kept in the state file), so errors do not pile up",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS|local:N",
        help="encode on a Dask cluster (pip install 'dask[distributed]'): a scheduler address, or local:N for "
        "N local worker processes; the workers read MODEL themselves (shared filesystem)",
    )
    p.set_defaults(func=cmd_encode)

    p = add("decode", "Decode an NNC stream into a model file.")
    p.add_argument("stream", help="NNC stream")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output model: .npz, .safetensors, .pt (.pth, .bin, .ckpt) or .onnx, or a folder (existing, or ending in /) to "
        "restore the checkpoint layout the stream records (shards, index), else model.safetensors there",
    )
    p.add_argument("--template", help="for .onnx output: the original model whose initializers are replaced")
    p.add_argument("--tensor", action="append", help="decode only this tensor (repeatable)")
    p.add_argument(
        "--entry-points",
        choices=("ignore", "use", "verify"),
        default="ignore",
        help="how to treat transmitted entry points (default: ignore, decode sequentially)",
    )
    p.add_argument(
        "--max-tensor-elements",
        type=_non_negative_int,
        metavar="N",
        help="accept tensors of up to N elements (default 2**31 - 1, the decoder's limit against hostile streams)",
    )
    p.add_argument(
        "--threads",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="decode N units at a time (default 0: one per CPU; 1: one after another)",
    )
    p.add_argument(
        "--state",
        metavar="FILE",
        help="incremental decoding: the receiver's state file (created if missing, updated after "
        "the output is written); decode a base stream and its updates in order with one file",
    )
    p.add_argument(
        "--add-to",
        metavar="MODEL",
        help="the stream is an update of differences: write MODEL (a file, a checkpoint folder or its index) plus "
        "the decoded update (to -o folder/: in MODEL's own shards and index)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output file, or files of the names the stream gives in an output folder (by "
        "default refused: they may be the original model's)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS|local:N",
        help="decode on a Dask cluster (pip install 'dask[distributed]'): a scheduler address, or local:N for "
        "N local worker processes; the workers read STREAM themselves (shared filesystem)",
    )
    p.set_defaults(func=cmd_decode)

    p = add(
        "info",
        "Describe the units and tensors of an NNC stream from its headers and qp offsets (the levels are not "
        "decoded: nnc decode or nnc compare check them).",
    )
    p.add_argument("stream", help="NNC stream")
    p.set_defaults(func=cmd_info)

    p = add("compare", "Compare a model with another or with an NNC stream's decoding: error and SNR per tensor.")
    p.add_argument("reference", help="the original model (or stream)")
    p.add_argument("other", help="the model or NNC stream to compare with it (formats detected from content)")
    p.add_argument(
        "--min-snr",
        type=_finite_number,
        metavar="DB",
        help="fail (exit status 1) if the total weight SNR over float tensors is below DB",
    )
    p.add_argument(
        "--threads",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="threads for decoding a stream (default 0: one per CPU)",
    )
    p.add_argument(
        "--plot",
        type=_path,
        metavar="FILE",
        help="also draw per-tensor SNR and an error histogram into FILE (PNG; needs matplotlib); "
        "not written when the comparison fails",
    )
    p.set_defaults(func=cmd_compare)

    p = add("verify", "Decode every stream of a conformance suite and print a pass/fail table.")
    p.add_argument("suite", help="suite directory (with manifest.json), e.g. conformance/")
    p.add_argument(
        "--decoder",
        default=None,
        choices=("nnc", "nnc-python", "nnc-random-access", "nnc-python-random-access", "nnc-api", "nnc-python-api"),
        help="nnc's decoder under test (default nnc; *-random-access: also each tensor on its own, from its entry points; "
        "*-api: also with threads, into caller arrays, through iter_tensors and from the entry points)",
    )
    p.add_argument(
        "--decoder-command",
        metavar="CMD",
        help="verify an external decoder instead: a command speaking the JSON-lines protocol of "
        'nnc.verify.CommandAdapter (NNCodec: "python tools/nncodec_decoder.py" in a checkout)',
    )
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=None,
        metavar="S",
        help="with --decoder-command: seconds to wait for each stream's reply before the stream fails (default 600)",
    )
    p.add_argument(
        "--group", action="append", help="only this group (profile-0, profile-1, must-fail, third-party; repeatable)"
    )
    p.add_argument("--stream", action="append", help="only this stream (repeatable)")
    p.set_defaults(func=cmd_verify)

    p = add("bench", "Time encoding and decoding of a model; with --vs, compare with other coders.")
    p.add_argument("model", help="model file")
    p.add_argument("--qp", type=int, default=-38, help="quantisation parameter (default -38)")
    p.add_argument(
        "--dq", action=argparse.BooleanOptionalAction, default=True, help="dependent quantisation (default: on)"
    )
    p.add_argument(
        "--scan-order",
        type=int,
        default=None,
        choices=range(5),
        help="0 row-major, 1-4 block scans (default: as nnc encode's)",
    )
    p.add_argument("--vs", action="store_true", help="also run lzma, bz2, zstd (if installed) on the same indices")
    p.add_argument(
        "--threads",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="also time encoding and decoding with N threads (default 0: one per CPU)",
    )
    p.add_argument(
        "--plot",
        type=_path,
        metavar="FILE",
        help="also sweep qp from QP-8 to QP+8 in steps of 4 and draw rate against weight SNR "
        "for nnc, the lossless coders and --vs-command into FILE (PNG; needs matplotlib)",
    )
    p.add_argument(
        "--vs-command",
        metavar="CMD",
        help="also compare with an external encoder, run once per qp (at QP and at each qp of --plot): "
        "CMD is split as a shell would and {model}, {qp}, {dq} (1 or 0) and {out} in it are replaced; it "
        "writes an NNC stream to {out} and exits 0, or exits 77 when its coder is not available here "
        "(skipped, saying why). Its rate is the stream's size, its SNR that of nnc's decoding. "
        'NNCodec, in a checkout: "python tools/nncodec_encoder.py {model} {qp} {out} --dq {dq}"',
    )
    p.add_argument(
        "--vs-label",
        metavar="NAME",
        help="the --vs-command coder's name in the table and the plot (default: external)",
    )
    p.set_defaults(func=cmd_bench)

    p = add("demo", "Encode, decode and evaluate the bundled digits models.")
    p.set_defaults(func=cmd_demo)
    return parser


@contextlib.contextmanager
def _warnings_as_lines(quiet: bool):
    """nnc's own warnings (the search's) as one ``nnc: warning:`` line each, none with ``--quiet``; others as usual."""
    import warnings

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not os.path.abspath(filename).startswith(os.path.dirname(os.path.abspath(__file__))):
            return shown(message, category, filename, lineno, file, line)
        if not quiet:
            print(f"nnc: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that its partial outputs are removed as on Ctrl-C."""


#: The words of a signal held while outputs were renamed into place, raised once they all were.
_AFTER_OUTPUTS = "after its outputs were written (they are complete)"


@contextlib.contextmanager
def _terminate_as_interrupt():
    """While the command runs (in the main thread): SIGTERM (``kill``, ``timeout``, a batch scheduler) raises
    :class:`_Terminated` instead of ending the process where it stands, temporary files and all; SIGTERM and
    SIGINT (Ctrl-C) also stop the engine's loops in worker threads (``_threads.note_interrupt``), so that the
    command ends within moments rather than after the tensors in flight."""
    import signal
    import threading

    from ._files import forget_held_signals, hold_signal
    from ._threads import note_interrupt

    received: list = []  # the signals' exception types, to raise one the code it hit dropped
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def terminate(signum, frame):
        note_interrupt()
        received.append(_Terminated)
        if not hold_signal(_Terminated(_AFTER_OUTPUTS)):  # (renames under way: raised after them)
            raise _Terminated()

    def interrupt(signum, frame):
        note_interrupt()
        received.append(KeyboardInterrupt)
        if not hold_signal(KeyboardInterrupt(_AFTER_OUTPUTS)):
            raise KeyboardInterrupt()

    previous = signal.signal(signal.SIGTERM, terminate)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:  # (an ignored SIGINT, as in background jobs, stays ignored)
        signal.signal(signal.SIGINT, interrupt)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)
        note_interrupt(False)
        forget_held_signals()


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
    args, unknown = parser.parse_known_args(argv)
    command = _subparsers(parser).get(getattr(args, "command", None) or "", parser)
    if unknown:  # said by the command's own parser, with its own usage line
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    empty = _empty_value(command, args)
    if empty:  # ('' would read as "not given", or as the current folder)
        _usage_error(f"{empty} is empty: give a value, or leave the option out")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    for option, attr in (
        ("the output (-o)", "output"),
        ("the model", "model"),
        ("the stream", "stream"),
        ("the reference", "reference"),
        ("the other model or stream", "other"),
    ):
        if getattr(args, attr, None) == "-":  # a file named "-" would be written or read, not a pipe
            command.error(f"{option} cannot be '-': nnc reads and writes files, not standard input or output")
    _return_large_frees_to_the_system()
    try:
        with _terminate_as_interrupt() as received, _warnings_as_lines(bool(getattr(args, "quiet", False))):
            code = args.func(args)
            if received:  # raised where Python drops exceptions (a weakref callback, __del__): said here
                raise received[0](_AFTER_OUTPUTS)
            return code
    except NNCError as exc:
        return _fail(str(exc))
    except BrokenPipeError:  # the reader of our output went away (| head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAIL
    except OSError as exc:  # one without a file name (a full disk) is the output's, or else the input's
        where = exc.filename or next(
            (v for v in (getattr(args, a, None) for a in ("output", "model", "stream")) if isinstance(v, str)), ""
        )
        return _fail(f"{where}: {exc.strerror or exc}")
    except KeyError as exc:
        return _fail(str(exc.args[0]) if exc.args else str(exc))
    except _Terminated as exc:
        return _fail("terminated (SIGTERM)" + (f" {_AFTER_OUTPUTS}" if exc.args == (_AFTER_OUTPUTS,) else ""))
    except KeyboardInterrupt as exc:
        return _fail("interrupted" + (f" {_AFTER_OUTPUTS}" if exc.args == (_AFTER_OUTPUTS,) else ""))
    except (MemoryError, RuntimeError) as exc:  # an input larger than memory (/dev/zero read whole): one line
        no_thread = isinstance(exc, RuntimeError)  # ("can't start new thread": no memory for its stack)
        if no_thread and "new thread" not in str(exc):
            raise
        inputs = [
            v for v in (getattr(args, a, None) for a in ("model", "reference", "stream", "other")) if isinstance(v, str)
        ]
        where = f"{', '.join(inputs)}: " if inputs else ""
        why = (
            "no memory to start another thread: try --threads 1"
            if no_thread
            else "an input larger than this machine's memory?"
        )
        return _fail(f"{where}out of memory ({why}); nothing written")
    finally:
        for lock in list(_STATE_LOCKS):  # (a command that failed before saving its state)
            _unlock(lock)


def _return_large_frees_to_the_system() -> None:
    """With glibc, arrays of 1 MiB or more are mapped and unmapped on their own, so that a freed tensor's memory goes
    back to the system at once. Without this glibc raises its threshold to the largest block freed (up to 32 MiB),
    and blocks below it come from per-thread heaps that keep freed memory: a streamed update of 16 MiB tensors grew
    403 MB instead of 210 (benchmarks/results/incremental_memory.md). Elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    from .readers import _libc

    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):  # (musl has it too, and ignores the setting)
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (set: no dynamic threshold)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "build_parser", "load_callable", "stream_info"]
