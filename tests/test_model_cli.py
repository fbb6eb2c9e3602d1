"""atomsift model-info and predict."""

from __future__ import annotations

import json

import numpy as np

from atomsift.cli import main


def test_model_info_small_counts(capsys):
    assert main(["model-info", "--size", "small", "--tasks", "oc20,oc22,ani1x,transition1x", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)["parameters"]
    assert p == {"embedding": 30720, "backbone": 38842368, "heads": 5258240, "total": 44131328}
    assert main(["model-info", "--size", "small", "--no-direct-forces", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"]["total"] == 28608512


def test_predict_random_tiny_is_seeded_and_rotation_equivariant(tmp_path, capsys):
    from ase import Atoms
    from ase.build import bulk
    import ase.io

    mol = Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.6]])
    rot = mol.copy()
    rot.rotate(37, (1, 2, 3), center=(0, 0, 0))
    cu = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    cu.rattle(0.05, seed=1)
    f = tmp_path / "in.extxyz"
    ase.io.write(f, [mol, rot, cu])
    assert main(["predict", str(f), "--size", "tiny", "--seed", "3", "--json"]) == 0
    a = json.loads(capsys.readouterr().out)["frames"]
    assert main(["predict", str(f), "--size", "tiny", "--seed", "3", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)["frames"]
    assert a == b and len(a) == 3 and len(a[2]["forces"]) == 2
    assert abs(a[0]["energy"] - a[1]["energy"]) < 1e-5 * max(1.0, abs(a[0]["energy"]))
    R = rot.positions.T @ np.linalg.pinv(mol.positions.T)  # the rotation applied
    np.testing.assert_allclose(np.asarray(a[0]["forces"]) @ R.T, a[1]["forces"], atol=1e-5)
    # periodic crystal: forces sum to zero (translation invariance)
    np.testing.assert_allclose(np.sum(a[2]["forces"], axis=0), 0, atol=1e-5)


def test_predict_bad_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.xyz"
    bad.write_text("3\nnot an xyz\nH 0 0\n")
    assert main(["predict", str(bad), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
