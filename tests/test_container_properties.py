"""parse(build(x)) == x and build(parse(b)) == b for every header structure (spec 2-7)."""

import math

from hypothesis import given
from hypothesis import strategies as st

from nnc import container as C

names = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                min_size=1, max_size=12)
u = lambda bits: st.integers(0, (1 << bits) - 1)  # noqa: E731
small = st.integers(0, 3000)
floats = st.floats(width=32, allow_nan=False)


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return all(_same(v, b.get(k)) for k, v in a.items() if not k.startswith("_"))
    return a == b


def _parse_last(stream):
    return C.parse_stream(stream)[-1]


@st.composite
def mps_fields(draw, profile):
    f = dict(mps_quantization_method_flags=draw(st.sampled_from([0, 1, 2, 3])),
             topology_carriage_flag=draw(u(1)))
    if f["mps_quantization_method_flags"]:
        f.update(mps_qp_density=draw(u(3)), mps_quantization_parameter=draw(st.integers(-4096, 4095)))
    else:
        f.update(mps_qp_density=None, mps_quantization_parameter=None)
    if profile == 1:
        f.update(base_model_id_present_flag=draw(u(1)), validation_set_performance_present_flag=draw(u(1)),
                 metric_type_performance_map_valid_flag=draw(u(1)), mps_parent_signalling_enabled_flag=draw(u(1)),
                 nnr_pre_flag=draw(u(1)))
        f["base_model_id"] = draw(names) if f["base_model_id_present_flag"] else None
        need = f["validation_set_performance_present_flag"] or f["metric_type_performance_map_valid_flag"]
        f["performance_metric_type"] = draw(names) if need else None
        f["validation_set_performance"] = draw(floats) if f["validation_set_performance_present_flag"] else None
    if draw(st.booleans()):
        n = draw(st.integers(0, 3))
        f["mps_sparsification_flag"] = 1
        f["sparsification_performance_map"] = dict(spm_count_thresholds=n, entries=[
            dict(sparsification_threshold=draw(floats), non_zero_ratio=draw(floats), spm_nn_accuracy=draw(floats),
                 spm_count_classes=2, spm_class_bitmask=draw(small), spm_nn_class_accuracy=[draw(floats), 0.5])
            for _ in range(max(0, n - 1))])
    if draw(st.booleans()):
        f["mps_decomposition_performance_map_flag"] = 1
        f["decomposition_performance_map"] = dict(dpm_count_thresholds=2, entries=[
            dict(mse_threshold=draw(floats), dpm_nn_accuracy=0.25, nn_reduction_ratio=0.5, dpm_count_classes=1,
                 dpm_nn_class_accuracy=[draw(floats)])])
    return f


@given(st.data(), st.sampled_from([0, 1]))
def test_mps_round_trip(data, profile):
    fields = data.draw(mps_fields(profile))
    unit = C.build_mps(profile=profile, **fields)
    parsed = _parse_last(C.build_str(profile) + unit)
    assert _same(fields, parsed.header)
    assert C.build_mps(profile=profile, **{k: v for k, v in parsed.header.items()
                                           if k not in ("nnr_unit_type", "independently_decodable_flag",
                                                        "partial_data_counter_present_flag",
                                                        "partial_data_counter")}) == unit


@given(profile=u(8))
def test_str_round_trip(profile):
    unit = C.build_str(profile)
    assert len(unit) == 4
    assert C.parse_stream(unit)[0].header.general_profile_idc == profile


#: a topology or quantisation unit's string: text, or bytes that are not UTF-8 (an ONNX or deflated topology)
unit_strings = st.one_of(names, st.binary(max_size=40).map(lambda b: b.replace(b"\x00", b"\x01") + b"\xff"))


@given(fmt=u(8), comp=u(8), data=unit_strings)
def test_tpl_and_qnt_round_trip(fmt, comp, data):
    head = C.build_str(1) + C.build_mps()
    tpl = C.build_tpl(fmt, comp, data)
    h = _parse_last(head + tpl).header
    assert (h.topology_storage_format, h.topology_compression_format, h.data) == (fmt, comp, data)
    qnt = C.build_unit(C.NNR_QNT, dict(quantization_storage_format=fmt, quantization_compression_format=comp,
                                       data=data))
    q = _parse_last(head + qnt).header
    assert (q.quantization_storage_format, q.quantization_compression_format, q.data) == (fmt, comp, data)
    assert C.build_unit(C.NNR_QNT, {k: q[k] for k in ("quantization_storage_format",
                                                      "quantization_compression_format", "data")}) == qnt


@given(qmf=u(3), qpd=u(3), qp=st.integers(-4096, 4095), flags=st.tuples(u(1), u(1), u(1)))
def test_lps_round_trip(qmf, qpd, qp, flags):
    fields = dict(lps_self_contained_flag=flags[0], lps_reserved_7bits=0, lps_reserved_bit=0,
                  lps_sparsification_flag=0, lps_pruning_flag=0, lps_unification_flag=0,
                  lps_quantization_method_flags=qmf, lps_reserved_bit2=flags[1],
                  lps_qp_density=qpd if qmf & 3 else None, lps_quantization_parameter=qp if qmf & 3 else None)
    unit = C.build_unit(C.NNR_LPS, fields)
    parsed = _parse_last(C.build_str(1) + C.build_mps() + unit)
    assert _same(fields, parsed.header)


