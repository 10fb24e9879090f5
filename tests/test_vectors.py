"""Every NNCodec-written vector in ../shared/vectors decodes to the manifest's hashes (spec 3-14)."""

import pytest

import nnc
from vectors import check_against_manifest, manifests

ALL = manifests()
pytestmark = pytest.mark.skipif(not ALL, reason="shared test vectors (../shared/vectors) not found")

SINGLE = [(d, e) for d, e in ALL if "sequence" not in e]
SEQUENCES = {}
for d, e in ALL:
    if "sequence" in e:
        SEQUENCES.setdefault(e["sequence"]["id"], []).append((d, e))


@pytest.mark.parametrize("engine", ["cython", "python"])
@pytest.mark.parametrize("directory,entry", SINGLE, ids=[e["name"] for _, e in SINGLE])
def test_vector_decodes_to_manifest(directory, entry, engine):
    data = (directory / entry["file"]).read_bytes()
    check_against_manifest(entry, nnc.decode(data, engine=engine))


@pytest.mark.parametrize("seq", sorted(SEQUENCES))
def test_incremental_sequence_with_one_state(seq):
    state = nnc.DecoderState()
    for directory, entry in sorted(SEQUENCES[seq], key=lambda de: de[1]["sequence"]["position"]):
        data = (directory / entry["file"]).read_bytes()
        check_against_manifest(entry, nnc.decode(data, state=state))


@pytest.mark.parametrize("seq", sorted(SEQUENCES))
def test_update_without_its_parent_is_rejected(seq):
    later = [e for e in SEQUENCES[seq] if e[1]["sequence"]["position"] > 0]
    directory, entry = later[0]
    with pytest.raises(nnc.DecodeError, match="parent"):
        nnc.decode((directory / entry["file"]).read_bytes())


KNOWN_BAD = [(d, e) for d, e in SINGLE if "known-bad" in str(d)]


@pytest.mark.parametrize("directory,entry", KNOWN_BAD, ids=[e["name"] for _, e in KNOWN_BAD])
def test_wrong_entry_points_are_detected_when_verifying(directory, entry):
    data = (directory / entry["file"]).read_bytes()
    with pytest.raises(nnc.DecodeError, match="entry points"):
        nnc.decode(data, entry_points="verify")


GOOD_EP = [(d, e) for d, e in SINGLE if "known-bad" not in str(d) and any("entry_points" == f for f in e["features"])]


@pytest.mark.parametrize("directory,entry", GOOD_EP, ids=[e["name"] for _, e in GOOD_EP])
def test_transmitted_entry_points_are_correct_and_usable(directory, entry):
    data = (directory / entry["file"]).read_bytes()
    check_against_manifest(entry, nnc.decode(data, entry_points="verify"))
    check_against_manifest(entry, nnc.decode(data, entry_points="use"))
