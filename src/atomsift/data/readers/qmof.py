"""QMOF reader: ``qmof.json`` + ``qmof_structure_data.json`` (figshare 13147324) -> store.

Source: the folder holding both files (``qmof_database/`` of the release, or any folder above it),
or the release zip (``qmof_database.zip``, or figshare's article zip that wraps it).

* ``qmof.json``: list of ``{qmof_id, name, info{formula, ...}, inputs, outputs{pbe{bandgap, ...}}}``.
* ``qmof_structure_data.json``: list of ``{qmof_id, name, structure}`` with a pymatgen Structure
  dict (parsed by :mod:`atomsift.data.readers._pymatgen`, no pymatgen needed); matched to
  ``qmof.json`` by ``qmof_id`` (the release keeps both in the same order; JMP relies on it).

Target ``bandgap`` = ``outputs.pbe.bandgap`` in eV (JMP's QMOF target). ``sid`` = the hexadecimal
part of ``qmof_id`` as an integer (``qmof-8a95c27`` -> 0x8a95c27; ``f"qmof-{sid:07x}"`` gives it
back). Class = the reduced Hill formula of the structure. Splits: JMP's 80/10/10 —
``RandomState(seed).shuffle(arange(n))``, the first ``int(0.8 n)`` train, the next
``n - int(0.8 n) - int(0.1 n)`` val, the last ``int(0.1 n)`` test (seed 42).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from atomsift.data.readers._common import fraction_split, source_path
from atomsift.data.readers._pymatgen import parse_structure, reduced_formula
from atomsift.data.store import StoreWriter
from atomsift.errors import InputError

NAME = "qmof"
VERSION = "1"
LEVEL_OF_THEORY = "PBE-D3(BJ), VASP (QMOF)"
TARGETS = ["bandgap"]
TARGET_UNITS = {"bandgap": "eV"}
SPLIT_SEED = 42
FILES = ("qmof.json", "qmof_structure_data.json")


def jmp_split(n: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """JMP's QMOF split (``finetune/qmof.py``): shuffled indices cut int(0.8 n) / rest / int(0.1 n)."""
    return fraction_split(n, seed, train=0.8, test=0.1)


def _load_json(raw: bytes | None, path, label: str):
    try:
        if raw is None:
            with open(path, "rb") as fh:
                return json.load(fh)
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}; truncated file?)", path=label) from None
    except UnicodeDecodeError:
        raise InputError("not valid JSON (not UTF-8 text)", path=label) from None


def _read_zip(zpath: Path) -> dict[str, object]:
    try:
        zf = zipfile.ZipFile(zpath)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"cannot open zip ({exc})", path=zpath) from None
    with zf:
        names = {Path(n).name: n for n in zf.namelist()}
        if all(f in names for f in FILES):
            out = {}
            for f in FILES:
                try:
                    raw = zf.read(names[f])
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    raise InputError(f"cannot read member ({exc})", path=f"{zpath}:{names[f]}") from None
                out[f] = _load_json(raw, None, f"{zpath}:{names[f]}")
            return out
        if "qmof_database.zip" in names:  # figshare's article zip wraps the release zip
            inner = zf.read(names["qmof_database.zip"])
            tmp = zpath.parent / f".{zpath.name}.inner.zip"
            try:
                tmp.write_bytes(inner)
                return _read_zip(tmp)
            finally:
                tmp.unlink(missing_ok=True)
    raise InputError(f"zip holds neither {FILES[0]} and {FILES[1]} nor qmof_database.zip", path=zpath)


def _locate(src: Path) -> dict[str, Path]:
    for d in (src, src / "qmof_database", *sorted(p for p in src.glob("*/") if p.is_dir())):
        if all((d / f).is_file() for f in FILES):
            return {f: d / f for f in FILES}
    missing = [f for f in FILES if not (src / f).is_file()]
    raise InputError(f"missing {' and '.join(missing)} (expected the QMOF release folder)", path=src)


def _get(d, keys: str, where: str, path, i: int):
    cur = d
    for k in keys.split("."):
        if not isinstance(cur, dict) or k not in cur:
            raise InputError(f"entry {i}{where}: missing key", path=path, field=keys)
        cur = cur[k]
    return cur


def _sid(qmof_id: str, i: int) -> int:
    try:
        return int(str(qmof_id).split("-", 1)[1], 16)
    except (IndexError, ValueError):
        return i


def convert(source, out: Path, *, dataset: str = "qmof", seed: int | None = None, limit: int | None = None, **_ignored) -> Path:
    src = source_path(source, what="QMOF release folder (qmof_database/) or its zip")
    if src.is_dir():
        paths = _locate(src)
        systems = _load_json(None, paths[FILES[0]], paths[FILES[0]])
        structures = _load_json(None, paths[FILES[1]], paths[FILES[1]])
        labels = {f: str(p) for f, p in paths.items()}
    else:
        data = _read_zip(src)
        systems, structures = data[FILES[0]], data[FILES[1]]
        labels = {f: f"{src}:{f}" for f in FILES}
    for f, obj in ((FILES[0], systems), (FILES[1], structures)):
        if not isinstance(obj, list):
            raise InputError(f"expected a JSON list of entries, got {type(obj).__name__}", path=labels[f])
    by_id = {}
    for j, s in enumerate(structures):
        if not isinstance(s, dict) or "qmof_id" not in s:
            raise InputError(f"entry {j}: missing key", path=labels[FILES[1]], field="qmof_id")
        by_id[s["qmof_id"]] = j
    if limit is not None:
        systems = systems[:limit]
    with StoreWriter(
        out, dataset=dataset, source=src, reader=NAME, reader_version=VERSION, level_of_theory=LEVEL_OF_THEORY,
        target_names=TARGETS, target_units=TARGET_UNITS, has_sid=True,
        extra={"split": f"JMP: RandomState({SPLIT_SEED if seed is None else seed}).shuffle, 80/10/10 train/val/test",
               "sid": "int(qmof_id[5:], 16); qmof_id = f'qmof-{sid:07x}'", "class": "reduced Hill formula"},
    ) as w:
        for i, system in enumerate(systems):
            if not isinstance(system, dict):
                raise InputError(f"entry {i}: expected an object", path=labels[FILES[0]])
            qid = _get(system, "qmof_id", "", labels[FILES[0]], i)
            where = f" ({qid})"
            gap = _get(system, "outputs.pbe.bandgap", where, labels[FILES[0]], i)
            if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not np.isfinite(gap):
                raise InputError(f"entry {i}{where}: bandgap {gap!r} is not a finite number", path=labels[FILES[0]], field="outputs.pbe.bandgap")
            j = by_id.get(qid)
            if j is None:
                raise InputError(f"no structure for entry {i}{where}", path=labels[FILES[1]], field="qmof_id")
            struct = structures[j].get("structure")
            z, pos, cell, pbc = parse_structure(struct, path=labels[FILES[1]], where=f"entry {j} ({qid})")
            w.add(z, pos, cell=cell, pbc=pbc, targets=[float(gap)], cls=reduced_formula(z), sid=_sid(qid, i),
                  where=f"entry {i}{where}")
        for name, idx in jmp_split(w.n_structures, SPLIT_SEED if seed is None else seed).items():
            w.set_split(name, idx)
    return out
