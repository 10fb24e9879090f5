"""Release files: one version, a changelog and a citation that agree with it, the license, nnc --version."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nnc

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not (ROOT / "CHANGELOG.md").exists(), reason="not a source checkout")


def _release_tuple(version):
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)\.(\d+)", version).groups())


def _changelog_versions():
    return re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})", (ROOT / "CHANGELOG.md").read_text(), re.M)


def test_the_version_is_written_once():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and 'version = { attr = "nnc.__version__" }' in text
    assert not re.search(r'^version\s*=\s*"', text, re.M), "a literal version in pyproject.toml"
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", nnc.__version__)


def test_changelog_has_one_section_per_released_version_and_unreleased_on_top():
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = _changelog_versions()
    assert versions, "no released version in the changelog"
    assert text.index("## [Unreleased]") < text.index(f"## [{versions[0][0]}]")
    tuples = [_release_tuple(v) for v, _ in versions]
    assert tuples == sorted(tuples, reverse=True), "versions not newest first"
    # the package version is the newest release, or a pre-release of a later one
    newest = tuples[0]
    current = _release_tuple(nnc.__version__)
    assert current == newest and re.fullmatch(r"[\d.]+", nnc.__version__) or current > newest
    # the stream format and the conformance suite are named apart from the package version
    assert "Stream format:" in text and "Conformance suite:" in text


def test_citation_names_this_version_the_paper_and_the_standard():
    text = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^cff-version: 1\.2\.0$", text, re.M)
    cited = re.search(r"^version: (\S+)$", text, re.M).group(1)
    assert cited in [v for v, _ in _changelog_versions()], "CITATION.cff cites an unreleased version"
    assert "DeepCABAC: A Universal Compression Algorithm for Deep Neural Networks" in text
    assert "ISO/IEC 15938-17" in text and "Compression of neural networks for multimedia content" in text


def test_license_is_the_declared_bsd_3_clause():
    assert 'license = "BSD-3-Clause"\nlicense-files = ["LICENSE"]' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "the nnc authors" in text


def test_sdist_manifest_holds_spec_conformance_and_tests():
    manifest = (ROOT / "MANIFEST.in").read_text().split()
    for tree in ("spec", "conformance", "tests"):
        assert tree in manifest


@pytest.mark.quick
def test_version_option_names_the_package_version_and_the_engine(tmp_path):
    def version(**env):  # run outside the checkout: the nnc under test, not ./nnc
        return subprocess.run(
            [sys.executable, "-m", "nnc", "--version"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=True,
            env={**os.environ, **env},
        ).stdout.strip()

    out = version()
    assert out.startswith(f"nnc {nnc.__version__}, engine ")
    assert re.search(r"engine (cython \(compiled\)|python \(pure Python\))$", out)
    assert version(NNC_ENGINE="python").endswith("engine python (pure Python)")
