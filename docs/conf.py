"""Sphinx configuration of the nnc documentation site.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    sphinx-build -nW --keep-going -b html docs docs/_build/html
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import nnc  # noqa: E402  (the installed package: the site documents what is installed)

project = "nnc"
author = "the nnc developers"
copyright = "the nnc developers"
version = release = nnc.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "cliref",
    "nncdocs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "figures/*.py"]

# Markdown (MyST): GitHub-style anchors for the headings of every page, so that links
# like [x](file.md#some-heading) resolve; spec clauses also get their number as anchor
# (docs/_ext/nncdocs.py).
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 4

# every cross-reference must resolve (the CI build also passes -n -W)
nitpicky = True
# What cannot be resolved without intersphinx (the build needs no network), and so is not
# reported: names of the standard library and of third-party packages in signatures.
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|typing|collections|pathlib|os|io|types|argparse|concurrent|dataclasses"
               r"|enum|abc|construct|numcodecs|zarr|onnx|torch)(\..*)?"),
    (r"py:.*", r"(ndarray|OrderedDict|Mapping|MutableMapping|Iterable|Iterator|Callable|Sequence|Path"
               r"|PathLike|BinaryIO|ModuleType|Any|Optional|Union|Literal)"),
]
# Docstrings in the NumPy style name types in words ("mapping of str to ndarray",
# "path-like", "int, optional"); these are descriptions, not cross-references. A dotted
# name of nnc (nnc.x.Y) is still checked.
nitpick_ignore_regex += [
    (r"py:class", r"[^.]*\s.*"),
    (r"py:class", r"(mapping|iterable|sequence|callable|optional|default|array[-_ ]like|path[-_ ]like"
                  r"|file[-_ ]like|bytes[-_ ]like|scalar|dict[-_ ]like|array|function|generator|"
                  r"iterator|tuple of .*|list of .*|dict of .*)"),
]
# Neither can a type written as a literal ("{name: ndarray}", "[int]"), nor a string
# annotation inside a module that already postpones evaluation, which shows up quoted
# twice ("'OrderedDict[str, X]'").
nitpick_ignore_regex += [(r"py:class", r"[{\[('\"].*")]

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autoclass_content = "both"
napoleon_google_docstring = True
napoleon_numpy_docstring = True

html_theme = "alabaster"
html_title = f"nnc {release}"
html_static_path = ["_static"]
html_css_files = ["nnc.css"]
html_theme_options = {
    "description": "DeepCABAC / MPEG NNC codec for neural-network weights",
    "page_width": "1240px",
    "sidebar_width": "240px",
    "fixed_sidebar": True,
}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}
