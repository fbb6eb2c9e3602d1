"""CSI between a dataset and its randomly rotated copy: what the l > 0 EquiformerV2 features do.

The paper's representation keeps all 25 spherical-harmonic coefficients per channel (PAPER.md
§2.1); the l > 0 ones rotate with the structure, so the feature distribution of a dataset
depends on how its structures happen to be oriented. Measured here on real QM9 molecules:

* A: ``--n`` molecules; B: ``--n`` other molecules of the same split (the sampling floor);
  R: the molecules of A, each turned by its own random rotation about its centroid;
* CSI(A, R) and CSI(A, B) on the flat (per-atom) features, for the full 3200-D representation,
  its l = 0 block (128-D, invariant up to the S2 grid) and its l > 0 block; and for GemNet-OC-S
  (invariant by construction) as a control.

    python bench/rotation_csi.py                              # seeded weights (no download)
    python bench/rotation_csi.py --eqv2 eqv2:/path/eq2_31M_ec4_allmd.pt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _molecules(args):
    import numpy as np
    from ase import Atoms
    from scipy.spatial.transform import Rotation

    from atomsift.data.store import Store

    p = Path(args.qm9)
    if not (p / "manifest.json").exists():
        from atomsift.data.readers import qm9

        qm9.convert(None, p, limit=5000)
    st = Store(p)
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(st), size=2 * args.n, replace=False)
    mols = [Atoms(numbers=st.record(int(i)).numbers, positions=st.record(int(i)).positions) for i in idx]
    a, b = mols[: args.n], mols[args.n :]
    rots = Rotation.random(args.n, random_state=args.seed)
    r = []
    for m, rot in zip(a, rots):
        c = m.positions.mean(axis=0)
        r.append(Atoms(numbers=m.numbers, positions=(m.positions - c) @ rot.as_matrix().T + c))
    return {"A": a, "B": b, "R": r}


def _features(ex, mols, batch_size: int, dataset: str):
    import numpy as np
    import torch

    from atomsift.data.batch import from_atoms

    out = []
    with torch.inference_mode():
        for s in range(0, len(mols), batch_size):
            b = from_atoms(mols[s : s + batch_size])
            b.dataset = dataset
            out.append(ex(b).double().numpy())
    return np.concatenate(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qm9", default="/tmp/qm9-bench", help="QM9 store (5000 molecules from qm9pack if absent)")
    ap.add_argument("--n", type=int, default=200, help="molecules per set")
    ap.add_argument("--eqv2", default="eqv2:random-31m-0", help="EquiformerV2 extractor spec")
    ap.add_argument("--control", default="random-small-0", help="invariant extractor spec (GemNet-OC-S)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from atomsift.csi.frechet import frechet_distance
    from atomsift.csi.moments import Moments
    from atomsift.models import load_extractor

    torch.set_num_threads(args.threads)
    sets = _molecules(args)
    rows = []
    for spec in (args.eqv2, args.control):
        ex = load_extractor(spec)
        t0 = time.perf_counter()
        feats = {k: _features(ex, v, args.batch_size, "qm9") for k, v in sets.items()}
        seconds = time.perf_counter() - t0
        blocks = {"all": slice(None)}
        if spec.startswith("eqv2:"):
            c = ex.model.config.sphere_channels
            blocks = {"all": slice(None), "l=0": slice(0, c), "l>0": slice(c, None)}
        for label, sl in blocks.items():
            m = {k: Moments.of(v[:, sl]) for k, v in feats.items()}
            d = lambda x, y: frechet_distance(m[x].mean, m[x].cov, m[y].mean, m[y].cov)  # noqa: E731
            rows.append({"extractor": spec, "block": label, "dim": int(feats["A"][:, sl].shape[1]),
                         "csi_A_rotatedA": d("A", "R"), "csi_A_B": d("A", "B"), "seconds": round(seconds, 1)})
    for r in rows:
        r["ratio"] = r["csi_A_rotatedA"] / r["csi_A_B"]
    if args.json:
        print(json.dumps({"n": args.n, "atoms_A": sum(len(m) for m in sets["A"]), "rows": rows}, indent=2))
        return 0
    print(f"QM9, {args.n} molecules per set ({sum(len(m) for m in sets['A'])} atoms in A), flat per-atom features")
    print(f"{'extractor':<22} {'block':<5} {'dim':>5} {'CSI(A, rot A)':>14} {'CSI(A, B)':>11} {'ratio':>8}")
    for r in rows:
        print(f"{r['extractor']:<22} {r['block']:<5} {r['dim']:>5} {r['csi_A_rotatedA']:>14.4g} {r['csi_A_B']:>11.4g} {r['ratio']:>8.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
