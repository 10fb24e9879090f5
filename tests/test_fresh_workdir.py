"""tools/fresh_workdir.sh, which the build and CI scripts use to remove and remake their scratch folder,
refuses folders it did not make, the checkout and options, leaving them as they were."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not found")


def _fresh(cwd: Path, *args: str):
    script = f'source "{REPO}/tools/fresh_workdir.sh" && fresh_workdir test.sh .scratch "$@" && echo "$work"'
    return subprocess.run(["bash", "-c", script, "bash", *args], cwd=cwd, capture_output=True, text=True)


def test_makes_and_remakes_its_own_folder(tmp_path):
    first = _fresh(tmp_path)
    assert first.returncode == 0 and first.stdout.strip() == str(tmp_path / ".scratch")
    (tmp_path / ".scratch" / "old").write_text("x")
    assert _fresh(tmp_path, str(tmp_path / ".scratch")).returncode == 0
    assert not (tmp_path / ".scratch" / "old").exists()


@pytest.mark.parametrize("arg", ["--help", "-x", "OTHER", ".", ".."])
def test_refuses_what_it_did_not_make(tmp_path, arg):
    checkout = tmp_path / "checkout"
    (checkout / "OTHER").mkdir(parents=True)
    (checkout / "OTHER" / "keep").write_text("x")
    (checkout / "keep").write_text("x")
    result = _fresh(checkout, arg)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("test.sh: ")
    assert (checkout / "OTHER" / "keep").exists() and (checkout / "keep").exists()


def test_its_default_folder_is_its_own_even_without_the_marker(tmp_path):
    """A default folder made before the marker existed (an older checkout's .ci-pythons) is remade, named or not."""
    for args in [(), (".scratch",)]:
        (tmp_path / ".scratch").mkdir(exist_ok=True)
        (tmp_path / ".scratch" / "old").write_text("x")
        assert _fresh(tmp_path, *args).returncode == 0
        assert not (tmp_path / ".scratch" / "old").exists()
        (tmp_path / ".scratch" / ".nnc-scratch").unlink()
