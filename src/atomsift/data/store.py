"""The canonical atom store: one directory per dataset, memory-mapped ``.npy`` fields.

Layout (format version 1, documented in ``docs/store.md``)::

    DIR/manifest.json        format, dataset, source (path, sha256), reader, units, fields, counts
    DIR/offsets.npy          (n+1,) int64: atoms of structure i are offsets[i]:offsets[i+1]
    DIR/numbers.npy          (n_atoms,) uint8 atomic numbers
    DIR/positions.npy        (n_atoms, 3) float64, Angstrom
    DIR/cell.npy             (n, 3, 3) float64, Angstrom (zeros for molecules)
    DIR/pbc.npy              (n, 3) bool
    DIR/energy.npy           (n,) float64, eV                 [optional]
    DIR/forces.npy           (n_atoms, 3) float64, eV/Angstrom [optional]
    DIR/tags.npy             (n_atoms,) int8 (OC20: 0 sub-surface, 1 surface, 2 adsorbate)
    DIR/fixed.npy            (n_atoms,) bool
    DIR/targets.npy          (n, T) float64, named in manifest["targets"]   [optional]
    DIR/class_index.npy      (n,) int32 into DIR/classes.json           [optional]
    DIR/sid.npy              (n,) int64 source id (reaction, system, molecule)  [optional]
    DIR/splits/NAME.npy      int64 structure indices of a split

Writers stream: structures are buffered in chunks and appended to the ``.npy`` files, whose
headers are completed at the end; memory stays bounded whatever the dataset size. Everything is
written into a hidden temporary sibling and published by one ``rename``, so a killed conversion
leaves nothing that looks like a store.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from atomsift import __version__, fsio
from atomsift.errors import InputError
from atomsift.fsio import file_digest

FORMAT_NAME = "atomsift-store"
FORMAT_VERSION = 1

UNITS = {
    "positions": "Angstrom",
    "cell": "Angstrom",
    "energy": "eV",
    "forces": "eV/Angstrom",
}

# name -> (dtype, per-atom?, trailing shape)
_FIELDS = {
    "numbers": (np.uint8, True, ()),
    "positions": (np.float64, True, (3,)),
    "forces": (np.float64, True, (3,)),
    "tags": (np.int8, True, ()),
    "fixed": (np.bool_, True, ()),
    "cell": (np.float64, False, (3, 3)),
    "pbc": (np.bool_, False, (3,)),
    "energy": (np.float64, False, ()),
    "class_index": (np.int32, False, ()),
    "sid": (np.int64, False, ()),
}
_ALWAYS = ("numbers", "positions", "cell", "pbc", "tags", "fixed")
_HEADER_LEN = 256  # bytes reserved for a .npy header (magic + len + dict), rewritten on close


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a source: a file (:func:`atomsift.fsio.file_digest`), or every file below a
    directory, each relative path then its bytes, in sorted order."""
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            hashlib.file_digest(fh, lambda: h)  # streams the bytes into the running hash
    return h.hexdigest()


def formula(numbers, reduced: bool = False) -> str:
    """Chemical formula of a structure in ASE's Hill order (C, H, then alphabetical): the class
    label of the readers and generators. ``reduced`` divides the counts by their gcd (Cu4O4 -> CuO)."""
    counts = np.bincount(np.asarray(numbers, dtype=np.int64).reshape(-1))
    nz = np.flatnonzero(counts)
    return _formula(tuple(zip(nz.tolist(), counts[nz].tolist())), reduced)


@functools.lru_cache(maxsize=1 << 16)  # datasets repeat compositions (OC20: 10^8 structures)
def _formula(composition: tuple[tuple[int, int], ...], reduced: bool) -> str:
    from ase.data import chemical_symbols
    from ase.formula import Formula

    f = Formula.from_dict({chemical_symbols[z]: c for z, c in composition if z})
    return (f.reduce()[0] if reduced else f).format("hill")


# ----------------------------------------------------------------------------------- .npy streaming


class _NpyAppender:
    """Append rows to a ``.npy`` file whose header is written with the final shape on close."""

    def __init__(self, path: Path, dtype, trailing: tuple[int, ...]):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.trailing = tuple(trailing)
        self.rows = 0
        self.fh = open(path, "wb")
        self.fh.write(b"\0" * _HEADER_LEN)

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self.fh.write(arr.tobytes())
        self.rows += arr.shape[0]

    def close(self) -> None:
        shape = (self.rows, *self.trailing)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        text = repr(header).encode("latin1")
        pre = b"\x93NUMPY\x01\x00"
        body_len = _HEADER_LEN - len(pre) - 2
        if len(text) + 1 > body_len:
            raise RuntimeError("npy header too long")
        text = text + b" " * (body_len - len(text) - 1) + b"\n"
        self.fh.seek(0)
        self.fh.write(pre + np.uint16(body_len).tobytes() + text)
        self.fh.close()


