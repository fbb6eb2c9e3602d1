"""OC20 / OC22 reader: LMDBs of pickled torch_geometric ``Data``, or the S2EF ``*.extxyz(.xz)`` release.

Sources (``--source``):

* an ``*.lmdb`` file, or a folder of them (``data.0000.lmdb`` ..., read in order of the numeric
  suffix). Keys ``b"0"`` ... ``b"N-1"`` hold ``pickle.dumps(Data)``; an optional ``b"length"`` key
  holds N (else ``stat()["entries"]``). Both attribute generations are read: ``y``/``force``
  (the released OC20/OC22 LMDBs) and ``energy``/``forces`` (newer fairchem), from PyG 2 pickles
  (attributes in ``_store``) and PyG < 2 pickles (attributes in ``__dict__``). The pickles are
  read by :mod:`atomsift.safeload`: torch_geometric's classes become inert stand-ins that record
  their state (so the installed PyG version does not matter), tensors are decoded with numpy, and
  any other class or callable is refused: nothing in an LMDB value, its ``length`` key or a
  metadata / reference-energy pickle can run code.
* an ``*.extxyz`` / ``*.extxyz.xz`` file or a folder of them, each with its ``*.txt`` (or
  ``*.txt.xz``) companion: one line ``system_id,frame_number,reference_energy`` per frame
  (``random1331004,frame8,-0.35``); ``move_mask`` (True = free) gives ``fixed``.
* a folder whose sub-folders hold such files (``train/``, ``val_id/``, ...): each sub-folder becomes
  the split of that name in one store. Otherwise all rows are converted and split 95/5 into
  ``train``/``val`` by ``RandomState(seed)`` (seed 42).

Energies (``manifest.energy_kind``): OC20 S2EF LMDB energies are *referenced* (adsorption-style,
the bare slab and gas references subtracted); the raw extxyz energies are *total*, and this
reader subtracts the companion ``reference_energy`` so that the default OC20 store is referenced
whatever the source. ``--total-energy`` stores total energies instead: extxyz energies as they
are, LMDB energies plus the per-system reference from ``--ref-energies`` (``oc20_ref.pkl``, keyed
``"random<sid>"``, or S2EF ``*.txt`` files). OC22 (S2EF-total) energies are total.

Class (for class-balanced sampling, PAPER.md §2.3): ``bulk_symbols`` of the system from
``--metadata`` (``oc20_data_mapping.pkl`` keyed ``"random<sid>"``, ``oc22_metadata.pkl`` keyed by
int; keys normalised, sids may be ints, tensors or strings; ``"Unknown"`` where absent, as JMP),
else the reduced Hill formula of the non-adsorbate atoms (tag != 2). ``sid`` kept as int.
"""

from __future__ import annotations

import lzma
import re
from pathlib import Path

import numpy as np

from atomsift import safeload
from atomsift.data.readers._common import one_line, shuffled, source_path
from atomsift.data.store import StoreWriter, formula
from atomsift.errors import InputError

NAME = "oc"
VERSION = "2"  # 2: formula class labels in ASE's Hill order (H second also without carbon)
LEVEL_OF_THEORY = {"oc20": "RPBE (VASP), OC20", "oc22": "PBE+U (VASP), OC22"}
SPLIT_SEED = 42
VAL_FRACTION = 0.05
REOPEN_EVERY = 50_000  # entries; re-mapping the LMDB releases the pages touched so far (bounded RSS)

_LMDB = (".lmdb",)
_EXTXYZ = (".extxyz", ".extxyz.xz")


# --------------------------------------------------------------------------------- sids and keys


def sid_key(k):
    """A system id as an int where it is one: 5, np.int64(5), tensor(5), "5", "random5", b"random5" -> 5."""
    if hasattr(k, "item") and callable(k.item):  # numpy / torch scalars and one-element arrays
        try:
            k = k.item()
        except (ValueError, RuntimeError):
            return k
    if isinstance(k, bytes):
        k = k.decode("utf-8", "replace")
    if isinstance(k, str):
        m = re.fullmatch(r"\s*(?:random)?(-?\d+)\s*", k)
        return int(m.group(1)) if m else k
    if isinstance(k, (bool, np.bool_)):
        return k
    if isinstance(k, (int, np.integer)):
        return int(k)
    if isinstance(k, float) and k.is_integer():
        return int(k)
    return k


