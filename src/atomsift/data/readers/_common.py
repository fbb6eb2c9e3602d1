"""Helpers shared by the dataset readers: unit factors, checked HDF5/npz access, JMP-style splits.

Every function here turns a problem with the source into an :class:`InputError` whose message is
one line naming the file, the group/key and (where there is one) the row index, so that
``atomsift prepare`` exits with code 2 and never shows a traceback from inside h5py or numpy.

Unit factors come from :mod:`ase.units` (CODATA 2014), the same constants the reference loaders
use (JMP's ANI-1x and Transition-1x scripts multiply by ``ase.units.Hartree``).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from ase import units as _u

from atomsift.errors import InputError

# ------------------------------------------------------------------------------------------ units

HARTREE = float(_u.Hartree)  # eV per Hartree, 27.211386024367243
BOHR = float(_u.Bohr)  # Angstrom per bohr, 0.5291772105638411
HARTREE_PER_BOHR = HARTREE / BOHR  # eV/Angstrom per Hartree/bohr
KCAL_MOL = float(_u.kcal / _u.mol)  # eV per kcal/mol, 0.04336410390059322 (JMP: 1/23.061 = 0.0433632540)

DEFAULT_SEED = 42  # JMP's fine-tuning seed; every molecular reader uses it unless --seed is given


def one_line(exc: BaseException | str) -> str:
    """The text of ``exc`` on one line (h5py/zipfile messages can span several)."""
    return re.sub(r"\s+", " ", str(exc)).strip()


# ------------------------------------------------------------------------------------------ paths


def source_path(source, *, what: str = "dataset file or directory") -> Path:
    """``source`` as an existing Path, or an InputError (readers other than qm9 need --source)."""
    if source is None:
        raise InputError(f"--source is required (the downloaded {what})", field="source")
    p = Path(source)
    if not p.exists():
        raise InputError("does not exist", path=p)
    return p


def find_file(source: Path, names: Sequence[str], patterns: Sequence[str], *, what: str) -> Path:
    """``source`` itself when a file; in a directory, the first of ``names`` present, else the one
    file matching ``patterns`` (an InputError when none or several match)."""
    if source.is_file():
        return source
    for name in names:
        if (source / name).is_file():
            return source / name
    found = sorted({p for pat in patterns for p in source.glob(pat) if p.is_file()})
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(f"no {what} in directory (looked for {', '.join([*names, *patterns])})", path=source)
    raise InputError(f"several candidate {what}s in directory ({', '.join(p.name for p in found[:5])}); pass the file", path=source)


# ------------------------------------------------------------------------------------------- HDF5


def open_hdf5(path: str | Path):
    """Open ``path`` read-only with h5py; a truncated or non-HDF5 file is a one-line InputError."""
    import h5py

    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot open as HDF5 (truncated or not an HDF5 file: {one_line(exc)})", path=path) from None


def h5_field(group, key: str) -> str:
    """``<group path>/<key>`` without the leading slash, for error messages."""
    return f"{group.name.rstrip('/')}/{key}".lstrip("/")


def _h5_open(group, key: str, path, required: bool):
    """Low-level handle of dataset ``group[key]`` (h5py's Dataset objects cost ~3x more to make),
    None for a missing optional key; InputErrors name what is there instead."""
    import h5py

    try:
        return h5py.h5d.open(group.id, key.encode())
    except (KeyError, ValueError, OSError, RuntimeError, TypeError):
        pass
    try:  # find out why, for the message
        obj = group.get(key)
    except (OSError, KeyError, RuntimeError, ValueError) as exc:  # dangling links, damaged headers
        raise InputError(f"cannot resolve ({one_line(exc)})", path=path, field=h5_field(group, key)) from None
    if obj is None:
        if not required:
            return None
        raise InputError("missing dataset", path=path, field=h5_field(group, key))
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"expected a dataset, found a {type(obj).__name__}", path=path, field=h5_field(group, key))
    raise InputError("cannot open the dataset", path=path, field=h5_field(group, key))


def memory_bytes() -> int:
    """Physical memory of this machine (a bound no single array we allocate may exceed)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _h5_read(did, group, key: str, path, shape=None, dtype=None) -> np.ndarray:
    import h5py

    shape = did.shape if shape is None else shape
    dtype = did.dtype if dtype is None else dtype
    # a chunked dataset may declare any extent and store nothing: bound the allocation first
    need = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    if need > memory_bytes():
        raise InputError(f"dataset claims shape {tuple(shape)} of {np.dtype(dtype)} ({need} bytes), more than this "
                         f"machine's memory ({memory_bytes()} bytes)", path=path, field=h5_field(group, key))
    try:  # shape and dtype each cost an HDF5 call: pass them when known
        arr = np.empty(shape, dtype=dtype)
        did.read(h5py.h5s.ALL, h5py.h5s.ALL, arr)
    except (OSError, RuntimeError, ValueError, TypeError) as exc:  # truncated data blocks, bad filters
        raise InputError(f"cannot read ({one_line(exc)})", path=path, field=h5_field(group, key)) from None
    return arr


def h5_dataset(group, key: str, path, *, kind: str = "f", ndim: int | None = None,
               shape: Sequence[int | None] | None = None, required: bool = True) -> np.ndarray | None:
    """Read ``group[key]`` fully as an array, checking it exists and its dtype kind and shape.

    ``kind``: "f" (float; integer also accepted), "i" (integer), "any". ``shape`` entries of None
    match any length. Missing keys give None when ``required`` is False.
    """
    did = _h5_open(group, key, path, required)
    if did is None:
        return None
    try:
        dtype, dshape = did.dtype, did.shape
    except (OSError, RuntimeError, ValueError, TypeError) as exc:  # a datatype numpy has no equivalent for
        raise InputError(f"unsupported HDF5 type ({one_line(exc)})", path=path, field=h5_field(group, key)) from None
    if not _dtype_ok(dtype, kind):
        check_dtype(dtype, kind, path, h5_field(group, key))
    if ndim is not None and len(dshape) != ndim:
        raise InputError(f"expected {ndim} dimensions, got shape {dshape}", path=path, field=h5_field(group, key))
    if shape is not None:
        if len(dshape) != len(shape) or any(s is not None and s != t for s, t in zip(shape, dshape)):
            want = fmt_shape(shape)
            raise InputError(f"expected shape {want}, got {dshape}", path=path, field=h5_field(group, key))
    return _h5_read(did, group, key, path, dshape, dtype)


def h5_attr_string(group, key: str, attr: str, path) -> str | None:
    """The string attribute ``attr`` of dataset ``group[key]`` (SPICE ``units``), None when the
    dataset or the attribute is absent. Low-level calls: ~0.1 ms, a third of h5py's ``.attrs``."""
    import h5py

    try:
        did = h5py.h5d.open(group.id, key.encode())
    except (KeyError, ValueError, OSError, RuntimeError, TypeError):
        return None  # a missing dataset is reported where it is read
    try:
        if not h5py.h5a.exists(did, attr.encode()):
            return None
        aid = h5py.h5a.open(did, attr.encode())
        value = np.zeros(aid.shape, dtype=aid.dtype)
        aid.read(value)
    except (KeyError, ValueError, OSError, RuntimeError, TypeError) as exc:
        raise InputError(f"cannot read attribute '{attr}' ({one_line(exc)})", path=path, field=h5_field(group, key)) from None
    v = value.reshape(-1)[0] if value.size == 1 else value
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8", "replace")
    return str(v)


def h5_string(group, key: str, path, *, required: bool = False) -> str | None:
    """A scalar or (1,) string dataset (SPICE ``subset``/``smiles``) decoded to str."""
    did = _h5_open(group, key, path, required)
    if did is None:
        return None
    v = _h5_read(did, group, key, path)
    if v.size != 1:
        raise InputError(f"expected one string, got shape {v.shape}", path=path, field=h5_field(group, key))
    v = v.reshape(-1)[0]
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    raise InputError(f"expected a string, got {type(v).__name__}", path=path, field=h5_field(group, key))


# -------------------------------------------------------------------------------------------- npz


def open_npz(path: str | Path):
    """``np.load`` an .npz without unpickling; a truncated or non-zip file is a one-line InputError.

    Object arrays (pickled metadata in old sGDML files) are never loaded: reading one raises,
    which :func:`npz_array` reports, and the readers only read numeric keys. Every member's
    header is checked against the member's size first (:func:`atomsift.safeio.check_npz`).
    """
    from atomsift.safeio import check_npz

    check_npz(path)  # a member header claiming more than the member holds: one line, not a MemoryError
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise InputError(f"cannot open as .npz (truncated or not a numpy archive: {one_line(exc)})", path=path) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InputError("is a single .npy array, expected an .npz archive", path=path)
    return npz


def npz_array(npz, key: str, path, *, kind: str = "f", ndim: int | Iterable[int] | None = None,
              required: bool = True) -> np.ndarray | None:
    """Read ``npz[key]``, checking it exists, its dtype kind and its number of dimensions."""
    if key not in npz.files:
        if not required:
            return None
        raise InputError(f"missing key (has: {', '.join(sorted(npz.files))})", path=path, field=key)
    try:
        a = npz[key]
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:  # truncated member, pickled object
        raise InputError(f"cannot read ({one_line(exc)})", path=path, field=key) from None
    check_dtype(a.dtype, kind, path, key)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            raise InputError(f"expected {' or '.join(map(str, allowed))} dimensions, got shape {a.shape}", path=path, field=key)
    return a


def npz_string(npz, key: str) -> str | None:
    """A string metadata entry of an sGDML npz (``name``, ``theory``, ``e_unit``), or None."""
    if key not in npz.files:
        return None
    try:
        a = npz[key]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError):  # pickled object array: not loaded
        return None
    if a.dtype.kind in "SU" and a.size == 1:
        v = a.reshape(-1)[0]
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return None


