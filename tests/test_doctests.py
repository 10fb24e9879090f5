"""The examples in the public modules' docstrings run as written."""

import doctest
import importlib

import pytest

MODULES = ["nnc.decoder", "nnc.encoder", "nnc.models", "nnc.reconstruction", "nnc.engine",
           "nnc.search", "nnc.allocation", "nnc.cli", "nnc.demo"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