def _load_pickle(path: str | Path, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file does not exist", path=p)
    try:
        with open(p, "rb") as fh:
            obj = safeload.load(fh)  # plain values only: no stand-ins
    except Exception as exc:  # truncated, foreign or code-running pickle
        raise InputError(f"cannot unpickle {what} ({safeload.describe(exc)})", path=p) from None
    if not isinstance(obj, dict):
        raise InputError(f"{what} pickle holds a {type(obj).__name__}, expected a dict keyed by system id", path=p)
    return {sid_key(k): v for k, v in obj.items()}


def load_bulk_symbols(path) -> dict:
    """sid -> bulk_symbols from an OC20/OC22 metadata pickle (values: dicts or plain strings)."""
    meta = _load_pickle(path, "metadata")
    out = {}
    for k, v in meta.items():
        if isinstance(v, dict):
            if "bulk_symbols" in v:
                out[k] = str(v["bulk_symbols"])
        elif isinstance(v, str):
            out[k] = v
    if meta and not out:
        raise InputError("no 'bulk_symbols' in any entry", path=path, field="bulk_symbols")
    return out


def load_ref_energies(path) -> dict:
    """sid -> reference energy (eV) from ``oc20_ref.pkl`` or S2EF ``*.txt(.xz)`` files (file or folder)."""
    p = Path(path)
    if p.suffix == ".pkl":
        refs = _load_pickle(p, "reference energies")
        out = {}
        for k, v in refs.items():
            try:
                out[k] = float(v.item() if hasattr(v, "item") else v)
            except (TypeError, ValueError):
                raise InputError(f"entry {k!r}: reference energy {v!r} is not a number", path=p) from None
        return out
    files = [p] if p.is_file() else sorted((*p.glob("*.txt"), *p.glob("*.txt.xz")), key=_shard_key) if p.is_dir() else []
    if not files:
        raise InputError("no reference energies (.pkl, .txt or a folder of .txt)", path=p)
    out = {}
    for f in files:
        for sid, _fid, ref in _read_txt(f):
            out[sid] = ref
    return out


def _read_txt(path: Path) -> list[tuple[int, int, float]]:
    """Rows ``(sid, fid, reference_energy)`` of an S2EF companion ``.txt(.xz)``."""
    try:
        opener = lzma.open if path.name.endswith(".xz") else open
        with opener(path, "rt") as fh:
            lines = fh.read().splitlines()
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ({one_line(exc)})", path=path) from None
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        parts = line.strip().split(",")
        try:
            if len(parts) != 3:
                raise ValueError(f"{len(parts)} fields")
            sid = sid_key(parts[0])
            fid = int(re.sub(r"^frame", "", parts[1].strip()))
            ref = float(parts[2])
            if not isinstance(sid, int) or not np.isfinite(ref):
                raise ValueError("bad system id or reference energy")
        except ValueError as exc:
            raise InputError(f"line {i + 1}: expected 'system_id,frame_number,reference_energy' ({exc})", path=path,
                             field="reference_energy") from None
        rows.append((sid, fid, ref))
    return rows


# ------------------------------------------------------------------------------------- unpickling

PYG = ("torch_geometric",)  # the only classes an LMDB value may hold (as inert stand-ins)


def _unpickle(raw: bytes):
    """An LMDB value or key: PyG classes become :class:`~atomsift.safeload.Inert` stand-ins,
    tensors numpy arrays; any other class or callable is refused (nothing runs)."""
    return safeload.loads(raw, stand_ins=PYG)


def data_fields(obj) -> dict:
    """The attribute dict of an unpickled ``Data`` (PyG 2: ``_store._mapping``; PyG < 2: ``__dict__``)."""
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, safeload.Inert) and obj.pickled_name.startswith("torch_geometric."):
        st = obj.fields()
        store = st.get("_store")
        if isinstance(store, safeload.Inert):
            mapping = store.fields().get("_mapping", {})
            return dict(mapping) if isinstance(mapping, dict) else {}
        if isinstance(store, dict):
            return dict(store.get("_mapping", store))
        return {k: v for k, v in st.items() if isinstance(k, str) and not k.startswith("_") and v is not None}
    raise TypeError(f"unpickled a {type(obj).__name__ if not isinstance(obj, safeload.Inert) else obj.pickled_name}, "
                    "expected torch_geometric Data")


