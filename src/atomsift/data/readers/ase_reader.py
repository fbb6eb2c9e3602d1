"""Users' own data: anything ASE reads (extxyz, ASE db incl. JSON db, traj, ...).

Energy and forces come from the calculator ASE attaches on reading (extxyz ``energy=`` and
``forces`` columns, traj and db results) unless ``energy_key`` / ``forces_key`` name another
entry: an ``atoms.info`` key (for an ASE db also a key-value pair or a ``data`` entry) for the
energy, an ``atoms.arrays`` entry for the forces; a name that is neither is looked up among the
calculator's results. Values are stored as read: ASE's convention is eV and eV/Angstrom, and no
unit conversion is applied. Whether the dataset has energy / forces is decided by the first
structure; every later structure must then have them too.

Scalar targets (``target_keys``): each name is an ``atoms.info`` entry (for an ASE db also a
key-value pair or a ``data`` entry), else a calculator result (``energy`` makes the energy a
target too); every structure must have a number for it.

Class label: the ``class_key`` entry of ``atoms.info`` (or of the db row's key-value pairs), else
the Hill formula. Tags, cell and pbc are kept; ``fixed`` marks the atoms of ``FixAtoms``
constraints. Split 80/10/10 as JMP splits SPICE and QMOF: a ``RandomState(seed)`` shuffle (seed 42
unless ``--seed``), ``int(0.8 n)`` train, ``int(0.1 n)`` test, the rest validation; below 10
structures one validation and one test structure (from 3 on), the rest train.
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from pathlib import Path

import numpy as np

from atomsift.data.readers._common import fraction_split, one_line, shuffled
from atomsift.data.store import StoreWriter, formula
from atomsift.errors import InputError

NAME = "ase"
VERSION = "1"
SPLIT_SEED = 42
_DB_FORMATS = {"db", "json", "postgresql", "mysql"}


def random_split(n: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """80/10/10 split of ``n`` structures, JMP's rule for SPICE and QMOF (``fraction_split``):
    ``RandomState(seed)`` shuffle, ``int(0.8 n)`` train, ``int(0.1 n)`` test, the rest val.
    Below 10 structures: one val and one test from 3 structures on, the rest train."""
    if n >= 10:
        return fraction_split(n, seed, train=0.8, test=0.1)
    n_small = 1 if n >= 3 else 0
    perm = shuffled(n, seed)
    return {
        "train": np.sort(perm[2 * n_small:]),
        "val": np.sort(perm[:n_small]),
        "test": np.sort(perm[n_small:2 * n_small]),
    }


def _one_line(exc: BaseException) -> str:
    text = one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _file_format(src: Path) -> str:
    from ase.io.formats import filetype, ioformats

    try:
        fmt = filetype(str(src), read=True)
    except Exception as exc:  # UnknownFileTypeError, OSError, ...
        raise InputError(f"not a file ASE can read ({_one_line(exc)})", path=src) from None
    if fmt not in ioformats or not ioformats[fmt].can_read:
        raise InputError(f"not a file ASE can read (unknown format '{fmt}')", path=src)
    return fmt


def check_xyz_counts(src: Path, fmt: str) -> None:
    """Check every frame's claimed atom count of an (ext)xyz file against the lines the file holds.

    ASE's extxyz reader indexes frames by calling ``readline()`` once per claimed atom, and
    ``readline()`` at the end of a file returns '' forever: a header claiming 10^12 atoms spins
    for days. Here the lines are counted first (C-speed chunk scans) and each header's claim
    checked before any line is skipped; a header that is not an integer is left to ASE to report.
    """
    if fmt not in ("extxyz", "xyz"):
        return
    from ase.io.formats import open_with_compression

    with open_with_compression(str(src), "rb") as fh:
        total, last = 0, b"\n"
        for block in iter(lambda: fh.read(1 << 20), b""):
            total += block.count(b"\n")
            last = block[-1:]
        total += last != b"\n"  # a final line without a newline
    with open_with_compression(str(src), "rb") as fh:
        line_no, frame = 0, 0
        line = fh.readline()
        while line.strip():
            try:
                natoms = int(line)
            except ValueError:
                return  # not a count: ASE's own error names it
            if natoms < 0:
                raise InputError(f"cannot read as {fmt}: frame {frame} (line {line_no + 1}): header claims {natoms} atoms",
                                 path=src, field="natoms")
            left = total - line_no - 2  # lines after the header and the comment line
            if natoms > left:
                raise InputError(f"cannot read as {fmt}: frame {frame} (line {line_no + 1}): header claims {natoms} atoms "
                                 f"but the file has {max(left, 0)} more lines (truncated or corrupt)", path=src, field="natoms")
            deque(islice(fh, natoms + 1), maxlen=0)  # the comment and atom lines, skipped in C
            line_no += natoms + 2
            line = fh.readline()
            while line.lstrip().startswith(b"VEC"):  # extxyz lattice vectors after a frame
                line_no += 1
                line = fh.readline()
            frame += 1


def check_atoms(atoms, i: int, path) -> None:
    """The checks every verb applies to a structure read from a user's file (``predict``,
    ``select``, ``prepare ase``): at least one atom, atomic numbers 1..118, finite positions and cell."""
    z = np.asarray(atoms.numbers)
    if z.size == 0:
        raise InputError(f"structure {i}: no atoms", path=path, field="numbers")
    bad = np.flatnonzero((z < 1) | (z > 118))
    if bad.size:
        raise InputError(f"structure {i}: atomic number {int(z[bad[0]])} outside 1..118", path=path, field="numbers")
    if not np.isfinite(atoms.positions).all():
        raise InputError(f"structure {i}: non-finite position", path=path, field="positions")
    if not np.isfinite(atoms.cell.array).all():
        raise InputError(f"structure {i}: non-finite cell", path=path, field="cell")


def read_frames(path, *, what: str = "file") -> list:
    """Every frame of an ASE-readable file as ``Atoms``, each passed through :func:`check_atoms`;
    any problem (missing file, unknown format, an (ext)xyz count the file cannot hold, ASE's own
    errors, no frames) is one InputError naming the file."""
    src = Path(path)
    if not src.exists():
        raise InputError(f"{what} does not exist", path=src)
    if src.is_dir():
        raise InputError("is a directory; expected a file ASE can read (extxyz, ASE db, traj, ...)", path=src)
    fmt = _file_format(src)
    check_xyz_counts(src, fmt)
    frames = [atoms for _, atoms in _read_guarded(src, fmt, None)]
    if not frames:
        raise InputError(f"no frames (format {fmt})", path=src)
    for i, atoms in enumerate(frames):
        check_atoms(atoms, i, src)
    return frames


def _iter_atoms(src: Path, fmt: str):
    """Yield ``Atoms``; for an ASE db the row's key-value pairs and data are merged into ``info``."""
    if fmt in _DB_FORMATS:
        import ase.db

        with ase.db.connect(str(src), type=fmt, serial=True) as db:
            for row in db.select():
                atoms = row.toatoms()
                atoms.info.update(row.get("key_value_pairs", {}))
                data = row.get("data", {})
                for k, v in data.items():
                    atoms.info.setdefault(k, v)
                yield atoms
    else:
        import ase.io

        yield from ase.io.iread(str(src), index=":", format=fmt)


