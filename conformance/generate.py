"""Generator of the nnc conformance suite (deterministic: seeded inputs, fixed parameters).

    python conformance/generate.py              # (re)write conformance/streams, must-fail, manifest.json
    python conformance/generate.py --check      # regenerate in memory and compare with the files
    python conformance/generate.py --crosscheck # also decode profile-1 streams with NNCodec 2.1.3

Each stream is produced by a function below from seeded numpy data, either with the
nnc encoder or, for syntax the encoder never writes (LPS, performance maps, every
init set, incremental updates), by building units directly with the container and
the engine.  The expected output is what the normative decoder returns; profile-1
streams are cross-checked against NNCodec 2.1.3 where it can decode them.

A stream that must change gets a new name: never rewrite a published stream's bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import OrderedDict
from pathlib import Path

import construct as cs
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import nnc  # noqa: E402
from nnc import container as C  # noqa: E402
from nnc.decoder import model_order  # noqa: E402
from nnc.encoder import Encoder  # noqa: E402
from nnc.engine import get_engine  # noqa: E402
from nnc.verify import describe_output  # noqa: E402

SUITE_VERSION = 11  # versions 2 to 11 added streams (their entries say added_in); no earlier stream changed
STREAMS: "OrderedDict[str, dict]" = OrderedDict()


#: The suite version that streams registered from here on are published in (raised below).
ADDED_IN = 1


def stream(name, profile, purpose, features, group=None, **extra):
    """Register a stream builder."""

    def wrap(fn):
        STREAMS[name] = dict(name=name, profile=profile, purpose=purpose, features=features, build=fn,
                             group=group or f"profile-{profile}", added_in=ADDED_IN, **extra)
        return fn

    return wrap


def rng(seed):
    return np.random.default_rng(1000 + seed)


def laplace(r, shape, scale=0.02):
    return r.laplace(0, scale, shape).astype(np.float32)


def model(seed, shapes):
    r = rng(seed)
    return OrderedDict((name, laplace(r, shape, 0.05 if len(shape) <= 1 else 0.02)) for name, shape in shapes)


BASIC = [("conv.weight", (12, 6, 3, 3)), ("conv.bias", (12,)), ("fc.weight", (37, 50)), ("fc.bias", (37,))]


#: The encoder defaults the streams here were generated with; 0.2.0 changed them (issue 18),
#: and a conformance stream never changes its bytes.
#: 0.3.0 names an update's parent by the SHA-256 of its payload (spec 14.4); the streams here by node ids.
#: 0.3.0 codes tied weights once (spec 6.2.1 "tied"); no stream here before suite version 10 ties.
#: 0.3.0 codes a vector that its qp would leave under 20 dB at a finer qp (spec A.7); the streams here do not.
LEGACY_DEFAULTS = dict(
    nonweight_qp=-75, blocks=False, raw_when_smaller=False, skip_zero=True, parent_id="ids", tie_shared=False,
    nonweight_snr_db=None,
)


def legacy_encoder(**options):
    """An Encoder with ``options`` over the defaults of the streams here (``LEGACY_DEFAULTS``)."""
    return Encoder(**{**LEGACY_DEFAULTS, **options})


def enc(tensors, **options):
    """A stream of the encoder, with the topology unit of suites 1 and 2 (see ``frozen_topology``)."""
    return frozen_topology(legacy_encoder(**options).encode(tensors).stream)


def enc_current(tensors, **options):
    """A stream as the encoder wrote it for suite versions 3 to 5: its tensors announced by name (spec 3.5)."""
    return announced_by_name(enc_today(tensors, **options))


def enc_today(tensors, **options):
    """A stream exactly as today's encoder writes it (since suite version 6 a count can announce the tensors)."""
    return legacy_encoder(**options).encode(tensors).stream


def announced_by_name(stream: bytes) -> bytes:
    """``stream`` with a topology unit that announces a count of tensors (6.2.1) rewritten to announce their
    names in the model's order, as the encoder did before suite version 6, and without the keys added after
    suite version 6 (``SUITE_6_LATER_KEYS``): the published streams keep their bytes."""
    def by_name(meta):
        if type(meta.get("tensors")) is int:
            dec = nnc.Decoder(stream)
            meta["tensors"] = model_order(dec.names(), dec.metadata)
        for key in SUITE_6_LATER_KEYS:
            meta.pop(key, None)
        return meta

    return _rewrite_nnc_metadata(stream, by_name)


#: Keys of nnc's topology metadata added after suite version 6 (spec 6.2.1: the parent digest of an update of
#: differences, its tensors sent whole).
SUITE_6_LATER_KEYS = ("parent", "replaced")

#: Keys of nnc's topology metadata added after suite version 2 (spec 3.5, 6.2.1).
LATER_METADATA_KEYS = ("tensors", "skipped", "differences") + SUITE_6_LATER_KEYS


def frozen_topology(stream: bytes) -> bytes:
    """``stream`` with the topology unit the encoder wrote when suite version 2 was published.

    Since then the encoder announces its tensors in the topology metadata (spec 3.5); the
    streams published before keep their bytes, so the keys added since are taken out again
    (and the string is empty when nothing else is left, as it then was).
    """
    def without_later_keys(meta):
        for key in LATER_METADATA_KEYS:
            meta.pop(key, None)
        return None if set(meta) <= {"version"} else meta

    return _rewrite_nnc_metadata(stream, without_later_keys)


def _rewrite_nnc_metadata(stream: bytes, change) -> bytes:
    """``stream`` with the nnc metadata of its topology units (6.2.1) replaced by ``change(meta)``
    (None for an empty string), written as the encoder writes it."""
    out = []
    for u in C.parse_stream(stream):
        raw = bytes(stream[u.offset:u.offset + u.size])
        if u.type == C.NNR_TPL and u.header.data.startswith("{"):
            meta = change(json.loads(u.header.data)["nnc"])
            data = "" if meta is None else json.dumps({"nnc": meta}, separators=(",", ":"), sort_keys=True)
            raw = C.build_tpl(int(u.header.topology_storage_format), int(u.header.topology_compression_format),
                              data)
        out.append(raw)
    return b"".join(out)


# -- low-level crafting -----------------------------------------------------------------------------


def craft_ndu(name, levels, dims, *, profile=1, qp=-30, qp_density=2, dq=False, scan=0, n_gtx=11,
              init_sets=None, param_opt=True, codebook=None, cb_center=0, fmt=None, ptype=C.NNR_PT_FLOAT,
              parent=None, tca_base=None, hdsp=False, hdsp_history=None, row_skip=False, mps_qp=0, engine=None):
    """One NDU built directly with the engine (default: the configured one) and the container."""
    eng = engine or get_engine()
    edition = 2 if profile == 1 else 1
    height = dims[0] if dims else 1
    width = int(np.prod(dims)) // height
    e = eng.PayloadEncoder(edition)
    cb_zero = (len(codebook) >> 1) + cb_center if codebook else 0
    kw = dict(n_gtx=n_gtx, dq=dq, scan_order=scan if len(dims) > 1 else 0,
              codebook_size=len(codebook) if codebook else 0, codebook_zero=cb_zero)
    if ptype != C.NNR_PT_INT:
        e.write_qp_offset(qp - mps_qp, 6 + qp_density)
    e.encode_tensor(np.asarray(levels, np.int32).reshape(-1), height, width, param_opt=param_opt,
                    init_sets=init_sets, parent_present=parent is not None, tca_base=tca_base,
                    hdsp=hdsp, hdsp_history=hdsp_history, row_skip=row_skip, **kw)
    payload = e.finish()
    spec = dict(height=height, width=width, qp_bits=0 if ptype == C.NNR_PT_INT else 6 + qp_density,
                parent_present=parent is not None, tca_base=tca_base, hdsp_history=hdsp_history, **kw)
    eps = eng.compute_entry_points(payload, edition, [spec])[0] if kw["scan_order"] else []
    header = dict(
        nnr_compressed_data_unit_payload_type=ptype, nnr_multiple_topology_elements_present_flag=0,
        nnr_decompressed_data_format_present_flag=int(fmt is not None), input_parameters_present_flag=1,
        topology_elem_id=name, codebook_present_flag=int(codebook is not None), dq_flag=int(dq),
        nnr_decompressed_data_format=fmt, tensor_dimensions_flag=1, cabac_unary_length_flag=1,
        compressed_parameter_types=0, tensor_dimensions=list(dims), cabac_unary_length_minus1=n_gtx - 1,
        scan_order=kw["scan_order"], entry_points=[dict(value=v, dq_state=s, offset=o) for v, s, o in eps],
    )
    if codebook is not None:
        header.update(codebook=list(codebook), codebook_egk=C.best_codebook_egk(codebook),
                      codebook_center_offset=cb_center)
    if profile == 1:
        header.update(node_id_present_flag=1, device_id=0, parameter_id=0, put_node_depth=0,
                      first_tensor_dimension_shift=0)
    if parent is not None:
        header.update(parent_node_id_present_flag=1, temporal_context_modeling_flag=int(tca_base is not None),
                      **parent)
    return C.build_ndu(header, payload, profile=profile, parent_signalling=parent is not None or
                       bool(header.get("parent_node_id_present_flag")))


def head(profile=1, qp_density=2, qp=0, parent_signalling=False, **mps_extra):
    return (C.build_str(profile) + C.build_mps(qp_density=qp_density, qp=qp, profile=profile,
                                               parent_signalling=parent_signalling, **mps_extra) + C.build_tpl())


@contextlib.contextmanager
def _coded_values(k_values):
    """Make the Python engine code exactly these values k, even where no valid tensor has them."""
    from nnc.engine import python as pyengine
    from nnc.engine.python import payload

    checked = payload._coded_values
    payload._coded_values = lambda t, levels, skip: [int(k) for k in k_values]
    try:
        yield pyengine
    finally:
        payload._coded_values = checked


def craft_values_ndu(name, k_values, dims, levels=None, **options):
    """An NDU whose payload codes the values k as given (out-of-range values included).

    ``levels`` (default all zero) only decides which rows row skipping leaves out.
    """
    if levels is None:
        levels = np.zeros(int(np.prod(dims)), np.int32)
    with _coded_values(k_values) as engine:
        return craft_ndu(name, levels, dims, engine=engine, **options)


