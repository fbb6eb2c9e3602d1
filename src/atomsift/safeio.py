"""Bounded reading of the files a user hands us: NumPy files (``.npy``, ``.npz``) and YAML
mappings (run files, the DAG's specs).

``np.load`` trusts the header of an ``.npy`` (and of each ``.npy`` inside an ``.npz``): a header
that claims a shape of 10^12 rows makes it allocate the whole array before reading a byte, which
ends in a MemoryError traceback (or a machine swapping) instead of a one-line error. Here the
header is read first (at most :data:`MAX_HEADER` bytes, parsed by numpy's own literal-only parser)
and the bytes it claims are compared with the bytes the file or zip member holds; only then is
the array loaded, never with pickles allowed.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from atomsift.errors import InputError

MAX_HEADER = 10_000  # bytes of .npy header dictionary numpy itself accepts by default
# zlib's deflate cannot expand one compressed byte into more than 1032 bytes (zlib tech notes):
# a member whose declared size exceeds that is lying about its size
_MAX_DEFLATE_RATIO = 1032


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def npy_header(fh) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length in bytes) of the ``.npy`` stream ``fh`` positioned at its start;
    ValueError for anything that is not a well-formed header."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(fh, max_header_size=MAX_HEADER)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = fmt.read_array_header_2_0(fh, max_header_size=MAX_HEADER)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(int(s) for s in shape), np.dtype(dtype), fh.tell()


def claimed_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes of data an array of this shape and dtype occupies (Python ints: no overflow)."""
    n = 1
    for s in shape:
        n *= int(s)
    return n * dtype.itemsize


def _check_claim(shape, dtype, available: int, path, field: str | None) -> None:
    if dtype.hasobject:
        raise InputError("holds Python objects (a pickle); refused", path=path, field=field)
    need = claimed_bytes(shape, dtype)
    if need > available:
        raise InputError(f"header claims shape {shape} of {dtype} ({need} bytes) but only {available} bytes follow "
                         "(truncated or forged)", path=path, field=field)


def check_npy(path: str | Path) -> None:
    """Raise InputError unless the ``.npy`` at ``path`` holds the bytes its header claims."""
    p = Path(path)
    size = p.stat().st_size
    try:
        with open(p, "rb") as fh:
            shape, dtype, hlen = npy_header(fh)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise InputError(f"not a readable .npy file ({_one_line(exc)})", path=p) from None
    _check_claim(shape, dtype, size - hlen, p, None)


def load_npy(path: str | Path) -> np.ndarray:
    """``np.load`` of a ``.npy`` after :func:`check_npy` (no pickles)."""
    check_npy(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"not a readable .npy file ({_one_line(exc)})", path=path) from None


def check_npz(path: str | Path) -> None:
    """Raise InputError unless every ``.npy`` member of the ``.npz`` at ``path`` holds the bytes its
    header claims (the member's size, and for a compressed member what its compressed bytes can
    hold). Object members are skipped: they are pickles, which ``np.load(allow_pickle=False)``
    refuses when one is read. A file that is not a zip archive is left to ``np.load`` to report."""
    p = Path(path)
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return  # np.load says what it is (a single .npy, or not numpy at all)
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            if info.compress_type != zipfile.ZIP_STORED and info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
                raise InputError(f"member declares {info.file_size} bytes, more than its {info.compress_size} "
                                 "compressed bytes can hold (forged)", path=p, field=key)
            try:
                with zf.open(info) as fh:
                    shape, dtype, hlen = npy_header(fh)
            except (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile, NotImplementedError) as exc:
                raise InputError(f"unreadable member ({_one_line(exc)})", path=p, field=key) from None
            if dtype.hasobject:
                continue  # a pickled member (old sGDML metadata): never loaded, np.load refuses it on access
            _check_claim(shape, dtype, info.file_size - hlen, p, key)


def read_yaml_mapping(path: str | Path, *, what: str = "run file", max_bytes: int = 1 << 20) -> dict:
    """The YAML mapping in ``path``: at most ``max_bytes``, UTF-8, valid YAML (safe loader: no
    Python objects), a mapping at the top level (empty file: {}); anything else is one InputError."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} does not exist", path=p)
    size = p.stat().st_size
    if size > max_bytes:
        raise InputError(f"{size} bytes: too large for a {what} (at most {max_bytes})", path=p)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})", path=p) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise InputError(f"not valid YAML{where}" + (f" ({problem})" if problem else ""), path=p) from None
    except RecursionError:
        raise InputError("not valid YAML (nested too deeply)", path=p) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError("expected a mapping of keys at the top level", path=p)
    return data


def read_text(path: str | Path) -> str:
    """The UTF-8 text of ``path`` (a CSV or JSON the verbs read); a file that is not UTF-8 is one
    InputError naming it (a missing file raises FileNotFoundError, for the caller's message)."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})", path=path) from None