def _read_guarded(src: Path, fmt: str, limit: int | None):
    """Yield (index, atoms); any failure of ASE becomes one InputError naming the file."""
    it = _iter_atoms(src, fmt)
    i = 0
    while limit is None or i < limit:
        try:
            atoms = next(it)
        except StopIteration:
            return
        except InputError:
            raise
        except Exception as exc:
            where = f"structure {i}: " if i else ""
            raise InputError(f"{where}cannot read as {fmt} ({_one_line(exc)})", path=src) from None
        yield i, atoms
        i += 1


def _calc_results(atoms) -> dict:
    calc = atoms.calc
    return dict(getattr(calc, "results", {}) or {}) if calc is not None else {}


def _energy(atoms, key: str | None):
    """The energy of ``atoms`` (None when absent)."""
    res = _calc_results(atoms)
    if key is None:
        e = res.get("energy", res.get("free_energy"))
    elif key in atoms.info:
        e = atoms.info[key]
    else:
        e = res.get(key)
    return e


def _forces(atoms, key: str | None):
    res = _calc_results(atoms)
    if key is None:
        return res.get("forces")
    if key in atoms.arrays:
        return atoms.arrays[key]
    if key in res:
        return res[key]
    return atoms.info.get(key)


def _target(atoms, key: str, i: int, err) -> float:
    """Scalar target ``key`` of structure ``i``: an info entry, else a calculator result."""
    value = atoms.info[key] if key in atoms.info else _calc_results(atoms).get(key)
    if value is None:
        raise err(i, key, "target missing (no such info key or calculator result)")
    try:
        a = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise err(i, key, f"not a number: {value!r}") from None
    if a.size != 1 or not np.isfinite(a[0]):
        raise err(i, key, f"expected one finite number, got {value!r}")
    return float(a[0])


