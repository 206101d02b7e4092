"""Reader of the IDX files that MNIST and Fashion-MNIST are distributed in."""

import gzip
import os
import struct
import zlib

import numpy as np

_UNSIGNED_BYTE = 0x08


def read_idx(path):
    """Reads an IDX file of unsigned bytes (optionally gzipped) into NumPy.

    Args:
        path: e.g. `train-images-idx3-ubyte.gz`; a name ending in `.gz` is
            decompressed.

    Raises:
        ValueError: the file is not gzip (for `.gz`), not IDX of unsigned
            bytes, or shorter than its header says; the message names it.

    Returns:
        A `uint8` array shaped as the file's header says, e.g.
        `(60000, 28, 28)` for images and `(60000,)` for labels.

    Example:

    >>> import gzip
    >>> from kerakd.data.idx import read_idx
    >>> header = bytes([0, 0, 8, 1, 0, 0, 0, 3])   # unsigned bytes, 1 dimension of size 3
    >>> with gzip.open("t10k-labels-idx1-ubyte.gz", "wb") as file:
    ...     _ = file.write(header + bytes([9, 2, 1]))
    >>> read_idx("t10k-labels-idx1-ubyte.gz")
    array([9, 2, 1], dtype=uint8)
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as file:
            content = file.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(
            f"{os.fspath(path)} is not a readable gzip file ({type(error).__name__}: "
            f"{error}); the file is truncated or corrupt."
        ) from error
    if len(content) < 4:
        raise ValueError(
            f"{os.fspath(path)} holds {len(content)} bytes, less than an IDX header; "
            "the file is truncated or corrupt."
        )
    zeros, dtype, ndim = struct.unpack(">HBB", content[:4])
    if zeros != 0 or dtype != _UNSIGNED_BYTE:
        raise ValueError(
            f"{os.fspath(path)} is not an IDX file of unsigned bytes "
            f"(header {content[:4].hex()}); expected 0000 08 0N."
        )
    shape = struct.unpack(f">{ndim}I", content[4:4 + 4 * ndim])
    body = np.frombuffer(content, np.uint8, offset=4 + 4 * ndim)
    if body.size != np.prod(shape):
        raise ValueError(
            f"{os.fspath(path)} holds {body.size} bytes of data but its header "
            f"announces shape {shape}; the file is truncated or corrupt."
        )
    return body.reshape(shape)