def _array(v) -> np.ndarray | None:
    if v is None:
        return None
    if hasattr(v, "detach"):
        return v.detach().cpu().numpy()
    return np.asarray(v)


# ------------------------------------------------------------------------------------------ files


def _shard_key(p: Path):
    nums = re.findall(r"\d+", p.name)
    return (int(nums[-1]) if nums else -1, p.name)


def _kind(p: Path) -> str | None:
    if p.name.endswith(_LMDB):
        return "lmdb"
    if p.name.endswith(_EXTXYZ):
        return "extxyz"
    return None


def _files_in(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if p.is_file() and _kind(p)), key=_shard_key)


def discover(src: Path) -> dict[str | None, list[Path]]:
    """Group -> shard files. ``None`` is the single group of a file or a flat folder."""
    if src.is_file():
        if not _kind(src):
            raise InputError("expected an .lmdb, .extxyz or .extxyz.xz file (or a folder of them)", path=src)
        return {None: [src]}
    flat = _files_in(src)
    if flat:
        groups = {None: flat}
    else:
        groups = {d.name: _files_in(d) for d in sorted(src.iterdir()) if d.is_dir()}
        groups = {k: v for k, v in groups.items() if v}
        if not groups:
            raise InputError("no .lmdb or .extxyz(.xz) files in the folder or its sub-folders", path=src)
    kinds = {_kind(p) for files in groups.values() for p in files}
    if len(kinds) > 1:
        raise InputError("mixes .lmdb and .extxyz files; convert them separately", path=src)
    return groups


# ------------------------------------------------------------------------------------------- LMDB


def lmdb_length(env, path) -> int:
    with env.begin() as txn:
        raw = txn.get(b"length")
        if raw is None:
            return int(env.stat()["entries"])
    try:
        n = sid_key(_unpickle(raw))
    except Exception as exc:
        raise InputError(f"cannot unpickle ({safeload.describe(exc)})", path=path, field="length") from None
    if not isinstance(n, int) or n < 0:
        raise InputError(f"not a count: {n!r}", path=path, field="length")
    return n


_LMDB_MAGIC = 0xBEEFC0DE


def check_lmdb_file(path: Path) -> None:
    """Refuse a non-LMDB or truncated file before mapping it (reading past the end of a mapped,
    truncated file kills the process with SIGBUS instead of raising).

    The two meta pages (64-bit layout) hold the magic at byte 16, the page size at byte 40 and
    the last used page number at byte 136; the newer one (larger txnid, byte 144) is current.
    """
    import struct

    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(160)
        if len(head) < 160 or struct.unpack_from("<I", head, 16)[0] != _LMDB_MAGIC:
            raise InputError("not an LMDB data file (bad magic; truncated or another format)", path=path)
        psize = struct.unpack_from("<I", head, 40)[0]
        if psize < 512 or psize & (psize - 1):
            raise InputError(f"not an LMDB data file (page size {psize})", path=path)
        fh.seek(psize)
        second = fh.read(160)
    metas = [head] + ([second] if len(second) == 160 and struct.unpack_from("<I", second, 16)[0] == _LMDB_MAGIC else [])
    last, _ = max((struct.unpack_from("<QQ", m, 136)[::-1] for m in metas))[::-1]
    need = (last + 1) * psize
    if size < need:
        raise InputError(f"truncated LMDB file ({size} bytes, its meta page needs {need})", path=path)


def _open_lmdb(path: Path):
    import lmdb

    check_lmdb_file(path)
    # readahead on: the conversion reads entries in key order, which in a written-in-order LMDB is
    # file order; without it (MADV_RANDOM) every 4 KB page is a separate disk read.
    try:
        return lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=True, meminit=False, max_readers=1)
    except lmdb.Error as exc:
        raise InputError(f"cannot open as LMDB (truncated or not an LMDB file: {one_line(exc)})", path=path) from None


