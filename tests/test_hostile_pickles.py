"""Hostile and damaged pickle-bearing files: nothing in them runs, each is one line (exit 2),
nothing is published, no temporaries are left.

Every payload of :func:`payloads` runs code when read the usual way (``pickle.loads``,
``torch.load(weights_only=False)``): :func:`test_payloads_are_live` proves it in a subprocess,
so the other tests cannot pass by accident. Those hand the same payloads, as every class of file
we read (OC LMDB values and ``length`` keys, metadata and reference-energy pickles, zip
checkpoints for ``predict``/``moments``/``finetune``, ``last.ckpt``/``best.ckpt`` planted in run
directories), to the verbs through ``atomsift.cli.main`` and, for one payload per verb, through
``python -m atomsift`` in a subprocess.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing._private.utils import runstring

from atomsift import fsio, safeload
from atomsift.cli import main
from atomsift.errors import InputError

lmdb = pytest.importorskip("lmdb")


class _Call:
    """Pickles as ``fn(*args)``: what a hostile file holds."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _binunicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + len(b).to_bytes(4, "little") + b


def payloads(marker: Path, work: Path) -> dict[str, bytes]:
    """Pickles that create ``marker`` when unpickled naively (the last four instead ask for
    memory or refer to machinery no naive loader has: they are refused without a live check)."""
    m = str(marker)
    touch = f"open({m!r}, 'w').close()"
    legacy = io.BytesIO()  # torch's legacy stream, as torch.storage._load_from_bytes reads it
    torch.save(_Call(os.system, f"touch {m}"), legacy, _use_new_zipfile_serialization=False)
    npy = work / f"{marker.name}.npy"
    np.save(npy, np.array([_Call(os.system, f"touch {m}")], dtype=object), allow_pickle=True)
    call = lambda fn, *a, protocol=2: pickle.dumps(_Call(fn, *a), protocol=protocol)  # noqa: E731
    return {
        # callables anywhere
        "os.system/p0-GLOBAL": f"cos\nsystem\n(S'touch {m}'\ntR.".encode(),
        "os.system/p2": call(os.system, f"touch {m}"),
        "os.system/p5-STACK_GLOBAL": call(os.system, f"touch {m}", protocol=5),
        "subprocess.Popen": call(subprocess.Popen, ["touch", m]),
        "subprocess.run": call(subprocess.run, ["touch", m]),
        "builtins.exec": call(builtins.exec, touch),
        "builtins.eval": call(builtins.eval, touch),
        # callables inside the numpy / torch namespaces
        "numpy.runstring": call(runstring, touch, {}),
        "numpy.load(allow_pickle)": call(np.load, str(npy), None, True),
        "torch.storage._load_from_bytes": call(torch.storage._load_from_bytes, legacy.getvalue()),
        "tensor-of-hostile-storage": call(torch._utils._rebuild_tensor_v2, _Call(torch.storage._load_from_bytes, legacy.getvalue()),
                                          0, (1,), (1,), False, OrderedDict()),
        # opcodes other than REDUCE that call code
        "INST": f"(S'touch {m}'\nios\nsystem\n.".encode(),
        "OBJ": f"(cos\nsystem\nS'touch {m}'\no.".encode(),
        "BUILD-__setstate__": (b"\x80\x02ccollections\nOrderedDict\n)R}" + _binunicode("__setstate__") + b"cos\nsystem\nsb"
                               + _binunicode(f"touch {m}") + b"b."),
        "copyreg._reconstructor": call(__import__("copyreg")._reconstructor, subprocess.Popen, subprocess.Popen, ["touch", m]),
        # not live with a plain loader: registry / persistent ids / memory
        "EXT1": b"\x80\x02\x82\x01)R.",
        "persistent-id": b"\x80\x02" + _binunicode("storage") + b"Q.",
        "memo-index-2^31": b"\x80\x02N" + b"r" + (2**31 - 1).to_bytes(4, "little") + b".",
        "bytes(10^12)": b"\x80\x02c__builtin__\nbytes\n\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85R.",
    }


NOT_LIVE = ("EXT1", "persistent-id", "memo-index-2^31", "bytes(10^12)")
NAMES = list(payloads(Path("/x"), Path("/tmp")))  # names only (no files are kept)


