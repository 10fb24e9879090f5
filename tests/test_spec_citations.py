"""The code and spec/ agree: cited clauses exist, decoding functions cite theirs, syntax tables match construct.

* every clause cited anywhere in nnc/ ("spec 9.3", "clause 7.2", ``clause="15.1"``) is a heading of spec/*.md;
* every normative decoding function of nnc/decoder.py and every parsing function or construct of
  nnc/container.py cites its clause in its docstring (the exceptions are listed below, with the reason);
* every syntax element of spec/'s syntax tables (clauses 2-7) is declared in nnc/container.py, and every
  field declared there is an element of those tables (or is declared as standing for other names).

Each check is a function of the texts, and a test shows that it fails when a clause or a field is removed.
"""

import ast
import re
from pathlib import Path

import construct as cs
import pytest

from nnc import container as C

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "spec"
NNC = REPO / "nnc"

HEADING = re.compile(r"^#+\s+(?:Annex\s+)?((?:\d+|[A-Z])(?:\.\d+)*)\b", re.M)
CITATIONS = (
    re.compile(r"\b(?:spec|clause|Clause|Annex)\s+((?:\d+|[A-Z])(?:\.\d+)*)"),  # prose: "spec 9.3", "clause 7.2"
    re.compile(r"\bclause\s*=\s*[\"']([^\"']+)[\"']"),                        # errors: clause="15.1"
    re.compile(r"SyntaxViolation\([^)]*?,\s*[\"']([^\"']+)[\"']\)"),           # container: SyntaxViolation(msg, "7.2")
)
CITES = CITATIONS[0]

#: Functions of decoder.py that implement no decoding process (API plumbing, files, records), by name.
DECODER_NOT_NORMATIVE = {
    "read_input": "reads bytes from a path or file object",
    "_get": "a dict lookup with a default",
    "DecoderState._meta": "state files (informative)",
    "DecoderState._set_meta": "state files (informative)",
    "DecoderState._extra_arrays": "state files (informative)",
    "DecoderState.save": "state files (informative)",
    "DecoderState._to_bytes": "state files (informative)",
    "DecoderState._write": "state files (informative)",
    "DecoderState.spill_to": "where a state keeps its arrays (implementation memory)",
    "DecoderState._stores": "where a state keeps its arrays (implementation memory)",
    "DecoderState._new_store": "where a state keeps its arrays (implementation memory)",
    "DecoderState._containers": "a stream staged on a copy of the state (implementation)",
    "DecoderState._set_containers": "a stream staged on a copy of the state (implementation)",
    "DecoderState._staged_copy": "a stream staged on a copy of the state (implementation)",
    "_flat_entry": "state files (informative)",
    "DecoderState.load": "state files (informative)",
    "TensorInfo.size": "a product of the shape",
    "Decoder.names": "an accessor of the index",
    "Decoder.info": "an accessor of the index",
    "Decoder.tensors": "an accessor of the index",
    "Decoder._out_dtypes": "checks of caller-owned output buffers (API)",
    "Decoder._out_shapes": "checks of caller-owned output buffers (API)",
    "Decoder._check_out": "checks of caller-owned output buffers (API)",
    "Decoder._fill": "copies a decoded tensor into a caller-owned buffer (API)",
    "Decoder._shared_outs": "checks of caller-owned output buffers (API)",
    "Decoder._fill_alias": "checks of caller-owned output buffers (API)",
    "_check_narrowing": "checks of caller-owned output buffers (API)",
    "_iterable": "an argument check (API)",
    "_wanted_names": "an argument check (API)",
    "_bounded_ordered": "a thread pool that keeps job order (API)",
    "release_pages": "drops read pages of a mapped stream file from memory (implementation memory)",
    "_releasable_map": "finds the map under a buffer whose pages may be dropped (implementation memory)",
    "map_file": "maps a stream file (implementation memory)",
    "GuardedMap.guard": "guards a mapped stream file against being cut (implementation memory)",
    "GuardedMap.cut": "guards a mapped stream file against being cut (implementation memory)",
    "GuardedMap._unguard": "guards a mapped stream file against being cut (implementation memory)",
    "GuardedMap.close": "guards a mapped stream file against being cut (implementation memory)",
    "GuardedMap.__del__": "guards a mapped stream file against being cut (implementation memory)",
    "GuardedMap.close_when_unused": "closes a mapped stream file (implementation memory)",
    "GuardedMap.__exit__": "closes a mapped stream file (implementation memory)",
    "DecodedTensors.__reduce__": "pickling of decoded tensors (API)",
    "_rebuild_decoded": "pickling of decoded tensors (API)",
}
#: Top-level names of container.py that parse nothing (building, reading plumbing, errors).
CONTAINER_NOT_PARSING = {
    "SyntaxViolation": "the error raised by the constructs",
    "_ViewReader": "a byte reader over a memoryview",
    "_LentReader": "a reader lent to construct for one parse (memory: lets go of the caller's buffer)",
}


