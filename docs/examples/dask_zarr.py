"""Compress a dask array into zarr with the NNC codec, one chunk per task on a Dask cluster.

Run as ``python docs/examples/dask_zarr.py [ADDRESS]`` (default: a local cluster);
tests/test_dask.py runs :func:`compress_to_zarr` on a LocalCluster.
"""

import sys

import dask.array as da
import numcodecs
import numpy as np
import zarr
from dask.distributed import Client, LocalCluster

from nnc.codec import NNC

numcodecs.register_codec(NNC)   # an installed nnc registers itself (entry point); a source tree does not


def compress_to_zarr(x: da.Array, path: str, qp: int = -30):
    """Write ``x`` to a zarr array at ``path``, every chunk an NNC stream coded by a worker."""
    z = zarr.create_array(store=path, shape=x.shape, chunks=x.chunksize, dtype=x.dtype,
                          zarr_format=2, compressors=NNC(qp=qp), overwrite=True)
    da.store(x, z, lock=False)      # each task encodes its chunk and writes it to the store
    return z


if __name__ == "__main__":
    client = Client(sys.argv[1]) if len(sys.argv) > 1 else Client(LocalCluster(n_workers=2))
    rng = da.random.default_rng(0)
    x = (rng.standard_normal((4096, 4096), chunks=(1024, 1024)) * 0.02).astype(np.float32)
    z = compress_to_zarr(x, "weights.zarr")
    back = da.from_zarr(z)
    print("max error", float(abs(back - x).max().compute()), "stored bytes", z.nbytes_stored())