# -- profile 1 and 0 streams from the encoder --------------------------------------------------------

for _p in (1, 0):
    stream(f"p{_p}_urq_so0", _p, "uniform reconstruction, row-major scan, rank 1-4 tensors",
           ["payload FLOAT", "dq_flag 0", "scan_order 0", "1-D", "4-D", "param_opt"])(
        lambda p=_p: enc(model(1, BASIC), qp=-30, dq=False, profile=p))
    stream(f"p{_p}_dq_so0", _p, "dependent quantisation, every DQ state reached",
           ["dq_flag 1", "DQ states 0-7", "scan_order 0"])(
        lambda p=_p: enc(model(2, BASIC), qp=-28, dq=True, profile=p))
    for _s in (1, 2, 3, 4):
        stream(f"p{_p}_dq_so{_s}_multi_row", _p,
               f"block scan {4 << _s}x{4 << _s} with partial blocks, several block rows and entry points",
               [f"scan_order {_s}", "partial blocks", "entry points", "dq_flag 1"])(
            lambda p=_p, s=_s: enc(model(10 + s, [("a.weight", (9 * (4 << s) // 4 + 3, 70)),
                                                  ("b.weight", ((4 << s) + 5, 3, 3))]),
                                   qp=-30, dq=True, scan_order=s, profile=p))
    stream(f"p{_p}_urq_so2_single_block_row", _p, "block scan with a single block row (range forcing rule, spec 11.3)",
           ["scan_order 2", "single block row", "no entry points"])(
        lambda p=_p: enc(model(3, [("w.weight", (11, 80)), ("v.weight", (16, 16))]), qp=-30, dq=False,
                         scan_order=2, profile=p))
    stream(f"p{_p}_n1_large_remainders", _p, "N = 1 greater-than flag, large remainders",
           ["cabac_unary_length_minus1 0", "Exp-Golomb remainder", "large magnitudes"])(
        lambda p=_p: enc(model(4, [("w.weight", (20, 30))]), qp=-60, dq=True, n_gtx=1, profile=p))
    stream(f"p{_p}_n256", _p, "N = 256 greater-than flags", ["cabac_unary_length_minus1 255"])(
        lambda p=_p: enc(model(5, [("w.weight", (20, 30))]), qp=-50, dq=False, n_gtx=256, profile=p))
    stream(f"p{_p}_int32_extremes", _p, "integer tensors at the int32 extremes (NNR_PT_INT)",
           ["payload INT", "int32 extremes", "remainder prefix 30-31 bins"])(
        lambda p=_p: enc(OrderedDict([
            ("ext", np.array([[2**31 - 1, -(2**31) + 1, 0], [-(2**31), 1, -1]], np.int32)),
            ("counts", rng(6).integers(-5000, 5000, (7, 9)).astype(np.int32)),
            ("steps", np.array([123456], np.int64))]), profile=p))
    stream(f"p{_p}_raw_float", _p, "uncompressed float32 tensor (NNR_PT_RAW_FLOAT) beside coded ones",
           ["payload RAW_FLOAT"])(
        lambda p=_p: enc(model(7, [("raw.weight", (5, 6)), ("q.weight", (5, 6))]), qp=-30, raw=["raw.*"],
                         profile=p))
    stream(f"p{_p}_block_bias", _p, "block NDU: weight and bias in one payload",
           ["payload BLOCK", "compressed_parameter_types BI", "coding order"])(
        lambda p=_p: enc(model(8, [("fc.weight", (24, 40)), ("fc.bias", (24,))]), qp=-30, dq=True, blocks=True,
                         profile=p))
    stream(f"p{_p}_block_ls_bn_bias_so1", _p, "block NDU with local scaling, batch-norm and bias, block scan",
           ["payload BLOCK", "LS", "BN", "BI", "scan_order 1", "entry points"])(
        lambda p=_p: enc(model(9, [("c.weight", (20, 4, 3, 3)), ("c.scale", (20,)), ("bn.beta", (20,)),
                                   ("bn.gamma", (20,)), ("bn.mean", (20,)), ("bn.var", (20,)), ("c.bias", (20,))]),
                         qp=-28, dq=True, scan_order=1, profile=p,
                         blocks={"c.weight": {"scaling": "c.scale", "bias": "c.bias",
                                              "bn": ["bn.beta", "bn.gamma", "bn.mean", "bn.var"]}}))
    stream(f"p{_p}_codebook", _p, "codebook tensors of several sizes",
           ["codebook_present_flag 1", "codebook egk", "float64 output"])(
        lambda p=_p: enc(model(20, [("a.weight", (16, 20)), ("b.weight", (30,)), ("c.weight", (6, 6))]),
                         qp=-26, codebook=True, dq=False, profile=p))
    stream(f"p{_p}_long_unit", _p, "an NDU larger than 32767 bytes (31-bit nnr_unit_size)",
           ["nnr_unit_size 31-bit form"])(
        lambda p=_p: enc(model(21, [("big.weight", (128, 400))]), qp=-44, dq=False, profile=p))
    stream(f"p{_p}_param_opt_off", _p, "context initialisation not optimised (all init flags 0)",
           ["init flags all 0"])(
        lambda p=_p: enc(model(22, BASIC), qp=-30, param_opt=False, profile=p))
    stream(f"p{_p}_qpd3", _p, "qp_density 3: 9-bit qp offsets", ["mps_qp_density 3"])(
        lambda p=_p: enc(model(23, BASIC), qp=-60, qp_density=3, nonweight_qp=-90, profile=p))
    stream(f"p{_p}_scalars_and_tiny", _p, "0-d, one-element, 1xN and Nx1 tensors",
           ["0-d coded as [1]", "one element", "effective scan order 0"])(
        lambda p=_p: enc(OrderedDict([("s", np.float32(0.75)), ("one", np.array([-0.5], np.float32)),
                                      ("row.weight", laplace(rng(24), (1, 30))),
                                      ("col.weight", laplace(rng(25), (30, 1)))]), qp=-20, scan_order=2, profile=p))

stream("p1_qpd0", 1, "qp_density 0: 6-bit qp offsets, coarse steps", ["mps_qp_density 0"])(
    lambda: enc(model(26, BASIC), qp=-8, qp_density=0, nonweight_qp=-12))
stream("p1_positive_qp", 1, "positive qp (step > 1) on large weights", ["qp > 0"])(
    lambda: enc(OrderedDict(w=(laplace(rng(27), (10, 10)) * 1e4)), qp=12, dq=True, nonweight_qp=None))
stream("p1_row_skip", 1, "row skipping with all-zero rows, row-major and block scans",
       ["row_skip_flag 1", "row-skip context", "scan_order 0 and 2"])(
    lambda: enc(OrderedDict([("a.weight", (np.arange(40)[:, None] % 3 != 0).astype(np.float32)
                              * laplace(rng(28), (40, 33))),
                             ("b.weight", (np.arange(36)[:, None] % 4 != 1).astype(np.float32)
                              * laplace(rng(29), (36, 20)))]),
                qp=-30, dq=False, row_skip=True, scan_order=2))
stream("p1_codebook_bounds", 1, "codebook-bounded binarisation: sign inferred (zero offset 0 and S-1), "
       "one-entry codebook", ["codebook size 1", "CbZeroOffset 0", "CbZeroOffset S-1", "inferred sign"])(
    lambda: enc(OrderedDict([("pos.weight", np.abs(laplace(rng(30), (12, 10)))),
                             ("neg.weight", -np.abs(laplace(rng(31), (12, 10)))),
                             ("const.weight", np.full((6, 7), 0.02, np.float32)),
                             ("wide.weight", laplace(rng(32), (20, 20), 0.2))]), qp=-30, codebook=True, dq=False))
for _code, _what in [(0, "int32"), (1, "float32"), (2, "int2"), (3, "int3"), (4, "int4"), (5, "int8"),
                     (6, "int16"), (7, "int64"), (8, "float16"), (9, "float64")]:
    stream(f"p1_format_{_code}_{_what}", 1, f"nnr_decompressed_data_format {_code} ({_what})",
           [f"nnr_decompressed_data_format {_code}"])(
        lambda code=_code: enc(OrderedDict([("i", np.array([[1, -2, 0], [1, -1, 0]], np.int32)),
                                            ("f.weight", laplace(rng(40), (3, 4), 0.5))]),
                               qp=-2, dq=False, output_formats={"i": code, "f.weight": code}))


# -- crafted streams ------------------------------------------------------------------------------------


@stream("p1_all_init_sets", 1, "every context-initialisation set 0-8 signalled", ["init sets 0-8", "dq_flag 1"])
def _all_init_sets():
    eng = get_engine()
    levels = (np.round(laplace(rng(50), (24, 30), 3.0))).astype(np.int32)
    levels = np.where(np.arange(levels.size).reshape(levels.shape) % 2 == 0, levels * 0, levels)
    n = eng.dq_trellis(levels.reshape(-1).astype(np.float64)).astype(np.int32)
    sets = np.zeros(eng.context_count(2, 11), np.uint8)
    signalled = list(range(0, 24)) + [48, 49, 50] + list(range(53, 75)) + list(range(97, 128))
    for i, ctx in enumerate(signalled):
        sets[ctx] = i % 9
    return head() + craft_ndu("w.weight", n, [24, 30], dq=True, init_sets=sets)


@stream("p0_all_init_sets", 0, "every context-initialisation set 0-8 signalled (1st edition list)",
        ["init sets 0-8", "32 remainder contexts"])
def _all_init_sets_p0():
    eng = get_engine()
    levels = (np.round(laplace(rng(51), (20, 25), 40.0))).astype(np.int32)
    sets = np.zeros(eng.context_count(1, 11), np.uint8)
    signalled = [0, 1, 2] + list(range(24, 27 + 22 + 32))
    for i, ctx in enumerate(signalled):
        sets[ctx] = (i * 5) % 9
    return head(profile=0) + craft_ndu("w.weight", levels, [20, 25], profile=0, init_sets=sets)


@stream("p1_lps_qp_override", 1, "a layer parameter set whose qp and qp_density replace the MPS ones",
        ["NNR_LPS", "lps_qp_density", "lps_quantization_parameter"])
def _lps():
    lvl = np.round(laplace(rng(52), (8, 9), 20)).astype(np.int32)
    lps = C.build_unit(C.NNR_LPS, dict(lps_self_contained_flag=1, lps_reserved_7bits=0, lps_reserved_bit=0,
                                       lps_sparsification_flag=0, lps_pruning_flag=0, lps_unification_flag=0,
                                       lps_quantization_method_flags=1, lps_reserved_bit2=0, lps_qp_density=3,
                                       lps_quantization_parameter=-100))
    return (head() + craft_ndu("before.weight", lvl, [8, 9], qp=-30) + lps
            + craft_ndu("after.weight", lvl, [8, 9], qp=-120, qp_density=3, mps_qp=-100))


@stream("p1_mps_extras", 1, "MPS with performance maps, base model id, metric type and validation performance",
        ["sparsification map", "pruning map", "unification map", "decomposition map", "st strings", "flt"])
def _mps_extras():
    spm = dict(spm_count_thresholds=2, entries=[dict(sparsification_threshold=0.5, non_zero_ratio=0.25,
                                                     spm_nn_accuracy=0.9, spm_count_classes=2, spm_class_bitmask=3,
                                                     spm_nn_class_accuracy=[0.8, 0.7])])
    ppm = dict(ppm_count_pruning_ratios=2, entries=[dict(pruning_ratio=0.1, ppm_nn_accuracy=0.95, ppm_count_classes=1,
                                                         ppm_class_bitmask=1, ppm_nn_class_accuracy=[0.5])])
    upm = dict(upm_count_thresholds=2, entries=[dict(
        count_reshaped_tensor_dimension=3, reshaped_tensor_dimensions=[4, 5], _align=None,
        count_super_block_dimension=2, super_block_dimensions=[2], count_block_dimension=2, block_dimensions=[3],
        unification_threshold=0.01, upm_nn_accuracy=0.93, upm_count_classes=2, upm_class_bitmask=2,
        upm_nn_class_accuracy=[0.25, 0.75])])
    dpm = dict(dpm_count_thresholds=2, entries=[dict(mse_threshold=1e-3, dpm_nn_accuracy=0.9,
                                                     nn_reduction_ratio=0.5, dpm_count_classes=1,
                                                     dpm_nn_class_accuracy=[0.9])])
    mps = C.build_mps(profile=1, mps_sparsification_flag=1, mps_pruning_flag=1, mps_unification_flag=1,
                      mps_decomposition_performance_map_flag=1, base_model_id_present_flag=1,
                      validation_set_performance_present_flag=1, base_model_id="base-model-0",
                      performance_metric_type="top-1", sparsification_performance_map=spm,
                      pruning_performance_map=ppm, unification_performance_map=upm,
                      decomposition_performance_map=dpm, validation_set_performance=0.875)
    lvl = np.round(laplace(rng(53), (5, 5), 5)).astype(np.int32)
    return C.build_str(1) + mps + C.build_tpl(2, 0, "graph.onnx") + craft_ndu("w.weight", lvl, [5, 5])


def _incremental():
    """Base model plus two updates with parent ids, TCA and HDSP (spec 14)."""
    r = rng(60)
    names = [("a.weight", (20, 24)), ("b.weight", (12,))]
    streams, state_levels, history = [], {}, {}
    for step in range(3):
        parent = None if step == 0 else dict(parent_node_id_type=0, parent_device_id=0)
        units = head(parent_signalling=step > 0)
        for name, shape in names:
            lv = np.round(r.laplace(0, 1.5, shape)).astype(np.int32) * (r.random(shape) < 0.5)
            if len(shape) > 1:
                lv[::3] = 0
            base = state_levels.get(name) if step else None
            hist = history.get(name) if step else None
            units += craft_ndu(name, lv, list(shape), parent=parent, tca_base=base,
                               hdsp=step == 2, hdsp_history=hist, row_skip=step > 0)
            state_levels[name] = lv.reshape(-1).astype(np.int32)
            h = (lv.reshape(-1) != 0).astype(np.int8)
            history[name] = h if name not in history else (history[name] | h)
        streams.append(units)
    return streams


for _i, _label in enumerate(["base", "update_tca_rowskip", "update_tca_hdsp"]):
    stream(f"p1_incremental_{_i}_{_label}", 1,
           f"incremental sequence, stream {_i}: " + ("base model" if _i == 0 else "update with parent ids and TCA"
                                                     + (" and HDSP" if _i == 2 else "")),
           ["mps_parent_signalling_enabled_flag", "parent_node_id", "temporal_context_modeling_flag",
            "hist_dep_sig_prob_enabled_flag" if _i == 2 else "row_skip_flag"][: 1 if _i == 0 else 5],
           sequence=dict(id="p1_incremental", position=_i))(lambda i=_i: _incremental()[i])


# -- must-fail streams ------------------------------------------------------------------------------------


def _valid():
    return enc(model(70, [("w.weight", (6, 7)), ("b.bias", (6,))]), qp=-20, dq=True)


def _units(s):
    return list(C.iter_units(s))


def _mutate_unit_byte(s, unit_index, byte_index, fn):
    u = _units(s)[unit_index]
    b = bytearray(s)
    b[u.offset + byte_index] = fn(b[u.offset + byte_index])
    return bytes(b)


def must_fail(name, error, clause, purpose, **extra):
    return stream(name, 1, purpose, [f"rejected: {error}"], group="must-fail", expected_error=error, clause=clause,
                  **extra)


must_fail("mf_empty", "TruncatedError", "3.1", "an empty stream")(lambda: b"")
must_fail("mf_truncated_unit", "TruncatedError", "3.2", "the last unit is cut short")(lambda: _valid()[:-3])
must_fail("mf_first_unit_not_str", "DecodeError", "3.1", "the stream starts with the MPS")(
    lambda: _valid()[4:])
must_fail("mf_reserved_unit_type", "DecodeError", "3.4", "a unit of reserved type 12")(
    lambda: _mutate_unit_byte(_valid(), 2, 2, lambda x: (12 << 2) | (x & 3)))
must_fail("mf_unit_size_too_small", "DecodeError", "3.2", "nnr_unit_size smaller than the unit header")(
    lambda: _mutate_unit_byte(_valid(), 1, 1, lambda x: 2))
must_fail("mf_ndu_before_mps", "DecodeError", "3.1", "an NDU precedes the model parameter set")(
    lambda: C.build_str(1) + _valid()[_units(_valid())[3].offset:])
must_fail("mf_reserved_payload_type", "DecodeError", "7.4", "nnr_compressed_data_unit_payload_type 6 (reserved)")(
    lambda: _mutate_unit_byte(_valid(), 3, 3, lambda x: (6 << 3) | (x & 7)))
must_fail("mf_partial_data_counter_in_ndu", "DecodeError", "15.1", "an NDU with partial_data_counter_present_flag")(
    lambda: C.build_str(1) + C.build_mps() + C.build_unit(
        C.NNR_NDU, dict(_units(_valid())[3].header, partial_data_counter=1), bytes(_units(_valid())[3].payload)))
must_fail("mf_payload_trailing_bytes", "DecodeError", "8.5", "bytes after the end of the CABAC payload")(
    lambda: _valid()[:_units(_valid())[3].offset] + C.build_ndu(dict(_units(_valid())[3].header),
                                                                 bytes(_units(_valid())[3].payload) + b"\x00"))
must_fail("mf_payload_corrupt_tail", "DecodeError", "9.6", "the last payload bytes are zeroed (no terminate bin)")(
    lambda: _valid()[:-2] + b"\x00\x00")
must_fail("mf_profile_7", "UnsupportedError", "4", "general_profile_idc 7")(
    lambda: _mutate_unit_byte(_valid(), 0, 3, lambda x: 7))
must_fail("mf_qnt_unit", "UnsupportedError", "6.3", "a quantisation unit (NNR_QNT)")(
    lambda: head() + C.build_unit(C.NNR_QNT, dict(quantization_storage_format=0,
                                                  quantization_compression_format=0, data="")))
must_fail("mf_agg_unit", "UnsupportedError", "6.4", "an aggregate unit (NNR_AGG)")(
    lambda: head() + bytes([0x00, 0x04, C.NNR_AGG << 2 | 2, 0x00]))
must_fail("mf_huge_dims", "LimitError", "15.2", "tensor dimensions far beyond what the payload can code")(
    lambda: _valid()[:_units(_valid())[3].offset] + C.build_ndu(
        dict(_units(_valid())[3].header, tensor_dimensions=[1 << 20, 1 << 20]), bytes(_units(_valid())[3].payload)))
must_fail("mf_codebook_with_dq", "DecodeError", "15.1", "a codebook NDU with dq_flag 1")(
    lambda: head() + C.build_ndu(dict(_units(enc(model(71, [("w.weight", (4, 4))]), qp=-20, codebook=True,
                                                dq=False))[3].header, dq_flag=1),
                                 bytes(_units(enc(model(71, [("w.weight", (4, 4))]), qp=-20, codebook=True,
                                                  dq=False))[3].payload)))
must_fail("mf_block_name_count", "DecodeError", "7.6", "a block NDU listing more names than its parameter types")(
    lambda: (lambda s: s[:_units(s)[3].offset] + C.build_ndu(
        dict(_units(s)[3].header, count_topology_elements_minus2=1,
             topology_elem_ids=list(_units(s)[3].header.topology_elem_ids) + ["extra"]),
        bytes(_units(s)[3].payload)))(enc(model(72, [("f.weight", (5, 6)), ("f.bias", (5,))]), qp=-20, blocks=True)))
must_fail("mf_tca_without_parent", "DecodeError", "14", "an update using TCA decoded without its parent")(
    lambda: _incremental()[1])
must_fail("mf_raw_float_size", "DecodeError", "7.5", "a RAW_FLOAT payload one byte short")(
    lambda: (lambda s: s[:_units(s)[3].offset] + C.build_ndu(dict(_units(s)[3].header), bytes(_units(s)[3].payload)[:-1]))(
        enc(OrderedDict(r=np.ones((3, 3), np.float32)), raw=["r"])))
must_fail("mf_reserved_data_format", "DecodeError", "7.4", "nnr_decompressed_data_format 42 (reserved)")(
    lambda: (lambda s: s[:_units(s)[3].offset] + C.build_ndu(
        dict(_units(s)[3].header, nnr_decompressed_data_format_present_flag=1, nnr_decompressed_data_format=42),
        bytes(_units(s)[3].payload)))(_valid()))
must_fail("mf_duplicate_name", "DecodeError", "15.1", "two NDUs carry the same tensor name")(
    lambda: (lambda s: s + s[_units(s)[3].offset:_units(s)[3].end])(_valid()))
must_fail("mf_garbage_payload", "DecodeError", "9.1",
          "an INT payload replaced by 40 bytes of 0xFF: the code point lies outside the initial interval")(
    lambda: (lambda s: s[:_units(s)[3].offset] + C.build_ndu(dict(_units(s)[3].header), b"\xff" * 40))(
        enc(OrderedDict(i=np.array([5], np.int32)))))


def _replace_ndu(stream, index, payload=None, **fields):
    """The stream with its index-th unit (an NDU) rebuilt with changed header fields and/or payload."""
    u = _units(stream)[index]
    profile = _units(stream)[0].header.general_profile_idc
    new = C.build_ndu(dict(u.header, **fields), bytes(u.payload) if payload is None else payload, profile=profile)
    return stream[:u.offset] + new + stream[u.end:]


must_fail("mf_payload_truncated_mid_tensor", "TruncatedError", "9.2",
          "a CABAC payload cut in the middle of its tensor (unit size adjusted)")(
    lambda: _replace_ndu(_valid(), 3, payload=bytes(_units(_valid())[3].payload)[:12]))
must_fail("mf_stop_pattern", "DecodeError", "9.6", "the padding bits after the stop bit are not zero")(
    lambda: _replace_ndu(_valid(), 4, payload=bytes(_units(_valid())[4].payload)[:-1]
                         + bytes([_units(_valid())[4].payload[-1] | 0x01])))
must_fail("mf_too_many_dimensions", "DecodeError", "7.4", "count_tensor_dimensions of 65")(
    lambda: _replace_ndu(_valid(), 3, tensor_dimensions=[1] * 65, scan_order=0))
must_fail("mf_indexed_topology", "UnsupportedError", "5.2", "mps_topology_indexed_reference_flag = 1")(
    lambda: C.build_str(1) + C.build_mps(mps_topology_indexed_reference_flag=1) + C.build_tpl())
must_fail("mf_dims_out_of_band", "UnsupportedError", "7.4", "an NDU without tensor dimensions (out of band)")(
    lambda: _replace_ndu(_valid(), 3, tensor_dimensions_flag=0, tensor_dimensions=None,
                         count_tensor_dimensions=None, scan_order=None, first_tensor_dimension_shift=None,
                         entry_points=None))
must_fail("mf_step_out_of_range", "DecodeError", "12.1", "an MPS qp of 4095: the step size overflows float32")(
    lambda: C.build_str(1) + C.build_mps(qp=4095) + _valid()[_units(_valid())[2].offset:])
must_fail("mf_block_without_names", "DecodeError", "7.6", "a BLOCK payload type on a single-name NDU")(
    lambda: _replace_ndu(_valid(), 3, nnr_compressed_data_unit_payload_type=C.NNR_PT_BLOCK))
must_fail("mf_int_format_range", "DecodeError", "12.6", "an INT tensor whose values do not fit the signalled int2")(
    lambda: (lambda s: _replace_ndu(s, 3, nnr_decompressed_data_format_present_flag=1,
                                    nnr_decompressed_data_format=2))(
        enc(OrderedDict(i=np.array([[3, -5], [7, 1]], np.int32)))))


# -- streams added in suite version 2 (new names; the streams above are unchanged) ---------------------------

ADDED_IN = 2


@stream("p1_dq_row_skip", 1, "row skipping with dependent quantisation: the DQ state runs through skipped rows, "
        "W transitions per skipped row piece also in a block scan narrower than the row (spec 11.5)",
        ["row_skip_flag 1", "dq_flag 1", "scan_order 0 and 1", "skipped row pieces"])
def _dq_row_skip():
    r = rng(80)
    units = head()
    for name, shape, scan in (("rows.weight", (14, 9), 0), ("blocks.weight", (19, 21), 1)):
        k = np.round(r.laplace(0, 2.0, shape)).astype(np.int32)
        k[::3] = 0
        # the values k are coded as given; the decoder derives n along its DQ state path
        units += craft_values_ndu(name, k.reshape(-1), list(shape), levels=k, dq=True, scan=scan, row_skip=True)
    return units


stream("p1_empty_tensors", 1, "tensors with a zero dimension beside a coded one",
       ["zero-size tensor", "dims [0]", "dims [3, 0]"])(
    lambda: enc(OrderedDict([("none", np.zeros((0,), np.float32)), ("w.weight", laplace(rng(82), (4, 5))),
                             ("flat.weight", np.zeros((3, 0), np.float32))]), qp=-30))
stream("p1_raw_float_formats", 1, "RAW_FLOAT tensors with float16 and float64 output formats",
       ["payload RAW_FLOAT", "nnr_decompressed_data_format 8", "nnr_decompressed_data_format 9"])(
    lambda: enc(OrderedDict([("half", laplace(rng(83), (3, 4)).astype(np.float16)),
                             ("double", laplace(rng(84), (5,)).astype(np.float64))]), raw=["half", "double"]))


@stream("p1_lps_without_qp", 1, "a layer parameter set that does not change the quantisation",
        ["NNR_LPS", "lps_quantization_method_flags 0"])
def _lps_without_qp():
    lvl = np.round(laplace(rng(85), (6, 7), 20)).astype(np.int32)
    lps = C.build_unit(C.NNR_LPS, dict(lps_self_contained_flag=1, lps_reserved_7bits=0, lps_reserved_bit=0,
                                       lps_sparsification_flag=0, lps_pruning_flag=0, lps_unification_flag=0,
                                       lps_quantization_method_flags=0, lps_reserved_bit2=0))
    return head() + craft_ndu("a.weight", lvl, [6, 7], qp=-30) + lps + craft_ndu("b.weight", lvl, [6, 7], qp=-30)


stream("p1_topology_text", 1, "a topology unit whose string looks like JSON but is not (no metadata for nnc)",
       ["NNR_TPL", "topology_storage_format 0"])(
    lambda: C.build_str(1) + C.build_mps() + C.build_tpl(0, 0, "{graph: not json")
    + craft_ndu("w.weight", np.round(laplace(rng(86), (5, 5), 5)).astype(np.int32), [5, 5]))


@stream("p1_parent_hashes", 1, "parent identified by the SHA-256 and SHA-512 of its payload, no TCA",
        ["parent_node_id_type 1", "parent_node_id_type 2", "temporal_context_modeling_flag 0"])
def _parent_hashes():
    import hashlib

    lvl = np.round(laplace(rng(87), (6, 8), 5)).astype(np.int32)
    return (head(parent_signalling=True)
            + craft_ndu("a.weight", lvl, [6, 8], parent=dict(
                parent_node_id_type=1, parent_node_payload_sha256=hashlib.sha256(b"parent a").digest()))
            + craft_ndu("b.weight", -lvl, [6, 8], parent=dict(
                parent_node_id_type=2, parent_node_payload_sha512=hashlib.sha512(b"parent b").digest())))


def _incremental_encoded():
    """Base model and two updates written by the encoder's incremental mode (nnc.encoder.EncoderState)."""
    from nnc.encoder import EncoderState

    r = rng(88)
    state = EncoderState()
    shapes = [("a.weight", (16, 20)), ("a.bias", (16,)), ("b.weight", (6, 5, 3, 3)), ("steps", (3,))]

    def tensors(scale, zero=()):
        out = OrderedDict()
        for name, shape in shapes:
            if name == "steps":
                out[name] = np.zeros(shape, np.int32) if name in zero else np.array([3, 1, 4], np.int32)
            else:
                out[name] = np.zeros(shape, np.float32) if name in zero else laplace(r, shape, scale)
        return out

    return [frozen_topology(s) for s in (
            legacy_encoder(qp=-30, state=state).encode(tensors(0.05)).stream,
            legacy_encoder(qp=-40, dq=True, row_skip=True, state=state).encode(tensors(0.004, ("steps",))).stream,
            legacy_encoder(qp=-42, dq=False, state=state).encode(tensors(0.004, ("steps", "b.weight"))).stream)]


for _i, _label in enumerate(["base", "update_tca_skipped", "update_tca_urq"]):
    stream(f"p1_incremental_encoded_{_i}_{_label}", 1,
           f"incremental sequence written by the encoder (EncoderState), stream {_i}: "
           + ("base model with node ids" if _i == 0 else "update with parent ids, TCA and skipped NDUs"),
           ["node ids", "put_node_depth"] + ([] if _i == 0 else
                                             ["mps_parent_signalling_enabled_flag", "temporal_context_modeling_flag",
                                              "skipped NDU"]),
           sequence=dict(id="p1_incremental_encoded", position=_i))(lambda i=_i: _incremental_encoded()[i])

# -- must-fail streams added in suite version 2 --------------------------------------------------------------


@contextlib.contextmanager
def _unchecked_codebook_head():
    """Let the container write a codebook head (egk, size, centre, zero value) whose zero offset is outside."""
    checked = C.Codebook._build

    def build(self, obj, stream, context, path):
        cs.BitsInteger(4)._build(0, stream, context, path)
        C.UE(2)._build(len(obj["codebook"]), stream, context, path)
        C.IE(2)._build(int(obj["codebook_center_offset"]), stream, context, path)
        C.IE(7)._build(0, stream, context, path)
        return obj

    C.Codebook._build = build
    try:
        yield
    finally:
        C.Codebook._build = checked


def _with_long_name(length):
    """An NDU named by ``length`` letters (one more than the builder allows, inserted by hand)."""
    unit = craft_ndu("a" * (length - 1), [1, -1], [2])
    size = int.from_bytes(unit[:4], "big") & 0x7FFFFFFF       # a unit this long has the 4-byte size form
    at = unit.index(b"a")
    return ((size + 1) | 0x80000000).to_bytes(4, "big") + unit[4:at] + b"a" + unit[at:]


must_fail("mf_payload_one_byte", "TruncatedError", "9.1", "an NDU whose CABAC payload is a single byte")(
    lambda: _replace_ndu(_valid(), 3, payload=b"\x80"))
must_fail("mf_level_overflow", "DecodeError", "10.1", "a coded value of 2^31 + 20: beyond int32")(
    lambda: head() + craft_values_ndu("w", [3, 2**31 + 20, 1], [3]))
must_fail("mf_remainder_prefix_p0", "DecodeError", "10.1",
          "1st edition: a remainder prefix of 33 ones (longer than 31 bins)")(
    lambda: head(profile=0) + craft_values_ndu("w", [3, 2**33, 1], [3], profile=0))
must_fail("mf_dq_overflow", "DecodeError", "10.2", "a DQ value k = 2^30 + 3 whose reconstruction integer exceeds int32")(
    lambda: head() + craft_values_ndu("w", [3, 2**30 + 3, 1], [3], dq=True))
must_fail("mf_block_row_interval", "DecodeError", "11.3",
          "a corrupted block-scan payload whose code point lies outside the range forced at a block-row start")(
    lambda: (lambda s: _replace_ndu(s, 3, payload=bytes(_units(s)[3].payload)[:2] + b"\x7f"
                                    + bytes(_units(s)[3].payload)[3:]))(
        enc(model(74, [("w.weight", (40, 20))]), qp=-24, dq=False, scan_order=1)))
must_fail("mf_ue_prefix_too_long", "DecodeError", "2.3", "an NDU header whose ue(k) device_id starts with 40 zero bits")(
    lambda: (lambda s, at: s[:at] + b"\x80" + bytes(5) + s[at + 6:])(
        _valid(), _units(_valid())[3].offset + bytes(_valid()[_units(_valid())[3].offset:]).index(b"w.weight\x00") + 9))
must_fail("mf_name_not_utf8", "DecodeError", "2.6", "a tensor name that is not UTF-8")(
    lambda: (lambda s, at: s[:at] + b"\xff" + s[at + 1:])(_valid(), _valid().index(b"w.weight\x00")))
must_fail("mf_name_too_long", "DecodeError", "2.6", "a tensor name of 65537 bytes")(
    lambda: head() + _with_long_name(65537))
@must_fail("mf_codebook_zero_offset", "DecodeError", "7.2", "a codebook of 3 entries with CbZeroOffset 6")
def _codebook_zero_outside():
    valid = head() + craft_ndu("w", [-1, 0, 1], [3], codebook=[0, 1, 2])
    with _unchecked_codebook_head():
        return _replace_ndu(valid, 3, codebook_center_offset=5)
must_fail("mf_codebook_index_p0", "DecodeError", "12.4",
          "1st edition: a codebook index offset of 5 in a codebook of 7 entries centred at 3")(
    lambda: head(profile=0) + craft_values_ndu("w", [5, 0, -1], [3], profile=0, codebook=list(range(7))))
must_fail("mf_codebook_int32", "DecodeError", "7.2", "a codebook entry below -2^31")(
    lambda: head() + craft_ndu("w", [-1, 0, 1], [3], codebook=[-(2**31) - 5, 0, 7]))
must_fail("mf_decomposition_block", "UnsupportedError", "7.6",
          "a block NDU with a decomposed weight (G and H, compressed_parameter_types DC) and a block scan")(
    lambda: (lambda s: _replace_ndu(
        s, 3, compressed_parameter_types=_units(s)[3].header.compressed_parameter_types | C.NNR_CPT_DC,
        decomposition_rank=10, g_number_of_rows=20, count_topology_elements_minus2=1,
        topology_elem_ids=["f.weight_G", "f.weight_H", "f.bias"], tensor_dimensions=[20, 30], scan_order=1,
        entry_points=[dict(value=0, dq_state=0, offset=1)] * 3))(
        enc(model(72, [("f.weight", (5, 6)), ("f.bias", (5,))]), qp=-20, blocks=True)))
must_fail("mf_several_names_not_block", "UnsupportedError", "7.4", "a FLOAT NDU listing two tensor names")(
    lambda: _replace_ndu(_valid(), 3, nnr_multiple_topology_elements_present_flag=1, count_topology_elements_minus2=0,
                         topology_elem_ids=["w.weight", "w2.weight"], topology_elem_id=None))
must_fail("mf_unit_size_cut", "TruncatedError", "3.2", "one stray byte after the last unit: a cut nnr_unit_size")(
    lambda: _valid() + b"\x00")
must_fail("mf_long_unit_size_cut", "TruncatedError", "3.2", "two stray bytes: a cut 4-byte nnr_unit_size")(
    lambda: _valid() + b"\x80\x00")
must_fail("mf_mps_trailing_byte", "DecodeError", "3.2", "a model parameter set with one byte after its syntax")(
    lambda: (lambda s, m: s[:m.offset] + C.build_unit(C.NNR_MPS, dict(m.header), b"\x00") + s[m.end:])(
        _valid(), _units(_valid())[1]))
must_fail("mf_dims_beyond_payload", "LimitError", "15.2",
          "a 1st-edition vector of 10^7 elements in a 110-byte payload")(
    lambda: _replace_ndu(enc(model(73, [("v", (40,))]), qp=-20, profile=0), 3, tensor_dimensions=[10_000_000]))
must_fail("mf_infinite_to_integer_format", "DecodeError", "12.6",
          "a FLOAT tensor whose values overflow to infinity, signalled as int64 output")(
    lambda: C.build_str(1) + C.build_mps(qp=508) + C.build_tpl()
    + craft_ndu("w", [3, -2, 0], [3], qp=508, mps_qp=508, fmt=7))


# -- suite version 3: announced tensors and completeness (spec 3.5) -------------------------------------------

ADDED_IN = 3


def _announced():
    """A stream as the encoder writes it since suite version 3: its topology unit announces its tensors."""
    return enc_current(model(90, [("w.weight", (6, 7)), ("w.bias", (6,)), ("v.weight", (5, 4))]), qp=-20, dq=True)


def _announced_incremental():
    """Base and an update of differences with a skipped (all-zero) tensor, as the encoder writes them today."""
    from nnc.encoder import EncoderState

    r = rng(91)
    state = EncoderState()
    base = OrderedDict([("a.weight", laplace(r, (8, 10), 0.05)), ("b.weight", laplace(r, (5, 6), 0.05))])
    later = OrderedDict([("a.weight", base["a.weight"] + laplace(r, (8, 10), 0.004)), ("b.weight", base["b.weight"])])
    return [announced_by_name(legacy_encoder(qp=-30, state=state, differences=True).encode(base).stream),
            announced_by_name(legacy_encoder(qp=-40, state=state, differences=True).encode(later).stream)]


stream("p1_announced_tensors", 1, "the topology unit announces the tensors (nnc metadata \"tensors\"), all arrive",
       ["topology metadata", "completeness 3.5"])(_announced)
for _i, _label in enumerate(["base", "update_skipped_differences"]):
    stream(f"p1_announced_incremental_{_i}_{_label}", 1,
           "incremental sequence with announced tensors, stream " + str(_i) + (
               ": base model" if _i == 0 else ": an update of differences that announces a skipped tensor"),
           ["topology metadata", "completeness 3.5"] + ([] if _i == 0 else
                                                        ["skipped NDU announced", "differences"]),
           sequence=dict(id="p1_announced_incremental", position=_i))(lambda i=_i: _announced_incremental()[i])


def _cut_before_unit(s, index):
    return s[:_units(s)[index].offset]


must_fail("mf_cut_after_first_ndu", "TruncatedError", "3.5",
          "a stream that announces three tensors, cut at the unit boundary after its first NDU")(
    lambda: _cut_before_unit(_announced(), 4))
must_fail("mf_cut_after_headers", "TruncatedError", "3.5",
          "a stream that announces three tensors, cut at the unit boundary before its first NDU")(
    lambda: _cut_before_unit(_announced(), 3))
must_fail("mf_update_cut", "TruncatedError", "3.5",
          "an update that announces one skipped tensor, its only NDU cut off (the other tensor is not skipped)")(
    lambda: _cut_before_unit(_announced_incremental()[1], 3))
must_fail("mf_total_bytes_limit", "LimitError", "15.2",
          "a one-entry codebook tensor (nothing coded, 10.4) declaring 2^31 - 1 float64 values: 16 GiB of output")(
    lambda: _replace_ndu(head() + craft_ndu("w", [0] * 6, [2, 3], codebook=[5]), 3, tensor_dimensions=[2**31 - 1]))
must_fail("mf_block_without_dims", "DecodeError", "7.6", "a block NDU with count_tensor_dimensions 0")(
    lambda: _replace_ndu(enc(model(72, [("f.weight", (5, 6)), ("f.bias", (5,))]), qp=-20, blocks=True), 3,
                         tensor_dimensions=[], scan_order=0))
must_fail("mf_unannounced_tensor", "DecodeError", "3.5",
          "an NDU of another stream spliced in: its tensor is not among the announced ones")(
    lambda: (lambda other: _announced() + other[_units(other)[3].offset:])(
        enc(OrderedDict(extra=np.array([5, -1], np.int32)))))


# -- suite version 4: the paths of spec 15.1 items 11, 38 and 43, and HDSP without a history of the size -------

ADDED_IN = 4


def _cut_mps():
    """The valid stream with its model parameter set cut to its first two syntax bytes (nnr_unit_size 4)."""
    s = _valid()
    mps = _units(s)[1]
    return s[:mps.offset] + bytes([0, 4]) + s[mps.offset + 2:mps.offset + 4] + s[mps.end:]


def _block_scanned():
    """A DQ tensor of 40 x 20 in 5 block rows (scan order 1), as today's encoder writes it."""
    return enc_current(model(75, [("w.weight", (40, 20))]), qp=-24, dq=True, scan_order=1)


def _wrong_entry_points(offsets):
    """``_block_scanned()`` with the EpIncrement differences of its entry points replaced (spec 7.3)."""
    s = _block_scanned()
    eps = [dict(value=e.value, dq_state=e.dq_state, offset=o) for e, o in zip(_units(s)[3].header.entry_points, offsets)]
    return _replace_ndu(s, 3, entry_points=eps)


def _reshaped_update():
    """A base and an update with parent ids and the HDSP flag set, in which the tensor has grown (spec 10.5, 14.2)."""
    r = rng(76)
    base = np.round(r.laplace(0, 1.5, (6, 8))).astype(np.int32)
    grown = np.round(r.laplace(0, 1.5, (8, 8))).astype(np.int32)
    parent = dict(parent_node_id_type=0, parent_device_id=0)
    return [head() + craft_ndu("a.weight", base, [6, 8]),
            head(parent_signalling=True) + craft_ndu("a.weight", grown, [8, 8], parent=parent, hdsp=True)]


def _recorded_metadata():
    """Today's encoder's stream of three tensors, its topology metadata recording (spec 6.2.1) an original bfloat16
    dtype, a dtype numpy does not know and an original shape of another size (the last two to be ignored)."""
    r = rng(77)
    tensors = OrderedDict([("a.weight", laplace(r, (6, 8))), ("b.weight", laplace(r, (5, 4))), ("c.bias", laplace(r, (7,)))])
    s = enc_current(tensors, qp=-24)
    tpl = _units(s)[2]
    meta = json.loads(tpl.header.data)
    meta["nnc"].update(dtypes={"a.weight": "bfloat16", "b.weight": "int128"}, shapes={"c.bias": [2, 4]})
    data = json.dumps(meta, separators=(",", ":"), sort_keys=True)
    return s[:tpl.offset] + C.build_tpl(0, 0, data) + s[tpl.end:]


stream("p1_recorded_metadata", 1,
       "topology metadata recording a bfloat16 original dtype, an unknown dtype and a shape of another size: the "
       "output is the decoded tensors as always (spec 6.2.1, 12.6); caller arrays may be bfloat16 bits (uint16)",
       ["topology metadata", "original dtypes", "original shapes"])(_recorded_metadata)
def _column_with_entry_points():
    """A 40 x 1 tensor signalled with scan order 1: its effective scan order is 0 (11.1), and the four
    entry points its header carries (counted with the signalled order, 7.3) are ignored (11.4)."""
    levels = np.round(rng(79).laplace(0, 2.0, 40)).astype(np.int32)
    s = head() + craft_ndu("col.weight", levels, [40, 1])
    return _replace_ndu(s, 3, scan_order=1, entry_points=[dict(value=0, dq_state=0, offset=0)] * 4)


stream("p1_entry_points_effective_scan_0", 1,
       "a 40 x 1 tensor signalled with scan_order 1: effective scan order 0, its four entry points ignored "
       "(spec 7.3, 11.1, 11.4)", ["scan_order 1", "effective scan order 0", "entry points"])(_column_with_entry_points)
must_fail("mf_scan_order_5", "DecodeError", "7.4", "an NDU with scan_order 5 (reserved values 5 ... 15, 15.1 item 27)")(
    lambda: _replace_ndu(_valid(), 3, scan_order=5, entry_points=[]))
must_fail("mf_mps_cut", "DecodeError", "3.2",
          "a model parameter set whose nnr_unit_size ends inside its syntax (15.1 item 11)")(_cut_mps)
must_fail("mf_codebook_index_p1", "DecodeError", "10.4",
          "2nd edition: a codebook of 13 entries, CbZeroOffset 0 and one greater-than flag whose bounded "
          "binarisation (10.4) decodes k = 13: the remainder's bypass bits overshoot the codebook (a crafted "
          "payload, 15.1 item 38)")(
    lambda: _replace_ndu(head() + craft_ndu("w", [0, 5, 12], [3], codebook=list(range(13)), cb_center=-6, n_gtx=1),
                         3, payload=bytes.fromhex("f599cc052535")))
stream("p1_entry_point_negative", 1,
       "entry points whose position of block row 2 is negative: sequential decoding ignores them; a decoder "
       "that uses them rejects the stream (9.7, 15.1 item 43)",
       ["entry points", "wrong entry points", "scan_order 1", "dq_flag 1"], wrong_entry_points=True)(
    lambda: _wrong_entry_points([5, -100000, 0, 0]))
stream("p1_entry_point_beyond_payload", 1,
       "an entry point of block row 1 beyond the end of the payload: sequential decoding ignores it; a decoder "
       "that uses it rejects the stream (TruncatedError 9.7, 15.1 item 43)",
       ["entry points", "wrong entry points", "scan_order 1", "dq_flag 1"], wrong_entry_points=True)(
    lambda: _wrong_entry_points([100000, 0, 0, 0]))
for _i, _label in enumerate(["base", "update_grown_hdsp"]):
    stream(f"p1_reshaped_update_{_i}_{_label}", 1,
           "incremental sequence, stream " + str(_i) + (": base model, a 6 x 8 tensor" if _i == 0 else
                                                        ": update with parent ids and the HDSP flag, the tensor grown "
                                                        "to 8 x 8: no history of its size, no position active (10.5)"),
           ["mps_parent_signalling_enabled_flag"] + ([] if _i == 0 else ["parent_node_id",
                                                                         "hist_dep_sig_prob_enabled_flag"]),
           sequence=dict(id="p1_reshaped_update", position=_i))(lambda i=_i: _reshaped_update()[i])


# -- suite version 5: decoding paths the coverage of version 4 missed (conformance/README.md, Coverage) ---------

ADDED_IN = 5


def _int_block_rows():
    """An integer tensor of 40 x 20 in 5 block rows (scan order 1) with entry points, as today's encoder writes it."""
    return enc_current(OrderedDict(idx=np.round(rng(90).laplace(0, 3, (40, 20))).astype(np.int32)), scan_order=1)


def _empty_tensor_scan_order_1():
    """A 0 x 6 tensor signalled with scan order 1 (no block row, no entry point) beside a block-scanned one."""
    s = enc_current(OrderedDict([("empty.weight", np.zeros((0, 6), np.float32)),
                                 ("w.weight", laplace(rng(91), (24, 6)))]), qp=-24, scan_order=1)
    return _replace_ndu(s, 3, scan_order=1, entry_points=[])


def _topology_trailing_bytes():
    """Today's encoder's stream whose topology unit carries 3 bytes after its string (ignored, spec 3.2, 6.2)."""
    s = enc_current(model(92, [("a.weight", (6, 5)), ("a.bias", (6,))]), qp=-24)
    tpl = _units(s)[2]
    return s[:tpl.offset] + C.build_unit(C.NNR_TPL, dict(tpl.header),
                                         tpl.header.data.encode() + b"\x00" + b"\x2a\x00\x01") + s[tpl.end:]


def _forced_range_at_start():
    """A block-scanned INT tensor (16 x 4, two block rows) whose payload's first two bytes are 00 05: after the
    row-skip flag and the context-initialisation signalling, V >= 256 * 2^7 where R is forced to 256 before the
    first element (11.3, 13; a crafted payload)."""
    s = head() + craft_ndu("i", (np.arange(64) % 5 - 2).astype(np.int32), [16, 4], ptype=C.NNR_PT_INT, scan=1)
    return _replace_ndu(s, 3, payload=b"\x00\x05" + bytes(_units(s)[3].payload)[2:])


stream("p1_int_block_rows", 1,
       "an integer tensor in 5 block rows (scan order 1) with entry points; decoders that split block rows "
       "over threads decode an integer tensor's rows into a caller's array",
       ["payload INT", "scan_order 1", "entry points"])(_int_block_rows)
stream("p1_empty_tensor_scan_order_1", 1,
       "a 0 x 6 tensor signalled with scan_order 1: no block row, nothing coded (spec 11.1, 11.4)",
       ["zero-size tensor", "dims [0, 6]", "scan_order 1"])(_empty_tensor_scan_order_1)
stream("p1_topology_trailing_bytes", 1,
       "a topology unit with 3 bytes after its topology_data string: they are ignored (spec 3.2, 6.2)",
       ["NNR_TPL", "bytes after the topology string"])(_topology_trailing_bytes)
must_fail("mf_payload_cut_in_qp_offset", "TruncatedError", "9.2",
          "a float tensor's CABAC payload of 2 bytes: it ends inside the 8-bit qp offset (8.2, 15.1 item 31)")(
    lambda: _replace_ndu(head() + craft_ndu("w", [1, 0, -1], [3]), 3, payload=b"\x00\x00"))
must_fail("mf_payload_cut_in_context_init", "TruncatedError", "9.2",
          "an integer matrix's CABAC payload of 2 bytes: it ends inside the row-skip flag and the "
          "context-initialisation signalling (8.3, 8.4, 15.1 item 31)")(
    lambda: _replace_ndu(head() + craft_ndu("i", np.arange(16) % 3 - 1, [4, 4], ptype=C.NNR_PT_INT), 3,
                         payload=b"\x00\x00"))
must_fail("mf_forced_range_at_start", "DecodeError", "11.3",
          "a crafted payload whose code point lies outside the range forced to 256 before the first element "
          "of a block-scanned tensor (11.3, 13)")(_forced_range_at_start)


# -- suite version 6: tensors announced by their count (spec 3.5, 6.2.1) ------------------------------------------

ADDED_IN = 6


def _announced_by_count():
    """Today's encoder's stream of two weight/bias pairs (BLOCK NDUs, bias decoded first) and a lone weight: the
    topology unit announces a count of 5 tensors, and the model's order follows from the order rule (6.2.1)."""
    return enc_today(model(93, [("a.weight", (6, 7)), ("a.bias", (6,)), ("b.weight", (4, 6)), ("b.bias", (4,)),
                                ("c.weight", (3, 4))]), qp=-20, dq=True, blocks=True)


stream("p1_announced_count", 1,
       "the topology unit announces a count of tensors (nnc metadata \"tensors\": 5), all arrive; BLOCK NDUs "
       "decode each bias before its weight",
       ["topology metadata", "completeness 3.5", "announced count", "BLOCK NDU"])(_announced_by_count)
must_fail("mf_count_cut_after_first_ndu", "TruncatedError", "3.5",
          "a stream that announces a count of 5 tensors, cut at the unit boundary after its first NDU")(
    lambda: _cut_before_unit(_announced_by_count(), 4))
must_fail("mf_count_extra_tensor", "DecodeError", "3.5",
          "an NDU of another stream appended: one tensor more than the count the topology unit announces")(
    lambda: (lambda other: _announced_by_count() + other[_units(other)[3].offset:])(
        enc(OrderedDict(extra=np.array([5, -1], np.int32)))))


# -- suite version 7: a stream with no NDU and no announcement holds no model (spec 3.5, 15.1 item 48) ----------

ADDED_IN = 7

must_fail("mf_cut_before_topology", "TruncatedError", "3.5",
          "a stream cut at the unit boundary before its topology unit: a start unit and a model parameter set, "
          "no NDU and no announcement (15.1 item 48)")(lambda: _cut_before_unit(_valid(), 2))
must_fail("mf_nncodec_cut_after_topology", "TruncatedError", "3.5",
          "NNCodec's style of stream (an empty topology string: nothing announced) cut at the unit boundary "
          "before its first NDU (15.1 item 48)")(
    lambda: C.build_str(1) + C.build_mps() + C.build_tpl())

# -- suite version 8: an update decoded again, or after a missing one, is refused (spec 14.4, 15.1 item 49) -----

ADDED_IN = 8

for _i, _label in enumerate(["base", "update"]):
    stream(f"p1_replay_{_i}_{_label}", 1,
           "the base and first update of p1_incremental_encoded, again, for mf_replayed_update after them: "
           + ("base model, node depth 1" if _i == 0 else "update, node depth 2"),
           ["node ids", "put_node_depth"] + ([] if _i == 0 else
                                             ["mps_parent_signalling_enabled_flag", "temporal_context_modeling_flag"]),
           sequence=dict(id="p1_replay", position=_i))(lambda i=_i: _incremental_encoded()[i])
must_fail("mf_replayed_update", "DecodeError", "14.4",
          "the update of p1_replay decoded a second time: its NDUs name parents at depth 1, the decoder state's "
          "tensors are at depth 2 (15.1 item 49)",
          sequence=dict(id="p1_replay", position=2))(lambda: _incremental_encoded()[1])
stream("p1_gap_0_base", 1, "the base of p1_incremental_encoded, again, for mf_update_after_a_gap after it",
       ["node ids", "put_node_depth"], sequence=dict(id="p1_gap", position=0))(lambda: _incremental_encoded()[0])
must_fail("mf_update_after_a_gap", "DecodeError", "14.4",
          "the second update of p1_incremental_encoded right after its base: its NDUs name parents at depth 2, the "
          "decoder state's tensors are at depth 1 (an update is missing; 15.1 item 49)",
          sequence=dict(id="p1_gap", position=1))(lambda: _incremental_encoded()[2])

# -- suite version 9: an update names its parent by the digest of its payload (spec 14.4, 15.1 item 50) ---------

ADDED_IN = 9


def _digest_sequence(seed, parent_ids):
    """A base model and one update per ``parent_ids`` entry, the parents named by payload digests (spec 14.4)."""
    from nnc.encoder import EncoderState

    r = rng(seed)
    state = EncoderState()
    shapes = [("c.weight", (8, 3, 3, 3)), ("c.bias", (8,)), ("d.weight", (24, 18))]
    streams = [legacy_encoder(qp=-32, state=state).encode(
        OrderedDict((n, laplace(r, shape, 0.05)) for n, shape in shapes)).stream]
    for i, parent_id in enumerate(parent_ids):
        update = OrderedDict((n, laplace(r, shape, 0.004)) for n, shape in shapes)
        streams.append(legacy_encoder(qp=-42, dq=i % 2 == 0, tca=i == 0, state=state,
                                      parent_id=parent_id).encode(update).stream)
    return streams


for _i, _label in enumerate(["base", "update_sha256_tca", "update_sha512"]):
    stream(f"p1_parent_digest_{_i}_{_label}", 1,
           "incremental sequence whose updates name their parents by the SHA-256 / SHA-512 of the parent NDU's "
           f"payload (spec 14.4), stream {_i}",
           ["node ids", "put_node_depth"] + ([] if _i == 0 else [
               "mps_parent_signalling_enabled_flag", f"parent_node_id_type {_i}",
               f"temporal_context_modeling_flag {int(_i == 1)}"]),
           sequence=dict(id="p1_parent_digest", position=_i))(
        lambda i=_i: _digest_sequence(89, ["sha256", "sha512"])[i])
stream("p1_other_model_0_base", 1, "the base of p1_parent_digest, again, for mf_update_of_another_model after it",
       ["node ids", "put_node_depth"], sequence=dict(id="p1_other_model", position=0))(
    lambda: _digest_sequence(89, ["sha256", "sha512"])[0])
must_fail("mf_update_of_another_model", "DecodeError", "14.4",
          "the first update of another sequence of the same tensor names, shapes and node depths (its own base "
          "not decoded): its NDUs name parents by SHA-256 digests that the decoder state's tensors do not have (15.1 "
          "item 50). Without the check such an update, coded with TCA against other levels, fails in its payload "
          "or, now and then, decodes to wrong values",
          sequence=dict(id="p1_other_model", position=1))(lambda: _digest_sequence(90, ["sha256"])[1])

# -- suite version 10: tied weights, coded once (spec 6.2.1 "tied", 15.1 item 52) ----------------------------

ADDED_IN = 10


def _tied():
    """A model whose output layer is its embedding (one array), coded with the tie."""
    r = rng(91)
    emb = laplace(r, (40, 12), 0.05)
    tensors = OrderedDict([("embed.weight", emb), ("fc.weight", laplace(r, (12, 12), 0.05)),
                           ("fc.bias", laplace(r, (12,), 0.01)), ("head.weight", emb)])
    return enc_today(tensors, qp=-30, tie_shared=True)


def _retied(tied):
    """``_tied()`` with its metadata's ``"tied"`` replaced."""
    return _rewrite_nnc_metadata(_tied(), lambda meta: dict(meta, tied=tied))


stream("p1_tied_weights", 1, "an output layer tied to the embedding: coded once, given back under both names with "
       "the embedding's values (nnc metadata version 2, 6.2.1; other decoders give the coded tensors only)",
       ["nnc metadata \"tied\"", "nnc metadata version 2"])(_tied)
must_fail("mf_tied_to_no_tensor", "DecodeError", "6.2.1",
          "nnc metadata ties a tensor to a name no NDU carries (15.1 item 52)")(
    lambda: _retied({"head.weight": "lm.weight"}))
must_fail("mf_tied_coded_tensor", "DecodeError", "6.2.1",
          "nnc metadata ties a tensor the stream codes to another (15.1 item 52)")(
    lambda: _retied({"head.weight": "embed.weight", "fc.weight": "embed.weight"}))

# -- suite version 11: the exact edges of the integer output formats, the DC bit of a one-tensor NDU --------

ADDED_IN = 11


def _int_formats_exact():
    """Values at the edges of float32 rounding, signalled as int32 (12.6): 2^23 + 1 (a float32 rounding of it plus
    one half gives 2^23 + 2), 0.49999997 and 0.5 (step 2^-24)."""
    return (C.build_str(1) + C.build_mps(qp=0) + C.build_tpl()
            + craft_ndu("a", [8388609, -8388609, 3], [3], qp=0, fmt=0)
            + craft_ndu("b", [8388607, -8388607, 8388608, -8388608], [4], qp=-96, fmt=0))


stream("p1_int_format_exact_rounding", 1, "values at the edges of float32 rounding signalled as int32 "
       "(2^23 + 1 stays odd, 0.49999997 rounds to 0, 0.5 to 1; 12.6)", ["nnr_decompressed_data_format 0"])(
    _int_formats_exact)
must_fail("mf_int32_format_overflow", "DecodeError", "12.6",
          "a value of exactly 2^31 signalled as int32 (the float32 bound 2^31 - 1 is 2^31; 15.1 item 45)")(
    lambda: C.build_str(1) + C.build_mps(qp=4) + C.build_tpl() + craft_ndu("w", [1 << 30, 1], [2], qp=4, mps_qp=4,
                                                                            fmt=0))
must_fail("mf_int64_format_overflow", "DecodeError", "12.6",
          "a value of exactly 2^63 signalled as int64 (15.1 item 45)")(
    lambda: C.build_str(1) + C.build_mps(qp=132) + C.build_tpl() + craft_ndu("w", [1 << 30, -1], [2], qp=132,
                                                                              mps_qp=132, fmt=7))
must_fail("mf_dc_bit_in_one_tensor_ndu", "UnsupportedError", "7.6",
          "an NDU of one tensor with the DC bit in compressed_parameter_types (15.1 item 20)")(
    lambda: _replace_ndu(_valid(), 3, compressed_parameter_types=C.NNR_CPT_DC, decomposition_rank=2,
                         g_number_of_rows=4))
# (conditions of 15.1 that no stream reached before)
must_fail("mf_str_trailing_byte", "DecodeError", "3.2", "a start unit with one byte after its syntax (15.1 item 12)")(
    lambda: (lambda s, u: s[:u.offset] + C.build_unit(C.NNR_STR, dict(u.header), b"\x00") + s[u.end:])(
        _valid(), _units(_valid())[0]))
must_fail("mf_no_input_parameters", "UnsupportedError", "7.4",
          "an NDU with input_parameters_present_flag 0: no tensor dimensions in the stream (15.1 item 17)")(
    lambda: _replace_ndu(_valid(), 3, input_parameters_present_flag=0))
must_fail("mf_step_underflow", "DecodeError", "12.1",
          "an MPS qp of -600 (qp_density 2): the step size is below 2^-149 (15.1 item 32)")(
    lambda: C.build_str(1) + C.build_mps(qp=-600) + _valid()[_units(_valid())[2].offset:])
must_fail("mf_announced_tensors_not_a_list", "DecodeError", "3.5",
          "nnc metadata whose \"tensors\" is neither a list of names nor a count (15.1 item 47)")(
    lambda: _rewrite_nnc_metadata(_tied(), lambda meta: dict(meta, tensors="all")))
must_fail("mf_tied_not_an_object", "DecodeError", "6.2.1", "nnc metadata whose \"tied\" is a list (15.1 item 52)")(
    lambda: _retied(["head.weight"]))
must_fail("mf_tied_empty_name", "DecodeError", "6.2.1",
          "nnc metadata that ties the empty name to a tensor (15.1 item 52, 6.2.1)")(
    lambda: _retied({"": "embed.weight"}))
must_fail("mf_ndu_name_cut", "DecodeError", "3.2",
          "an NDU whose nnr_unit_size ends inside its tensor name: a string without terminator (15.1 item 11)")(
    lambda: (lambda s, u: s[:u.offset] + bytes([0, 8]) + s[u.offset + 2:u.offset + 8] + s[u.end:])(
        _valid(), _units(_valid())[3]))
must_fail("mf_metadata_version_3", "UnsupportedError", "6.2.1",
          "nnc metadata of version 3, which this suite's decoders do not read (15.1 item 51)")(
    lambda: _rewrite_nnc_metadata(_tied(), lambda meta: dict(meta, version=3)))

# -- the third-party group: streams written by NNCodec, copied in (not generated) -------------------------

THIRD_PARTY = "third-party"
VECTOR_FOLDERS = ("edition1", "edition1/known-bad-entry-points", "edition2")


def import_vectors(vectors: Path, out_dir: Path) -> list:
    """Copy NNCodec's test vectors (``../shared/vectors``, see its README) into the third-party group.

    Each stream keeps its bytes; its sheet names the producer and its options, and its
    expected output is the producer's own (the vector's ``.npz``), hashed as the suite
    hashes.  Returns the manifest entries, in the vectors' order.
    """
    from nnc.verify import output_sha256, tensor_sha256

    entries = []
    for folder in VECTOR_FOLDERS:
        for v in json.loads((vectors / folder / "manifest.json").read_text()):
            data = (vectors / folder / v["file"]).read_bytes()
            with np.load(vectors / folder / v["npz"]) as ref:
                arrays = OrderedDict((k, ref[k]) for k in ref.files)
            tensors = [dict(name=k, dtype=str(a.dtype), shape=list(a.shape), sha256=tensor_sha256(a))
                       for k, a in arrays.items()]
            assert [(t["name"], t["sha256"]) for t in tensors] == [(t["name"], t["sha256"]) for t in v["tensors"]]
            wrong_eps = "known-bad" in folder
            entry = dict(
                name=v["name"], group=THIRD_PARTY, profile=v["edition"] - 1,
                file=f"{THIRD_PARTY}/{v['name']}/stream.nnr", sheet=f"{THIRD_PARTY}/{v['name']}/sheet.json",
                bytes=len(data), purpose=v["notes"], features=v["features"], producer=v["producer"],
                options=v["options"], stream_sha256=v["stream_sha256"], added_in=3,
                expected=dict(tensors=tensors, output_sha256=output_sha256(arrays)),
            )
            if "sequence" in v:
                entry["sequence"] = dict(id="nncodec_" + v["sequence"]["id"], position=v["sequence"]["position"])
            if wrong_eps:
                entry["wrong_entry_points"] = True
            if v.get("skipped_tensors"):
                entry["skipped_tensors"] = v["skipped_tensors"]
            path = out_dir / entry["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            sheet = dict(entry, made_by=f"{v['producer']} (copied from the NNC test vectors, {folder}/{v['file']})",
                         suite_version=3, producer_check=v["ref_check"], independent_check=v["indep_check"],
                         input=v["input"], expected_output="the producer's own decoder output" + (
                             "" if not wrong_eps else "; for these streams its encoder-side reconstruction, "
                             "since its decoder fails on its own wrong entry points"))
            sheet["cross_checked_with_nncodec_2_1_3"] = (
                "yes" if v["edition"] == 2
                else "no: NNCodec 2.1.3 decodes only profile-1 streams")
            sheet.pop("sheet")
            (out_dir / entry["sheet"]).write_text(json.dumps(sheet, indent=2) + "\n")
            entries.append(entry)
    return entries


def third_party_entries(out_dir: Path) -> list:
    """The third-party group as the manifest on disk has it (kept as is when the suite is regenerated)."""
    path = out_dir / "manifest.json"
    if not path.exists():
        return []
    return [e for e in json.loads(path.read_text())["streams"] if e["group"] == THIRD_PARTY]


def check_third_party(out_dir: Path, entries: list) -> list:
    """Names of third-party streams whose bytes are not those their entry records."""
    import hashlib

    return [e["name"] for e in entries
            if hashlib.sha256((out_dir / e["file"]).read_bytes()).hexdigest() != e["stream_sha256"]]


# -- writing ----------------------------------------------------------------------------------------------


def build_all():
    """Every stream's bytes and its manifest entry, in registration order."""
    entries, blobs = [], {}
    for name, info in STREAMS.items():
        data = info["build"]()
        group = info["group"]
        folder = "must-fail" if group == "must-fail" else "streams"
        entry = dict(name=name, group=group, profile=info["profile"], file=f"{folder}/{name}/stream.nnr",
                     sheet=f"{folder}/{name}/sheet.json", bytes=len(data), purpose=info["purpose"],
                     features=info["features"])
        if "sequence" in info:
            entry["sequence"] = info["sequence"]
        if info["added_in"] > 1:
            entry["added_in"] = info["added_in"]
        if info.get("wrong_entry_points"):
            entry["wrong_entry_points"] = True
        if group == "must-fail":
            entry.update(expected_error=info["expected_error"], clause=info["clause"])
        blobs[name] = data
        entries.append(entry)
    states = {}
    for entry in entries:
        if entry["group"] == "must-fail":
            continue
        seq = entry.get("sequence", {}).get("id")
        state = states.setdefault(seq, nnc.DecoderState()) if seq else None
        entry["expected"] = describe_output(nnc.decode(blobs[entry["name"]], state=state))
    return entries, blobs


def sheet_for(entry):
    sheet = {k: v for k, v in entry.items() if k not in ("sheet",)}
    sheet["made_by"] = ("conformance/generate.py (nnc encoder)" if "craft" not in entry["purpose"]
                        else "conformance/generate.py")
    sheet["suite_version"] = entry.get("added_in", 1)  # the version that published the stream
    return sheet


def write_suite(out_dir: Path, entries, blobs, crosscheck=None, third_party=()):
    for entry in entries:
        path = out_dir / entry["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blobs[entry["name"]])
        sheet = sheet_for(entry)
        if crosscheck is not None:
            sheet["cross_checked_with_nncodec_2_1_3"] = crosscheck.get(entry["name"], "no: not attempted")
        (out_dir / entry["sheet"]).write_text(json.dumps(sheet, indent=2) + "\n")
    manifest = dict(suite="nnc conformance suite", version=SUITE_VERSION,
                    hashing="tensor sha256 over C-order little-endian bytes; output_sha256 see nnc.verify",
                    streams=list(entries) + list(third_party))
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def run_crosscheck(entries, blobs):
    """Decode profile-1 streams with NNCodec 2.1.3 and compare with the expected hashes."""
    from nnc.verify import CommandAdapter, _check_expected

    # NNCodec through the decoder-command protocol (tools/ is not part of the package)
    adapter = CommandAdapter([sys.executable, str(Path(__file__).resolve().parent.parent / "tools" / "nncodec_decoder.py")])
    result = {}
    for e in entries:
        if e["profile"] != 1:
            result[e["name"]] = "no: NNCodec 2.1.3 decodes only profile-1 streams"
            continue
        try:
            out = adapter(blobs[e["name"]], (e.get("sequence") or {}).get("id"))
        except Exception as exc:  # noqa: BLE001
            result[e["name"]] = ("yes: NNCodec rejects it too" if e["group"] == "must-fail"
                                 else f"no: NNCodec fails ({str(exc)[:100]})")
            continue
        if e["group"] == "must-fail":
            result[e["name"]] = "no: NNCodec decodes it (it does not check this condition)"
            continue
        ok, detail = _check_expected(e, out)
        if not ok and "nnr_decompressed_data_format" in " ".join(e["features"]):
            detail = "NNCodec does not convert to nnr_decompressed_data_format: " + detail
        result[e["name"]] = "yes" if ok else f"no: NNCodec output differs ({detail})"
    adapter.close()
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--check", action="store_true", help="compare a regeneration with the files on disk")
    ap.add_argument("--crosscheck", action="store_true", help="record NNCodec 2.1.3 cross-checks in the sheets")
    ap.add_argument("--import-vectors", type=Path, metavar="DIR",
                    help="copy NNCodec's test vectors from DIR (e.g. ../shared/vectors) into the third-party group")
    args = ap.parse_args(argv)
    entries, blobs = build_all()
    third_party = (import_vectors(args.import_vectors, args.out) if args.import_vectors
                   else third_party_entries(args.out))
    if args.check:
        missing = [e["name"] for e in entries if not (args.out / e["file"]).exists()]
        bad = [e["name"] for e in entries
               if e["name"] not in missing and (args.out / e["file"]).read_bytes() != blobs[e["name"]]]
        bad += check_third_party(args.out, third_party)
        if missing:
            print(f"not written yet: {missing}")
        print("regeneration identical" if not bad else f"regeneration differs: {bad}")
        return 1 if bad or missing else 0
    cross = None
    if args.crosscheck:
        cross = run_crosscheck(entries, blobs)
    else:
        # keep previously recorded cross-checks
        cross = {}
        for e in entries:
            p = args.out / e["sheet"]
            if p.exists():
                old = json.loads(p.read_text()).get("cross_checked_with_nncodec_2_1_3")
                if old:
                    cross[e["name"]] = old
    write_suite(args.out, entries, blobs, cross, third_party)
    total = sum(len(b) for b in blobs.values())
    print(f"wrote {len(entries)} streams ({total} bytes) to {args.out}, kept {len(third_party)} third-party streams")
    return 0


if __name__ == "__main__":
    sys.exit(main())