def _fixed(atoms) -> np.ndarray:
    from ase.constraints import FixAtoms

    fixed = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed[c.get_indices()] = True
    return fixed


def convert(
    source,
    out: Path,
    *,
    dataset: str = "ase",
    energy_key: str | None = None,
    forces_key: str | None = None,
    class_key: str | None = None,
    target_keys: list[str] | tuple[str, ...] | None = None,
    seed: int | None = None,
    limit: int | None = None,
) -> Path:
    """Write the store at ``out`` from the ASE-readable file ``source``."""
    if source is None:
        raise InputError("prepare ase needs --source FILE (extxyz, ASE db, traj, ...)", field="source")
    src = Path(source)
    if not src.exists():
        raise InputError("does not exist", path=src)
    if src.is_dir():
        raise InputError("is a directory; expected a file ASE can read (extxyz, ASE db, traj, ...)", path=src)
    fmt = _file_format(src)
    check_xyz_counts(src, fmt)
    frames = _read_guarded(src, fmt, limit)
    first = next(frames, None)
    if first is None:
        raise InputError(f"empty dataset: no structures were read (format {fmt})", path=src)
    atoms0 = first[1]
    has_energy = energy_key is not None or _energy(atoms0, None) is not None
    has_forces = forces_key is not None or _forces(atoms0, None) is not None
    seed = SPLIT_SEED if seed is None else int(seed)
    target_keys = list(dict.fromkeys(target_keys or ()))

    def err(i, field, msg):
        return InputError(f"structure {i}: {msg}", path=src, field=field)

    def records():
        yield first
        yield from frames

    with StoreWriter(
        out, dataset=dataset, source=src, reader=NAME, reader_version=VERSION, has_energy=has_energy,
        has_forces=has_forces, energy_kind="as stored in the file", target_names=target_keys,
        extra={
            "source_format": fmt, "energy_key": energy_key or "calculator energy",
            "forces_key": forces_key or ("calculator forces" if has_forces else None),
            "class_key": class_key or "Hill formula",
            "split": f"RandomState({seed}) shuffle: int(0.8 n) train, int(0.1 n) test, rest val",
        },
    ) as w:
        for i, atoms in records():
            check_atoms(atoms, i, src)
            e = f = None
            if has_energy:
                e = _energy(atoms, energy_key)
                if e is None:
                    raise err(i, energy_key or "energy", "missing (no such info key or calculator result)" if energy_key else "missing (no calculator energy)")
                try:
                    ea = np.asarray(e, dtype=np.float64).reshape(-1)
                except (TypeError, ValueError):
                    raise err(i, energy_key or "energy", f"not a number: {e!r}") from None
                if ea.size != 1:
                    raise err(i, energy_key or "energy", f"expected one value, got {ea.size}")
                e = float(ea[0])
            if has_forces:
                f = _forces(atoms, forces_key)
                if f is None:
                    raise err(i, forces_key or "forces", "missing (no such arrays key or calculator result)" if forces_key else "missing (no calculator forces)")
            if class_key is not None:
                if class_key not in atoms.info:
                    raise err(i, class_key, "class key missing from info")
                cls = str(atoms.info[class_key])
            else:
                cls = formula(atoms.numbers)
            w.add(
                atoms.numbers, atoms.positions, cell=atoms.cell.array, pbc=atoms.pbc, energy=e, forces=f,
                tags=atoms.get_tags(), fixed=_fixed(atoms), cls=cls,
                targets=[_target(atoms, k, i, err) for k in target_keys] if target_keys else None,
            )
        for name, idx in random_split(w.n_structures, seed).items():
            w.set_split(name, idx)
    return out
