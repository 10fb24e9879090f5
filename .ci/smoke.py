"""Smoke test of an installed nnc: encode and decode the bundled digits models.

    python .ci/smoke.py OUT.json [--engine cython|python|default] [--expect-engine NAME]

Run it from outside the checkout, so that ``import nnc`` finds the installed package.
Each bundled model is encoded at a few settings and decoded; names, shapes and dtypes
must come back, the decoding must equal the encoder's reconstruction and keep a
sensible SNR.  OUT.json gets the SHA-256 of every stream and of every decoding, so that
runs on different Python versions (or engines) can be compared byte for byte.
Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import warnings
from pathlib import Path

SETTINGS = {
    "qp-38-dq": dict(qp=-38, dq=True),
    "qp-30-urq": dict(qp=-30, dq=False),
    "qp-38-dq-profile0": dict(qp=-38, dq=True, profile=0),
    "qp-34-dq-rdoq": dict(qp=-34, dq=True, rdoq_lambda=0.1),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--engine", default="default", help="cython, python or default (what nnc picks)")
    ap.add_argument("--expect-engine", help="fail unless the default engine is this one (cython or python)")
    args = ap.parse_args()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import nnc
        from nnc import engine as engine_mod
        from nnc.encoder import encode_with_reconstruction
        from nnc.formats import read_model
    import numpy as np

    here = Path(nnc.__file__).resolve().parent
    if Path.cwd().resolve() in here.parents and (Path.cwd() / "nnc" / "__init__.py").exists():
        print(f"smoke: run me outside the checkout (nnc imported from {here})", file=sys.stderr)
        return 1
    default = engine_mod.get_engine().__name__
    print(
        f"smoke: Python {platform.python_version()}, nnc {nnc.__version__} from {here}, default engine {default}, "
        f"{len(caught)} warning(s) at import: {[str(w.message)[:80] for w in caught]}"
    )
    if args.expect_engine:
        want = {"cython": "nnc._engine"}.get(args.expect_engine)
        if (want and default != want) or (not want and default == "nnc._engine"):
            print(f"smoke: FAILED: the default engine is {default}, expected {args.expect_engine}", file=sys.stderr)
            return 1
    engine = None if args.engine == "default" else args.engine

    failures, record = [], {}
    for model in sorted((here / "data" / "digits").glob("*.safetensors")):
        tensors, _ = read_model(model)
        for key, settings in SETTINGS.items():
            name = f"{model.stem}/{key}"
            options = dict(settings, engine=engine) if engine else dict(settings)
            result = encode_with_reconstruction(tensors, **options)
            decoded = nnc.decode(result.stream)
            digest = hashlib.sha256()
            for k, v in tensors.items():
                out = decoded.get(k)
                if out is None or out.shape != np.shape(v) or out.dtype != np.asarray(v).dtype:
                    failures.append(f"{name}: tensor {k} missing or of the wrong shape/dtype")
                    continue
                if not np.array_equal(out, result.reconstruction[k]):
                    failures.append(f"{name}: {k} differs from the encoder's reconstruction")
                digest.update(k.encode() + out.tobytes())
            w = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in tensors.values()])
            d = np.concatenate([np.ravel(np.asarray(decoded[k], np.float64)) for k in tensors])
            snr = 10 * np.log10(np.sum(w * w) / max(np.sum((w - d) ** 2), 1e-300))
            if not snr > 15:
                failures.append(f"{name}: SNR {snr:.1f} dB is implausibly low")
            record[name] = dict(
                stream_sha256=hashlib.sha256(result.stream).hexdigest(),
                decoded_sha256=digest.hexdigest(),
                bytes=len(result.stream),
                snr_db=round(snr, 6),
            )
            print(f"  {name:28} {len(result.stream):>7} bytes  SNR {snr:6.2f} dB  {record[name]['stream_sha256'][:16]}")
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    for f in failures:
        print(f"smoke: FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
