"""Cost of reading pickles safely: atomsift.safeload against the unrestricted readers it replaces.

(a) OC20 LMDB values: ``pickle.dumps(torch_geometric Data)`` of an adslab-sized structure
    (``--atoms`` atoms: pos, atomic_numbers, cell, y, force, tags, fixed, sid, fid, natoms, as the
    released S2EF LMDBs), read by ``safeload.loads`` + ``oc.data_fields`` (numpy tensors, every
    opcode checked, pure-Python pickle machine) vs ``pickle.loads`` (C unpickler, torch tensors
    through torch's own ``_load_from_bytes``, i.e. what OCP/JMP do and what can run code).
(b) Checkpoints: ``safeload.load_torch`` vs ``torch.load(weights_only=True)`` on a
    ``--mb``-MB state dict (zip records read with their CRC checked).

Each timing is the best of ``--rounds`` interleaved rounds, so machine load hits both alike.

    python bench/safeload.py                 # ~20 s
    python bench/safeload.py --n 20000 --mb 500
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path


def _data(n_atoms: int, seed: int):
    import torch
    from torch_geometric.data import Data

    g = torch.Generator().manual_seed(seed)
    return Data(pos=torch.rand(n_atoms, 3, generator=g) * 10, atomic_numbers=torch.randint(1, 80, (n_atoms,), generator=g).float(),
                cell=torch.eye(3)[None] * 10, y=float(seed), force=torch.randn(n_atoms, 3, generator=g),
                tags=torch.randint(0, 3, (n_atoms,), generator=g), fixed=torch.zeros(n_atoms), sid=torch.tensor([seed]),
                fid=torch.tensor([0]), natoms=n_atoms)


def _best(fn, items, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, time.perf_counter() - t)
    return best / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="LMDB values to read per round")
    ap.add_argument("--atoms", type=int, default=80)
    ap.add_argument("--mb", type=float, default=100.0, help="checkpoint size (MB of float32 tensors)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    from atomsift import safeload
    from atomsift.data.readers.oc import data_fields

    values = [pickle.dumps(_data(args.atoms, i)) for i in range(args.n)]
    naive = _best(pickle.loads, values, args.rounds)
    safe = _best(lambda b: data_fields(safeload.loads(b, stand_ins=("torch_geometric",))), values, args.rounds)
    print(f"LMDB value ({args.atoms} atoms, {len(values[0])} bytes): pickle.loads {naive * 1e6:.0f} us, "
          f"safeload {safe * 1e6:.0f} us  (x{safe / naive:.2f}; OC20 S2EF 2M: {2e6 * safe / 60:.0f} min one core)")

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "ckpt.pt"
        n = int(args.mb * 2**20 / 4)
        sd = {f"layer{i}.weight": torch.randn(n // 64) for i in range(64)}
        torch.save({"state_dict": sd, "epoch": 1}, p)
        t_torch = _best(lambda q: torch.load(q, map_location="cpu", weights_only=True), [p], args.rounds)
        t_safe = _best(safeload.load_torch, [p], args.rounds)
        t_check = _best(safeload.check_torch, [p], args.rounds)
        print(f"checkpoint ({p.stat().st_size / 2**20:.0f} MB): torch.load(weights_only=True) {t_torch:.3f} s, "
              f"load_torch {t_safe:.3f} s (x{t_safe / t_torch:.2f}), check_torch {t_check * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