# ----------------------------------------------------------------------------------------- writer


class StoreWriter:
    """Stream structures into a new store at ``out``; publish atomically on :meth:`close`.

    Use as a context manager: on a clean exit the store is validated and published, on an
    exception the temporary directory is removed and nothing appears at ``out``::

        with StoreWriter(out, dataset="qm9", source=path, reader="qm9", reader_version="1",
                         level_of_theory="B3LYP/6-31G(2df,p)", target_names=["U0", ...]) as w:
            w.add(numbers, positions, targets=[...], cls="C1H4")
            w.set_split("train", idx)
    """

    def __init__(
        self,
        out: str | Path,
        *,
        dataset: str,
        source: str | Path | None = None,
        reader: str,
        reader_version: str = "1",
        level_of_theory: str | None = None,
        target_names: Sequence[str] = (),
        target_units: dict[str, str] | None = None,
        has_energy: bool = False,
        has_forces: bool = False,
        has_sid: bool = False,
        energy_kind: str | None = None,
        source_sha256: str | None = None,
        extra: dict | None = None,
        chunk_size: int = 8192,
    ):
        self.out = Path(out)
        self.dataset = dataset
        self.source = None if source is None else str(source)
        self.source_label = self.source or dataset
        self.reader = reader
        self.reader_version = str(reader_version)
        self.level_of_theory = level_of_theory
        self.target_names = list(target_names)
        self.target_units = dict(target_units or {})
        self.has_energy = has_energy
        self.has_forces = has_forces
        self.has_sid = has_sid
        self.energy_kind = energy_kind
        self.source_sha256 = source_sha256
        self.extra = dict(extra or {})
        self.chunk_size = chunk_size
        self._classes: dict[str, int] = {}
        self._splits: dict[str, np.ndarray] = {}
        self._n = 0
        self._n_atoms = 0
        self._elements = np.zeros(119, dtype=bool)
        self._buf: dict[str, list] = {}
        self._closed = False
        # parents made here are removed again on abort: a failed write leaves no trace
        check_store_output(self.out)
        self._made_parents = [p for p in self.out.parents if not p.exists()]
        self.tmp = fsio.temp_sibling(self.out)
        self._lock = None
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            fsio.remove_stale(self.out)  # temporaries of killed conversions of this store
            self.tmp.mkdir()
        except OSError as exc:
            raise InputError(f"cannot create the output directory ({exc.strerror or exc})", path=self.out) from None
        self._lock = fsio.TempLock(self.tmp)  # held while we live: a later run removes it only once we are gone
        fields = list(_ALWAYS)
        if has_energy:
            fields.append("energy")
        if has_forces:
            fields.append("forces")
        if has_sid:
            fields.append("sid")
        fields.append("class_index")
        self.fields = fields
        self._files = {f: _NpyAppender(self.tmp / f"{f}.npy", _FIELDS[f][0], _FIELDS[f][2]) for f in fields}
        if self.target_names:
            self._files["targets"] = _NpyAppender(self.tmp / "targets.npy", np.float64, (len(self.target_names),))
        self._offsets = [np.zeros(1, dtype=np.int64)]
        self._reset_buf()

    # -- public API

    @property
    def n_structures(self) -> int:
        return self._n

    def add(
        self,
        numbers,
        positions,
        *,
        cell=None,
        pbc=None,
        energy=None,
        forces=None,
        tags=None,
        fixed=None,
        targets=None,
        cls: str | None = None,
        sid: int | None = None,
        where: str | None = None,
    ) -> int:
        """Validate and buffer one structure; return its index. ``where`` names it in errors."""
        i = self._n
        loc = where if where is not None else f"structure {i}"

        def bad(fieldname: str, msg: str):
            return InputError(f"{loc}: {msg}", path=self.source_label, field=fieldname)

        z = np.asarray(numbers)
        if z.ndim != 1 or z.size == 0:
            raise bad("numbers", f"expected a non-empty 1-D array, got shape {z.shape}")
        if not np.issubdtype(z.dtype, np.number) or (np.issubdtype(z.dtype, np.floating) and not np.all(np.isfinite(z))):
            raise bad("numbers", "atomic numbers must be numeric")
        zi = z.astype(np.int64)
        if np.issubdtype(z.dtype, np.floating) and np.any(zi != z):
            raise bad("numbers", "atomic numbers must be integers")
        if zi.min() < 1 or zi.max() > 118:
            raise bad("numbers", f"atomic number {int(zi.min() if zi.min() < 1 else zi.max())} outside 1..118")
        n = zi.size
        pos = self._float(positions, (n, 3), "positions", bad)
        if cell is None:
            cell_a = np.zeros((3, 3))
        else:
            cell_a = self._float(cell, (3, 3), "cell", bad, reshape=True)
        pbc_a = np.zeros(3, dtype=bool) if pbc is None else np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        if pbc_a.any() and abs(np.linalg.det(cell_a)) < 1e-8:
            raise bad("cell", "periodic structure with a singular cell")
        b = self._buf
        if self.has_energy:
            if energy is None:
                raise bad("energy", "missing")
            e = np.asarray(energy, dtype=np.float64).reshape(-1)
            if e.size != 1:
                raise bad("energy", f"expected a scalar, got {e.size} values")
            if not np.isfinite(e[0]):
                raise bad("energy", "non-finite value")
            b["energy"].append(e)
        if self.has_forces:
            if forces is None:
                raise bad("forces", "missing")
            b["forces"].append(self._float(forces, (n, 3), "forces", bad))
        if self.target_names:
            if targets is None:
                raise bad("targets", "missing")
            t = np.asarray(targets, dtype=np.float64).reshape(-1)
            if t.size != len(self.target_names):
                raise bad("targets", f"expected {len(self.target_names)} values, got {t.size}")
            if not np.all(np.isfinite(t)):
                name = self.target_names[int(np.argmin(np.isfinite(t)))]
                raise bad(f"targets.{name}", "non-finite value")
            b["targets"].append(t[None, :])
        if self.has_sid:
            b["sid"].append(np.array([-1 if sid is None else int(sid)], dtype=np.int64))
        tg = np.zeros(n, dtype=np.int8) if tags is None else np.asarray(tags)
        if tg.shape != (n,):
            raise bad("tags", f"expected shape ({n},), got {tg.shape}")
        if n and (tg.min() < -128 or tg.max() > 127):
            raise bad("tags", f"tag {int(tg.min() if tg.min() < -128 else tg.max())} outside -128..127")
        fx = np.zeros(n, dtype=bool) if fixed is None else np.asarray(fixed).astype(bool)
        if fx.shape != (n,):
            raise bad("fixed", f"expected shape ({n},), got {fx.shape}")
        ci = -1
        if cls is not None:
            ci = self._classes.setdefault(str(cls), len(self._classes))
        b["numbers"].append(zi.astype(np.uint8))
        b["positions"].append(pos)
        b["cell"].append(cell_a[None])
        b["pbc"].append(pbc_a[None])
        b["tags"].append(tg.astype(np.int8))
        b["fixed"].append(fx)
        b["class_index"].append(np.array([ci], dtype=np.int32))
        self._elements[zi] = True
        self._n_atoms += n
        self._offsets.append(np.array([self._n_atoms], dtype=np.int64))
        self._n += 1
        if len(b["numbers"]) >= self.chunk_size:
            self._flush()
        return i

    def add_many(self, numbers, positions, *, natoms, cell=None, pbc=None, energy=None, forces=None, tags=None,
                 fixed=None, targets=None, cls=None, sid=None, where=None) -> range:
        """Validate and buffer M structures at once (the vectorised :meth:`add`); return their indices.

        Per-atom arrays are concatenated over the M structures: ``numbers`` (A,), ``positions``,
        ``forces`` (A, 3), ``tags``, ``fixed`` (A,), with ``natoms`` (M,) and A = natoms.sum().
        Per-structure: ``energy`` (M,), ``targets`` (M, T), ``sid`` (M,), ``cell`` (M, 3, 3),
        ``pbc`` (M, 3); ``cls`` one label for all or a sequence of M. ``where`` is a callable
        ``i -> str`` (or a sequence) naming structure i of the block in errors. When anything is
        unusual (invalid, or e.g. float atomic numbers) the block goes through :meth:`add` one
        structure at a time, so the accepted input and the error messages are exactly those of add.
        """
        na = np.asarray(natoms, dtype=np.int64).reshape(-1)
        m = int(na.size)
        start = self._n
        if m == 0:
            return range(start, start)

        def replay() -> range:  # the per-structure path: same checks, same messages
            for k in range(m):
                a, b = int(off[k]), int(off[k + 1])
                self.add(
                    z[a:b], pos[a:b],
                    cell=None if cell is None else np.asarray(cell)[k], pbc=None if pbc is None else np.asarray(pbc)[k],
                    energy=None if energy is None else np.asarray(energy).reshape(m, -1)[k],
                    forces=None if forces is None else np.asarray(forces)[a:b],
                    tags=None if tags is None else np.asarray(tags)[a:b],
                    fixed=None if fixed is None else np.asarray(fixed)[a:b],
                    targets=None if targets is None else np.asarray(targets).reshape(m, -1)[k],
                    cls=cls if cls is None or isinstance(cls, str) else cls[k],
                    sid=None if sid is None else int(np.asarray(sid).reshape(-1)[k]),
                    where=None if where is None else (where(k) if callable(where) else where[k]),
                )
            return range(start, self._n)

        off = np.concatenate([[0], np.cumsum(na)])
        n_at = int(off[-1])
        z = np.asarray(numbers)
        pos = np.asarray(positions)
        for name, arr in (("numbers", z), ("positions", pos), ("forces", forces), ("tags", tags), ("fixed", fixed)):
            if arr is not None and (np.ndim(arr) == 0 or np.shape(arr)[0] != n_at):  # a caller's layout bug, not bad input
                raise ValueError(f"add_many: {name} has {np.shape(arr)[:1]} rows, natoms sums to {n_at}")
        if (na.min() < 1 or z.ndim != 1 or not np.issubdtype(z.dtype, np.integer)
                or z.min() < 1 or z.max() > 118 or pos.shape != (n_at, 3)):
            return replay()
        pos = np.asarray(pos, dtype=np.float64)
        vals = {"positions": pos}
        if cell is not None:
            vals["cell"] = np.asarray(cell, dtype=np.float64)
            if vals["cell"].shape != (m, 3, 3):
                return replay()
        pbc_a = np.zeros((m, 3), dtype=bool) if pbc is None else np.asarray(pbc, dtype=bool)
        if pbc_a.shape != (m, 3):
            return replay()
        if self.has_energy:
            if energy is None:
                return replay()
            vals["energy"] = np.asarray(energy, dtype=np.float64).reshape(-1)
            if vals["energy"].shape != (m,):
                return replay()
        if self.has_forces:
            if forces is None:
                return replay()
            vals["forces"] = np.asarray(forces, dtype=np.float64)
            if vals["forces"].shape != (n_at, 3):
                return replay()
        if self.target_names:
            if targets is None:
                return replay()
            vals["targets"] = np.asarray(targets, dtype=np.float64).reshape(m, -1)
            if vals["targets"].shape != (m, len(self.target_names)):
                return replay()
        if not all(np.isfinite(v).all() for v in vals.values()):
            return replay()
        cell_a = vals.get("cell", np.zeros((m, 3, 3)))
        if pbc_a.any() and np.any(np.abs(np.linalg.det(cell_a[pbc_a.any(axis=1)])) < 1e-8):
            return replay()
        tg = np.zeros(n_at, dtype=np.int8) if tags is None else np.asarray(tags)
        fx = np.zeros(n_at, dtype=bool) if fixed is None else np.asarray(fixed).astype(bool)
        if tg.shape != (n_at,) or fx.shape != (n_at,) or (n_at and (tg.min() < -128 or tg.max() > 127)):
            return replay()
        if cls is None:
            ci = np.full(m, -1, dtype=np.int32)
        elif isinstance(cls, str):
            ci = np.full(m, self._classes.setdefault(cls, len(self._classes)), dtype=np.int32)
        else:
            ci = np.array([self._classes.setdefault(str(c), len(self._classes)) for c in cls], dtype=np.int32)
            if ci.shape != (m,):
                raise ValueError(f"add_many: cls has {ci.size} labels for {m} structures")
        b = self._buf
        if self.has_energy:
            b["energy"].append(vals["energy"])
        if self.has_forces:
            b["forces"].append(vals["forces"])
        if self.target_names:
            b["targets"].append(vals["targets"])
        if self.has_sid:
            s = np.full(m, -1, dtype=np.int64) if sid is None else np.asarray(sid, dtype=np.int64).reshape(-1)
            if s.shape != (m,):
                raise ValueError(f"add_many: sid has {s.size} values for {m} structures")
            b["sid"].append(s)
        b["numbers"].append(z.astype(np.uint8))
        b["positions"].append(pos)
        b["cell"].append(cell_a)
        b["pbc"].append(pbc_a)
        b["tags"].append(tg.astype(np.int8))
        b["fixed"].append(fx)
        b["class_index"].append(ci)
        self._elements[np.bincount(z, minlength=119)[:119] > 0] = True
        self._offsets.append(self._n_atoms + off[1:])
        self._n_atoms += n_at
        self._n += m
        # a block is one list entry in the buffers: count its structures towards the chunk size
        self._many_pending = getattr(self, "_many_pending", 0) + m
        if self._many_pending + len(b["numbers"]) >= self.chunk_size:
            self._flush()
            self._many_pending = 0
        return range(start, self._n)

    def set_split(self, name: str, indices: Iterable[int]) -> None:
        """Record a split (structure indices); checked against the final count on close."""
        self._splits[name] = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)

    def close(self) -> Path:
        """Validate, write the manifest and publish by rename. Returns the store path."""
        if self._closed:
            return self.out
        self._flush()
        if self._n == 0:
            raise InputError("empty dataset: no structures were read", path=self.source_label)
        for f in self._files.values():
            f.close()
        np.save(self.tmp / "offsets.npy", np.concatenate(self._offsets))
        classes = sorted(self._classes, key=self._classes.get)
        if classes:
            with open(self.tmp / "classes.json", "w") as fh:
                json.dump(classes, fh)
        split_counts = {}
        if self._splits:
            (self.tmp / "splits").mkdir()
            for name, idx in self._splits.items():
                if idx.size and (idx.min() < 0 or idx.max() >= self._n):
                    raise RuntimeError(f"split '{name}' indexes outside 0..{self._n - 1}")
                np.save(self.tmp / "splits" / f"{name}.npy", idx)
                split_counts[name] = int(idx.size)
        units = {k: v for k, v in UNITS.items() if k in self.fields}
        if self.target_names:
            units["targets"] = {t: self.target_units.get(t, "") for t in self.target_names}
        src = None
        if self.source is not None:
            sha = self.source_sha256
            if sha is None and Path(self.source).exists():
                sha = sha256_file(self.source)
            src = {"path": str(Path(self.source).resolve()) if Path(self.source).exists() else self.source, "sha256": sha}
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "source": src,
            "reader": {"name": self.reader, "version": self.reader_version},
            "atomsift_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "level_of_theory": self.level_of_theory,
            "energy_kind": self.energy_kind,
            "units": units,
            "fields": self.fields + (["targets"] if self.target_names else []),
            "targets": self.target_names,
            "counts": {"n_structures": self._n, "n_atoms": self._n_atoms, "n_classes": len(classes)},
            "elements": [int(z) for z in np.nonzero(self._elements)[0]],
            "splits": split_counts,
            **({"provenance": self.extra} if self.extra else {}),
        }
        with open(self.tmp / "manifest.json", "w") as fh:
            json.dump(manifest, fh, indent=2)
        _publish(self.tmp, self.out)
        if self._lock is not None:
            self._lock.release()
        self._closed = True
        return self.out

    def abort(self) -> None:
        for f in self._files.values():
            try:
                f.fh.close()
            except Exception:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()
        for p in self._made_parents:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break
        self._closed = True

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException as err:
                self.abort()
                if isinstance(err, OSError) and (named := fsio.write_error(err, self.out, self.tmp)) is not None:
                    raise named from None
                raise
        else:
            self.abort()
            if isinstance(exc, OSError) and (named := fsio.write_error(exc, self.out, self.tmp)) is not None:
                raise named from None  # a full disk names the store, not our temporary

    # -- internals

    def _reset_buf(self) -> None:
        self._buf = {f: [] for f in self.fields}
        if self.target_names:
            self._buf["targets"] = []

    def _flush(self) -> None:
        if not self._buf["numbers"]:
            return
        for name, parts in self._buf.items():
            self._files[name].append(np.concatenate(parts, axis=0))
        self._reset_buf()

    @staticmethod
    def _float(value, shape, name, bad, reshape=False) -> np.ndarray:
        try:
            a = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise bad(name, "not numeric") from None
        if reshape and a.size == int(np.prod(shape)):
            a = a.reshape(shape)
        if a.shape != tuple(shape):
            raise bad(name, f"expected shape {tuple(shape)}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise bad(name, "non-finite value")
        return a


def check_store_output(out: str | Path) -> Path:
    """Refuse, before any work, a store output that is anything but a store or an empty
    directory (``--out ~`` must not delete ~), or whose parent is a file."""
    out = Path(out)
    _check_replaceable(out)
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"cannot create the output directory ({parent} is not a directory)", path=out)
            break
    return out