def zip_checkpoint(path: Path, pkl: bytes) -> Path:
    """A torch zip checkpoint whose ``data.pkl`` is ``pkl`` (torch.load reads it as such)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", b"little")
        z.writestr("archive/version", b"3\n")
    return path


def _hidden_temporaries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") and "tmp" in p.name) if d.is_dir() else []


def _one_line(capsys, argv, marker: Path, *needles) -> str:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert not marker.exists(), "the payload ran"
    assert rc == 2, err
    assert len(err) == 1, err
    for n in needles:
        assert str(n) in err[0], err[0]
    return err[0]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def store(work):
    from fixtures_training import make_toy_store

    return make_toy_store(work / "store", 24, dataset="rmd17", seed=3, n_val=4, n_test=4)


@pytest.fixture(scope="module")
def xyz(work):
    from ase import Atoms
    from ase.io import write

    p = work / "water.xyz"
    write(p, Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]))
    return p


def _run_file(d: Path, store: Path, **kw) -> Path:
    cfg = {"task": "rmd17", "store": str(store), "size": "tiny", "epochs": 1, "batch_size": 8, "threads": 1,
           "scale_fit_batches": 0, "test_weights": "best", "lr": 1e-3, **kw}
    p = d / ("run" + "".join(f"-{k}{v}" for k, v in sorted(kw.items())) + ".yaml")
    p.write_text(json.dumps(cfg))  # JSON is YAML
    return p


@pytest.fixture(scope="module")
def genuine(work, store):
    """A finished tiny finetuning run (real CLI, real tiny GemNet) and the model it wrote."""
    out = work / "genuine"
    cfg = _run_file(work, store)
    assert main(["finetune", "--config", str(cfg), "--pretrained", "none", "--out", str(out)]) == 0
    pre = work / "genuine-pre"  # a second run that starts from the first one's model
    assert main(["finetune", "--config", str(cfg), "--pretrained", str(out / "model.pt"), "--out", str(pre)]) == 0
    return {"out": out, "cfg": cfg, "pre_out": pre, "model": out / "model.pt"}


def killed_copy(src: Path, dst: Path) -> Path:
    """``src`` as a kill after its last checkpoint leaves it: no metrics.json, no model.pt."""
    shutil.copytree(src, dst)
    for name in ("metrics.json", "model.pt"):
        (dst / name).unlink()
    return dst


@pytest.fixture(scope="module")
def lmdb_source(work):
    """A valid one-entry OC20 LMDB (PyG 2 Data) for the metadata / reference-energy cases."""
    from torch_geometric.data import Data

    d = work / "lmdb-ok"
    d.mkdir()
    n = 4
    data = Data(pos=torch.rand(n, 3, dtype=torch.float64) * 3, cell=torch.eye(3, dtype=torch.float64)[None] * 8,
                atomic_numbers=torch.tensor([29.0, 29.0, 8.0, 1.0]), natoms=n, tags=torch.tensor([0, 1, 2, 2]),
                fixed=torch.zeros(n), y=-1.5, force=torch.zeros(n, 3, dtype=torch.float64), sid=7, fid=0)
    _write_lmdb(d / "data.0000.lmdb", {b"0": pickle.dumps(data), b"length": pickle.dumps(1)})
    return d


def _write_lmdb(path: Path, items: dict[bytes, bytes]) -> Path:
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, meminit=False)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v)
    env.close()
    return path


# ----------------------------------------------------------------------------- the payloads are live


def test_payloads_are_live(tmp_path):
    """Read naively (pickle.loads; torch.load(weights_only=False) on the zip), every payload but
    the four that are not meant to be live creates its marker: the refusals below are real."""
    script = ["import pickle, sys, time, torch"]
    markers = {}
    for i, name in enumerate(NAMES):
        if name in NOT_LIVE:
            continue
        for kind in ("pickle", "zip"):
            marker = tmp_path / f"m{i}-{kind}"
            raw = payloads(marker, tmp_path)[name]
            src = tmp_path / f"p{i}.{kind}"
            if kind == "zip":
                zip_checkpoint(src, raw)
                script.append(f"try: torch.load({str(src)!r}, weights_only=False)\nexcept Exception: pass")
            else:
                src.write_bytes(raw)
                script.append(f"try: pickle.loads(open({str(src)!r}, 'rb').read())\nexcept Exception: pass")
            markers[(name, kind)] = marker
    script.append("time.sleep(1.0)")  # subprocess.Popen runs its child in the background
    subprocess.run([sys.executable, "-c", "\n".join(script)], check=True, capture_output=True, timeout=120)
    dead = [k for k, m in markers.items() if not m.exists()]
    assert not dead, f"payloads that did not run naively: {dead}"


# ----------------------------------------------------------------------------- the loader itself


@pytest.mark.parametrize("name", NAMES)
def test_loader_refuses_or_makes_inert(tmp_path, name):
    marker = tmp_path / "MARKER"
    raw = payloads(marker, tmp_path)[name]
    if name == "memo-index-2^31":  # harmless here (the memo is a dict): the pickle is just None
        assert safeload.loads(raw) is None and safeload.load_torch(zip_checkpoint(tmp_path / "m.pt", raw)) is None
        return
    with pytest.raises(safeload.UnsafePickle):
        safeload.loads(raw)  # plain values only
    with pytest.raises(safeload.UnsafePickle):
        safeload.loads(raw, stand_ins=("torch_geometric",))  # LMDB values
    try:  # JMP files: every foreign global is an inert stand-in
        obj = safeload.loads(raw, stand_ins=safeload.ANY)
    except safeload.UnsafePickle:
        pass
    else:
        assert obj is None or isinstance(obj, safeload.Inert), obj
    with pytest.raises(InputError, match=r"MARKER\.pt: cannot read the checkpoint"):
        safeload.load_torch(zip_checkpoint(tmp_path / "MARKER.pt", raw))
    assert not marker.exists()


def test_stand_ins_record_and_never_call(tmp_path):
    """A stand-in keeps what the pickle gives it; a second BUILD cannot reach a pickled __setstate__."""
    marker = tmp_path / "M"
    raw = (b"\x80\x02cjmp.config\nCfg\n)\x81}" + _binunicode("__setstate__") + b"cos\nsystem\nsb"
           + _binunicode(f"touch {marker}") + b"b.")
    obj = safeload.loads(raw, stand_ins=safeload.ANY)
    assert type(obj).pickled_name == "jmp.config.Cfg" and obj.state == f"touch {marker}"
    assert not marker.exists()


# ----------------------------------------------------------------------------- OC LMDB and metadata pickles


@pytest.mark.parametrize("name", NAMES)
def test_oc_lmdb_value_and_length_key(tmp_path, capsys, name):
    marker = tmp_path / "MARKER"
    raw = payloads(marker, tmp_path)[name]
    for where, items, field in (("value", {b"0": raw, b"length": pickle.dumps(1)}, "key 0"),
                                ("length", {b"0": raw, b"length": raw}, "field 'length'")):
        src = tmp_path / f"src-{where}"
        src.mkdir()
        _write_lmdb(src / "data.0000.lmdb", items)
        out = tmp_path / f"out-{where}"
        _one_line(capsys, ["prepare", "oc20", "--source", src, "--out", out], marker, "data.0000.lmdb", field)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize("name", NAMES)
def test_oc_metadata_and_reference_pickles(tmp_path, capsys, lmdb_source, name):
    marker = tmp_path / "MARKER"
    pkl = tmp_path / "meta.pkl"
    pkl.write_bytes(payloads(marker, tmp_path)[name])
    out = tmp_path / "out"
    _one_line(capsys, ["prepare", "oc20", "--source", lmdb_source, "--metadata", pkl, "--out", out], marker,
              "meta.pkl", "metadata")
    _one_line(capsys, ["prepare", "oc20", "--source", lmdb_source, "--total-energy", "--ref-energies", pkl, "--out", out],
              marker, "meta.pkl", "reference energies")
    assert not out.exists() and not _hidden_temporaries(tmp_path)


def test_metadata_with_numpy_values_still_reads(lmdb_source, tmp_path):
    """The positive side (PyG < 2 and PyG 2 values: tests/test_readers_materials.py): a metadata
    pickle with numpy scalars and arrays gives the classes."""
    from atomsift.data.readers import prepare
    from atomsift.data.store import Store

    meta = tmp_path / "meta.pkl"
    meta.write_bytes(pickle.dumps({"random7": {"bulk_symbols": np.str_("Cu2O"), "ads_id": np.int64(3),
                                               "miller_index": np.array([1, 1, 1])}}))
    s = Store(prepare("oc20", lmdb_source, tmp_path / "s", metadata=meta))
    assert len(s) == 1 and s.record(0).cls == "Cu2O"


# ----------------------------------------------------------------------------- checkpoints given to verbs


@pytest.mark.parametrize("name", NAMES)
def test_checkpoints_given_to_predict_moments_finetune(tmp_path, capsys, store, xyz, name):
    marker = tmp_path / "MARKER"
    ckpt = zip_checkpoint(tmp_path / "hostile.pt", payloads(marker, tmp_path)[name])
    _one_line(capsys, ["predict", xyz, "--checkpoint", ckpt], marker, "hostile.pt")
    out = tmp_path / "m.npz"
    _one_line(capsys, ["moments", "--store", store, "--extractor", ckpt, "--n", 4, "--out", out], marker, "hostile.pt")
    assert not out.exists() and not _hidden_temporaries(tmp_path)
    ft = tmp_path / "ft"
    _one_line(capsys, ["finetune", "--config", _run_file(tmp_path, store), "--pretrained", ckpt, "--out", ft], marker, "hostile.pt")
    assert not ft.exists()


def test_our_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    """Our format holds no classes: a stand-in anywhere in it is refused (a JMP file's are accepted)."""
    marker = tmp_path / "M"
    p = tmp_path / "x.pt"
    torch.save({"format": "atomsift-model", "version": 1, "config": {}, "state_dict": {},
                "meta": {"note": _Call(os.system, f"touch {marker}")}}, p)
    with pytest.raises(InputError, match=r"x\.pt: pickles posix\.system: an atomsift checkpoint holds no classes"):
        from atomsift.models import load_checkpoint

        load_checkpoint(p)
    assert not marker.exists()


def test_jmp_checkpoint_with_a_hostile_hyper_parameter_loads_inert(tmp_path):
    """A JMP-layout file whose pickled hyper-parameters call os.system still loads (the stand-in
    is inert and unused): what we still accept."""
    from test_model import _synthetic_jmp

    from atomsift.models import load_checkpoint
    from atomsift.models.gemnet_oc import backbone_config

    marker = tmp_path / "M"
    p = tmp_path / "jmp-x.pt"
    cfg = backbone_config("tiny", True)
    _synthetic_jmp(p, cfg)
    obj = torch.load(p, weights_only=True)
    obj["hyper_parameters"]["trainer"] = _Call(os.system, f"touch {marker}")
    torch.save(obj, p)
    model, meta = load_checkpoint(p, ema=False)
    assert meta["source"] == "jmp" and not marker.exists()


@pytest.mark.parametrize("case,needle", [
    ("truncated", "not a torch checkpoint (truncated"),
    ("empty", "not a torch checkpoint (empty file)"),
    ("legacy-format", "a legacy (pre-zip) torch.save file: not read"),
    ("torchscript", "a TorchScript archive: not read"),
    ("bad-crc", "Bad CRC-32"),
    ("record-size", "storage 0: 4 x float32 is 16 bytes, its record holds 12"),
    ("extent", "tensor of shape (3, 3) needs 9 elements, its storage has 4"),
    ("compressed", "is compressed"),
    ("big-endian", "a big-endian checkpoint: not read"),
])
def test_damaged_checkpoints_are_one_line(tmp_path, capsys, xyz, case, needle):
    p = tmp_path / "c.pt"
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, good)
    if case == "truncated":
        p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "legacy-format":
        torch.save({"w": torch.zeros(2)}, p, _use_new_zipfile_serialization=False)
    elif case == "torchscript":
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(p))
    else:
        with zipfile.ZipFile(good) as zin, zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                data = zin.read(info)
                kind = zipfile.ZIP_STORED
                if case == "bad-crc" and info.filename.endswith("data/0"):
                    zout.writestr(info, data)
                    continue
                if case == "record-size" and info.filename.endswith("data/0"):
                    data = data[:12]
                if case == "extent" and info.filename.endswith("data.pkl"):
                    data = data.replace(b"K\x04\x85", b"(K\x03K\x03t", 1).replace(b"K\x01\x85", b"(K\x03K\x01t", 1)
                if case == "big-endian" and info.filename.endswith("byteorder"):
                    data = b"big"
                if case == "compressed" and info.filename.endswith("data/0"):
                    kind = zipfile.ZIP_DEFLATED
                zout.writestr(info.filename, data, compress_type=kind)
        if case == "bad-crc":
            raw = bytearray(p.read_bytes())
            i = raw.find(np.arange(4, dtype=np.float32).tobytes())
            raw[i + 5] ^= 0xFF
            p.write_bytes(bytes(raw))
    if case == "extent":
        assert zipfile.ZipFile(p).read("good/data.pkl") != zipfile.ZipFile(good).read("good/data.pkl")
    _one_line(capsys, ["predict", xyz, "--checkpoint", p], tmp_path / "none", "c.pt", needle)


