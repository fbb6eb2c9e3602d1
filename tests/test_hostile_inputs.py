"""Hostile and broken inputs (issue 12): sizes, readers, half-written outputs, downloads, the
configuration contract and the validators every verb shares.

Each case builds a malformed, truncated, oversized or forged file, runs the verb in a subprocess
(``python -m atomsift ...``) and asserts the CLI's promise: exit code 2, exactly one line on
stderr naming the file (and the field where there is one), nothing published under the output's
name and no temporaries beside it. Downloads run against a threaded HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

import fixtures_molecules as F
from atomsift.csi.moments import Moments, load_moments, save_moments
from atomsift.data.store import StoreWriter
from atomsift.errors import InputError
from atomsift.workflow import grid as G
from atomsift.train import config as TC

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "workflow" / "schemas"


def atomsift(*args, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atomsift", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def refused(res: subprocess.CompletedProcess, *needles) -> str:
    """The one stderr line of a refused command, checked to name each of ``needles``."""
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr[-3000:]
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def message(line: str) -> str:
    """A refusal without the verb and the file: ``field 'x': ...`` (to compare verbs)."""
    return line[line.index("field '"):]


def nothing_left(out: Path) -> None:
    """No output under ``out``'s name and no temporary of it beside it."""
    assert not out.exists(), out
    assert not out.with_name(out.name + ".json").exists()
    if out.parent.is_dir():
        stray = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert not stray, stray