def _check_replaceable(out: Path) -> None:
    """Refuse to overwrite anything but a store or an empty directory (``--out ~`` must not delete ~)."""
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and not out.is_symlink():
        try:
            manifest = json.loads((out / "manifest.json").read_text())
            if isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME:
                return
        except (OSError, ValueError):
            pass
        if not any(out.iterdir()):
            return
    raise InputError("exists and is not an atomsift store; refusing to replace it (remove it or choose another --out)", path=out)


def _publish(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with renames only (the old store vanishes as one step)."""
    _check_replaceable(out)
    if out.exists() or out.is_symlink():
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, trash)
        try:
            os.rename(tmp, out)
        except OSError:
            os.rename(trash, out)  # the old store stays in place
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, out)


# ----------------------------------------------------------------------------------------- reader


@dataclass
class Record:
    """One structure, in eV / Angstrom. Optional fields are None when the store lacks them."""

    index: int
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    tags: np.ndarray
    fixed: np.ndarray
    energy: float | None = None
    forces: np.ndarray | None = None
    targets: dict[str, float] = field(default_factory=dict)
    cls: str | None = None
    sid: int | None = None

    @property
    def natoms(self) -> int:
        return int(self.numbers.shape[0])

    def to_atoms(self):
        """This record as an :class:`ase.Atoms` (energy and forces attached as a calculator)."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc, tags=self.tags)
        if self.energy is not None or self.forces is not None:
            atoms.calc = SinglePointCalculator(atoms, energy=self.energy, forces=self.forces)
        return atoms


class Store:
    """Read-only view of a store directory: O(1) random access through memory maps.

    ``store[i]`` returns a :class:`Record`; ``store.subset(idx)`` a cheap view over chosen indices;
    ``store.split("train")`` the split's index array.
    """

    def __init__(self, path: str | Path, _indices: np.ndarray | None = None):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not self.path.exists():
            raise InputError("does not exist (expected an atomsift store directory)", path=self.path)
        if not self.path.is_dir():
            raise InputError("not a directory (expected an atomsift store)", path=self.path)
        if not mpath.exists():
            raise InputError("not an atomsift store (no manifest.json)", path=self.path)
        try:
            self.manifest = json.loads(mpath.read_bytes())
        except json.JSONDecodeError as exc:
            raise InputError(f"manifest is not valid JSON ({exc.msg} at line {exc.lineno})", path=mpath) from None
        except (UnicodeDecodeError, RecursionError) as exc:
            raise InputError(f"manifest is not valid JSON ({type(exc).__name__})", path=mpath) from None
        if not isinstance(self.manifest, dict):
            raise InputError("not an atomsift store manifest (not a JSON object)", path=mpath)
        if self.manifest.get("format") != FORMAT_NAME:
            raise InputError(f"not an atomsift store manifest (format={self.manifest.get('format')!r})", path=mpath, field="format")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise InputError(f"unsupported format_version {self.manifest.get('format_version')!r}", path=mpath, field="format_version")
        for key in ("dataset", "fields", "counts", "units", "elements", "reader"):
            if key not in self.manifest:
                raise InputError("missing from the manifest", path=mpath, field=key)
        counts = self.manifest["counts"]
        if not isinstance(counts, dict):
            raise InputError("expected an object of counts", path=mpath, field="counts")
        for key in ("n_structures", "n_atoms"):
            v = counts.get(key)
            if v is None:
                raise InputError("missing from the manifest", path=mpath, field=f"counts.{key}")
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"expected a non-negative integer, got {v!r}", path=mpath, field=f"counts.{key}")
        if not isinstance(self.manifest["fields"], list) or not all(isinstance(f, str) for f in self.manifest["fields"]):
            raise InputError("expected a list of field names", path=mpath, field="fields")
        targets = self.manifest.get("targets", [])
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise InputError("expected a list of target names", path=mpath, field="targets")
        self.fields = list(self.manifest["fields"])
        self.target_names = list(targets)
        self._arrays: dict[str, np.ndarray] = {}
        self._indices = _indices
        self.classes: list[str] = _read_classes(self.path / "classes.json")
        self._splits: dict[str, np.ndarray] = {}
        self._validate()

    # -- arrays

    def array(self, name: str) -> np.ndarray:
        """The memory-mapped array of field ``name`` over the whole store (not the subset)."""
        a = self._arrays.get(name)
        if a is None:
            p = self.path / f"{name}.npy"
            if not p.exists():
                raise InputError(f"store has no field '{name}'", path=self.path, field=name)
            try:
                # a plain ndarray over the map: indexing an np.memmap costs ~3x more per call
                a = np.load(p, mmap_mode="r").view(np.ndarray)
            except (ValueError, OSError) as exc:  # truncated or not a .npy
                raise InputError(f"unreadable store array ({' '.join(str(exc).split())})", path=p) from None
            counts = self.manifest["counts"]
            rows = {"offsets": counts["n_structures"] + 1, "targets": counts["n_structures"]}.get(name)
            if rows is None and name in _FIELDS:
                rows = counts.get("n_atoms") if _FIELDS[name][1] else counts["n_structures"]
            if rows is not None and (a.ndim == 0 or a.shape[0] != rows):
                raise InputError(f"has {a.shape[:1]} rows, the manifest says {rows} (damaged store)", path=p)
            want = _layout(name, len(self.target_names))
            if want is not None and (a.dtype != want[0] or a.shape[1:] != want[1]):
                raise InputError(f"expected dtype {np.dtype(want[0])} and rows of shape {want[1]}, got {a.dtype} "
                                 f"{a.shape[1:]} (damaged store)", path=p)
            self._arrays[name] = a
        return a

    def _validate(self) -> None:
        """Check what every reader of the store relies on, vectorised over the memory maps (a
        hostile or damaged store is one InputError here, not an IndexError deep in a batch):
        strictly increasing offsets from 0 to n_atoms (an empty structure is not a structure),
        atomic numbers in 1..118, class indices in -1..n_classes-1, split indices in 0..n-1."""
        n = self.manifest["counts"]["n_structures"]
        off = self.array("offsets")
        p = self.path / "offsets.npy"
        if off[0] != 0 or off[-1] != self.manifest["counts"]["n_atoms"]:
            raise InputError(f"must run from 0 to n_atoms={self.manifest['counts']['n_atoms']}, got {int(off[0])}.."
                             f"{int(off[-1])} (damaged store)", path=p)
        bad = off[1:] <= off[:-1]  # no int64 temporary (np.diff would allocate one per open)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"structure {i}: offsets {int(off[i])}..{int(off[i + 1])} are not increasing "
                             "(every structure has at least one atom; damaged store)", path=p)
        z = self.array("numbers")
        if z.size and (z.min() < 1 or z.max() > 118):
            a = int(np.flatnonzero((z < 1) | (z > 118))[0])
            s = int(np.searchsorted(off, a, side="right") - 1)
            raise InputError(f"structure {s}: atomic number {int(z[a])} outside 1..118 (damaged store)",
                             path=self.path / "numbers.npy", field="numbers")
        ci = self.array("class_index")
        if ci.size and (ci.min() < -1 or ci.max() >= len(self.classes)):
            s = int(np.flatnonzero((ci < -1) | (ci >= len(self.classes)))[0])
            k = len(self.classes)
            raise InputError(f"structure {s}: class index {int(ci[s])} outside -1..{k - 1} (classes.json has {k} "
                             "labels; damaged store)", path=self.path / "class_index.npy", field="class_index")
        d = self.path / "splits"
        for f in sorted(d.glob("*.npy")) if d.is_dir() else []:
            self._splits[f.stem] = _read_split(f, n)

    def has(self, name: str) -> bool:
        return name in self.fields

    @property
    def offsets(self) -> np.ndarray:
        return self.array("offsets")

    @property
    def indices(self) -> np.ndarray:
        """Global indices of the structures of this view."""
        if self._indices is None:
            return np.arange(self.manifest["counts"]["n_structures"])
        return self._indices

    @property
    def natoms(self) -> np.ndarray:
        """Atoms per structure of this view."""
        off = self.offsets
        natoms = np.diff(off)
        return natoms if self._indices is None else natoms[self._indices]

    @property
    def class_index(self) -> np.ndarray:
        ci = np.asarray(self.array("class_index"))
        return ci if self._indices is None else ci[self._indices]

    @property
    def dataset(self) -> str:
        return self.manifest["dataset"]

    def __len__(self) -> int:
        return int(self.manifest["counts"]["n_structures"]) if self._indices is None else int(self._indices.size)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> Record:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} structures")
        g = int(self.indices[i]) if self._indices is not None else (i % n)
        return self.record(g)

    def _columns(self) -> tuple:
        """The arrays :meth:`record` reads, looked up once (None for fields the store lacks)."""
        cols = self._arrays.get("__record__")
        if cols is None:
            opt = lambda f: self.array(f) if f in self.fields else None  # noqa: E731
            cols = (
                np.asarray(self.array("offsets")), self.array("numbers"), self.array("positions"),
                self.array("cell"), self.array("pbc"), self.array("tags"), self.array("fixed"),
                opt("energy"), opt("forces"), self.array("targets") if self.target_names else None,
                self.array("class_index"), opt("sid"),
            )
            self._arrays["__record__"] = cols
        return cols

    def record(self, g: int) -> Record:
        """The structure with global index ``g`` (ignores any subset); arrays are copies."""
        off, numbers, positions, cell, pbc, tags, fixed, energy, forces, targets, class_index, sid = self._columns()
        a, b = off[g:g + 2].tolist()
        rec = Record(
            g,
            numbers[a:b].astype(np.int64),
            positions[a:b].copy(),
            cell[g].copy(),
            pbc[g].copy(),
            tags[a:b].astype(np.int64),
            fixed[a:b].copy(),
        )
        if energy is not None:
            rec.energy = float(energy[g])
        if forces is not None:
            rec.forces = forces[a:b].copy()
        if targets is not None:
            rec.targets = dict(zip(self.target_names, targets[g].tolist()))
        ci = int(class_index[g])
        if ci >= 0 and self.classes:
            rec.cls = self.classes[ci]
        if sid is not None:
            rec.sid = int(sid[g])
        return rec

    # -- subsets and splits

    def split_names(self) -> list[str]:
        return sorted(self._splits)

    def split(self, name: str) -> np.ndarray:
        idx = self._splits.get(name)
        if idx is None:
            raise InputError(f"store has no split '{name}' (has: {', '.join(self.split_names()) or 'none'})", path=self.path, field="splits")
        return idx.copy()

    def subset(self, indices) -> "Store":
        """A view over ``indices`` (global indices when self is the whole store, else positions in self)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"subset indices must lie in 0..{len(self) - 1}")
        if self._indices is not None:
            idx = self._indices[idx]
        view = Store.__new__(Store)
        view.__dict__.update(self.__dict__)
        view._indices = idx
        return view

    def split_view(self, name: str) -> "Store":
        return self.subset(self.split(name))

    def info(self) -> dict:
        """The ``atomsift info --json`` summary."""
        m = self.manifest
        return {
            "path": str(self.path),
            "dataset": m["dataset"],
            "n_structures": m["counts"]["n_structures"],
            "n_atoms": m["counts"]["n_atoms"],
            "elements": m["elements"],
            "splits": m.get("splits", {}),
            "n_classes": m["counts"].get("n_classes", len(self.classes)),
            "fields": m["fields"],
            "targets": m.get("targets", []),
            "units": m["units"],
            "level_of_theory": m.get("level_of_theory"),
            "energy_kind": m.get("energy_kind"),
            "reader": m["reader"],
            "source": m.get("source"),
            "provenance": m.get("provenance"),
        }


def _layout(name: str, n_targets: int):
    """(dtype, trailing shape) a store array must have, or None for an array of unknown name."""
    if name == "offsets":
        return np.int64, ()
    if name == "targets":
        return np.float64, (n_targets,)
    if name in _FIELDS:
        return _FIELDS[name][0], _FIELDS[name][2]
    return None


def _read_classes(path: Path) -> list[str]:
    """``classes.json``: a JSON list of strings (absent: no labels)."""
    if not path.exists():
        return []
    try:
        classes = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON ({' '.join(str(exc).split())[:120]})", path=path) from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise InputError("expected a JSON list of class labels (strings)", path=path)
    return classes


def _read_split(path: Path, n: int) -> np.ndarray:
    """A split file: a 1-D integer array of structure indices in 0..n-1."""
    from atomsift.safeio import load_npy

    idx = load_npy(path)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise InputError(f"expected a 1-D integer array, got dtype {idx.dtype} shape {idx.shape} (damaged store)", path=path)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx[np.flatnonzero((idx < 0) | (idx >= n))[0]])
        raise InputError(f"index {bad} outside 0..{n - 1} (damaged store)", path=path)
    return idx.astype(np.int64, copy=False)