def spec_headings(texts) -> set:
    return {m.group(1) for text in texts for m in HEADING.finditer(text)}


def cited_clauses(sources: dict) -> dict:
    """{clause: [where, ...]} for every clause cited in the given {filename: source}."""
    out = {}
    for name, text in sources.items():
        for pattern in CITATIONS:
            for m in pattern.finditer(text):
                out.setdefault(m.group(1), []).append(f"{name}:{text.count(chr(10), 0, m.start()) + 1}")
    return out


def dangling_citations(sources: dict, spec_texts) -> dict:
    heads = spec_headings(spec_texts)
    return {c: where for c, where in cited_clauses(sources).items() if c not in heads}


def uncited_functions(source: str, not_normative: dict, *, methods: bool, skip=lambda name: False) -> list:
    """Functions and classes (and, with ``methods``, methods) whose docstring cites no clause."""
    missing = []
    tree = ast.parse(source)
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or skip(node.name):
            continue
        if node.name not in not_normative and not CITES.search(ast.get_docstring(node) or ""):
            missing.append(node.name)
        if methods and isinstance(node, ast.ClassDef):
            for item in node.body:
                name = f"{node.name}.{getattr(item, 'name', '')}"
                if not isinstance(item, ast.FunctionDef) or item.name.startswith("__") or name in not_normative:
                    continue
                if not CITES.search(ast.get_docstring(item) or ""):
                    missing.append(name)
    return missing


def _is_build_side(name: str) -> bool:
    return "build" in name or name in ("_complete", "_size_prefix", "_unflatten_ndu", "best_codebook_egk")


def sources() -> dict:
    """Every source file of the package, its subpackages too (the pure-Python engine, the encoder's parts)."""
    files = sorted(NNC.rglob("*.py")) + sorted(NNC.rglob("*.pyx"))
    return {str(p.relative_to(NNC)): p.read_text() for p in files}


def spec_texts() -> list:
    return [p.read_text() for p in sorted(SPEC.glob("*.md"))]


# -- syntax tables ---------------------------------------------------------------------------

#: spec files whose tables are unit syntax (the container); clause 8 onwards is payload syntax (the engines).
SYNTAX_FILES = ("02-", "03-", "04-", "05-", "06-", "07-")


def spec_syntax_elements(texts) -> set:
    """Element names of every syntax table (header ``| element | descriptor | ...``); ``name()`` for structures."""
    names = set()
    for text in texts:
        in_table = False
        for line in text.splitlines():
            if re.match(r"^\|\s*element\s*\|\s*descriptor\s*\|", line):
                in_table = True
                continue
            if not line.startswith("|"):
                in_table = False
            if not in_table:
                continue
            cell = line.strip("|").split("|")[0].strip()
            if set(cell) <= set("-: "):
                continue
            cell = re.sub(r"\s*\(.*\)$", "", cell.replace("()", "\0")).replace("\0", "()")  # drop remarks
            names.add(re.sub(r"(\[[a-z]\])+$", "", cell))  # drop loop indices
    return names - {"byte_alignment()"}


def _walk(con, names: set, elements: set) -> None:
    if isinstance(con, cs.Struct):
        for sub in con.subcons:
            if sub.name and not sub.name.startswith("_"):
                names.add(sub.name)
            _walk(sub, names, elements)
    elif isinstance(con, cs.IfThenElse):
        _walk(con.thensubcon, names, elements)
        _walk(con.elsesubcon, names, elements)
    elif isinstance(con, cs.Subconstruct):
        _walk(con.subcon, names, elements)
    if hasattr(type(con), "ELEMENTS"):
        elements.update(type(con).ELEMENTS)


def container_syntax_elements(module=C) -> set:
    """Spec names of every field of the module's constructs (through FIELD_SPEC_NAMES), and the hand-read ones."""
    fields, elements = set(), set(module.UNIT_SIZE_ELEMENTS) | set(module.UNIT_STRING_ELEMENTS.values())
    for value in vars(module).values():
        if isinstance(value, cs.Construct):
            _walk(value, fields, elements)
    for field in fields:
        elements.update(module.FIELD_SPEC_NAMES.get(field, (field,)))
    structures = {"codebook": "codebook()", "sparsification_performance_map": "sparsification_performance_map()",
                  "pruning_performance_map": "pruning_performance_map()",
                  "unification_performance_map": "unification_performance_map()",
                  "decomposition_performance_map": "decomposition_performance_map()"}
    return {structures.get(e, e) for e in elements}


