"""QMOF reader: ``qmof.json`` + ``qmof_structure_data.json`` (figshare 13147324) -> store.

Source: the folder holding both files (``qmof_database/`` of the release, or any folder above it),
or the release zip (``qmof_database.zip``, or figshare's article zip that wraps it).

* ``qmof.json``: list of ``{qmof_id, name, info{formula, ...}, inputs, outputs{pbe{bandgap, ...}}}``.
* ``qmof_structure_data.json``: list of ``{qmof_id, name, structure}`` with a pymatgen Structure
  dict (parsed by :mod:`atomsift.data.readers._pymatgen`, no pymatgen needed), streamed (one
  structure in memory at a time) in file order and matched to ``qmof.json`` by ``qmof_id`` (the
  release keeps both files in the same order, which JMP relies on; every id must pair up).

Target ``bandgap`` = ``outputs.pbe.bandgap`` in eV (JMP's QMOF target). ``sid`` = the hexadecimal
part of ``qmof_id`` as an integer (``qmof-8a95c27`` -> 0x8a95c27; ``f"qmof-{sid:07x}"`` gives it
back). Class = the reduced Hill formula of the structure. Splits: JMP's 80/10/10 —
``RandomState(seed).shuffle(arange(n))``, the first ``int(0.8 n)`` train, the next
``n - int(0.8 n) - int(0.1 n)`` val, the last ``int(0.1 n)`` test (seed 42).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from atomsift.data.readers._common import fraction_split, source_path
from atomsift.data.readers._pymatgen import JsonStream, parse_structure
from atomsift.data.store import StoreWriter, formula
from atomsift.errors import InputError

NAME = "qmof"
VERSION = "2"  # 2: formula class labels in ASE's Hill order (H second also without carbon)
LEVEL_OF_THEORY = "PBE-D3(BJ), VASP (QMOF)"
TARGETS = ["bandgap"]
TARGET_UNITS = {"bandgap": "eV"}
SPLIT_SEED = 42
FILES = ("qmof.json", "qmof_structure_data.json")


def jmp_split(n: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """JMP's QMOF split (``finetune/qmof.py``): shuffled indices cut int(0.8 n) / rest / int(0.1 n)."""
    return fraction_split(n, seed, train=0.8, test=0.1)


@contextlib.contextmanager
def _open_texts(src: Path):
    """Text streams of (qmof.json, qmof_structure_data.json) and their labels, from a folder or a zip."""
    if src.is_dir():
        paths = _locate(src)
        with open(paths[FILES[0]], encoding="utf-8") as f0, open(paths[FILES[1]], encoding="utf-8") as f1:
            yield (f0, f1), tuple(str(paths[f]) for f in FILES)
        return
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"cannot open zip ({exc})", path=src) from None
    with zf:
        names = {Path(n).name: n for n in zf.namelist()}
        if all(f in names for f in FILES):
            with zf.open(names[FILES[0]]) as b0, zf.open(names[FILES[1]]) as b1:
                yield ((io.TextIOWrapper(b0, encoding="utf-8"), io.TextIOWrapper(b1, encoding="utf-8")),
                       tuple(f"{src}:{names[f]}" for f in FILES))
            return
        if "qmof_database.zip" in names:  # figshare's article zip wraps the release zip
            with tempfile.TemporaryDirectory() as tmp:
                inner = Path(tmp) / "qmof_database.zip"
                with zf.open(names["qmof_database.zip"]) as fin, open(inner, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 22)
                with _open_texts(inner) as (streams, labels):
                    yield streams, tuple(lab.replace(str(inner), f"{src}:qmof_database.zip") for lab in labels)
            return
    raise InputError(f"zip holds neither {FILES[0]} and {FILES[1]} nor qmof_database.zip", path=src)


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


def _gaps(stream: JsonStream, label: str) -> dict[str, float]:
    """qmof_id -> PBE band gap of every entry of qmof.json (checked: present and finite)."""
    gaps: dict[str, float] = {}
    for i, system in enumerate(stream.items()):
        if not isinstance(system, dict):
            raise InputError(f"entry {i}: expected an object", path=label)
        qid = _get(system, "qmof_id", "", label, i)
        where = f" ({qid})"
        gap = _get(system, "outputs.pbe.bandgap", where, label, i)
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not np.isfinite(gap):
            raise InputError(f"entry {i}{where}: bandgap {gap!r} is not a finite number", path=label,
                             field="outputs.pbe.bandgap")
        gaps[qid] = float(gap)
    stream.end()
    return gaps


def convert(source, out: Path, *, dataset: str = "qmof", seed: int | None = None, limit: int | None = None) -> Path:
    src = source_path(source, what="QMOF release folder (qmof_database/) or its zip")
    split_seed = SPLIT_SEED if seed is None else seed
    with _open_texts(src) as ((f_sys, f_struct), (lab_sys, lab_struct)):
        gaps = _gaps(JsonStream(f_sys, lab_sys), lab_sys)
        stream = JsonStream(f_struct, lab_struct)
        with StoreWriter(
            out, dataset=dataset, source=src, reader=NAME, reader_version=VERSION, level_of_theory=LEVEL_OF_THEORY,
            target_names=TARGETS, target_units=TARGET_UNITS, has_sid=True,
            extra={"split": f"JMP: RandomState({split_seed}).shuffle, 80/10/10 train/val/test",
                   "order": "as qmof_structure_data.json (the release keeps qmof.json in the same order)",
                   "sid": "int(qmof_id[5:], 16); qmof_id = f'qmof-{sid:07x}'", "class": "reduced Hill formula"},
        ) as w:
            seen = 0
            for j, entry in enumerate(stream.items()):
                if limit is not None and j >= limit:
                    break
                if not isinstance(entry, dict) or "qmof_id" not in entry:
                    raise InputError(f"entry {j}: missing key", path=lab_struct, field="qmof_id")
                qid = entry["qmof_id"]
                if qid not in gaps:
                    raise InputError(f"entry {j} ({qid}): no entry with this qmof_id in {FILES[0]}", path=lab_struct,
                                     field="qmof_id")
                if "structure" not in entry:
                    raise InputError(f"entry {j} ({qid}): missing key", path=lab_struct, field="structure")
                z, pos, cell, pbc = parse_structure(entry["structure"], path=lab_struct, where=f"entry {j} ({qid})")
                w.add(z, pos, cell=cell, pbc=pbc, targets=[gaps[qid]], cls=formula(z, reduced=True), sid=_sid(qid, j),
                      where=f"entry {j} ({qid})")
                seen += 1
            else:
                stream.end()
                if seen != len(gaps):
                    raise InputError(f"{seen} structures for {len(gaps)} entries of {FILES[0]}", path=lab_struct)
            for name, idx in jmp_split(w.n_structures, split_seed).items():
                w.set_split(name, idx)
    return out
