"""Client of the NNCodec oracle worker (interoperability tests and benchmarks only).

    from tools.oracle.client import NNCodecOracle      # or: from oracle import NNCodecOracle (tests)
    if NNCodecOracle.available():
        with NNCodecOracle() as o:
            stream = o.compress({"w": array}, qp=-38, use_dq=True)
            tensors = o.decompress(stream)

The oracle lives in its own venv (tools/setup_oracle.sh); its python is found via
$NNC_ORACLE_PYTHON or <repo>/.oracle-venv/bin/python.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "nncodec_worker.py"


def oracle_python() -> Path:
    env = os.environ.get("NNC_ORACLE_PYTHON")
    return Path(env) if env else REPO / ".oracle-venv" / "bin" / "python"


class OracleError(RuntimeError):
    """NNCodec failed on a request (the message is NNCodec's)."""


class NNCodecOracle:
    _available: bool | None = None
    reason: str = ""

    @classmethod
    def available(cls) -> bool:
        if cls._available is None:
            py = oracle_python()
            if not py.exists():
                cls._available, cls.reason = False, f"no oracle python at {py} (run tools/setup_oracle.sh)"
            else:
                try:
                    r = subprocess.run([str(py), "-c", "import nncodec, torch"], capture_output=True, timeout=120)
                    cls._available = r.returncode == 0
                    cls.reason = "" if cls._available else r.stderr.decode(errors="replace").strip()[-300:]
                except (OSError, subprocess.TimeoutExpired) as exc:
                    cls._available, cls.reason = False, str(exc)
        return cls._available

    def __init__(self):
        if not self.available():
            raise OracleError(f"NNCodec oracle not available: {self.reason}")
        self._tmp = tempfile.TemporaryDirectory(prefix="nnc-oracle-")
        self._n = 0
        self._start()

    def _start(self):
        self._proc = subprocess.Popen([str(oracle_python()), str(WORKER)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        hello = self._proc.stdout.readline()
        if not hello:
            raise OracleError("the oracle worker did not start")

    def _path(self, suffix):
        self._n += 1
        return os.path.join(self._tmp.name, f"{self._n}{suffix}")

    def _call(self, req: dict) -> dict:
        if self._proc.poll() is not None:  # NNCodec crashed on an earlier request: start afresh
            self._start()
        try:
            self._proc.stdin.write(json.dumps(req) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self._proc.wait()
            raise OracleError(f"the oracle worker died (exit status {self._proc.returncode})")
        rep = json.loads(line)
        if not rep.get("ok"):
            raise OracleError(rep.get("error") or rep.get("unsupported") or "unknown error")
        return rep

    def compress_timed(self, tensors, repeats: int = 1, sequence: str | None = None,
                       **options) -> tuple[bytes, list[float]]:
        """NNCodec's compress(); with ``sequence``, its incremental state for that id carries over."""
        npz, out = self._path(".npz"), self._path(".nnr")
        np.savez(npz, **{k: np.asarray(v) for k, v in tensors.items()})
        rep = self._call({"op": "compress", "npz": npz, "out": out, "options": options, "time_repeats": repeats,
                          "sequence": sequence})
        return Path(out).read_bytes(), rep["seconds"]

    def compress(self, tensors, sequence: str | None = None, **options) -> bytes:
        return self.compress_timed(tensors, 1, sequence, **options)[0]

    def decompress_timed(self, stream: bytes, repeats: int = 1, sequence: str | None = None):
        """NNCodec's decompress(); with ``sequence``, its incremental state for that id carries over."""
        src, npz = self._path(".nnr"), self._path(".npz")
        Path(src).write_bytes(bytes(stream))
        rep = self._call({"op": "decompress", "in": src, "npz": npz, "time_repeats": repeats, "sequence": sequence})
        with np.load(npz) as z:
            out = OrderedDict((k, z[k]) for k in rep["names"])
        return out, rep["seconds"]

    def decompress(self, stream: bytes, sequence: str | None = None) -> "OrderedDict[str, np.ndarray]":
        return self.decompress_timed(stream, 1, sequence)[0]

    def close(self):
        if self._proc and self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
