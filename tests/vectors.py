"""Access to the shared NNCodec-written test vectors (../shared/vectors)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def vectors_dir() -> Path | None:
    env = os.environ.get("NNC_VECTORS")
    for cand in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "vectors", ROOT / "shared" / "vectors"]:
        if (cand / "edition1" / "manifest.json").exists():
            return cand
    return None


def manifests() -> list[tuple[Path, dict]]:
    """(directory, entry) for every vector of every manifest."""
    base = vectors_dir()
    if base is None:
        return []
    out = []
    for sub in ("edition1", "edition1/known-bad-entry-points", "edition2"):
        d = base / sub
        for entry in json.loads((d / "manifest.json").read_text()):
            out.append((d, entry))
    return out


def sha256_le(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(a.tobytes()).hexdigest()


def check_against_manifest(entry: dict, decoded) -> None:
    """Assert names (in order), shapes, dtypes and hashes equal the manifest's."""
    assert list(decoded) == [t["name"] for t in entry["tensors"]], entry["name"]
    for t in entry["tensors"]:
        a = np.asarray(decoded[t["name"]])
        assert str(a.dtype) == t["dtype"], (entry["name"], t["name"], a.dtype)
        assert list(a.shape) == t["shape"], (entry["name"], t["name"], a.shape)
        assert sha256_le(a) == t["sha256"], (entry["name"], t["name"])
