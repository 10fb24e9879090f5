"""How much the 1-D floor (spec A.7, ``nonweight_snr_db``, default 20 dB since the twenty-first session) changes the
streams of the Table I rows that were recorded before it: each model with a stored copy (magika, MiniLM-L6; silero-vad
and rapidocr when their packages are installed) at one global qp, with explicit blocks and λ 0.1 as Table I's sweeps,
floor on against off: bytes and the tensors it codes finer.

Usage: python benchmarks/probe_nonweight_floor_rows.py > benchmarks/results/nonweight_floor_rows.txt
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minilm_eval  # noqa: E402
import numpy as np  # noqa: E402
import packaged_models as pm  # noqa: E402

from nnc.encoder import Encoder  # noqa: E402

models = {}
for key in ("silero", "magika", "rapidocr"):
    try:
        models[key] = pm.PACKAGED[key]()[0]
    except Exception as e:
        print(key, "skipped:", e)
models["minilm"] = minilm_eval.load_float_tensors()[1]
for key, params in models.items():
    params = {k: np.asarray(v) for k, v in params.items()}
    for qp in (-30, -26, -22, -18):
        r = {}
        for floor in (20.0, 0):
            res = Encoder(qp=qp, rdoq_lambda=0.1, blocks=True, nonweight_snr_db=floor).encode(params)
            r[floor] = res
        moved = [k for k, t in r[20.0].tensors.items() if getattr(t, "qp", None) != getattr(r[0].tensors[k], "qp", None)
                 or getattr(t, "kept_raw", None) != getattr(r[0].tensors[k], "kept_raw", None)]
        a, b = len(r[20.0].stream), len(r[0].stream)
        print(f"{key} qp {qp}: floor {a} B, off {b} B, {100*(a-b)/b:+.3f} %, {len(moved)} tensors floored "
              f"({sum(np.size(params[k]) for k in moved)} values) {moved[:4]}", flush=True)
