"""The documentation site (docs/): its code runs as written, its CLI reference is the --help
output, and it builds with sphinx-build -nW (every warning and broken reference an error).

The build tests need the docs extra (pip install -e ".[docs]") and are skipped, with that
reason, without it; .ci/run installs it and runs this file again after the main tests.
"""

from __future__ import annotations

import ast
import html
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
EXE = shutil.which("nnc")
CMD = [EXE] if EXE else [sys.executable, "-m", "nnc"]
FENCE = re.compile(r"^```([^\s`]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)

# pages whose code is run: page -> (where: "tmp" or "repo", also run the `nnc ...` shell lines)
PAGES = {
    "getting-started.md": ("tmp", True),
    "choosing-quality.md": ("tmp", True),
    "conformance.md": ("repo", False),
    "embedding.md": ("tmp", False),
}


def code_blocks(page: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of a docs page, in page order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer((DOCS / page).read_text(encoding="utf-8"))]


def nnc_commands(code: str) -> list[list[str]]:
    """The `nnc ...` commands of a shell block (also those after `&&`), comments removed."""
    out = []
    for line in code.splitlines():
        words = shlex.split(line, comments=True)
        segment: list[str] = []
        for w in words + ["&&"]:
            if w == "&&":
                if segment and segment[0] == "nnc":
                    out.append(segment[1:])
                segment = []
            else:
                segment.append(w)
    return out


def help_env() -> dict:
    env = dict(os.environ, COLUMNS="80", NO_COLOR="1")
    for k in ("FORCE_COLOR", "PYTHON_COLORS"):
        env.pop(k, None)
    return env


#: Packages a page may import that the `test` extra does not install (the README's test command runs without them).
OPTIONAL = ("torch", "zarr", "dask", "numcodecs", "sklearn", "matplotlib", "onnx", "onnxruntime")


def optional_imports(code: str) -> set:
    """The :data:`OPTIONAL` packages a python block imports."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names & set(OPTIONAL)


@pytest.mark.parametrize("page", list(PAGES))
def test_page_code_runs_as_written(page, tmp_path, monkeypatch, capsys):
    where, run_shell = PAGES[page]
    monkeypatch.chdir(tmp_path if where == "tmp" else REPO)
    blocks = code_blocks(page)
    for package in sorted(set().union(*(optional_imports(code) for lang, code in blocks if lang == "python"))):
        pytest.importorskip(package, reason=f"{page} imports {package}, which is not installed")
    assert any(lang == "python" for lang, _ in blocks), f"{page} has no python block"
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for i, (lang, code) in enumerate(blocks):
        if lang == "python":
            exec(compile(code, f"{page} block {i}", "exec"), namespace)
            ran += 1
        elif lang == "sh" and run_shell:
            for args in nnc_commands(code):
                r = subprocess.run(CMD + args, capture_output=True, text=True, env=help_env())
                assert r.returncode == 0, f"{page}: nnc {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
                ran += 1
    assert ran
    capsys.readouterr()


def test_getting_started_runs_the_readme_commands_and_cli_steps():
    blocks = code_blocks("getting-started.md")
    commands = [" ".join(c) for lang, code in blocks if lang == "sh" for c in nnc_commands(code)]
    assert "demo" in commands                                   # from the README's `pip install . && nnc demo`
    assert any(c.startswith("encode ") for c in commands)
    assert any(c.startswith("decode ") for c in commands)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for lang, code in blocks[:2]:                               # the README's two set-up commands, verbatim
        assert lang == "sh" and code.strip() in readme


# -- the CLI reference -------------------------------------------------------------------


def cli_help_texts():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import cliref
    finally:
        sys.path.pop(0)
    return cliref.help_texts()


def test_cli_reference_equals_help_output():
    texts = cli_help_texts()
    names = [name for name, _, _ in texts]
    assert names[0] == "" and {"encode", "decode", "info", "verify", "bench", "demo"} <= set(names)
    for name, _, text in texts:
        r = subprocess.run(CMD + ([name] if name else []) + ["--help"], capture_output=True, text=True,
                           env=help_env())
        assert r.returncode == 0, r.stderr
        assert r.stdout == text, f"the reference of 'nnc {name}' differs from its --help"


# -- concept figures ---------------------------------------------------------------------------


def figures_module():
    sys.path.insert(0, str(DOCS / "figures"))
    try:
        import make_figures
    finally:
        sys.path.pop(0)
    return make_figures


def test_binarisation_figure_follows_spec_10_1():
    mf = figures_module()
    for n_gtx in (1, 3, 11):
        for k in range(-300, 301):
            bins = mf.binarise(k, n_gtx)
            assert mf.unbinarise(bins, n_gtx) == k
    # |k| = 9 with N = 3: sig, sign, 3 flags, remainder 5 = (2^2 - 1) + 2: prefix 1 1 0, suffix 1 0
    assert [b for _, b, _ in mf.binarise(-9, 3)] == [1, 1, 1, 1, 1, 1, 1, 0, 1, 0]


def test_dq_figure_follows_spec_10_2_example():
    states, levels = figures_module().dq_levels([1, -2, 0, 3])
    assert states == [0, 2, 1, 7, 6] and levels == [2, -4, 0, 5]


def test_figures_are_drawn(tmp_path):
    changed = figures_module().write_all(tmp_path)
    assert sorted(changed) == sorted(p.name for p in tmp_path.glob("*.svg")) and len(changed) == 4
    for p in tmp_path.glob("*.svg"):
        assert p.read_text(encoding="utf-8").startswith("<svg ")


# -- the site builds ---------------------------------------------------------------------------


def _docs_tools_missing() -> str | None:
    try:
        import myst_parser  # noqa: F401
        import sphinx  # noqa: F401
    except ImportError as exc:
        return f"documentation tools not installed ({exc}); pip install -e \".[docs]\" to build the site"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    missing = _docs_tools_missing()
    if missing:
        pytest.skip(missing)
    out = tmp_path_factory.mktemp("docs") / "html"
    r = subprocess.run([sys.executable, "-m", "sphinx", "-nW", "--keep-going", "-b", "html", str(DOCS), str(out)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, f"sphinx-build -nW failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return out


def test_site_builds_with_warnings_as_errors(site):
    assert (site / "index.html").exists()


def test_every_page_renders(site):
    sources = [p for p in DOCS.rglob("*.md") if "_build" not in p.parts and "_generated" not in p.parts]
    assert len(sources) > 20
    for src in sources:
        page = site / src.relative_to(DOCS).with_suffix(".html")
        assert page.exists(), f"{src.relative_to(REPO)} was not rendered"
    for name in ("binarisation", "dq_trellis", "arithmetic_coding", "unit_stream"):
        assert list((site / "_images").glob(f"{name}*.svg")), f"figure {name} missing"


def _strip_tags(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def test_rendered_cli_reference_is_the_help_output(site):
    page = (site / "cli.html").read_text(encoding="utf-8")
    for name, _, text in cli_help_texts():
        anchor = page.index(f'id="cli-{name or "nnc"}"')
        pre = re.search(r"<pre>(.*?)</pre>", page[anchor:], re.S)
        assert pre, f"no help text for {name or 'nnc'}"
        assert _strip_tags(pre.group(1)).rstrip("\n") == text.rstrip("\n")


def test_spec_clause_numbers_are_anchors(site):
    for page, clauses in {"spec/09-arithmetic-decoder.html": ["9", "9.2", "9.3.3"],
                          "spec/10-levels.html": ["10.1", "10.3.2", "10.6.5"],
                          "spec/15-conformance.html": ["15.1", "15.4"],
                          "spec/Annex-A-encoder.html": ["A", "A.9", "A.14"]}.items():
        text = (site / page).read_text(encoding="utf-8")
        for c in clauses:
            assert f'id="{c}"' in text, f"{page}#{c} missing"
    # every spec file is a page of the site
    for src in (REPO / "spec").glob("*.md"):
        name = "index" if src.name == "README.md" else src.stem
        assert (site / "spec" / f"{name}.html").exists()


def test_conformance_catalogue_lists_every_stream(site):
    text = (site / "conformance.html").read_text(encoding="utf-8")
    manifest = json.loads((REPO / "conformance" / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["streams"]:
        assert f">{entry['name']}<" in text, entry["name"]
        if "expected" in entry:
            assert entry["expected"]["output_sha256"][:16] in text
    # must-fail clauses link to the spec's clause anchors
    assert 'href="spec/03-unit-stream.html#3.1"' in text
