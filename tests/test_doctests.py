"""The examples in the public modules' docstrings run as written."""

import doctest
import importlib

import pytest

MODULES = ["nnc", "nnc.decoder", "nnc.encoder", "nnc.models", "nnc.reconstruction", "nnc.engine", "nnc.engine.interface", "nnc.engine.matrix", "nnc.engine.python.scan",
           "nnc.search", "nnc.allocation", "nnc.cli", "nnc.demo",
           "nnc.container", "nnc.errors", "nnc.formats", "nnc.verify", "nnc.tables", "nnc.codec", "nnc.writers",
           "nnc.encoding.settings", "nnc.encoding.quantiser", "nnc.encoding.writer", "nnc.readers",
           "nnc.distributed"]

#: Examples that need an optional back end; they run in their own test, skipped without it.
NEEDS = {
    "nnc.formats.read_pt": "torch",
    "nnc.formats.pt_bytes": "torch",
    "nnc.formats.read_onnx": "onnx",
    "nnc.formats.onnx_bytes": "onnx",
}


def _run(tests):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    return runner.summarize(verbose=False)


def _examples(module_name):
    return [t for t in doctest.DocTestFinder().find(importlib.import_module(module_name)) if t.examples]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = _run(t for t in _examples(name) if t.name not in NEEDS)
    assert result.failed == 0


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_docstring_examples_with_optional_backend(name):
    pytest.importorskip(NEEDS[name])
    tests = [t for t in _examples(name.rsplit(".", 1)[0]) if t.name == name]
    assert tests, f"no examples in {name}"
    assert _run(tests).failed == 0