def syntax_mismatch(spec_names: set, declared: set) -> tuple[set, set]:
    """(in spec/ but not declared, declared but not in spec/)."""
    return spec_names - declared, declared - spec_names


def syntax_spec_texts() -> list:
    return [p.read_text() for p in sorted(SPEC.glob("*.md")) if p.name.startswith(SYNTAX_FILES)]


# -- the checks ------------------------------------------------------------------------------


def test_every_cited_clause_exists_in_spec():
    assert dangling_citations(sources(), spec_texts()) == {}


def test_unit_clauses_exist_in_spec():
    heads = spec_headings(spec_texts())
    assert set(C.UNIT_CLAUSE.values()) <= heads


def test_every_normative_decoder_function_cites_its_clause():
    source = (NNC / "decoder.py").read_text()
    assert uncited_functions(source, DECODER_NOT_NORMATIVE, methods=True) == []


#: Functions of the decoder's other modules that implement no decoding process, by module and name.
OTHER_NOT_NORMATIVE = {
    "_parallel.py": {"row_threads": "how many threads (API)", "block_row_ranges": "splits work among threads (API)"},
    "engine/matrix.py": {},
    "reconstruction.py": {},
}


@pytest.mark.parametrize("module", sorted(OTHER_NOT_NORMATIVE))
def test_every_decoding_function_of_the_decoder_s_other_modules_cites_its_clause(module):
    source = (NNC / module).read_text()
    assert uncited_functions(source, OTHER_NOT_NORMATIVE[module], methods=True) == []


def test_every_container_parsing_function_cites_its_clause():
    source = (NNC / "container.py").read_text()
    assert uncited_functions(source, CONTAINER_NOT_PARSING, methods=False, skip=_is_build_side) == []


def test_syntax_tables_and_construct_declarations_agree():
    in_spec_only, declared_only = syntax_mismatch(spec_syntax_elements(syntax_spec_texts()),
                                                  container_syntax_elements())
    assert in_spec_only == set(), "in spec/'s syntax tables but not declared in nnc/container.py"
    assert declared_only == set(), "declared in nnc/container.py but in none of spec/'s syntax tables"


def test_the_tables_hold_what_a_decoder_needs():
    """The parsers above find the tables: a sample of elements from each syntax clause."""
    names = spec_syntax_elements(syntax_spec_texts())
    for element in ("alignment_bit_equal_to_one", "nnr_unit_size", "general_profile_idc", "mps_qp_density",
                    "spm_nn_class_accuracy", "lps_qp_density", "topology_data", "codebook_delta_left",
                    "entry_point_offset_delta", "tensor_dimensions", "cabac_entry_point_list()"):
        assert element in names


# -- the checks can fail ---------------------------------------------------------------------


def test_a_removed_clause_is_found():
    texts = spec_texts()
    cut = [re.sub(r"^## 9\.3 .*$", "## 9.3x removed", t, flags=re.M) for t in texts]
    assert "9.3" not in dangling_citations(sources(), texts)
    assert "9.3" in dangling_citations(sources(), cut)
    assert dangling_citations({"x.py": 'raise DecodeError("m", clause="99.1")'}, texts) == {"99.1": ["x.py:1"]}


def test_a_function_without_its_clause_is_found():
    source = 'def _decode_levels(x):\n    """Decode levels."""\n\n\ndef read_input(x):\n    pass\n'
    assert uncited_functions(source, DECODER_NOT_NORMATIVE, methods=True) == ["_decode_levels"]
    source = 'class D:\n    """Decoder (spec 3)."""\n\n    def _walk(self):\n        """Walk (spec 3.1)."""\n' \
             '\n    def _payload(self):\n        pass\n'
    assert uncited_functions(source, {}, methods=True) == ["D._payload"]


@pytest.mark.parametrize("removed", ["mps_qp_density", "codebook_delta_right", "topology_elem_id_index"])
def test_a_removed_table_row_is_found(removed):
    texts = [re.sub(rf"^\| {removed}(\[[a-z]\])* \|.*\n", "", t, flags=re.M) for t in syntax_spec_texts()]
    in_spec_only, declared_only = syntax_mismatch(spec_syntax_elements(texts), container_syntax_elements())
    assert in_spec_only == set() and declared_only == {removed}


def test_a_removed_construct_field_is_found(monkeypatch):
    fields = [sc for sc in C.STR_HEADER.subcons]
    monkeypatch.setattr(C, "STR_HEADER", cs.Struct("general_profile" / fields[0].subcon))
    in_spec_only, declared_only = syntax_mismatch(spec_syntax_elements(syntax_spec_texts()),
                                                  container_syntax_elements())
    assert in_spec_only == {"general_profile_idc"} and declared_only == {"general_profile"}