@st.composite
def ndu_fields(draw, profile, parent_signalling):
    ptype = draw(st.sampled_from([C.NNR_PT_INT, C.NNR_PT_FLOAT, C.NNR_PT_RAW_FLOAT, C.NNR_PT_BLOCK]))
    ndims = draw(st.integers(1, 5))
    dims = draw(st.lists(st.integers(1, 300), min_size=ndims, max_size=ndims))
    f = dict(nnr_compressed_data_unit_payload_type=ptype, tensor_dimensions=dims,
             cabac_unary_length_minus1=draw(u(8)), compressed_parameter_types=0)
    if ptype == C.NNR_PT_BLOCK:
        cpt = draw(st.sampled_from([C.NNR_CPT_BI, C.NNR_CPT_BI | C.NNR_CPT_BN, C.NNR_CPT_LS | C.NNR_CPT_BI]))
        count = 1 + bool(cpt & C.NNR_CPT_LS) + 4 * bool(cpt & C.NNR_CPT_BN) + bool(cpt & C.NNR_CPT_BI)
        f.update(nnr_multiple_topology_elements_present_flag=1, compressed_parameter_types=cpt,
                 count_topology_elements_minus2=count - 2,
                 topology_elem_ids=draw(st.lists(names, min_size=count, max_size=count)))
    else:
        f["topology_elem_id"] = draw(names)
    if ptype in (C.NNR_PT_FLOAT, C.NNR_PT_BLOCK) and draw(st.booleans()):
        book = sorted(set(draw(st.lists(st.integers(-5000, 5000), min_size=1, max_size=20))))
        size = len(book)
        zero = draw(st.integers(0, size - 1))
        f.update(codebook_present_flag=1, codebook=book, codebook_egk=draw(u(4)),
                 codebook_center_offset=zero - (size >> 1))
    dq = draw(u(1)) if ptype != C.NNR_PT_RAW_FLOAT else None
    f["dq_flag"] = dq
    if draw(st.booleans()):
        f.update(nnr_decompressed_data_format_present_flag=1, nnr_decompressed_data_format=draw(u(7)))
    if ndims > 1:
        scan = draw(st.integers(0, 4))
        f["scan_order"] = scan
        if scan:
            count = max(0, -(-dims[0] // (4 << scan)) - 1)
            f["entry_points"] = [dict(value=draw(u(8)), dq_state=draw(u(3)) if dq else 0,
                                      offset=draw(st.integers(0, 5000))) for _ in range(count)]
        if profile == 1:
            f["first_tensor_dimension_shift"] = draw(st.integers(0, 3))
    if profile == 1:
        f["node_id_present_flag"] = draw(u(1))
        if f["node_id_present_flag"]:
            f.update(device_id=draw(small), parameter_id=draw(small), put_node_depth=draw(small))
        if parent_signalling:
            f["parent_node_id_present_flag"] = draw(u(1))
            if f["parent_node_id_present_flag"]:
                kind = draw(st.integers(0, 2))
                f.update(parent_node_id_type=kind, temporal_context_modeling_flag=draw(u(1)))
                if kind == 0:
                    f["parent_device_id"] = draw(small)
                    if not f["node_id_present_flag"]:
                        f.update(parent_parameter_id=draw(small), parent_put_node_depth=draw(small))
                else:
                    f[f"parent_node_payload_sha{256 if kind == 1 else 512}"] = draw(
                        st.binary(min_size=32 if kind == 1 else 64, max_size=32 if kind == 1 else 64))
    return f


@given(st.data(), st.sampled_from([0, 1]), st.booleans(), st.binary(max_size=20))
def test_ndu_header_round_trip(data, profile, parent_signalling, payload):
    parent_signalling = parent_signalling and profile == 1
    fields = data.draw(ndu_fields(profile, parent_signalling))
    head = C.build_str(profile) + C.build_mps(profile=profile, parent_signalling=parent_signalling)
    unit = C.build_ndu(fields, payload, profile=profile, parent_signalling=parent_signalling)
    parsed = _parse_last(head + unit)
    assert bytes(parsed.payload) == payload
    assert _same(fields, parsed.header), (fields, dict(parsed.header))
    rebuilt = C.build_ndu(dict(parsed.header), bytes(parsed.payload), profile=profile,
                          parent_signalling=parent_signalling)
    assert rebuilt == unit


@given(st.one_of(st.integers(0, 200), st.integers(32700, 32800), st.integers(60000, 70000)))
def test_unit_size_forms(n):
    unit = C.build_tpl(data="x" * n) if n < 1000 else C.build_ndu(
        dict(nnr_compressed_data_unit_payload_type=C.NNR_PT_RAW_FLOAT, topology_elem_id="r",
             tensor_dimensions=[n // 4]), bytes(4 * (n // 4)), profile=1)
    size, width = C.read_unit_size(memoryview(unit), 0)
    assert size == len(unit)
    assert width == (2 if len(unit) <= 32767 else 4)


@given(st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=300, unique=True), st.data())
def test_codebook_bits_are_those_built(entries, data):
    """codebook_bits, what the encoder weighs a codebook at (A.8), counts the bits of codebook() as built (7.2): the
    built syntax, byte-aligned by 1 to 8 bits, is that long (the encoder charged 16 bits an entry before)."""
    import construct as cs

    entries = sorted(entries)
    centre = data.draw(st.integers(-(len(entries) >> 1), len(entries) - (len(entries) >> 1) - 1))
    egk = C.best_codebook_egk(entries)
    built = cs.Bitwise(cs.Struct("c" / C.Codebook(), C.ALIGN)).build(
        {"c": dict(codebook=entries, codebook_center_offset=centre, codebook_egk=egk)}
    )
    assert 8 * len(built) - 8 <= C.codebook_bits(entries, centre) < 8 * len(built)
    assert all(C.ue_bits(deltas, egk) <= C.ue_bits(deltas, k) for deltas in [[b - a - 1 for a, b in zip(entries, entries[1:])]]
               for k in range(16))