# --------------------------------------------------------------------------------------- checking


def _dtype_ok(dtype, kind: str) -> bool:
    k = np.dtype(dtype).kind
    return kind == "any" or (k in "iu" if kind == "i" else k in "fiu")


def check_dtype(dtype, kind: str, path, field: str) -> None:
    """Raise unless ``dtype`` is numeric of ``kind`` ("f": float or int, "i": int, "any")."""
    dt = np.dtype(dtype)
    if not _dtype_ok(dt, kind):
        want = "an integer" if kind == "i" else "a numeric"
        raise InputError(f"expected {want} array, got dtype {dt}", path=path, field=field)


def first_bad_row(a: np.ndarray) -> int | None:
    """Index along axis 0 of the first row holding a non-finite value, or None."""
    ok = np.isfinite(a).reshape(a.shape[0], -1).all(axis=1) if a.ndim > 1 else np.isfinite(a)
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else None


def require_finite(a: np.ndarray, path, field: str, row: str = "row", offset: int = 0) -> None:
    """Raise naming the first row of ``a`` (axis 0) with a NaN or infinity."""
    i = first_bad_row(a)
    if i is not None:
        val = a[i].reshape(-1)
        v = val[~np.isfinite(val)][0]
        raise InputError(f"{row} {i + offset}: non-finite value ({v})", path=path, field=field)


