"""NNCodec 2.1.3 as a black-box oracle: a JSON-lines worker run by the oracle venv's python.

    .oracle-venv/bin/python tools/oracle/nncodec_worker.py

Requests (one JSON object per line on stdin), replies on stdout:
  {"op": "compress", "npz": IN, "out": OUT, "options": {...}, "time_repeats": n}
  {"op": "decompress", "in": IN, "npz": OUT, "time_repeats": n}
  {"op": "ping"}
With "sequence": ID, compress and decompress keep NNCodec's incremental state (its
approx_param_base, one for encoding and one for decoding per ID) across requests.
NNCodec's own prints, Python's and its C++ core's, go to stderr.  Nothing here is NNCodec code: it only calls
its public compress()/decompress() functions.
"""

import contextlib
import json
import os
import sys
import time
import traceback
import types


def _stub_torchvision():
    """NNCodec imports torchvision for dataset helpers only; give it inert modules."""
    import torch  # noqa: F401  (must be imported before the stubs)

    class _Meta(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Inert

    class _Inert(metaclass=_Meta):
        def __init__(self, *a, **k):
            pass

        def __call__(self, *a, **k):
            return _Inert()

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Inert()

    class _StubModule(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Inert

    root = _StubModule("torchvision")
    sys.modules["torchvision"] = root
    for sub in ("transforms", "datasets", "models"):
        mod = _StubModule(f"torchvision.{sub}")
        sys.modules[mod.__name__] = mod
        setattr(root, sub, mod)


def stream_profile(data: bytes):
    """general_profile_idc of a stream whose first unit is a start unit (spec 3.2, 3.3, 4.1), else None."""
    if len(data) < 2:
        return None
    long_size = data[0] >> 7  # nnr_unit_size_flag: a 31-bit size in 4 bytes, else 15 bits in 2
    at = 4 if long_size else 2
    if len(data) <= at or data[at] >> 2 != 0:  # nnr_unit_type 0: NNR_STR
        return None
    at += 2 if data[at] & 1 else 1  # (partial_data_counter_present_flag: one more byte)
    return data[at] if len(data) > at else None


def main():
    # The protocol gets a private copy of fd 1; fd 1 itself then points at stderr, so that
    # prints from NNCodec's C++ core (which write to fd 1 directly) cannot corrupt it.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _stub_torchvision()
    import numpy as np
    from nncodec import nnc

    request_id = [None]  # the id of the request being answered (nnc.verify's protocol), echoed in its reply

    def reply(obj):
        if request_id[0] is not None:
            obj = dict(obj, id=request_id[0])
        out.write(json.dumps(obj) + "\n")
        out.flush()

    bases = {}

    def base_of(req, side):
        """NNCodec's per-sequence base-parameter state (None outside a sequence)."""
        if not req.get("sequence"):
            return None
        return bases.setdefault((side, req["sequence"]), {"parameters": {}, "put_node_depth": {}, "device_id": 0,
                                                          "parameter_id": {}})

    reply({"ok": True, "ready": True})
    for line in sys.stdin:
        if not line.strip():
            continue
        request_id[0] = None
        try:
            req = json.loads(line)
            request_id[0] = req.get("id") if isinstance(req, dict) else None
            op = req.get("op")
            repeats = max(1, int(req.get("time_repeats", 1)))
            if op == "ping":
                reply({"ok": True})
            elif op == "compress":
                with np.load(req["npz"]) as z:
                    tensors = {k: z[k] for k in z.files}
                options = dict(req.get("options", {}))
                options.update(bitstream_path=None, return_bitstream=True, verbose=False)
                if base_of(req, "enc") is not None:
                    options.update(approx_param_base=base_of(req, "enc"), update_base_param=True)
                times, stream = [], None
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    with contextlib.redirect_stdout(sys.stderr):
                        stream = nnc.compress(dict(tensors), **options)
                    times.append(time.perf_counter() - t0)
                with open(req["out"], "wb") as fh:
                    fh.write(bytes(stream))
                reply({"ok": True, "seconds": times})
            elif op == "decompress":
                with open(req["in"], "rb") as fh:
                    data = bytearray(fh.read())
                if stream_profile(data) == 0:  # (it would read one as profile 1 and fail: not a rejection)
                    reply({"ok": False, "unsupported": "NNCodec 2.1.3 decodes profile 1 streams only (this is "
                                                       "profile 0, the 1st edition)"})
                    continue
                times, decoded = [], None
                for _ in range(repeats):
                    buf = bytearray(data)  # a persistent buffer, as the binding needs
                    t0 = time.perf_counter()
                    with contextlib.redirect_stdout(sys.stderr):
                        if base_of(req, "dec") is None:
                            decoded = nnc.decompress(buf, verbose=False)
                        else:
                            decoded = nnc.decompress(buf, verbose=False, approx_param_base=base_of(req, "dec"),
                                                     update_base_param=True)
                    times.append(time.perf_counter() - t0)
                np.savez(req["npz"], **{k: np.asarray(v) for k, v in decoded.items()})
                reply({"ok": True, "seconds": times, "names": list(decoded)})
            else:
                reply({"ok": False, "error": f"unknown op {op!r}"})
        except (Exception, SystemExit) as exc:  # NNCodec calls exit() on some inputs: report, keep serving
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]})


if __name__ == "__main__":
    main()
