"""Dataset selection: rank candidate upstream datasets by CSI to a downstream task, and the CSI table.

Upstream moments are computed once (``atomsift moments``) and reused for every downstream task;
each (upstream, downstream) value is then one Fréchet distance between two small files.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atomsift.csi.estimate import CSIEstimate, estimate, lowest
from atomsift.csi.moments import Moments, load_moments, load_sidecar, sidecar_path
from atomsift.errors import InputError
from atomsift.fsio import write_text
from atomsift.safeio import read_text

TABLE_COLUMNS = ("extractor", "sampling", "agg", "upstream", "downstream", "csi", "seed",
                 "csi_corrected", "csi_low", "csi_high", "csi_se", "blocks_up", "blocks_down")
# the estimate's columns (docs/csi.md): empty in tables written before they existed
ESTIMATE_COLUMNS = ("csi_corrected", "csi_low", "csi_high", "csi_se")


@dataclass
class Candidate:
    """One moments file and what its sidecar says about it."""

    name: str
    path: Path
    moments: Moments
    meta: dict

    @property
    def sha256(self) -> str | None:
        return self.meta.get("extractor_sha256")


def parse_named(items, what: str = "--upstream") -> list[tuple[str, Path]]:
    """``NAME=FILE`` strings -> (name, path); a bare FILE is named by its sidecar's dataset."""
    out = []
    for item in items or []:
        if "=" in item:
            name, path = item.split("=", 1)
            if not name:
                raise InputError(f"empty name in '{item}' (expected NAME=FILE)", field=what)
        else:
            path = item
            name = load_sidecar(path).get("dataset") or Path(path).stem
        out.append((name, Path(path)))
    return out


def load_candidates(named: list[tuple[str, Path]], upstream_dir: str | Path | None = None) -> list[Candidate]:
    """Load named moments files plus every ``*.npz`` with a sidecar in ``upstream_dir``."""
    pairs = list(named)
    if upstream_dir is not None:
        d = Path(upstream_dir)
        if not d.is_dir():
            raise InputError("upstream directory does not exist", path=d)
        for p in sorted(d.glob("*.npz")):
            if sidecar_path(p).exists():
                meta = load_sidecar(p)
                pairs.append((str(meta.get("dataset") or p.stem), p))
    seen: dict[str, Path] = {}
    cands = []
    for name, path in pairs:
        if name in seen:
            raise InputError(f"two upstream moments files are named '{name}' ({seen[name]} and {path}); name them NAME=FILE", path=path)
        seen[name] = path
        m, meta = load_moments(path)
        cands.append(Candidate(name, path, m, meta))
    return cands


UPSTREAM_FAMILIES = ("ani1x", "transition1x", "oc20", "oc22")
DEFAULT_MOMENTS_DIR = Path("results") / "moments"