def check_atomic_numbers(z: np.ndarray, path, field: str) -> np.ndarray:
    """A 1-D integer array of atomic numbers in 1..118 (as int64)."""
    if z.ndim != 1 or z.size == 0:
        raise InputError(f"expected a non-empty 1-D array, got shape {z.shape}", path=path, field=field)
    if z.dtype.kind == "f":
        if not np.all(np.isfinite(z)) or np.any(z != np.round(z)):
            raise InputError("atomic numbers must be integers", path=path, field=field)
    zi = z.astype(np.int64)
    bad = np.flatnonzero((zi < 1) | (zi > 118))
    if bad.size:
        raise InputError(f"atom {int(bad[0])}: atomic number {int(zi[bad[0]])} outside 1..118", path=path, field=field)
    return zi


def fmt_shape(shape: Sequence[int | None]) -> str:
    """``(3,)``, ``(*, 9, 3)``: a shape as numpy prints it, None shown as ``*``."""
    parts = ["*" if s is None else str(s) for s in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def check_shape(a: np.ndarray, shape: Sequence[int | None], path, field: str) -> None:
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        want = fmt_shape(shape)
        raise InputError(f"expected shape {want}, got {a.shape}", path=path, field=field)


def f64(a: np.ndarray) -> np.ndarray:
    """``a`` as float64 before any unit factor: numpy 2 keeps float32 x Python float in float32,
    which would round every converted value to 7 digits (the releases store float32 forces)."""
    return np.asarray(a, dtype=np.float64)


def column(a: np.ndarray, m: int, path, field: str) -> np.ndarray:
    """``a`` shaped (m,) or (m, 1) (sGDML stores ``E`` as a column) as an (m,) array."""
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.shape != (m,):
        raise InputError(f"expected shape ({m},) or ({m}, 1), got {a.shape}", path=path, field=field)
    return a


# ----------------------------------------------------------------------------------------- splits


def shuffled(n: int, seed: int) -> np.ndarray:
    """``arange(n)`` shuffled in place by ``RandomState(seed)`` (JMP; equal to ``permutation(n)``)."""
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)
    return idx