def iter_lmdb(path: Path, limit: int | None = None):
    """Yield ``(key, fields dict)`` for the entries of one LMDB shard, in key order."""
    import lmdb

    env = _open_lmdb(path)
    try:
        n = lmdb_length(env, path)
    except lmdb.Error as exc:
        env.close()
        raise InputError(f"cannot read LMDB ({one_line(exc)})", path=path) from None
    if limit is not None:
        n = min(n, limit)
    i = 0
    try:
        while i < n:
            stop = min(n, i + REOPEN_EVERY)
            with env.begin(buffers=False) as txn:
                for k in range(i, stop):
                    try:
                        raw = txn.get(str(k).encode("ascii"))
                    except lmdb.Error as exc:
                        raise InputError(f"cannot read ({one_line(exc)})", path=path, field=f"key {k}") from None
                    if raw is None:
                        raise InputError(f"missing entry (length says {n})", path=path, field=f"key {k}")
                    try:
                        fields = data_fields(_unpickle(raw))
                    except Exception as exc:
                        raise InputError(f"cannot unpickle ({safeload.describe(exc)})", path=path,
                                         field=f"key {k}") from None
                    yield k, fields
            i = stop
            if i < n:  # drop the mapping so resident pages of a huge file are released
                env.close()
                env = _open_lmdb(path)
    finally:
        env.close()


def _pick(fields: dict, names: tuple[str, ...]):
    for name in names:
        v = fields.get(name)
        if v is not None:
            return name, v
    return None, None


