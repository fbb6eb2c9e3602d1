"""MatBench reader: ``matbench_<task>.json.gz`` (ml.materialsproject.org) -> store.

The file is pandas ``orient="split"`` JSON, gzipped, as matminer writes and reads it (streamed:
one structure in memory at a time)::

    {"index": [...], "columns": ["structure", "<target>"], "data": [[<Structure dict>, value], ...]}

Structures are pymatgen dicts (:mod:`atomsift.data.readers._pymatgen`, no pymatgen needed). The task
is taken from ``--subset`` or from the file name; ``source`` may also be a folder holding the file.

Folds are MatBench v0.1's: ``KFold(n_splits=5, shuffle=True, random_state=18012019)`` for
regression tasks and ``StratifiedKFold`` with the same arguments for ``mp_is_metal`` (as
``matbench/scripts/mvb01_generate_validation.py``), re-implemented here with numpy exactly as
scikit-learn computes them. As JMP (``finetune/mat_bench.py``), each fold's train+val part (in
dataset order) is cut by ``RandomState(42).shuffle``: the first ``int(0.9 n)`` train, the rest
val. Splits: ``fold{k}_train``, ``fold{k}_val``, ``fold{k}_test`` for k = 0..4; ``--fold K`` also
writes plain ``train``/``val``/``test`` for that fold. Class = reduced Hill formula.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

from atomsift.data.readers._common import shuffled, source_path
from atomsift.data.readers._pymatgen import JsonStream, parse_structure
from atomsift.data.store import StoreWriter, formula
from atomsift.errors import InputError

NAME = "matbench"
VERSION = "2"  # 2: formula class labels in ASE's Hill order (H second also without carbon)
N_FOLDS = 5
FOLD_SEED = 18012019
SPLIT_SEED = 42

# task -> (target column, unit, size of the release, classification?)
TASKS = {
    "jdft2d": ("exfoliation_en", "meV/atom", 636, False),
    "phonons": ("last phdos peak", "cm^-1", 1265, False),
    "dielectric": ("n", "dimensionless (refractive index)", 4764, False),
    "log_gvrh": ("log10(G_VRH)", "log10(GPa)", 10987, False),
    "log_kvrh": ("log10(K_VRH)", "log10(GPa)", 10987, False),
    "perovskites": ("e_form", "eV/unit cell", 18928, False),
    "mp_gap": ("gap pbe", "eV", 106113, False),
    "mp_is_metal": ("is_metal", "bool (1 = metal)", 106113, True),
    "mp_e_form": ("e_form", "eV/atom", 132752, False),
}
LEVEL_OF_THEORY = {
    "jdft2d": "optB88vdW (JARVIS-DFT)", "phonons": "PBE DFPT (Materials Project)",
    "dielectric": "PBE DFPT (Materials Project)", "log_gvrh": "PBE (Materials Project)",
    "log_kvrh": "PBE (Materials Project)", "perovskites": "RPBE (GPAW)", "mp_gap": "PBE (Materials Project)",
    "mp_is_metal": "PBE (Materials Project)", "mp_e_form": "PBE (Materials Project)",
}
_COMPOSITION_TASKS = ("expt_gap", "expt_is_metal", "glass", "steels")


def kfold_test_indices(n: int, n_splits: int = N_FOLDS, seed: int = FOLD_SEED) -> list[np.ndarray]:
    """Test indices of each fold of ``sklearn.model_selection.KFold(n_splits, shuffle=True, random_state=seed)``.

    scikit-learn shuffles ``arange(n)`` with ``RandomState(seed).shuffle`` and cuts it into
    ``n_splits`` consecutive folds, the first ``n % n_splits`` one element larger.
    """
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)
    sizes = np.full(n_splits, n // n_splits, dtype=np.int64)
    sizes[: n % n_splits] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [idx[bounds[k]:bounds[k + 1]] for k in range(n_splits)]


def stratified_kfold_test_indices(y, n_splits: int = N_FOLDS, seed: int = FOLD_SEED) -> list[np.ndarray]:
    """Test indices of ``StratifiedKFold(n_splits, shuffle=True, random_state=seed)`` (scikit-learn >= 0.22).

    Classes are numbered by first appearance; each fold gets the per-class counts of a round
    robin over the sorted labels; per class the block of fold numbers is shuffled with one
    ``RandomState(seed)`` (in class order) and assigned to that class's samples in dataset order.
    """
    y = np.asarray(y)
    _, first, inv = np.unique(y, return_index=True, return_inverse=True)
    _, perm = np.unique(first, return_inverse=True)
    enc = perm[inv.reshape(-1)]
    n_classes = first.size
    if np.all(np.bincount(enc) < n_splits):
        raise InputError(f"too few samples per class for {n_splits} stratified folds", field="target")
    order = np.sort(enc)
    alloc = np.asarray([np.bincount(order[i::n_splits], minlength=n_classes) for i in range(n_splits)])
    rng = np.random.RandomState(seed)
    folds = np.empty(y.size, dtype=np.int64)
    for k in range(n_classes):
        f = np.arange(n_splits).repeat(alloc[:, k])
        rng.shuffle(f)
        folds[enc == k] = f
    return [np.nonzero(folds == k)[0] for k in range(n_splits)]


def fold_splits(n: int, test_folds: list[np.ndarray], seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """``fold{k}_train/val/test``: the fold's train+val part (dataset order) shuffled and cut 90/10 as JMP."""
    out = {}
    for k, test in enumerate(test_folds):
        mask = np.ones(n, dtype=bool)
        mask[test] = False
        trainval = np.nonzero(mask)[0]
        order = shuffled(trainval.size, seed)
        n_train = int(trainval.size * 0.9)
        out[f"fold{k}_train"] = trainval[order[:n_train]]
        out[f"fold{k}_val"] = trainval[order[n_train:]]
        out[f"fold{k}_test"] = np.sort(test)
    return out