def make_store(path: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    with StoreWriter(path, dataset="ase", reader="test", has_energy=True) as w:
        for i in range(n):
            w.add([8, 1, 1], rng.normal(size=(3, 3)), energy=-1.0 * i, cls=f"c{i % 2}")
        w.set_split("train", range(n - 2))
        w.set_split("val", [n - 2])
        w.set_split("test", [n - 1])
    return path


def write_npy_header(path: Path, shape, dtype="<f8", payload: bytes = b"\0" * 64) -> Path:
    """A .npy whose header claims ``shape`` but which holds only ``payload``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    path.write_bytes(buf.getvalue() + payload)
    return path


def npz_with_forged_member(path: Path, arrays: dict, forged: str, shape) -> Path:
    """An npz of ``arrays`` whose member ``forged`` has a header claiming ``shape``."""
    with zipfile.ZipFile(path, "w") as zf:
        for k, a in arrays.items():
            buf = io.BytesIO()
            if k == forged:
                np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": tuple(shape)})
                buf.write(np.asarray(a, dtype="<f8").tobytes()[:256])
            else:
                np.save(buf, a)
            zf.writestr(f"{k}.npy", buf.getvalue())
    return path


def moments_file(path: Path, mean, cov, n: int = 50, extractor: str = "random-tiny-0") -> Path:
    """A moments file written by hand (any covariance, not only valid ones) with its sidecar."""
    with open(path, "wb") as fh:
        np.savez(fh, n=np.int64(n), mean=np.asarray(mean, dtype=np.float64), cov=np.asarray(cov, dtype=np.float64))
    path.with_name(path.name + ".json").write_text(json.dumps(
        {"extractor": extractor, "dataset": "ani1x", "sampling": "balanced", "aggregation": "flat"}))
    return path


H2O = "3\nProperties=species:S:1:pos:R:3\nO 0 0 0\nH 0 0 0.96\nH 0.93 0 -0.24\n"


# ============================================================================================ sizes


def test_extxyz_claiming_1e12_atoms_fails_in_seconds(tmp_path):
    src = tmp_path / "big.extxyz"
    src.write_text("1000000000000\nProperties=species:S:1:pos:R:3\nH 0 0 0\nH 0 0 0.7\n")
    out = tmp_path / "store"
    t0 = time.perf_counter()
    res = atomsift("prepare", "ase", "--source", src, "--out", out, timeout=5)  # ASE's reader would spin for days
    assert time.perf_counter() - t0 < 5
    refused(res, src, "field 'natoms'", "claims 1000000000000 atoms")
    nothing_left(out)
    refused(atomsift("predict", src, timeout=5), src, "field 'natoms'")


def test_truncated_later_frame_is_caught_before_ase(tmp_path):
    src = tmp_path / "cut.xyz"
    src.write_text(H2O + "5\ncomment\nO 0 0 0\nH 0 0 1\n")
    out = tmp_path / "store"
    refused(atomsift("prepare", "ase", "--source", src, "--out", out), src, "frame 1 (line 6)", "claims 5 atoms")
    nothing_left(out)


def test_npz_member_header_larger_than_the_member(tmp_path):
    arr = F.rmd17_arrays(m=20)
    src = npz_with_forged_member(tmp_path / "rmd17_ethanol.npz", arr, "coords", (10**9, 9, 3))
    out = tmp_path / "store"
    refused(atomsift("prepare", "rmd17", "--source", src, "--out", out), src, "field 'coords'", "header claims shape")
    nothing_left(out)


def test_npz_member_declaring_more_than_deflate_can_hold(tmp_path):
    src = tmp_path / "rmd17_ethanol.npz"
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k, a in F.rmd17_arrays(m=20).items():
            buf = io.BytesIO()
            np.save(buf, a)
            zf.writestr(f"{k}.npy", buf.getvalue())
    data = bytearray(src.read_bytes())
    cd = data.index(b"PK\x01\x02")  # first central-directory entry: patch its uncompressed size
    struct.pack_into("<I", data, cd + 24, 4_000_000_000)
    src.write_bytes(bytes(data))
    refused(atomsift("prepare", "rmd17", "--source", src, "--out", tmp_path / "store"), src, "more than its",
            "compressed bytes can hold")


def test_moments_file_with_a_forged_covariance_header(tmp_path):
    good = moments_file(tmp_path / "good.npz", np.zeros(4), np.eye(4))
    bad = npz_with_forged_member(tmp_path / "bad.npz", {"n": np.int64(5), "mean": np.zeros(4), "cov": np.eye(4)}, "cov",
                                 (10**6, 10**6))
    res = atomsift("csi", good, bad)
    refused(res, bad, "field 'cov'", "header claims shape (1000000, 1000000)")
    assert res.stdout == ""


def test_hdf5_dataset_claiming_more_than_memory(tmp_path):
    """A chunked HDF5 dataset may declare any extent while storing nothing (a 30 kB file here)."""
    src = F.write_spice(tmp_path / "spice.h5")
    with h5py.File(src, "a") as f:
        del f["103147721"]["conformations"]
        f["103147721"].create_dataset("conformations", shape=(10**10, 14, 3), dtype="f4", chunks=(1, 14, 3))
    out = tmp_path / "store"
    refused(atomsift("prepare", "spice", "--source", src, "--out", out), src, "field '103147721/conformations'",
            "dataset claims shape (10000000000, 14, 3) of float32 (1680000000000 bytes), more than this machine's memory")
    nothing_left(out)


@pytest.mark.parametrize("argv, field", [
    (["generate", "rmd17-mini", "--n", str(10**12), "--out", "OUT"], "field 'n'"),
    (["moments", "--store", "STORE", "--extractor", "random-tiny-0", "--n", str(10**12), "--out", "OUT"], "field '--n'"),
    (["coverage", "--store", "STORE", "--n", str(10**12), "--out", "OUT"], "field '--n'"),
])
def test_sample_and_generate_sizes_are_bounded(tmp_path, argv, field):
    store = make_store(tmp_path / "s")
    out = tmp_path / "out"
    res = atomsift(*[{"OUT": out, "STORE": store}.get(a, a) for a in argv])
    refused(res, field, "1000000000000")
    nothing_left(out)


def _damage(store: Path, how: str) -> tuple[Path, str]:
    """Damage ``store`` as ``how`` says; return the file that must be named and a phrase."""
    if how == "empty structure":
        off = np.load(store / "offsets.npy")
        off[3] = off[2]
        np.save(store / "offsets.npy", off)
        return store / "offsets.npy", "structure 2: offsets 6..6 are not increasing"
    if how == "decreasing offsets":
        off = np.load(store / "offsets.npy")
        off[3] = off[2] - 1
        np.save(store / "offsets.npy", off)
        return store / "offsets.npy", "are not increasing"
    if how in ("atomic number 0", "atomic number 200"):
        z = np.load(store / "numbers.npy", mmap_mode="r+")
        z[7] = int(how.split()[-1])
        z.flush()
        return store / "numbers.npy", f"structure 2: {how} outside 1..118"
    if how == "class index":
        ci = np.load(store / "class_index.npy", mmap_mode="r+")
        ci[1] = 99
        ci.flush()
        return store / "class_index.npy", "structure 1: class index 99 outside -1..1"
    if how == "split index":
        np.save(store / "splits" / "val.npy", np.array([60], dtype=np.int64))
        return store / "splits" / "val.npy", "index 60 outside 0..5"
    if how == "split header":
        write_npy_header(store / "splits" / "train.npy", (10**12,), dtype="<i8")
        return store / "splits" / "train.npy", "header claims shape (1000000000000,)"
    if how == "positions dtype":
        np.save(store / "positions.npy", np.zeros((18, 3), dtype=np.float32))
        return store / "positions.npy", "expected dtype float64"
    if how == "classes.json":
        (store / "classes.json").write_bytes(b"\xff\xfe[")
        return store / "classes.json", "not valid JSON"
    if how == "manifest counts":
        m = json.loads((store / "manifest.json").read_text())
        m["counts"]["n_atoms"] = "many"
        (store / "manifest.json").write_text(json.dumps(m))
        return store / "manifest.json", "field 'counts.n_atoms'"
    raise ValueError(how)


@pytest.mark.parametrize("how", ["empty structure", "decreasing offsets", "atomic number 0", "atomic number 200",
                                 "class index", "split index", "split header", "positions dtype", "classes.json",
                                 "manifest counts"])
def test_damaged_store_is_refused_when_opened(tmp_path, how):
    store = make_store(tmp_path / "s")
    named, phrase = _damage(store, how)
    out = tmp_path / "m.npz"
    if how == "positions dtype":  # read when a structure is, not when the store is opened
        verb = ["show", store, 0]
    else:
        verb = ["moments", "--store", store, "--extractor", "random-tiny-0", "--n", 4, "--out", out]
    refused(atomsift(*verb), named, phrase)
    nothing_left(out)


def test_store_validation_is_vectorised_and_cheap(tmp_path):
    """Opening validates a 10^6-atom store by whole-array operations: a check that fails far into the
    arrays is still found (the last structure), which per-record Python would make slow."""
    from atomsift.data.store import Store

    n = 100_000
    with StoreWriter(tmp_path / "big", dataset="ase", reader="test") as w:
        w.add_many(np.tile([8, 1, 1], n), np.random.default_rng(0).normal(size=(3 * n, 3)), natoms=np.full(n, 3))
    z = np.load(tmp_path / "big" / "numbers.npy", mmap_mode="r+")
    z[-1] = 0
    z.flush()
    with pytest.raises(InputError, match=f"structure {n - 1}: atomic number 0 outside 1..118"):
        Store(tmp_path / "big")


# ========================================================================================== readers


def test_spice_units_checked_on_every_group(tmp_path):
    tree = F.spice_tree()
    assert sorted(tree)[-1] == "ALA water"  # h5py lists groups by name: this one comes last
    tree["ALA water"]["dft_total_energy"].attrs["units"] = "kcal/mol"
    src = F.write_h5(tmp_path / "spice.h5", tree)
    out = tmp_path / "store"
    refused(atomsift("prepare", "spice", "--source", src, "--out", out), src, "field 'ALA water/dft_total_energy'",
            "units are 'kcal/mol', expected 'hartree'")
    nothing_left(out)


_EXTRA = {"finetune": ["--pretrained", "none"]}


@pytest.mark.parametrize("verb", ["pretrain", "finetune", "table", "figure", "report"])
def test_run_file_or_spec_that_is_not_utf8(tmp_path, verb):
    run = tmp_path / "run.yaml"
    run.write_bytes(b"task: qm9\nstore: \xff\xfe\n")
    out = tmp_path / "out"
    refused(atomsift(verb, "--config", run, *_EXTRA.get(verb, []), "--out", out), run,
            "not UTF-8 text (byte 0xff at offset 17)")
    nothing_left(out)


def test_tables_and_manifests_that_are_not_utf8(tmp_path):
    csv_ = tmp_path / "csi.csv"
    csv_.write_bytes(b"extractor,sampling,agg,upstream,downstream,csi,seed\ne,balanced,flat,\xff,d,1.0,0\n")
    out = tmp_path / "fig.png"
    refused(atomsift("csi-figure", "--table", csv_, "--out", out), csv_, "not UTF-8 text (byte 0xff at offset 68)")
    nothing_left(out)
    store = make_store(tmp_path / "s")
    (store / "manifest.json").write_bytes(b'{"format": "\xff"}')
    refused(atomsift("info", store), store / "manifest.json", "manifest is not valid JSON (UnicodeDecodeError)")


@pytest.mark.parametrize("verb", ["pretrain", "report"])
def test_invalid_yaml_is_one_line(tmp_path, verb):
    run = tmp_path / "run.yaml"
    run.write_text("upstream: {stores: [a\n")  # PyYAML's own message spans several lines
    out = tmp_path / "out"
    refused(atomsift(verb, "--config", run, "--out", out), run, "not valid YAML at line 2")
    nothing_left(out)


def test_run_file_too_large_to_be_one(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("# " + "x" * (TC.MAX_RUN_FILE_BYTES + 10) + "\n")
    refused(atomsift("pretrain", "--config", run, "--out", tmp_path / "out"), run, "too large for a run file")


@pytest.mark.parametrize("flag, value, field", [("--limit", "-5", "--limit"), ("--limit", "0", "--limit"),
                                                ("--seed", "-1", "--seed")])
def test_prepare_refuses_nonsense_numbers(tmp_path, flag, value, field):
    src = tmp_path / "w.extxyz"
    src.write_text(H2O)
    out = tmp_path / "store"
    refused(atomsift("prepare", "ase", "--source", src, "--out", out, flag, value), f"field '{field}'", value)
    nothing_left(out)


def test_rmd17_run_file_with_a_scalar_target(tmp_path):
    run = tmp_path / "ft.yaml"
    run.write_text("task: rmd17\nstore: results/data/rmd17\ntarget: U0\n")
    out = tmp_path / "out"
    refused(atomsift("finetune", "--config", run, "--pretrained", "none", "--out", out), run, "field 'target'",
            "task rmd17 learns forces: it takes no target (valid targets: none")
    nothing_left(out)


# =========================================================================== half-written outputs


def test_moments_out_existing_directory_publishes_nothing(tmp_path):
    store = make_store(tmp_path / "s")
    d = tmp_path / "existing"
    d.mkdir()
    refused(atomsift("moments", "--store", store, "--extractor", "random-tiny-0", "--n", 4, "--out", d), d,
            "is a directory")
    assert not (tmp_path / "existing.json").exists() and list(d.iterdir()) == []
    a = moments_file(tmp_path / "a.npz", np.zeros(2), np.eye(2))
    refused(atomsift("csi-table", "--upstream", f"u={a}", "--downstream", f"d={a}", "--out", d), d, "is a directory")


def test_moments_and_sidecar_are_published_together(tmp_path, monkeypatch):
    """A failure of the second rename withdraws the first: neither file, no temporary, the error
    names the final path."""
    import atomsift.fsio as fsio

    real = os.replace

    def failing(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(28, "No space left on device", str(src))
        return real(src, dst)

    monkeypatch.setattr(fsio.os, "replace", failing)
    out = tmp_path / "m.npz"
    with pytest.raises(InputError) as err:
        save_moments(out, Moments.of(np.random.default_rng(0).normal(size=(10, 3))), {"dataset": "x"})
    assert str(err.value) == f"{out.with_name('m.npz.json')}: cannot write (No space left on device)"
    assert list(tmp_path.iterdir()) == []


def test_write_errors_name_the_final_path(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    out = tmp_path / "m.npz"
    with pytest.raises(InputError, match=rf"^{out}: cannot write \(No space left on device\)$"):
        save_moments(out, Moments.of(np.ones((4, 2)) * np.arange(4)[:, None]))
    assert list(tmp_path.iterdir()) == []


_KILLED = r"""
import os, sys, numpy as np
from atomsift.data.store import StoreWriter
w = StoreWriter(sys.argv[1], dataset="ase", reader="test")
w.add([1, 1], np.zeros((2, 3)) + [[0, 0, 0], [0, 0, 0.7]])
print("ready", flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), 9)
sys.stdin.read()  # stay alive (holding the temporary) until the test closes our stdin
"""


def test_stale_temporaries_of_a_killed_prepare_are_removed_but_a_live_writers_are_kept(tmp_path):
    out = tmp_path / "store"
    killed = subprocess.run([sys.executable, "-c", _KILLED, str(out), "kill"], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".store.tmp-")]
    assert len(stale) == 1 and stale[0].is_dir()  # what a killed conversion leaves
    live = subprocess.Popen([sys.executable, "-c", _KILLED, str(out), "live"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "ready"
        held = [p for p in tmp_path.iterdir() if p.name.startswith(".store.tmp-") and p not in stale]
        src = tmp_path / "w.extxyz"
        src.write_text(H2O * 3)
        res = atomsift("prepare", "ase", "--source", src, "--out", out)
        assert res.returncode == 0, res.stderr
        assert not stale[0].exists()  # the killed run's temporary is gone
        assert len(held) == 1 and held[0].exists()  # a running conversion's is not touched
    finally:
        live.stdin.close()
        live.wait(timeout=60)
    assert (out / "manifest.json").exists()


def test_a_full_disk_while_converting_names_the_store(tmp_path, monkeypatch):
    from atomsift.data import store as S

    def full(self, arr):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(S._NpyAppender, "append", full)
    out = tmp_path / "store"
    with pytest.raises(InputError, match=rf"^{out}: cannot write \(No space left on device\)$"):
        make_store(out)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_conversion_leaves_nothing(tmp_path):
    src = tmp_path / "w.extxyz"
    src.write_text(H2O * 2 + H2O.replace("H 0 0 0.96", "X 0 0 0.96"))
    out = tmp_path / "sub" / "store"
    refused(atomsift("prepare", "ase", "--source", src, "--out", out), src, "field 'numbers'",
            "structure 2: atomic number 0 outside 1..118")
    assert not (tmp_path / "sub").exists()


# ======================================================================================== downloads


class _Server:
    """Serves ``files`` (path -> bytes). ``no_length``: send no Content-Length and close after the
    body; ``cut[path] = k``: send only the first k bytes of the next response, then close;
    ``redirect[path] = url``: answer 302 to ``url``."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.redirect: dict[str, str] = {}
        self.no_length = False
        self.log: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                server.log.append(self.path)
                if self.path in server.redirect:
                    self.send_response(302)
                    self.send_header("Location", server.redirect[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                data = body[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                if not server.no_length:
                    self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                k = server.cut.pop(self.path, None)
                self.wfile.write(data if k is None else data[:k])
                self.wfile.flush()
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _h5_bytes(tmp_path: Path) -> bytes:
    p = F.write_spice(tmp_path / "src.h5")
    return p.read_bytes()


def test_server_closing_early_without_length_publishes_nothing_then_resumes(server, tmp_path):
    body = _h5_bytes(tmp_path)
    server.files["/dipeptides.h5"] = body
    server.no_length = True
    server.cut["/dipeptides.h5"] = len(body) // 2
    dest = tmp_path / "d"
    final = dest / "dipeptides.h5"
    url = server.url + "/dipeptides.h5"
    line = refused(atomsift("download", "spice", "--subset", "dipeptides", "--dest", dest, "--url", url), url,
                   "without a length", "not a complete HDF5 file", "run again to resume from dipeptides.h5.part")
    assert not final.exists() and (dest / "dipeptides.h5.part").stat().st_size == len(body) // 2, line
    res = atomsift("download", "spice", "--subset", "dipeptides", "--dest", dest, "--url", url)  # resumes (Range)
    assert res.returncode == 0, res.stderr
    assert final.read_bytes() == body and not (dest / "dipeptides.h5.part").exists()
    with h5py.File(final) as f:
        assert "ACE-ALA-NME" in f


@pytest.mark.parametrize("name, dataset, subset, body", [
    ("qmof_figshare_13147324.zip", "qmof", "all", "zip"),
    ("oc22_metadata.pkl", "oc22", "metadata", "pickle"),
    ("dsgdb9nsd.xyz.tar.bz2", "qm9", "xyz", "bz2"),
])
def test_truncated_release_without_checksum_or_length_is_not_published(server, tmp_path, name, dataset, subset, body):
    import bz2
    import pickle

    if body == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("qmof_database/qmof.json", json.dumps([{"qmof_id": i} for i in range(2000)]))
        data = buf.getvalue()
    elif body == "pickle":
        data = pickle.dumps({f"random{i}": {"bulk_symbols": "Mg2O2"} for i in range(2000)}, protocol=4)
    else:
        data = bz2.compress(b"5\n" * 50_000)
    server.files["/" + name] = data
    server.no_length = True
    server.cut["/" + name] = len(data) - 300
    dest = tmp_path / "d"
    refused(atomsift("download", dataset, "--subset", subset, "--dest", dest, "--url", f"{server.url}/{name}"),
            "without a length", "not a complete")
    assert not (dest / name).exists()
    res = atomsift("download", dataset, "--subset", subset, "--dest", dest, "--url", f"{server.url}/{name}")
    assert res.returncode == 0, res.stderr
    assert (dest / name).read_bytes() == data


def test_whole_but_corrupt_file_is_rejected_and_not_kept(server, tmp_path):
    server.files["/dipeptides.h5"] = b"\x89HDF\r\n\x1a\n" + os.urandom(5000)  # full length announced and sent
    dest = tmp_path / "d"
    refused(atomsift("download", "spice", "--subset", "dipeptides", "--dest", dest, "--url",
                     server.url + "/dipeptides.h5"), "not a complete HDF5 file", "nothing kept")
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("args, needle, field", [
    (["--url", "file:///etc/hostname"], "only http:// and https:// URLs are fetched", "field 'url'"),
    (["--url", "ftp://127.0.0.1/x.zip"], "only http:// and https:// URLs are fetched", "field 'url'"),
    (["--url", "SERVER/x.zip", "--sha256", "zzzz"], "expected 64 hexadecimal digits, got 'zzzz'", "field 'sha256'"),
    (["--sha256", "ab" * 31], "expected 64 hexadecimal digits", "field 'sha256'"),
])
def test_download_arguments_are_checked_before_any_network(server, tmp_path, args, needle, field):
    dest = tmp_path / "d"
    args = [a.replace("SERVER", server.url) for a in args]
    refused(atomsift("download", "qmof", "--dest", dest, *args), needle, field)
    assert server.log == [] and not dest.exists()


@pytest.mark.parametrize("target, phrase", [
    ("file:///etc/hostname", "Redirection to url 'file:///etc/hostname' is not allowed"),  # urllib's own refusal
    ("ftp://127.0.0.1/x.zip", "redirected to 'ftp://127.0.0.1/x.zip'; only http(s) redirects are followed"),
])
def test_redirect_away_from_http_is_refused(server, tmp_path, target, phrase):
    server.redirect["/x.zip"] = target
    dest = tmp_path / "d"
    refused(atomsift("download", "qmof", "--dest", dest, "--url", server.url + "/x.zip"), server.url + "/x.zip", phrase)
    assert not (dest / "qmof_figshare_13147324.zip").exists()


def test_download_dest_that_is_a_file(server, tmp_path):
    dest = tmp_path / "d"
    dest.write_text("x")
    refused(atomsift("download", "qmof", "--dest", dest, "--url", server.url + "/x.zip"), dest, "not a directory")
    assert server.log == []


# ========================================================================= the configuration contract


def test_checked_in_options_schema_is_the_generated_one():
    """workflow/schemas/run-options.schema.json is generated from train/config.py; regenerate it
    with `python -m atomsift.train.config` after changing a run-file key."""
    assert json.loads((SCHEMAS / "run-options.schema.json").read_text()) == TC.options_schema()


def test_generated_schema_constrains_the_options_as_the_verbs_do():
    import jsonschema

    schema = json.loads((SCHEMAS / "run-options.schema.json").read_text())
    fin = {**schema["$defs"]["finetune"], "$defs": schema["$defs"]}
    pre = {**schema["$defs"]["pretrain"], "$defs": schema["$defs"]}
    assert not list(jsonschema.Draft202012Validator(fin).iter_errors({"epochs": 4, "lr": 1e-3}))
    for bad in ({"epohcs": 4}, {"epochs": 0}, {"ema_decay": 1.0}, {"test_weights": "last"}):
        assert list(jsonschema.Draft202012Validator(fin).iter_errors(bad)), bad
        with pytest.raises(InputError):
            TC.check_options("finetune", bad, "c", "finetune.options")
    assert list(jsonschema.Draft202012Validator(pre).iter_errors({"batch_size": 0}))
    assert "epochs" not in schema["$defs"]["pretrain"]["properties"]  # the grid's budget sets it


def _config(edit) -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    edit(config)
    return config


@pytest.mark.parametrize("edit, verb, run_key, field", [
    (lambda c: c["finetune"]["options"].__setitem__("epohcs", 4), "finetune", {"epohcs": 4}, "finetune.options.epohcs"),
    (lambda c: c["pretrain"]["options"].__setitem__("batch_size", 0), "pretrain", {"batch_size": 0},
     "pretrain.options.batch_size"),
    (lambda c: c["tasks"]["qm9"].__setitem__("options", {"lr": "fast"}), "finetune", {"lr": "fast"}, "tasks.qm9.options.lr"),
    (lambda c: c["tasks"]["rmd17"].__setitem__("target", "U0"), "finetune", {"task": "rmd17", "target": "U0"},
     "tasks.rmd17.target"),
])
def test_config_and_verbs_reject_the_same_things_with_the_same_message(tmp_path, edit, verb, run_key, field):
    with pytest.raises(InputError) as err:
        G.validate_config(_config(edit), str(SCHEMAS / "config.schema.yaml"), "config.yaml")
    snake = str(err.value)
    assert snake.startswith(f"config.yaml: field '{field}': ") and "\n" not in snake
    base = {"pretrain": {"upstream": {"stores": {"a": "x"}}, "n_structures": 10},
            "finetune": {"task": "qm9", "store": "x"}}[verb]
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({**base, **run_key}))
    extra = ["--pretrained", "none"] if verb == "finetune" else []
    line = refused(atomsift(verb, "--config", run, *extra, "--out", tmp_path / "out"), run)
    # the same sentence; only an unknown key's list of allowed keys differs (an options block may
    # not set the keys the grid sets: task, store, target, size, seed)
    same = lambda text: text.split(" (allowed: ")[0]  # noqa: E731
    assert same(message(line).split(": ", 1)[1]) == same(snake.split(f"field '{field}': ", 1)[1])


def test_grid_keys_in_options_are_refused():
    with pytest.raises(InputError, match=r"field 'pretrain.options.epochs': set by the grid \(budgets: E of NxE\), not by options"):
        G.validate_config(_config(lambda c: c["pretrain"]["options"].__setitem__("epochs", 3)),
                          str(SCHEMAS / "config.schema.yaml"), "config.yaml")


def test_snakemake_dry_run_stops_on_an_options_typo(tmp_path):
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")
    if snakemake is None:
        pytest.skip("snakemake is not installed")
    for name in ("Snakefile", "workflow", "envs", "profiles"):
        (tmp_path / name).symlink_to(ROOT / name)
    config = _config(lambda c: c["finetune"]["options"].__setitem__("epohcs", 4))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    res = subprocess.run([snakemake, "-n"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "invalid configuration: config.yaml: field 'finetune.options.epohcs': unknown key 'epohcs', did you mean 'epochs'?"), res.stderr
    assert not (tmp_path / "results").exists()


# ============================================================================ shared input validators


@pytest.fixture
def upstream(tmp_path):
    return moments_file(tmp_path / "up.npz", np.zeros(8), np.eye(8))


@pytest.mark.parametrize("text, field, phrase", [
    (H2O.replace("H 0 0 0.96", "X 0 0 0.96"), "numbers", "structure 0: atomic number 0 outside 1..118"),
    (H2O.replace("H 0 0 0.96", "H 0 0 inf"), "positions", "structure 0: non-finite position"),
    (H2O.replace("H 0 0 0.96", "H 0 nan 0.96"), "positions", "structure 0: non-finite position"),
], ids=["Z=0", "inf", "nan"])
def test_select_refuses_what_predict_refuses(tmp_path, upstream, text, field, phrase):
    src = tmp_path / "mine.extxyz"
    src.write_text(text)
    sel = refused(atomsift("select", src, "--upstream", f"ani1x={upstream}"), src, f"field '{field}'", phrase)
    pred = refused(atomsift("predict", src), src, f"field '{field}'", phrase)
    assert message(sel) == message(pred)


@pytest.mark.parametrize("cov, phrase", [
    (np.eye(3) + np.triu(np.ones((3, 3)), 1), "not symmetric"),
    (-np.eye(3), "not positive semi-definite (smallest eigenvalue -1"),
    (np.diag([1.0, 1.0, -0.5]), "not positive semi-definite (smallest eigenvalue -0.5"),
])
def test_csi_refuses_a_covariance_that_is_not_one(tmp_path, cov, phrase):
    good = moments_file(tmp_path / "good.npz", np.zeros(3), np.eye(3))
    bad = moments_file(tmp_path / "bad.npz", np.ones(3), cov)
    for a, b in ((good, bad), (bad, good)):
        res = atomsift("csi", a, b)
        refused(res, bad, "field 'cov'", phrase)
        assert res.stdout == ""


def test_csi_of_equal_moments_is_zero_not_negative(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24))
    m = Moments.of(x)
    a = save_moments(tmp_path / "a.npz", m, {"extractor": "e", "aggregation": "flat"})
    b = save_moments(tmp_path / "b.npz", m, {"extractor": "e", "aggregation": "flat"})
    res = atomsift("csi", a, b, "--json")
    assert res.returncode == 0, res.stderr
    value = json.loads(res.stdout)["csi"]
    assert 0.0 <= value < 1e-9 * 2 * np.trace(m.cov)  # round-off of an exact zero, never below it


@pytest.mark.parametrize("arrays, field, phrase", [
    ({"n": np.int64(1), "mean": np.zeros(2), "cov": np.eye(2)}, "n", "need at least 2 samples"),
    ({"n": np.int64(5), "mean": np.zeros(2), "cov": np.eye(3)}, "cov", "expected shape (2, 2)"),
    ({"n": np.int64(5), "mean": np.array([0.0, np.nan]), "cov": np.eye(2)}, "mean", "non-finite value"),
    ({"n": np.int64(5), "mean": np.zeros(2)}, "cov", "missing key"),
])
def test_moments_files_are_validated_when_read(tmp_path, arrays, field, phrase):
    p = tmp_path / "m.npz"
    np.savez(p, **arrays)
    with pytest.raises(InputError, match=rf"field '{field}': {phrase}".replace("(", r"\(").replace(")", r"\)")):
        load_moments(p)
    good = moments_file(tmp_path / "good.npz", np.zeros(2), np.eye(2))
    refused(atomsift("csi", good, p), p, f"field '{field}'", phrase)
