"""The CLI contract: JSON keys of info/show, exit code 2 with one stderr line, no partial outputs."""

import json
import os
import signal
import subprocess
import sys
import time

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

import atomsift

INFO_KEYS = {"n_structures", "n_atoms", "elements", "splits", "n_classes", "fields", "units"}
SHOW_KEYS = {"numbers", "positions", "cell", "pbc", "energy", "forces", "targets", "class"}


def run(*args, check_rc=None):
    """``python -m atomsift ARGS`` in a fresh process: (rc, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "atomsift", *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    if check_rc is not None:
        assert p.returncode == check_rc, p.stderr
    return p.returncode, p.stdout, p.stderr


def assert_one_line_error(rc, err, *needles):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def small_qm9(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "qm9"
    run("prepare", "qm9", "--out", out, "--limit", 30, check_rc=0)
    return out


@pytest.fixture
def frames(tmp_path):
    """An extxyz of 4 water molecules with energy and forces."""
    images = []
    for i in range(4):
        m = molecule("H2O")
        m.rattle(0.01, seed=i)
        m.calc = SinglePointCalculator(m, energy=-14.0 - i, forces=np.full((3, 3), 0.1 * i))
        images.append(m)
    src = tmp_path / "w.extxyz"
    ase.io.write(src, images)
    return src


def test_version():
    rc, out, _ = run("--version", check_rc=0)
    assert out.strip() == f"atomsift {atomsift.__version__}"


def test_help_lists_the_data_verbs():
    _, out, _ = run("--help", check_rc=0)
    for verb in ("prepare", "info", "show"):
        assert verb in out


def test_info_json_keys_and_types(small_qm9):
    _, out, _ = run("info", small_qm9, "--json", check_rc=0)
    info = json.loads(out)
    assert INFO_KEYS <= info.keys()
    assert info["n_structures"] == 30 and isinstance(info["n_atoms"], int)
    assert info["elements"] == sorted(info["elements"]) and all(isinstance(z, int) for z in info["elements"])
    assert sum(info["splits"].values()) == 30 and set(info["splits"]) == {"train", "val", "test"}
    assert info["units"]["energy"] == "eV" and info["units"]["positions"] == "Angstrom"
    assert info["n_classes"] == len(json.loads((small_qm9 / "classes.json").read_text()))


def test_show_json_keys_values_and_text(small_qm9):
    _, out, _ = run("show", small_qm9, 2, "--json", check_rc=0)
    r = json.loads(out)
    assert SHOW_KEYS <= r.keys()
    assert r["numbers"] == [8, 1, 1] and r["class"] == "H2O"  # gdb 3 is water
    assert np.array(r["positions"]).shape == (3, 3) and r["forces"] is None
    assert r["energy"] == r["targets"]["U0"] == pytest.approx(-76.404702 * 27.211386024367243, rel=1e-12)
    _, text, _ = run("show", small_qm9, 2, check_rc=0)
    assert "H2O" in text and "eV" in text


def test_show_ase_store_has_forces(frames, tmp_path):
    out = tmp_path / "s"
    run("prepare", "ase", "--source", frames, "--out", out, check_rc=0)
    _, js, _ = run("show", out, 3, "--json", check_rc=0)
    r = json.loads(js)
    assert r["energy"] == -17.0 and np.allclose(r["forces"], 0.3) and r["class"] == "H2O"
    assert r["pbc"] == [False, False, False] and r["targets"] == {}


def test_prepare_json_prints_the_info(frames, tmp_path):
    _, out, _ = run("prepare", "ase", "--source", frames, "--out", tmp_path / "s", "--json", check_rc=0)
    info = json.loads(out)
    assert INFO_KEYS <= info.keys() and info["n_structures"] == 4 and info["dataset"] == "ase"


# ------------------------------------------------------------------------------- error contract


def _listing(d):
    return sorted(p.name for p in d.iterdir())


def test_missing_source_file(tmp_path):
    missing = tmp_path / "nope.extxyz"
    rc, _, err = run("prepare", "ase", "--source", missing, "--out", tmp_path / "out")
    assert_one_line_error(rc, err, missing, "does not exist")
    assert _listing(tmp_path) == []


def test_missing_qm9_source_dir(tmp_path):
    missing = tmp_path / "release"
    rc, _, err = run("prepare", "qm9", "--source", missing, "--out", tmp_path / "out")
    assert_one_line_error(rc, err, missing, "does not exist")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize(
    "name,content,what",
    [("bad.extxyz", "3\nnot a comment\nH 0 0\n", "cannot read"), ("bad.traj", "garbage" * 50, "cannot read"),
     ("bad.unknownext", "x", "not a file ASE can read")],
)
def test_malformed_ase_input_leaves_no_output(tmp_path, name, content, what):
    src = tmp_path / name
    src.write_text(content)
    out = tmp_path / "deep" / "store"
    rc, _, err = run("prepare", "ase", "--source", src, "--out", out)
    assert_one_line_error(rc, err, src, what)
    assert _listing(tmp_path) == [name]  # no --out dir, no parent, no temporary dir


def test_malformed_qm9_xyz_leaves_no_output(tmp_path, realdata):
    rel = tmp_path / "rel"
    rel.mkdir()
    good = (realdata / "qm9" / "xyz" / "dsgdb9nsd_000001.xyz").read_text()
    (rel / "dsgdb9nsd_000001.xyz").write_text(good)
    bad = rel / "dsgdb9nsd_000002.xyz"
    bad.write_text(good.replace("gdb 1", "gdb 2").replace("-40.47893", "-40.4x7893"))
    rc, _, err = run("prepare", "qm9", "--source", rel, "--out", tmp_path / "q")
    assert_one_line_error(rc, err, bad, "malformed QM9 xyz")
    assert _listing(tmp_path) == ["rel"]


def test_failed_prepare_keeps_the_previous_store(frames, tmp_path):
    out = tmp_path / "s"
    run("prepare", "ase", "--source", frames, "--out", out, check_rc=0)
    before = (out / "manifest.json").read_text()
    bad = tmp_path / "bad.extxyz"
    bad.write_text("2\nenergy=1.0\nH 0 0 0\nH 0 0 nan\n")
    rc, _, err = run("prepare", "ase", "--source", bad, "--out", out)
    assert_one_line_error(rc, err, bad)
    assert (out / "manifest.json").read_text() == before
    assert _listing(tmp_path) == ["bad.extxyz", "s", "w.extxyz"]


def test_unknown_dataset(tmp_path):
    rc, _, err = run("prepare", "nosuchset", "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "unknown dataset 'nosuchset'")
    assert _listing(tmp_path) == []


def test_options_a_reader_or_generator_does_not_take(tmp_path):
    # readers and generators declare their options; any other is refused before work, never ignored
    rc, _, err = run("prepare", "qm9", "--out", tmp_path / "o", "--energy-key", "wb97x")
    assert_one_line_error(rc, err, "field 'energy_key': --energy-key does not apply to dataset 'qm9' "
                                   "(its options: --seed, --limit)")
    rc, _, err = run("generate", "rmd17-mini", "--out", tmp_path / "g", "--metals", "Cu")
    assert_one_line_error(rc, err, "field 'metals': --metals does not apply to rmd17-mini (its options: --molecule)")
    assert _listing(tmp_path) == []


def test_info_and_show_on_non_stores(tmp_path, small_qm9):
    rc, _, err = run("info", tmp_path / "missing", "--json")
    assert_one_line_error(rc, err, tmp_path / "missing", "does not exist")
    rc, _, err = run("info", tmp_path)
    assert_one_line_error(rc, err, tmp_path, "no manifest.json")
    f = tmp_path / "file.txt"
    f.write_text("x")
    rc, _, err = run("show", f, 0)
    assert_one_line_error(rc, err, f, "not a directory")
    rc, _, err = run("show", small_qm9, 30, "--json")
    assert_one_line_error(rc, err, small_qm9, "index 30 out of range")


def test_damaged_store(tmp_path, small_qm9):
    import shutil

    st = tmp_path / "st"
    shutil.copytree(small_qm9, st)
    (st / "manifest.json").write_text("{ not json")
    rc, _, err = run("info", st)
    assert_one_line_error(rc, err, st / "manifest.json", "not valid JSON")
    shutil.copy(small_qm9 / "manifest.json", st / "manifest.json")
    pos = st / "positions.npy"
    pos.write_bytes(pos.read_bytes()[:300])  # truncated
    rc, _, err = run("show", st, 0, "--json")
    assert_one_line_error(rc, err, pos)


def test_debug_shows_the_traceback(tmp_path):
    rc, _, err = run("--debug", "info", tmp_path / "missing")
    assert rc != 0 and "Traceback" in err and "InputError" in err


def test_killed_prepare_leaves_nothing_that_looks_complete(tmp_path):
    out = tmp_path / "qm9"
    p = subprocess.Popen([sys.executable, "-m", "atomsift", "prepare", "qm9", "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(q.name.startswith(".qm9.tmp-") for q in tmp_path.iterdir()):
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not out.exists()
    left = list(tmp_path.iterdir())
    assert all(q.name.startswith(".qm9.tmp-") and not (q / "manifest.json").exists() for q in left)
