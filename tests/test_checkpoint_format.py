"""Checkpoint format versions (issue 13): files written before GemNet-OC computed JMP's function
(format 1) are converted on load where that is exact, refused in one line where it is not.

``tests/data/format1_small.pt`` was written by atomsift at commit bd09f18 (format 1) together with
what that version computed on a rattled ethanol (``format1_small_outputs.npz``, float64): the
converted model must compute the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from atomsift.data.batch import from_atoms
from atomsift.data.graphs import GraphSettings
from atomsift.errors import InputError
from atomsift.models.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from atomsift.models.heads import HeadSpec
from atomsift.models.model import build_model

DATA = Path(__file__).parent / "data"


def test_format1_is_converted_exactly():
    ref = np.load(DATA / "format1_small_outputs.npz")
    model, meta = load_checkpoint(DATA / "format1_small.pt")
    assert meta["converted_from_version"] == 1
    model = model.double()
    # format 1 also built its radial-basis offsets in float32 (now float64); with the old offsets
    # the converted weights must reproduce the old function to rounding
    from atomsift.models.bases import RadialBasis

    for mod in model.modules():
        if isinstance(mod, RadialBasis):
            mod.offset.copy_(torch.linspace(0, 1, mod.num_radial, dtype=torch.float32).double())
    a = Atoms(numbers=ref["numbers"], positions=ref["pos"])
    a.set_tags([2] * len(a))
    b = from_atoms([a], dtype=torch.float64)
    g = GraphSettings(8.0, 30, False)
    with torch.no_grad():
        np.testing.assert_allclose(model.backbone_features(b, g).numpy(), ref["features"], rtol=1e-10, atol=1e-12)
        e = model(b, "e", g)
    np.testing.assert_allclose(e["energy"].numpy(), ref["energy"], rtol=1e-10)
    np.testing.assert_allclose(e["forces"].numpy(), ref["forces"], rtol=1e-10, atol=1e-12)
    gr = model(b, "g", g)
    np.testing.assert_allclose(gr["forces"].detach().numpy(), ref["forces_grad"], rtol=1e-9, atol=1e-12)


def _rewrite(path: Path, out: Path, **changes) -> Path:
    obj = torch.load(path, weights_only=True)
    obj.update(changes)
    torch.save(obj, out)
    return out


def test_format1_with_equal_atom_and_edge_widths_is_refused(tmp_path):
    m = build_model("tiny", {"g": HeadSpec("energy_grad_forces")}, seed=0)
    p = save_checkpoint(tmp_path / "tiny.pt", m)
    old = _rewrite(p, tmp_path / "old_tiny.pt", version=1)
    with pytest.raises(InputError) as e:
        load_checkpoint(old)
    msg = str(e.value)
    assert "\n" not in msg and "old_tiny.pt" in msg and "field 'version'" in msg
    assert "checkpoint format 1 with emb_size_edge == emb_size_atom (e.g. size tiny) cannot be converted" in msg


@pytest.mark.parametrize("version, words", [(FORMAT_VERSION + 1, "is newer than this atomsift reads"), ("2", "unknown checkpoint format version")])
def test_unknown_versions_are_refused(tmp_path, version, words):
    m = build_model("tiny", {"g": HeadSpec("energy_grad_forces")}, seed=0)
    p = _rewrite(save_checkpoint(tmp_path / "m.pt", m), tmp_path / "v.pt", version=version)
    with pytest.raises(InputError, match=words):
        load_checkpoint(p)


def test_current_format_round_trips(tmp_path):
    m = build_model("tiny", {"g": HeadSpec("energy_grad_forces")}, seed=1)
    m.graph_rule = "jmp"
    p = save_checkpoint(tmp_path / "m.pt", m)
    assert torch.load(p, weights_only=True)["version"] == FORMAT_VERSION == 2
    back, meta = load_checkpoint(p)
    assert "converted_from_version" not in meta and back.graph_rule == "jmp"
    for k, v in m.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    assert load_checkpoint(p, graph_rule="invariant")[0].graph_rule == "invariant"
