"""Embedded mini-universe: small analogs of the paper's datasets labelled by real physics.

``atomsift generate NAME --out DIR`` writes one canonical store per analog (docs/mini-universe.md):

==================  ============  ===========================================  =============
name                family        structures                                    labels
==================  ============  ===========================================  =============
ani1x-mini          ani1x         displaced QM9 (train-split) molecules         GFN2-xTB
transition1x-mini   transition1x  H-transfer / bond-dissociation paths          GFN2-xTB
oc20-mini           oc20          adsorbates on fcc(111)/(100) metal slabs      EMT
oc22-mini           oc22          adsorbates on rock-salt oxide (100) slabs     GFN1-xTB (PBC)
rmd17-mini          rmd17         500 K Langevin MD of aspirin (or ethanol...)  GFN2-xTB
md22-mini           md22          500 K Langevin MD of Ac-Ala3-NHMe             GFN2-xTB
spice-mini          spice         amino acids with 4 waters, 300 K MD frames    GFN2-xTB
==================  ============  ===========================================  =============

The store's ``dataset`` is the family it mirrors, so graph settings and heads key on it; the
reader name is the generator's. :data:`DEFAULT_SIZES` are the embedded defaults (the Snakemake
config refers to them); generating all seven at these sizes takes under 5 minutes on 2 cores.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

# name -> (module, function, dataset family)
GENERATORS = {
    "ani1x-mini": ("atomsift.data.mini.organic", "generate_ani1x", "ani1x"),
    "transition1x-mini": ("atomsift.data.mini.organic", "generate_transition1x", "transition1x"),
    "oc20-mini": ("atomsift.data.mini.surfaces", "generate_oc20", "oc20"),
    "oc22-mini": ("atomsift.data.mini.surfaces", "generate_oc22", "oc22"),
    "rmd17-mini": ("atomsift.data.mini.md", "generate_rmd17", "rmd17"),
    "md22-mini": ("atomsift.data.mini.md", "generate_md22", "md22"),
    "spice-mini": ("atomsift.data.mini.md", "generate_spice", "spice"),
}

# Embedded default sizes (structures), chosen so that all seven take <= 5 minutes on 2 cores
# (measured in docs/mini-universe.md). Upstreams: a few thousand; oc20 2000 because each frame is
# up to 8 EMT relaxation steps; oc22 1000 because periodic GFN1-xTB costs ~0.15 s per slab.
# Downstreams: ~1000; md22 400 because Ac-Ala3-NHMe costs ~25-40 ms per xtb MD step.
DEFAULT_SIZES = {
    "ani1x-mini": 3000,
    "transition1x-mini": 3000,
    "oc20-mini": 2000,
    "oc22-mini": 1000,
    "rmd17-mini": 1200,
    "md22-mini": 400,
    "spice-mini": 1000,
}

DEFAULT_SEED = 0


def family(name: str) -> str:
    """The dataset family a generator mirrors (the store's ``dataset``)."""
    return _lookup(name)[2]


def _lookup(name: str):
    from atomsift.errors import InputError

    if name not in GENERATORS:
        raise InputError(f"unknown generator '{name}' (known: {', '.join(GENERATORS)})", field="NAME")
    return GENERATORS[name]


def generate(name: str, out: str | Path, *, n: int | None = None, seed: int = DEFAULT_SEED, workers: int | None = None,
             qm9: str | Path | None = None, pool=None, **options) -> dict:
    """Generate the analog ``name`` into the store ``out``; return a summary.

    ``options`` are generator-specific (``metals`` for oc20-mini, ``oxides`` for oc22-mini,
    ``molecule`` for rmd17-mini, ``amino_acids`` for spice-mini). The summary holds the store path,
    the number of structures, the wall time and the skip record written to the manifest. An open
    :class:`~atomsift.data.mini.common.Pool` may be passed to reuse its workers across calls.
    """
    from atomsift.data.mini.common import Pool, check_n, default_workers
    from atomsift.errors import InputError, check_options

    mod_name, func_name, _ = _lookup(name)
    n = DEFAULT_SIZES[name] if n is None else check_n(n, name)
    if pool is not None:
        workers = pool.workers
    elif workers is None:
        workers = default_workers()
    if int(workers) < 1:
        raise InputError(f"--workers must be at least 1, got {workers}", field="workers")
    func = getattr(importlib.import_module(mod_name), func_name)
    if qm9 is not None:
        options["qm9"] = qm9
    check_options(func, options, name, fixed=("n", "seed", "pool"), unlisted=("md",))  # md: MD overrides (tests)
    t0 = time.perf_counter()
    # generators validate their options before the first task; workers are spawned on first use
    if pool is not None:
        path, skips = func(Path(out), n=n, seed=int(seed), pool=pool, **options)
    else:
        with Pool(int(workers)) as own:
            path, skips = func(Path(out), n=n, seed=int(seed), pool=own, **options)
    return {"generator": name, "path": str(path), "n_structures": n, "seed": int(seed), "workers": int(workers),
            "seconds": round(time.perf_counter() - t0, 2), "skips": skips}
