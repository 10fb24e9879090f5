"""Bias-correction probe (Nagel et al. 2019 with calibration data) on nnc's single-qp streams.

For each qp: encode (nnc defaults, or error feedback), decode (EncodeResult.reconstruction = what a decoder returns),
score on the scored and the held-out inputs; then add dB = (W - W^) mu_x to each corrected layer's decoded bias
(float, unquantised: "float") and score again; then re-encode the model with the corrected biases b + dB (the encoder
codes them as it codes biases by default: at the weight's qp, in BLOCK units where "auto" forms them) and score that
stream too ("coded"), with its bytes.  mu_x comes from the same calibration inputs as the covariances.

usage: python benchmarks/probe_bias_correction.py MODEL VARIANT SPEC [SPEC ...]   MODEL minilm|magika, VARIANT dense|sparse-70,
       SPEC d:QP (nnc defaults) or f:QP (error feedback)  (appends JSON lines to results.jsonl)
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parent.parent  # (run at fc60922; a copy of the tree, away from edits)
sys.path.insert(0, str(SRC / "benchmarks"))
sys.path.insert(0, str(SRC))

from nnc.encoder import Encoder  # noqa: E402
import nnc  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "bias_correction.jsonl"


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------------------------------------- MiniLM
def minilm(variant):
    import minilm_eval as me
    from bench_paper import Model, prune_and_finetune

    model_dir, dense = me.load_float_tensors()
    params = dense if variant == "dense" else prune_and_finetune(Model("m", dense, None, ""), 0.7, epochs=0).params
    score = me.MiniLMFidelity(model_dir, reference=dense)
    held = me.MiniLMFidelity(model_dir, reference=dense, sentences=me.HELD_OUT_SENTENCES)
    calib = me.MiniLMFidelity(model_dir, reference=dense, sentences=me.CALIBRATION_SENTENCES)
    covs = calib.input_covariances(params)
    means = {}
    keep = calib.mask.reshape(-1) > 0

    def record(name, x):
        means[name] = x.reshape(-1, x.shape[-1])[keep].astype(np.float64).mean(0)

    calib.embed(params, record)
    # weight -> (bias, how): y = x W^T + b
    layers = {w: (w[:-len("weight")] + "bias", "linear") for w in means}
    return dict(params=params, score=score, held=held, covs=covs, transposed=[], means=means, layers=layers)


# --------------------------------------------------------------------------------------------------------- magika
MAGIKA_BIAS = {  # weight name suffix -> bias name suffix (from the graph: MatMul/Conv -> Add)
    "jax2tf_get_logits_/Const:0": "MagikaV2/Dense_0/Reshape:0",
    "MagikaV2/Conv_0/transpose_3:0": "const_fold_opt__209",
    "jax2tf_get_logits_/Const_24:0": "MagikaV2/Dense_1/Reshape:0",
}


def magika(variant):
    import packaged_models as pm
    pm.REPO = Path("/work/main")   # magika's contents are read (git, read-only) from commit MAGIKA_FILES_COMMIT there
    from bench_paper import Model, prune_and_finetune

    dense, score, _ = pm.magika(seed=0)
    held = pm.magika(seed=1)[1]
    params = dense if variant == "dense" else prune_and_finetune(Model("m", dense, None, ""), 0.7, epochs=0).params
    cache = Path(tempfile.gettempdir()) / f"nnc_probe_magika_{variant}_calib.npz"  # (15 MB: out of the tree)
    if cache.exists():
        z = np.load(cache, allow_pickle=True)
        covs, means, transposed = z["covs"].item(), z["means"].item(), list(z["transposed"])
    else:
        sums = {}
        orig_add = pm.CovarianceRecorder.add

        def add(self, weight, rows):
            orig_add(self, weight, rows)
            sums[weight] = sums.get(weight, 0.0) + np.asarray(rows, np.float64).sum(0)

        pm.CovarianceRecorder.add = add
        try:
            calib_eval = pm.magika(seed=pm.CALIBRATION_SEED)[1]
            with pm.CovarianceRecorder() as rec:
                calib_eval(params)
        finally:
            pm.CovarianceRecorder.add = orig_add
        covs = rec.covariances()
        means = {k: sums[k] / rec.counts[k] for k in covs}
        transposed = sorted(k for k in rec.transposed if k in covs)
        np.savez(cache, covs=np.array(covs, dtype=object), means=np.array(means, dtype=object),
                 transposed=np.array(transposed))
    layers = {}
    for w in means:
        for ws, bs in MAGIKA_BIAS.items():
            if w.endswith(ws):
                b = [k for k in params if k.endswith(bs)]
                assert len(b) == 1, (w, b)
                layers[w] = (b[0], "matmul" if w in transposed else "conv")
    assert len(layers) == 3, layers
    return dict(params=params, score=score, held=held, covs=covs, transposed=transposed, means=means, layers=layers)


# ------------------------------------------------------------------------------------------------------------ core
def delta_bias(w, w_hat, mu, how):
    e = (np.asarray(w, np.float64) - np.asarray(w_hat, np.float64))
    if how == "linear":            # (out, in)
        return e @ mu
    if how == "matmul":            # (in, out)
        return mu @ e
    return e.reshape(e.shape[0], -1) @ mu  # conv (out, c, kh, kw), mu over patches in (c, kh, kw) order


def corrected(params_like, original, m):
    out = dict(params_like)
    for w, (b, how) in m["layers"].items():
        db = delta_bias(original[w], params_like[w], m["means"][w], how)
        out[b] = (np.asarray(params_like[b], np.float64) + db.reshape(np.shape(params_like[b]))).astype(np.float32)
    return out


def main():
    model, variant = sys.argv[1:3]
    specs = [(("defaults" if a[0] == "d" else "feedback"), int(a[2:])) for a in sys.argv[3:]]  # d:-27 f:-21
    t0 = time.perf_counter()
    m = (minilm if model == "minilm" else magika)(variant)
    params = m["params"]
    ref_s, ref_h = m["score"](params), m["held"](params)
    log(f"{model} {variant}: ref {100 * ref_s:.3f} / held {100 * ref_h:.3f}  setup {time.perf_counter() - t0:.0f}s")
    for w, (b, how) in m["layers"].items():
        log(f"  layer {w[-40:]} bias {b[-30:]} {how} |mu| {np.abs(m['means'][w]).mean():.3g}")
    for mode, qp in specs:
        opts = dict(dq=True, rdoq_lambda=0.1, nonweight_qp=None)
        if mode == "feedback":
            opts.update(covariances=m["covs"], covariance_transposed=m["transposed"])
        t1 = time.perf_counter()
        res = Encoder(qp=qp, **opts).encode(params)
        rec = {k: np.asarray(v) for k, v in res.reconstruction.items()}
        bias_info = {b: (res.tensors[b].payload_type, res.tensors[b].qp) for _, (b, _) in m["layers"].items()}
        fl = corrected(rec, params, m)
        # the corrected biases coded by the encoder: re-encode with b + dB (dB from this stream's W^)
        target = dict(params)
        for w, (b, how) in m["layers"].items():
            db = delta_bias(params[w], rec[w], m["means"][w], how)
            target[b] = (np.asarray(params[b], np.float64) + db.reshape(np.shape(params[b]))).astype(np.float32)
        res2 = Encoder(qp=qp, **opts).encode(target)
        rec2 = {k: np.asarray(v) for k, v in res2.reconstruction.items()}
        same_w = all(np.array_equal(rec2[w], rec[w]) for w in m["layers"])
        changed = [k for k in rec if not np.array_equal(rec2[k], rec[k])]
        bias_bytes = {}
        row = dict(model=model, variant=variant, mode=mode, qp=qp, bytes=len(res.stream), bytes_coded=len(res2.stream),
                   weights_same=same_w, changed=len(changed), bias_coding=bias_info)
        for tag, t in (("none", rec), ("float", fl), ("coded", rec2)):
            s, h = m["score"](t), m["held"](t)
            row[f"loss_{tag}"] = 100 * (ref_s - s)
            row[f"held_{tag}"] = 100 * (ref_h - h)
        # bias-only quantisation error, for scale
        row["bias_err_rms"] = {b[-25:]: float(np.sqrt(np.mean((rec[b] - params[b]) ** 2))) for _, (b, _) in
                               m["layers"].items()}
        row["db_rms"] = {b[-25:]: float(np.sqrt(np.mean((fl[b] - rec[b]) ** 2))) for _, (b, _) in
                         m["layers"].items()}
        row["seconds"] = time.perf_counter() - t1
        log(f"  {mode} qp {qp}: {row['bytes']} B (+{row['bytes_coded'] - row['bytes']} coded, w same {same_w}, "
            f"{len(changed)} changed)  loss none {row['loss_none']:.3f} float {row['loss_float']:.3f} "
            f"coded {row['loss_coded']:.3f} | held {row['held_none']:.3f} {row['held_float']:.3f} "
            f"{row['held_coded']:.3f}  ({row['seconds']:.0f}s)")
        with OUT.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