# ----------------------------------------------------------------------------- run directories


@pytest.mark.parametrize("which", ["last.ckpt", "best.ckpt"])
@pytest.mark.parametrize("name", NAMES)
def test_planted_training_checkpoints(tmp_path, capsys, genuine, which, name):
    marker = tmp_path / "MARKER"
    out = killed_copy(genuine["out"], tmp_path / "run")
    zip_checkpoint(out / which, payloads(marker, tmp_path)[name])
    _one_line(capsys, ["finetune", "--config", genuine["cfg"], "--pretrained", "none", "--out", out], marker, str(out / which))
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists() and not _hidden_temporaries(out)


def test_truncated_last_ckpt_is_one_line(tmp_path, capsys, genuine):
    out = killed_copy(genuine["out"], tmp_path / "run")
    raw = (out / "last.ckpt").read_bytes()
    (out / "last.ckpt").write_bytes(raw[: len(raw) // 2])
    _one_line(capsys, ["finetune", "--config", genuine["cfg"], "--pretrained", "none", "--out", out], tmp_path / "none",
              f"{out / 'last.ckpt'}: not a torch checkpoint (truncated")
    assert not (out / "metrics.json").exists()


def test_planted_last_ckpt_without_a_record_of_its_inputs(tmp_path, capsys, genuine):
    out = killed_copy(genuine["out"], tmp_path / "run")
    (out / "inputs.json").unlink()
    _one_line(capsys, ["finetune", "--config", genuine["cfg"], "--pretrained", "none", "--out", out], tmp_path / "none",
              f"{out / 'last.ckpt'}: has no readable record of the inputs it was started from")


def test_planted_checkpoint_in_a_pretraining_run(tmp_path, capsys, store):
    from fixtures_training import make_toy_store

    up = make_toy_store(tmp_path / "up", 20, dataset="ani1x", seed=0)
    cfg = tmp_path / "pre.yaml"
    cfg.write_text(json.dumps({"size": "tiny", "upstream": {"stores": {"a": str(up)}}, "n_structures": 8, "epochs": 1,
                               "batch_size": 4, "val_size": 2, "threads": 1, "scale_fit_batches": 0}))
    out = tmp_path / "pre"
    assert main(["pretrain", "--config", str(cfg), "--out", str(out)]) == 0
    capsys.readouterr()
    for name in ("metrics.json", "model.pt", "model_raw.pt"):
        (out / name).unlink(missing_ok=True)
    marker = tmp_path / "MARKER"
    zip_checkpoint(out / "last.ckpt", payloads(marker, tmp_path)["os.system/p2"])
    _one_line(capsys, ["pretrain", "--config", cfg, "--out", out], marker, f"{out / 'last.ckpt'}: cannot read the checkpoint",
              "refusing to unpickle posix.system")
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()


# ----------------------------------------------------------------------------- resume identity


def _sha12(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()[:12]


def test_resume_with_the_same_inputs_keeps_the_result_and_the_transfer_record(tmp_path, capsys, genuine):
    done = json.loads((genuine["pre_out"] / "metrics.json").read_text())
    assert done["pretrained_transfer"]["loaded"] > 0
    out = killed_copy(genuine["pre_out"], tmp_path / "run")
    assert main(["finetune", "--config", str(genuine["cfg"]), "--pretrained", str(genuine["model"]), "--out", str(out)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["pretrained_transfer"] == done["pretrained_transfer"]
    assert again["test_mae"] == pytest.approx(done["test_mae"], rel=1e-6)
    assert again["pretrained_sha256"] == done["pretrained_sha256"]


def test_resume_refuses_a_changed_run_file(tmp_path, capsys, genuine, store):
    out = killed_copy(genuine["out"], tmp_path / "run")
    cfg = _run_file(tmp_path, store, lr=2e-3)
    line = _one_line(capsys, ["finetune", "--config", cfg, "--pretrained", "none", "--out", out], tmp_path / "none")
    assert line == (f"atomsift finetune: error: {cfg}: field 'lr': {out} holds a run started with lr=0.001; "
                    f"delete {out} to start over or restore the run file")
    # a key that does not change the result may differ
    capsys.readouterr()
    assert main(["finetune", "--config", str(_run_file(tmp_path, store, log_every_n_steps=3)), "--pretrained", "none",
                 "--out", str(out)]) == 0


def test_resume_refuses_a_changed_store(tmp_path, capsys, genuine, store):
    out = killed_copy(genuine["out"], tmp_path / "run")
    st = tmp_path / "store"
    shutil.copytree(store, st)
    cfg = _run_file(tmp_path, st)
    rec = json.loads((out / "inputs.json").read_text())
    rec["stores"]["store"]["path"] = str(st.resolve())
    (out / "inputs.json").write_text(json.dumps(rec))
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**run, "store": str(st)}))
    old = _sha12(st / "manifest.json")
    manifest = json.loads((st / "manifest.json").read_text())
    manifest["n_structures_note"] = "re-prepared"  # the store at the same path changed
    (st / "manifest.json").write_text(json.dumps(manifest, indent=1))
    line = _one_line(capsys, ["finetune", "--config", cfg, "--pretrained", "none", "--out", out], tmp_path / "none")
    assert line == (f"atomsift finetune: error: {cfg}: field 'store': {out} holds a run started from another version of "
                    f"this store: {st.resolve() / 'manifest.json'} has sha256 {_sha12(st / 'manifest.json')}, the run started "
                    f"with {old}; delete {out} to start over or restore the inputs")


def test_resume_refuses_a_changed_pretrained(tmp_path, capsys, genuine):
    out = killed_copy(genuine["pre_out"], tmp_path / "run")
    other = tmp_path / "other.pt"
    from atomsift.models import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(genuine["model"])
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_checkpoint(other, model, meta)
    line = _one_line(capsys, ["finetune", "--config", genuine["cfg"], "--pretrained", other, "--out", out], tmp_path / "none")
    was = genuine["model"].resolve()
    assert line == (f"atomsift finetune: error: {other}: {out} holds a run started from --pretrained {was} "
                    f"(sha256 {_sha12(was)}), not this one (sha256 {_sha12(other)}); delete {out} to start over or restore the inputs")
    line = _one_line(capsys, ["finetune", "--config", genuine["cfg"], "--pretrained", "none", "--out", out], tmp_path / "none")
    assert line == (f"atomsift finetune: error: field '--pretrained': {out} holds a run started from --pretrained {was} "
                    f"(sha256 {_sha12(was)}), not this one (none); delete {out} to start over or restore the inputs")
    scratch = killed_copy(genuine["out"], tmp_path / "scratch")
    line = _one_line(capsys, ["finetune", "--config", genuine["cfg"], "--pretrained", genuine["model"], "--out", scratch],
                     tmp_path / "none")
    assert line == (f"atomsift finetune: error: {genuine['model']}: {scratch} holds a run started from --pretrained none, "
                    f"not this one (sha256 {_sha12(genuine['model'])}); delete {scratch} to start over or restore the inputs")


# ----------------------------------------------------------------------------- nothing half-written


@pytest.mark.parametrize("case", ["missing", "truncated", "mismatched", "hostile"])
def test_failed_finetune_publishes_nothing(tmp_path, capsys, genuine, store, case):
    p = tmp_path / "pre.pt"
    if case == "truncated":
        raw = genuine["model"].read_bytes()
        p.write_bytes(raw[: len(raw) // 2])
    elif case == "mismatched":  # same size label, other widths: shapes do not fit the run file's model
        from atomsift.models import build_model, save_checkpoint
        from atomsift.models.gemnet_oc import backbone_config
        from atomsift.models.model import GemNetModel

        base = build_model("tiny", {}, direct_forces_backbone=False, seed=0)
        cfg = backbone_config("tiny", False)
        wide = GemNetModel(type(cfg)(**{**cfg.to_dict(), "emb_size_atom": cfg.emb_size_atom * 2}), {}, size=None)
        assert base.config.emb_size_atom != wide.config.emb_size_atom
        save_checkpoint(p, wide, {})
    elif case == "hostile":
        zip_checkpoint(p, payloads(tmp_path / "MARKER", tmp_path)["os.system/p2"])
    out = tmp_path / "ft"
    needle = {"missing": "pretrained checkpoint does not exist", "truncated": "not a torch checkpoint",
              "mismatched": "does the run file's size match the checkpoint", "hostile": "holds a posix.system"}[case]
    _one_line(capsys, ["finetune", "--config", genuine["cfg"], "--pretrained", p, "--out", out], tmp_path / "MARKER", needle)
    assert not out.exists()


class _FullDisk:
    """A file whose write fails half-way with ENOSPC, as on a full disk."""

    def __init__(self, path, mode):
        self.fh = builtins.open(path, mode)

    def write(self, data):
        self.fh.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def test_full_disk_while_writing_last_ckpt(tmp_path, capsys, monkeypatch, genuine):
    out = tmp_path / "ft"
    real_open = builtins.open
    monkeypatch.setattr(fsio, "open", lambda p, mode="r", *a, **k: _FullDisk(p, mode) if ".last." in str(p) else real_open(p, mode, *a, **k),
                        raising=False)
    rc = main(["finetune", "--config", str(genuine["cfg"]), "--pretrained", "none", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == f"atomsift finetune: error: {out / 'last.ckpt'}: cannot write (No space left on device)"
    assert not (out / "last.ckpt").exists() and not _hidden_temporaries(out) and not (out / "metrics.json").exists()
    monkeypatch.undo()
    # disk space back: the rerun starts afresh (no last.ckpt), drops the failed run's best.ckpt and finishes
    assert main(["finetune", "--config", str(genuine["cfg"]), "--pretrained", "none", "--out", str(out)]) == 0
    ref = json.loads((genuine["out"] / "metrics.json").read_text())
    assert json.loads((out / "metrics.json").read_text())["test_mae"] == pytest.approx(ref["test_mae"], rel=1e-6)


def test_failed_model_write_names_the_model(tmp_path, capsys, monkeypatch, genuine):
    out = killed_copy(genuine["out"], tmp_path / "run")
    real_save = torch.save

    def failing(obj, f, *a, **k):
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(b"PK partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing)
    rc = main(["finetune", "--config", str(genuine["cfg"]), "--pretrained", "none", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"atomsift finetune: error: {out / 'model.pt'}: cannot write (")
    assert not (out / "model.pt").exists() and not _hidden_temporaries(out) and not [p for p in out.iterdir() if p.name.startswith(".model")]


def test_stale_temporaries_are_cleaned_on_the_next_run(tmp_path, genuine):
    out = killed_copy(genuine["out"], tmp_path / "run")
    stale = [".last.ckpt.tmp", ".last.tmp-123-abcdef.ckpt", ".best.tmp-9-012345.ckpt", ".model.pt.a1b2_c3d",
             ".metrics.tmp-77-fedcba.json", ".run.tmp-1-aaaaaa.json"]
    for name in stale:
        (out / name).write_bytes(b"partial")
    (out / ".keep").write_text("not ours")
    assert main(["finetune", "--config", str(genuine["cfg"]), "--pretrained", "none", "--out", str(out)]) == 0
    assert not [n for n in stale if (out / n).exists()] and (out / ".keep").exists()


# ----------------------------------------------------------------------------- the real command line


def test_verbs_in_subprocesses(tmp_path, genuine, store, xyz, lmdb_source):
    """One hostile file per verb through ``python -m atomsift``: exit 2, one stderr line naming
    the file, no marker, no output."""
    marker = tmp_path / "MARKER"
    raw = payloads(marker, tmp_path)["os.system/p2"]
    ckpt = zip_checkpoint(tmp_path / "hostile.pt", raw)
    src = tmp_path / "lmdb"
    src.mkdir()
    _write_lmdb(src / "data.0000.lmdb", {b"0": raw, b"length": pickle.dumps(1)})
    meta = tmp_path / "meta.pkl"
    meta.write_bytes(raw)
    planted = killed_copy(genuine["out"], tmp_path / "planted")
    zip_checkpoint(planted / "last.ckpt", raw)
    cases = {
        "predict": (["predict", xyz, "--checkpoint", ckpt], "hostile.pt", None),
        "moments": (["moments", "--store", store, "--extractor", ckpt, "--n", 4, "--out", tmp_path / "m.npz"], "hostile.pt", tmp_path / "m.npz"),
        "finetune": (["finetune", "--config", genuine["cfg"], "--pretrained", ckpt, "--out", tmp_path / "ft"], "hostile.pt", tmp_path / "ft"),
        "prepare": (["prepare", "oc20", "--source", src, "--out", tmp_path / "s1"], "key 0", tmp_path / "s1"),
        "metadata": (["prepare", "oc20", "--source", lmdb_source, "--metadata", meta, "--out", tmp_path / "s2"], "meta.pkl", tmp_path / "s2"),
        "resume": (["finetune", "--config", genuine["cfg"], "--pretrained", "none", "--out", planted], str(planted / "last.ckpt"),
                   planted / "metrics.json"),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {k: subprocess.Popen([sys.executable, "-m", "atomsift", *map(str, argv)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for k, (argv, _, _) in cases.items()}
    for k, p in procs.items():
        _, err = p.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, (k, err)
        assert cases[k][1] in lines[0] and "posix.system" in lines[0], (k, lines[0])
        if cases[k][2] is not None:
            assert not cases[k][2].exists(), k
    assert not marker.exists()


def test_pickled_names_with_newlines_stay_one_line(tmp_path, capsys, xyz):
    """STACK_GLOBAL names are any string: a message that quotes one is still one line."""
    raw = b"\x80\x04\x8c\x0aos\nsystem\n\x8c\x06x\ny\nzz\x93)R."
    ckpt = zip_checkpoint(tmp_path / "nl.pt", raw)
    line = _one_line(capsys, ["predict", xyz, "--checkpoint", ckpt], tmp_path / "none", "nl.pt")
    assert "os\\nsystem\\n.x\\ny\\nzz" in line
    with pytest.raises(safeload.UnsafePickle, match=r"refusing to unpickle os\\nsystem\\n\.x\\ny\\nzz"):
        safeload.loads(raw)


def test_jmp_checkpoint_with_pickled_pydantic_configs_loads(tmp_path):
    """JMP pickles pydantic models (with enums and paths) of a package we do not have: they come
    back as stand-ins whose fields give the backbone and the task names."""
    pydantic = pytest.importorskip("pydantic")
    import enum
    import types

    from test_model import _synthetic_jmp

    from atomsift.models import load_checkpoint
    from atomsift.models.gemnet_oc import backbone_config

    cfg = backbone_config("tiny", True)
    p = tmp_path / "jmp-pyd.pt"
    sd = _synthetic_jmp(p, cfg)
    obj = torch.load(p, weights_only=True)
    mod = types.ModuleType("jmpfake.config")
    ns = {"pydantic": pydantic, "enum": enum, "Path": Path, "Optional": __import__("typing").Optional}
    src = ("class Act(enum.Enum):\n    silu = 'scaled_silu'\n"
           "class BackboneConfig(pydantic.BaseModel):\n" + "".join(f"    {k}: {type(v).__name__} = {v!r}\n" for k, v in cfg.to_dict().items())
           + "    activation: Act = Act.silu\n    scale_file: Optional[Path] = Path('/private/base.pt')\n"
           "class TaskConfig(pydantic.BaseModel):\n    name: str\n"
           "class PretrainConfig(pydantic.BaseModel):\n    backbone: BackboneConfig\n    tasks: list[TaskConfig]\n")
    ns["__name__"] = mod.__name__
    exec(compile(src, "<jmpfake>", "exec", dont_inherit=True), ns)
    mod.__dict__.update(ns)
    parent = types.ModuleType("jmpfake")
    parent.config = mod
    sys.modules.update({"jmpfake": parent, mod.__name__: mod})
    try:
        obj["hyper_parameters"] = ns["PretrainConfig"](backbone=ns["BackboneConfig"](),
                                                       tasks=[ns["TaskConfig"](name=n) for n in ("w", "x", "y", "z")])
        torch.save(obj, p)
    finally:
        del sys.modules[mod.__name__], sys.modules["jmpfake"]
    found: set = set()
    safeload.load_torch(p, stand_ins=safeload.ANY, found=found)
    assert {"jmpfake.config.PretrainConfig", "jmpfake.config.Act", "pathlib.PosixPath"} <= found
    model, meta = load_checkpoint(p, ema=False)
    assert meta["tasks"] == ["w", "x", "y", "z"] and model.config == cfg
    torch.testing.assert_close(model.state_dict()["heads.y.force_mlp.0.weight"], sd["output.out_forces.2.0.weight"])