def sized_split(n: int, n_train: int, n_val: int, seed: int) -> dict[str, np.ndarray]:
    """JMP's rMD17/MD22 rule: shuffle, first ``n_train`` train, next ``n_val`` val, rest test.

    Indices are returned sorted within each split. Sizes are clipped to ``n`` for small sources.
    """
    perm = shuffled(n, seed)
    n_train = min(n_train, n)
    n_val = min(n_val, n - n_train)
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train:n_train + n_val]),
        "test": np.sort(perm[n_train + n_val:]),
    }


def fraction_split(n: int, seed: int, train: float = 0.8, test: float = 0.1) -> dict[str, np.ndarray]:
    """JMP's SPICE rule: shuffle; int(n*train) train, then val = the remainder after int(n*test)
    test, then test (so val takes the rounding slack)."""
    perm = shuffled(n, seed)
    n_train = int(n * train)
    n_test = int(n * test)
    n_val = n - n_train - n_test
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train:n_train + n_val]),
        "test": np.sort(perm[n_train + n_val:]),
    }


def greedy_group_split(sizes: Sequence[int], split_size: int, seed: int, names=("val", "test")) -> dict[str, np.ndarray]:
    """JMP's ANI-1x rule over groups: shuffle the groups, take whole groups into ``names[0]`` until
    it holds >= ``split_size`` frames (the group that crosses is included, and at least one group
    is taken, as JMP's loop checks after adding), the same for ``names[1]`` from the remaining
    groups, the rest is train. Returns sorted group indices per split."""
    order = shuffled(len(sizes), seed)
    out: dict[str, list[int]] = {name: [] for name in names}
    pos = 0
    for name in names:
        count = 0
        while pos < len(order):
            out[name].append(int(order[pos]))
            count += int(sizes[order[pos]])
            pos += 1
            if count >= split_size:
                break
    res = {name: np.sort(np.array(v, dtype=np.int64)) for name, v in out.items()}
    res["train"] = np.sort(order[pos:].astype(np.int64))
    return res


