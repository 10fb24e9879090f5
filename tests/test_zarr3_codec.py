"""nnc.codec with zarr version 3 arrays, through numcodecs' zarr 3 wrappers (skipped without zarr 3)."""

import json
import warnings

import numpy as np
import pytest

import nnc
from nnc.codec import NNC, ZARR3_NAME, zarr3_codec

zarr = pytest.importorskip("zarr", reason="zarr not installed: zarr v3 codec not tested")
if not hasattr(zarr, "create_array"):
    pytest.skip("zarr < 3: no zarr v3 arrays", allow_module_level=True)
pytestmark = pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3")


def _snr(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return 10 * np.log10((x**2).sum() / ((x - y) ** 2).sum())


def test_zarr3_array_round_trip_reopened_from_its_metadata(tmp_path):
    x = np.random.default_rng(1).standard_normal((50, 40)).astype(np.float32)
    path = tmp_path / "w.zarr"
    a = zarr.create_array(
        store=str(path),
        shape=x.shape,
        chunks=(32, 32),
        dtype="float32",
        serializer=zarr3_codec(target_snr=35),
        compressors=None,
    )
    a[:] = x

    meta = json.loads((path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    codec = meta["codecs"][0]
    assert codec["name"] == ZARR3_NAME and codec["configuration"]["target_snr"] == 35

    back = zarr.open_array(str(path), mode="r")[:]  # a new array object: the codec is found by its name
    assert back.shape == x.shape and back.dtype == np.float32
    for i in range(0, 50, 32):  # every chunk meets the target on its own
        for j in range(0, 40, 32):
            assert _snr(x[i : i + 32, j : j + 32], back[i : i + 32, j : j + 32]) >= 35

    # each stored chunk is a standalone NNC stream holding the (edge-padded) chunk
    chunk = (path / "c" / "0" / "0").read_bytes()
    decoded = nnc.decode(chunk)
    assert list(decoded) == ["chunk"] and decoded["chunk"].shape == (32, 32)
    np.testing.assert_array_equal(decoded["chunk"], back[:32, :32])


def test_zarr3_integers_are_exact_and_fixed_qp_matches_the_v2_codec():
    ints = np.arange(-600, 600, dtype=np.int16).reshape(30, 40)
    a = zarr.create_array(
        store={}, shape=ints.shape, chunks=(16, 16), dtype="int16", serializer=zarr3_codec(qp=-30), compressors=None
    )
    a[:] = ints
    np.testing.assert_array_equal(a[:], ints)

    x = np.random.default_rng(2).standard_normal((16, 16)).astype(np.float32)
    b = zarr.create_array(
        store={},
        shape=x.shape,
        chunks=(16, 16),
        dtype="float32",
        serializer=zarr3_codec(qp=-30, dq=False),
        compressors=None,
    )
    b[:] = x
    np.testing.assert_array_equal(b[:], NNC(qp=-30, dq=False).decode(NNC(qp=-30, dq=False).encode(x)))


def test_zarr3_codec_rejects_bad_settings():
    with pytest.raises(nnc.EncodeError):
        zarr3_codec(qp=-30, target_snr=20)
    with pytest.raises(nnc.EncodeError, match="unknown NNC codec setting.*'quality'"):  # before: TypeError
        zarr3_codec(quality=3)


def test_zarr3_codec_is_the_registered_class():
    from zarr.registry import get_codec_class

    import nnc.codec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codec = zarr3_codec(qp=-20)
    assert get_codec_class(ZARR3_NAME) is nnc.codec.NNCZarr3 is type(codec)
    config = NNC(qp=-20).get_config()
    config.pop("id")
    assert codec.to_dict() == {"name": ZARR3_NAME, "configuration": config}


def test_an_array_whose_codec_setting_this_version_does_not_know_opens_to_read(tmp_path):
    """A configuration with a setting from a later version made the array impossible to open even to read."""
    x = np.random.default_rng(2).standard_normal((20, 20)).astype(np.float32)
    path = tmp_path / "w.zarr"
    a = zarr.create_array(
        store=str(path), shape=x.shape, chunks=(10, 10), dtype="float32", serializer=zarr3_codec(qp=-30),
        compressors=None,
    )
    a[:] = x
    before = a[:]
    meta = json.loads((path / "zarr.json").read_text())
    meta["codecs"][0]["configuration"]["lossless"] = True  # as a later version might write
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="'lossless' unknown to this version"):
        reopened = zarr.open_array(str(path), mode="r+")
        np.testing.assert_array_equal(reopened[:], before)
    with pytest.raises(nnc.EncodeError, match="does not know"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reopened[:10, :10] = 5  # (zeros, the fill value, would delete the chunk without encoding)
    np.testing.assert_array_equal(zarr.open_array(str(path), mode="r")[:], before)
