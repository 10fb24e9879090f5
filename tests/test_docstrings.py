"""Every public function and class documents its parameters and return value and shows an example.

Public means: listed in its module's ``__all__``. The examples themselves run in
tests/test_doctests.py; the API pages of the documentation render these docstrings.
"""

import importlib
import inspect

import pytest

MODULES = ["nnc", "nnc.decoder", "nnc.encoder", "nnc.container", "nnc.errors", "nnc.formats", "nnc.models",
           "nnc.reconstruction", "nnc.verify", "nnc.engine", "nnc.tables", "nnc.search", "nnc.allocation",
           "nnc.cli", "nnc.demo", "nnc.writers", "nnc.torch", "nnc.array_store"]


def public_objects():
    for name in MODULES:
        module = importlib.import_module(name)
        assert hasattr(module, "__all__"), f"{name} has no __all__"
        for attr in module.__all__:
            obj = getattr(module, attr)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__:
                yield f"{name}.{attr}", (obj, False)
                if inspect.isclass(obj):
                    for member, value in vars(obj).items():
                        if not member.startswith("_") and inspect.isfunction(value):
                            yield f"{name}.{attr}.{member}", (value, True)


PUBLIC = dict(public_objects())


@pytest.mark.parametrize("qualname", sorted(PUBLIC))
def test_public_api_is_documented(qualname):
    obj, is_method = PUBLIC[qualname]
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{qualname} has no docstring"
    if is_method:
        return  # a method needs a docstring; its class carries the example
    assert ">>>" in doc, f"{qualname}: no example"
    if inspect.isfunction(obj):
        params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        if params:
            assert "Parameters" in doc, f"{qualname}: no Parameters section"
        assert "Returns" in doc or "Yields" in doc or inspect.signature(obj).return_annotation in (None, "None"), \
            f"{qualname}: no Returns section"