def default_candidates(root: str | Path = DEFAULT_MOMENTS_DIR, extractor: str | None = None) -> list[tuple[str, Path]]:
    """The upstream moments a DAG run left under ``root``: the paper's main setting (class-balanced
    sampling, flat aggregation) of every upstream family, from one extractor.

    With several extractors present, ``extractor`` (a spec as recorded in the sidecars) picks one;
    without it the choice is an error listing them, never a silent pick.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("no upstream moments given (--upstream NAME=M.npz or --upstream-dir DIR) and the default "
                         "directory does not exist: run the DAG (snakemake) or `atomsift moments` first", path=root)
    groups: dict[str, list[tuple[str, Path]]] = {}
    for p in sorted(root.rglob("*.npz")):
        if not sidecar_path(p).exists():
            continue
        meta = load_sidecar(p)
        if meta.get("sampling") != "balanced" or meta.get("aggregation") != "flat":
            continue
        if meta.get("dataset") not in UPSTREAM_FAMILIES:
            continue
        groups.setdefault(str(meta.get("extractor")), []).append((str(meta["dataset"]), p))
    if extractor is not None:
        groups = {k: v for k, v in groups.items() if k == extractor}
    if not groups:
        raise InputError("no class-balanced, flat upstream moments found" + (f" for extractor {extractor}" if extractor else ""), path=root)
    if len(groups) > 1:
        raise InputError(f"upstream moments of several extractors ({', '.join(sorted(groups))}); pick one with --extractor", path=root)
    return next(iter(groups.values()))


def check_compatible(cands: list[Candidate], what: str = "upstream") -> None:
    """All moments must come from one extractor (sha256), one aggregation and one dimension."""
    if not cands:
        return
    ref = cands[0]
    for c in cands[1:]:
        if c.moments.dim != ref.moments.dim:
            raise InputError(f"feature dimension {c.moments.dim} differs from {ref.path} ({ref.moments.dim})", path=c.path, field="mean")
        if ref.sha256 and c.sha256 and c.sha256 != ref.sha256:
            raise InputError(
                f"extractor {c.meta.get('extractor')} (sha256 {c.sha256[:12]}) differs from that of {ref.path} "
                f"({ref.meta.get('extractor')}, sha256 {ref.sha256[:12]}); CSI compares features of one extractor",
                path=sidecar_path(c.path), field="extractor_sha256",
            )
        a, b = c.meta.get("aggregation"), ref.meta.get("aggregation")
        if a and b and a != b:
            raise InputError(f"aggregation '{a}' differs from '{b}' of {ref.path}", path=sidecar_path(c.path), field="aggregation")


def csi(a: Candidate, b: Candidate) -> CSIEstimate:
    check_compatible([a, b])
    return estimate(a.moments, b.moments)


def rank(downstream: Moments, cands: list[Candidate]) -> list[dict]:
    """Upstreams by ascending (corrected) CSI to ``downstream``, each with its interval."""
    rows = []
    for c in cands:
        if c.moments.dim != downstream.dim:
            raise InputError(f"feature dimension {c.moments.dim} differs from the downstream's {downstream.dim}", path=c.path, field="mean")
        e = estimate(c.moments, downstream)
        rows.append({"upstream": c.name, **e.as_dict(), "_estimate": e})
    rows.sort(key=lambda r: r["_estimate"].best)
    best, tied = lowest({r["upstream"]: r["_estimate"] for r in rows})
    for r in rows:
        r["tied_with_lowest"] = r["upstream"] in tied
    return rows


def _show(r: dict) -> str:
    e = r["_estimate"]
    if not e.has_interval:
        return f"{e.value:.4g}"
    return f"{e.corrected:.4g} [{e.low:.4g}, {e.high:.4g}]"


def recommendation(downstream: str, ranking: list[dict]) -> str:
    """One sentence: the lowest-CSI upstream, or a tie when the intervals of the lowest and others
    overlap (then CSI does not choose among them)."""
    best = ranking[0]
    if len(ranking) == 1:
        return f"pretrain on {best['upstream']} (CSI {_show(best)} to {downstream}; the only candidate)"
    tied = [r for r in ranking if r.get("tied_with_lowest")]
    level = f"{round(100 * best['_estimate'].level)}%"
    if len(tied) > 1:
        names = ", ".join(r["upstream"] for r in tied)
        values = "; ".join(r["upstream"] + " " + _show(r) for r in tied)
        return (f"tie between {names}: their CSI {level} intervals to {downstream} overlap ({values}), so CSI "
                "does not choose among them; pretrain on any of them, or compute moments of more structures to separate them")
    second = ranking[1]
    how = "lowest CSI" if best["_estimate"].has_interval else "lowest CSI (no interval: moments files without blocks)"
    return (f"pretrain on {best['upstream']}: {how} to {downstream} ({_show(best)}; "
            f"next {second['upstream']} {_show(second)})")


# ----------------------------------------------------------------------------------- downstream data


def read_data(data: str | Path, n: int, seed: int, *, split: str = "train", min_atoms: int = 4):
    """A downstream sample: (name, dataset family or None, iterator factory of PyG Batches, n_structures).

    ``data`` is a store directory (its ``split``, else all structures) or any file ``ase.io.read``
    understands (all frames). At most ``n`` structures with at least ``min_atoms`` atoms are taken
    as a seeded random subset.
    """
    from atomsift.csi.sampling import random_sample

    p = Path(data)
    if not p.exists():
        raise InputError("downstream data does not exist", path=p)
    if p.is_dir():
        from atomsift.csi.moments import store_batches
        from atomsift.csi.sampling import sample_store
        from atomsift.data.store import Store

        store = Store(p)
        sp = split if store.split_names() else None
        idx = sample_store(store, "random", n, seed, split=sp, min_atoms=min_atoms)
        return store.dataset, store.dataset, (lambda bs: store_batches(store, idx, bs)), int(idx.size)
    from atomsift.data.readers.ase_reader import read_frames

    frames = read_frames(p, what="downstream data")  # the structure checks every verb shares (predict, prepare ase)
    keep = [i for i, a in enumerate(frames) if len(a) >= min_atoms]
    if not keep:
        raise InputError(f"no structure with at least {min_atoms} atoms", path=p)
    sel = [frames[keep[i]] for i in random_sample(len(keep), n, seed)]

    def batches(bs: int):
        from atomsift.data.batch import from_atoms

        for s in range(0, len(sel), bs):
            yield from_atoms(sel[s:s + bs])

    return p.stem, None, batches, len(sel)


# ----------------------------------------------------------------------------------------- the table


def table_rows(upstreams: list[Candidate], downstreams: list[Candidate]) -> list[dict]:
    """One row per (upstream, downstream) pair, with the extractor, sampling and aggregation."""
    check_compatible(upstreams + downstreams)
    rows = []
    for d in downstreams:
        for u in upstreams:
            e = estimate(u.moments, d.moments)
            rows.append({
                "extractor": u.meta.get("extractor_name") or u.meta.get("extractor") or "",
                "sampling": u.meta.get("sampling", ""),
                "agg": u.meta.get("aggregation", ""),
                "upstream": u.name,
                "downstream": d.name,
                "csi": e.value,
                "seed": u.meta.get("seed", ""),
                "csi_corrected": e.corrected,
                "csi_low": e.low,
                "csi_high": e.high,
                "csi_se": e.se,
                "blocks_up": e.blocks[0],
                "blocks_down": e.blocks[1],
            })
    return rows


def write_csv(path: str | Path, rows: list[dict], columns=TABLE_COLUMNS) -> Path:
    """Write rows atomically (temporary sibling, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(v) for k, v in r.items()})
    write_text(path, buf.getvalue())
    return path