def _task_of(src: Path, subset: str | None) -> str:
    if subset:
        t = subset.removeprefix("matbench_")
    else:
        m = re.match(r"matbench_(\w+?)\.json(\.gz)?$", src.name)
        if not m:
            raise InputError("cannot tell the MatBench task from the file name; pass --subset TASK", path=src, field="subset")
        t = m.group(1)
    if t in _COMPOSITION_TASKS:
        raise InputError(f"matbench_{t} is a composition-only task (no structures); not supported", path=src, field="subset")
    if t not in TASKS:
        raise InputError(f"unknown MatBench task '{t}' (known: {', '.join(TASKS)})", path=src, field="subset")
    return t


def _resolve(src: Path, subset: str | None) -> Path:
    if src.is_file():
        return src
    if subset:
        t = subset.removeprefix("matbench_")
        for name in (f"matbench_{t}.json.gz", f"matbench_{t}.json"):
            if (src / name).is_file():
                return src / name
        raise InputError(f"no matbench_{t}.json.gz in folder", path=src)
    files = sorted(src.glob("matbench_*.json*"))
    if len(files) != 1:
        raise InputError(f"folder holds {len(files)} matbench_*.json.gz files; pass --subset TASK", path=src, field="subset")
    return files[0]


def _open_text(path: Path):
    """A text stream of the (gzipped or plain) JSON file."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8")


def convert(source, out: Path, *, dataset: str = "matbench", subset: str | None = None, fold: int | None = None,
            seed: int | None = None, limit: int | None = None) -> Path:
    src = source_path(source, what="matbench_<task>.json.gz file")
    path = _resolve(src, subset)
    task = _task_of(path, subset)
    target, unit, _, classification = TASKS[task]
    if fold is not None and not 0 <= fold < N_FOLDS:
        raise InputError(f"fold {fold} outside 0..{N_FOLDS - 1}", field="fold")
    split_seed = SPLIT_SEED if seed is None else seed
    values: list[float] = []
    state = {"cols": None, "index": None}

    def add_rows(w, rows):
        cols = state["cols"]
        cs, ct = cols.index("structure"), cols.index(target)
        index = state["index"] or []
        for i, row in enumerate(rows):
            if limit is not None and i >= limit:
                continue  # the rest of the list is still read (and checked) by the stream
            label = index[i] if i < len(index) else i
            where = f"data[{i}] ({label})"
            if not isinstance(row, list) or len(row) != len(cols):
                raise InputError(f"{where}: expected a row of {len(cols)} values", path=path, field="data")
            y = row[ct]
            if classification and isinstance(y, bool):
                y = float(y)
            if isinstance(y, bool) or not isinstance(y, (int, float)) or not np.isfinite(y):
                raise InputError(f"{where}: target {y!r} is not a finite number", path=path, field=target)
            z, pos, cell, pbc = parse_structure(row[cs], path=path, where=where)
            w.add(z, pos, cell=cell, pbc=pbc, targets=[float(y)], cls=formula(z, reduced=True), sid=i, where=where)
            values.append(float(y))

    def check_columns(cols):
        if not isinstance(cols, list) or "structure" not in cols or target not in cols:
            raise InputError(f"columns {cols!r} lack 'structure' and '{target}'", path=path, field="columns")
        return cols

    with StoreWriter(
        out, dataset=dataset, source=path, reader=NAME, reader_version=VERSION, level_of_theory=LEVEL_OF_THEORY[task],
        target_names=[target], target_units={target: unit}, has_sid=True,
        extra={"task": f"matbench_{task}", "target": target, "unit": unit,
               "folds": f"{'StratifiedKFold' if classification else 'KFold'}(n_splits=5, shuffle=True, random_state={FOLD_SEED})",
               "split": f"per fold: train+val shuffled with RandomState({split_seed}), 90/10 train/val (JMP)",
               "class": "reduced Hill formula", "sid": "row number in the file (index label mb-<task>-<sid+1>)"},
    ) as w:
        try:
            fh = _open_text(path)
        except OSError as exc:
            raise InputError(f"cannot open ({exc})", path=path) from None
        with fh:
            st = JsonStream(fh, path)
            seen = set()
            for key in st.keys():
                seen.add(key)
                if key == "columns":
                    state["cols"] = check_columns(st.value())
                elif key == "index":
                    state["index"] = st.value()
                elif key == "data":
                    if state["cols"] is None:  # not pandas' key order: the rows must wait for the columns
                        state["rows"] = list(st.items())
                    else:
                        add_rows(w, st.items())
                else:
                    st.value()
            st.end()
        for key in ("columns", "data"):
            if key not in seen:
                raise InputError("missing key", path=path, field=key)
        if "rows" in state:
            add_rows(w, state["rows"])
        n = w.n_structures
        if n == 0:
            raise InputError("empty dataset: no rows in 'data'", path=path, field="data")
        if n < N_FOLDS:
            raise InputError(f"{n} rows are too few for {N_FOLDS} folds", path=path, field="data")
        tests = stratified_kfold_test_indices(values) if classification else kfold_test_indices(n)
        splits = fold_splits(n, tests, split_seed)
        if fold is not None:
            for part in ("train", "val", "test"):
                splits[part] = splits[f"fold{fold}_{part}"]
        for name, idx in splits.items():
            w.set_split(name, idx)
    return out