def lmdb_record(fields: dict, path: Path, k: int) -> dict:
    """Checked numpy arrays of one LMDB entry: numbers, pos, cell, pbc, energy, forces, tags, fixed, sid, fid."""

    def bad(field, msg):
        return InputError(f"key {k}: {msg}", path=path, field=field)

    def arr(name, v, kind="f"):
        a = _array(v)
        if a.dtype.kind not in ("fiub" if kind == "f" else "iub"):
            raise bad(name, f"expected a numeric array, got dtype {a.dtype}")
        return a

    rec = {}
    name, z = _pick(fields, ("atomic_numbers",))
    if z is None:
        raise bad("atomic_numbers", f"missing (has: {', '.join(sorted(fields))})")
    z = arr(name, z).reshape(-1)
    n = z.size
    if n == 0:
        raise bad("atomic_numbers", "no atoms")
    if np.any(z != np.round(z)):
        raise bad("atomic_numbers", "atomic numbers must be integers")
    rec["numbers"] = z.astype(np.int64)
    for key, names, shape in (("pos", ("pos",), (n, 3)), ("cell", ("cell",), (3, 3))):
        name, v = _pick(fields, names)
        if v is None:
            raise bad(names[0], "missing")
        a = arr(name, v).astype(np.float64)
        if a.size != int(np.prod(shape)) or (key == "pos" and a.shape != shape):
            raise bad(name, f"expected shape {shape}{' or (1, 3, 3)' if key == 'cell' else ''}, got {a.shape}")
        rec[key] = a.reshape(shape)
    name, e = _pick(fields, ("y", "energy"))
    if e is None:
        raise bad("y", "no energy ('y' or 'energy'; IS2RE-only LMDBs are not supported)")
    e = arr(name, e).astype(np.float64).reshape(-1)
    if e.size != 1:
        raise bad(name, f"expected one energy, got {e.size} values")
    if not np.isfinite(e[0]):
        raise bad(name, f"non-finite value ({e[0]})")
    rec["energy"] = float(e[0])
    name, f = _pick(fields, ("force", "forces"))
    if f is None:
        raise bad("force", "no forces ('force' or 'forces')")
    f = arr(name, f).astype(np.float64)
    if f.shape != (n, 3):
        raise bad(name, f"expected shape ({n}, 3), got {f.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(f).all(axis=1))
    if bad_rows.size:
        raise bad(name, f"atom {int(bad_rows[0])}: non-finite value")
    rec["forces"] = f
    for key in ("tags", "fixed"):
        v = fields.get(key)
        if v is None:
            rec[key] = None
            continue
        a = arr(key, v).reshape(-1)
        if a.size != n:
            raise bad(key, f"expected {n} values, got {a.size}")
        rec[key] = a.astype(np.int64) if key == "tags" else a.astype(bool)
    pbc = fields.get("pbc")
    rec["pbc"] = np.ones(3, dtype=bool) if pbc is None else np.broadcast_to(_array(pbc).reshape(-1).astype(bool), (3,))
    for key in ("sid", "fid"):
        v = fields.get(key)
        s = None if v is None else sid_key(v)
        if s is not None and not isinstance(s, int):
            raise bad(key, f"expected an integer id, got {v!r}")
        rec[key] = s
    nat = fields.get("natoms")
    if nat is not None and sid_key(nat) != n:
        raise bad("natoms", f"natoms {sid_key(nat)!r} but {n} atomic numbers")
    return rec


# ----------------------------------------------------------------------------------------- extxyz


def _companion_txt(path: Path) -> Path | None:
    base = path.name[: -len(".extxyz.xz")] if path.name.endswith(".extxyz.xz") else path.name[: -len(".extxyz")]
    for name in (f"{base}.txt", f"{base}.txt.xz"):
        if (path.parent / name).is_file():
            return path.parent / name
    return None


def iter_extxyz(path: Path, limit: int | None = None):
    """Yield ``(frame index, record dict)`` of one S2EF extxyz file (raw total energies)."""
    from ase.constraints import FixAtoms
    from ase.io import iread

    frames = iread(str(path), index=":" if limit is None else slice(0, limit), format="extxyz")
    i = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # ASE raises many types on malformed or truncated text
            raise InputError(f"frame {i}: cannot parse ({type(exc).__name__}: {one_line(exc)})", path=path) from None
        calc = atoms.calc
        res = getattr(calc, "results", {}) if calc is not None else {}
        e = res.get("energy", atoms.info.get("energy"))
        if e is None:
            raise InputError(f"frame {i}: no energy", path=path, field="energy")
        f = res.get("forces", atoms.arrays.get("forces"))
        if f is None:
            raise InputError(f"frame {i}: no forces", path=path, field="forces")
        n = len(atoms)
        if "move_mask" in atoms.arrays:
            fixed = ~np.asarray(atoms.arrays["move_mask"], dtype=bool).reshape(n, -1).all(axis=1)
        else:
            fixed = np.zeros(n, dtype=bool)
            for c in atoms.constraints:
                if isinstance(c, FixAtoms):
                    fixed[c.get_indices()] = True
        yield i, {
            "numbers": atoms.numbers.astype(np.int64), "pos": atoms.positions, "cell": np.asarray(atoms.cell[:]),
            "pbc": np.asarray(atoms.pbc, dtype=bool), "energy": float(e), "forces": np.asarray(f, dtype=np.float64),
            "tags": atoms.get_tags().astype(np.int64), "fixed": fixed, "sid": None, "fid": None,
        }
        i += 1


# ---------------------------------------------------------------------------------------- convert


def _class(rec, bulk: dict | None, counters: dict) -> str:
    if bulk is not None:
        c = bulk.get(rec["sid"])
        if c is None:
            counters["class_unknown"] += 1
            return "Unknown"
        return c
    z, tags = rec["numbers"], rec["tags"]
    if tags is not None:
        keep = tags != 2
        if keep.any():
            z = z[keep]
    return formula(z, reduced=True)


def convert(source, out: Path, *, dataset: str = "oc20", metadata=None, ref_energies=None, total_energy: bool = False,
            seed: int | None = None, limit: int | None = None) -> Path:
    src = source_path(source, what="OC20/OC22 LMDB or S2EF extxyz file or folder")
    if dataset not in LEVEL_OF_THEORY:
        raise InputError(f"the oc reader converts oc20 or oc22, not '{dataset}'", field="DATASET")
    groups = discover(src)
    kind = _kind(next(iter(groups.values()))[0])
    oc20 = dataset == "oc20"
    if not oc20 and (ref_energies or total_energy):
        raise InputError("OC22 energies are already total; --ref-energies/--total-energy apply to oc20 only", field="total_energy")
    if ref_energies and not total_energy and kind == "lmdb":
        raise InputError("--ref-energies without --total-energy has no effect on LMDB energies (already referenced)",
                         field="ref_energies")
    if oc20 and total_energy and kind == "lmdb" and not ref_energies:
        raise InputError("OC20 LMDB energies are referenced; --total-energy needs --ref-energies (oc20_ref.pkl or S2EF .txt)",
                         field="ref_energies")
    refs = load_ref_energies(ref_energies) if ref_energies else None
    bulk = load_bulk_symbols(metadata) if metadata else None
    if oc20 and total_energy:
        energy_kind = "total (DFT total energy, eV)"
    elif oc20:
        energy_kind = "referenced (OC20 S2EF adsorption-style: total - slab - gas-phase references, eV)"
    else:
        energy_kind = "total (OC22 S2EF-total, eV)"
    split_seed = SPLIT_SEED if seed is None else seed
    counters = {"class_unknown": 0}
    extra = {
        "source_format": kind,
        "class": "bulk_symbols from metadata" if bulk is not None else "reduced Hill formula of the non-adsorbate atoms (tag != 2)",
        "split": "by sub-folder" if None not in groups else f"RandomState({split_seed}) permutation, 95% train / 5% val",
    }
    if metadata:
        extra["metadata"] = str(Path(metadata).resolve())
    if ref_energies:
        extra["ref_energies"] = str(Path(ref_energies).resolve())
    remaining = limit
    ranges: dict[str, tuple[int, int]] = {}
    with StoreWriter(
        out, dataset=dataset, source=src, reader=NAME, reader_version=VERSION, level_of_theory=LEVEL_OF_THEORY[dataset],
        has_energy=True, has_forces=True, has_sid=True, energy_kind=energy_kind, extra=extra,
    ) as w:
        for group, files in groups.items():
            start = w.n_structures
            for path in files:
                if remaining is not None and remaining <= 0:
                    break
                if kind == "lmdb":
                    items = ((k, lmdb_record(fields, path, k)) for k, fields in iter_lmdb(path, remaining))
                    txt_rows = None
                    label = "key"
                else:
                    txt = _companion_txt(path)
                    if txt is None and oc20 and not total_energy and refs is None:
                        raise InputError("OC20 extxyz energies are total: referenced energies need the companion .txt "
                                         "(system_id,frame_number,reference_energy) or --ref-energies; or pass --total-energy",
                                         path=path)
                    txt_rows = _read_txt(txt) if txt is not None else None
                    items = iter_extxyz(path, remaining)
                    label = "frame"
                count = 0
                for k, rec in items:
                    where = f"{path.name} {label} {k}"
                    if txt_rows is not None:
                        if k >= len(txt_rows):
                            raise InputError(f"has {len(txt_rows)} lines but the extxyz has more frames", path=txt,
                                             field="reference_energy")
                        rec["sid"], rec["fid"], txt_ref = txt_rows[k]
                    if oc20 and kind == "extxyz" and not total_energy:
                        ref = refs.get(rec["sid"]) if refs is not None else txt_ref
                        if ref is None:
                            raise InputError(f"{where}: no reference energy for system {rec['sid']}", path=ref_energies,
                                             field="reference_energy")
                        rec["energy"] -= ref
                    elif oc20 and kind == "lmdb" and total_energy:
                        ref = refs.get(rec["sid"])
                        if ref is None:
                            raise InputError(f"{where}: no reference energy for sid {rec['sid']!r} (key random{rec['sid']})",
                                             path=ref_energies, field="sid")
                        rec["energy"] += ref
                    w.add(rec["numbers"], rec["pos"], cell=rec["cell"], pbc=rec["pbc"], energy=rec["energy"],
                          forces=rec["forces"], tags=rec["tags"], fixed=rec["fixed"], cls=_class(rec, bulk, counters),
                          sid=rec["sid"] if rec["sid"] is not None else w.n_structures, where=where)
                    count += 1
                if txt_rows is not None and remaining is None and count != len(txt_rows):
                    raise InputError(f"has {len(txt_rows)} lines but the extxyz has {count} frames", path=txt,
                                     field="reference_energy")
                if remaining is not None:
                    remaining -= count
            ranges[group] = (start, w.n_structures)
        if None in ranges:
            n = w.n_structures
            perm = shuffled(n, split_seed)
            n_val = int(round(n * VAL_FRACTION)) if n >= 2 else 0
            n_val = max(n_val, 1) if n >= 2 else 0
            w.set_split("train", np.sort(perm[n_val:]))
            w.set_split("val", np.sort(perm[:n_val]))
        else:
            for group, (a, b) in ranges.items():
                w.set_split(group, np.arange(a, b))
        w.extra["n_class_unknown"] = counters["class_unknown"]
    return out