def _cell(v):
    """A CSV cell: floats exactly (repr), NaN as an empty cell."""
    if isinstance(v, float):  # np.float64 too
        return repr(float(v)) if np.isfinite(v) else ""
    return v


def read_table(path: str | Path) -> list[dict]:
    """Read a CSI table; ``csi`` and the estimate's columns (NaN when empty or absent: tables of
    an older atomsift) as floats. Raises InputError naming the file and column."""
    p = Path(path)
    if not p.is_file():
        raise InputError("CSI table does not exist", path=p)
    with io.StringIO(read_text(p), newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        for c in ("upstream", "downstream", "csi"):
            if c not in cols:
                raise InputError(f"missing column (has: {', '.join(cols) or 'none'})", path=p, field=c)
        rows = []
        for i, r in enumerate(reader, start=2):
            try:
                r["csi"] = float(r["csi"])
            except (TypeError, ValueError):
                raise InputError(f"line {i}: not a number: {r['csi']!r}", path=p, field="csi") from None
            if not np.isfinite(r["csi"]):
                raise InputError(f"line {i}: non-finite value", path=p, field="csi")
            for c in ESTIMATE_COLUMNS:  # optional: NaN when absent or empty
                text = (r.get(c) or "").strip()
                try:
                    r[c] = float(text) if text else float("nan")
                except ValueError:
                    raise InputError(f"line {i}: not a number: {text!r}", path=p, field=c) from None
            rows.append(r)
    if not rows:
        raise InputError("CSI table has no rows", path=p)
    return rows