# ------------------------------------------------------------------------------------------ write


ADD_BLOCK = 4096  # frames per StoreWriter.add_many call


def add_frames(writer, numbers: np.ndarray, positions: np.ndarray, *, energy=None, forces=None, targets=None,
               cls: str | None = None, sid=None, where: Callable[[int], str] | None = None) -> None:
    """Add M frames of one molecule (``numbers`` (N,), ``positions`` (M, N, 3)) to ``writer``.

    Uses the writer's vectorised ``add_many`` when it has one (same validation and messages as
    ``add``), else one ``add`` per frame. ``energy`` (M,), ``forces`` (M, N, 3), ``targets`` (M, T),
    ``sid`` an int or (M,) ints; ``where(i)`` names frame i in error messages.
    """
    m, n = positions.shape[0], positions.shape[1]
    if m == 0:
        return
    sids = None if sid is None else np.broadcast_to(np.asarray(sid, dtype=np.int64), (m,))
    if hasattr(writer, "add_many"):
        step = ADD_BLOCK
        z_block = np.tile(np.asarray(numbers), min(m, step))
        for a in range(0, m, step):  # blocks keep the writer's buffers (and our copies) bounded
            b = min(a + step, m)
            k = b - a
            writer.add_many(
                z_block[: k * n], positions[a:b].reshape(k * n, 3), natoms=np.full(k, n, dtype=np.int64),
                energy=None if energy is None else energy[a:b],
                forces=None if forces is None else forces[a:b].reshape(k * n, 3),
                targets=None if targets is None else targets[a:b], cls=cls,
                sid=None if sids is None else sids[a:b],
                where=None if where is None else (lambda i, a=a: where(a + i)),
            )
        return
    for i in range(m):
        writer.add(numbers, positions[i], energy=None if energy is None else energy[i],
                   forces=None if forces is None else forces[i], targets=None if targets is None else targets[i],
                   cls=cls, sid=None if sids is None else int(sids[i]), where=None if where is None else where(i))


def train_size_split(n: int, train_total: int, seed: int, val_fraction: float = 0.05) -> tuple[dict[str, np.ndarray], str]:
    """JMP's rMD17/MD22 split: of ``train_total`` shuffled frames, int(val_fraction x train_total)
    are val and the others train; all remaining frames are test (RandomState(seed) shuffle).

    A source with no more than ``train_total`` frames (a test fixture, a --limit run) cannot be
    split that way; it gets train_total = int(0.8 n) instead, and the returned note says so.
    """
    note = f"JMP: RandomState({seed}) shuffle, {train_total} train+val ({int(train_total * val_fraction)} val), rest test"
    if n <= train_total:
        train_total = int(0.8 * n)
        note = f"source has only {n} frames: train+val = int(0.8 n) = {train_total}, val = int({val_fraction} x that), rest test"
    n_val = int(train_total * val_fraction)
    return sized_split(n, train_total - n_val, n_val, seed), note


def npz_frames(npz, path, z_key: str, pos_key: str, e_key: str, f_key: str):
    """The checked (z, positions, energies, forces) of one molecule's trajectory in an npz
    (rMD17: nuclear_charges/coords/energies/forces; sGDML: z/R/E/F, E shaped (M,) or (M, 1))."""
    z = check_atomic_numbers(npz_array(npz, z_key, path, ndim=1), path, z_key)
    n = z.size
    pos = npz_array(npz, pos_key, path, ndim=3)
    check_shape(pos, (None, n, 3), path, pos_key)
    m = pos.shape[0]
    if m == 0:
        raise InputError(f"no frames ({pos_key} has 0 rows)", path=path, field=pos_key)
    e = column(npz_array(npz, e_key, path, ndim=(1, 2)), m, path, e_key)
    fo = npz_array(npz, f_key, path, ndim=3)
    check_shape(fo, (m, n, 3), path, f_key)
    return z, pos, e, fo
