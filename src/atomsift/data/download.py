"""``atomsift download``: fetch the official release files of the paper's datasets.

One table (:data:`DATASETS`) lists, per dataset, the files of its official release as the
datasets' pages and JMP's download code name them (JMP.md §3-4, ``shared/realdata/README.md``),
grouped by subset (molecule, task, split). A file is written to ``NAME.part`` first; an
interrupted transfer is resumed with an HTTP ``Range`` request; the finished file is checked
against its published size and checksum and only then renamed (``os.replace``) to its final name,
so a truncated or corrupt file never sits under the final name. A checksum mismatch deletes the
partial file. Checksums: MatBench sha256 from matminer's ``dataset_metadata.json``; OC20/OC22 md5
from fairchem's dataset pages; the other releases publish none: their files must then be complete
files of their format (HDF5, zip, tar, gzip/bzip2/xz streams, pickle opcodes, JSON) as long as the
server's ``Content-Length`` says, so a server that closes early without a length cannot publish a
truncated file. Only http(s) is fetched (also through redirects), with :mod:`urllib`; the
arguments (``--url``, ``--sha256``, ``--dest``) are checked before any network.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import socket
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from atomsift.errors import InputError
from atomsift.fsio import file_digest


@dataclass(frozen=True)
class Remote:
    """One file of a release: where it is, its name on disk, and what is published about it."""

    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class Release:
    files: dict[str, tuple[Remote, ...]]  # subset -> files
    default: tuple[str, ...]  # subsets fetched when none is named
    then: str  # what to do with the files (unpacking, the prepare command)
    kind: str = "dataset"  # or the checkpoint family of a model: "jmp" (GemNet-OC), "eqv2" (EquiformerV2)


_FB = "https://dl.fbaipublicfiles.com/opencatalystproject/data"
_MB = "https://ml.materialsproject.org/projects"
_GDML = "http://www.quantum-machine.org/gdml"

# matminer src/matminer/datasets/dataset_metadata.json (commit 8ddb18c7), key "hash" = sha256 of the file
_MATBENCH_SHA256 = {
    "jdft2d": "26057dc4524e193e32abffb296ce819b58b6e11d1278cae329a2f97817a4eddf",
    "phonons": "4db551f21ec5f577e6202725f10e34dfc509aa7df3a6bdaac497da7f6dbbb9b3",
    "dielectric": "83befa09bc2ec2f4b6143afc413157827a90e5e2e42c1eb507ccfa01bf26a1d6",
    "log_gvrh": "098af941f4c663270f1fe21abf20ffad6fb85ecbfcba5786ceac03983ac29da7",
    "log_kvrh": "44b113ddb7e23aa18731a62c74afa7e5aa654199e0db5f951c8248a00955c9cd",
    "mp_is_metal": "9a028ed5750a4c76ca36e9f3c8d48fe0bf3fb21b76ec2289e58ae7048d527919",
    "perovskites": "4641e2417f8ec8b50096d2230864468dfa08278dc9d257c327f65d0305278483",
    "mp_gap": "58b65746bd88329986ed66031a2ac1369c7c522f7bc9f9081528e07097c2c057",
    "mp_e_form": "dedcb1d4ba2e3e50dbdd45ba5bc647a00e9c2bcf8f8bf556dc8e92caa39eb21f",
}
# fairchem docs (core/datasets/oc20.md, oc22.md): md5 of the tarballs and oc20_ref.pkl
_OC20_S2EF = {
    "200k": ("s2ef_train_200K.tar", "f8d0909c2623a393148435dede7d3a46"),
    "2M": ("s2ef_train_2M.tar", "863bc983245ffc0285305a1850e19cf7"),
    "20M": ("s2ef_train_20M.tar", "953474cb93f0b08cdc523399f03f7c36"),
    "all": ("s2ef_train_all.tar", "12a7087bfd189a06ccbec9bc7add2bcd"),
    "val_id": ("s2ef_val_id.tar", "f57f7f5c1302637940f2cc858e789410"),
    "val_ood_ads": ("s2ef_val_ood_ads.tar", "431ab0d7557a4639605ba8b67793f053"),
    "val_ood_cat": ("s2ef_val_ood_cat.tar", "532d6cd1fe541a0ddb0aa0f99962b7db"),
    "val_ood_both": ("s2ef_val_ood_both.tar", None),
}
RMD17_MOLECULES = ("aspirin", "azobenzene", "benzene", "ethanol", "malonaldehyde", "naphthalene", "paracetamol",
                   "salicylic", "toluene", "uracil")
MD22_MOLECULES = ("Ac-Ala3-NHMe", "DHA", "stachyose", "AT-AT", "AT-AT-CG-CG", "buckyball-catcher", "double-walled_nanotube")
MD17_MOLECULES = {"aspirin": "aspirin", "benzene": "benzene2017", "ethanol": "ethanol", "malonaldehyde": "malonaldehyde",
                  "naphthalene": "naphthalene", "salicylic": "salicylic", "toluene": "toluene", "uracil": "uracil"}

# Model checkpoints: JMP's README (jmp-iclr-datasets bucket) and fairchem's model table
# (EquiformerV2 31M, OC20 S2EF All+MD: the paper's CSI extractor). Neither publishes sizes or
# checksums, so only the transfer length is checked.
_JMP = "https://jmp-iclr-datasets.s3.amazonaws.com"
_EQV2_31M = "https://dl.fbaipublicfiles.com/opencatalystproject/models/2023_06/oc20/s2ef/eq2_31M_ec4_allmd.pt"

DATASETS: dict[str, Release] = {
    "ani1x": Release(
        {"all": (Remote("https://springernature.figshare.com/ndownloader/files/18112775", "ani1x-release.h5"),)},
        ("all",), "atomsift prepare ani1x --source DEST/ani1x-release.h5 --out STORE"),
    "transition1x": Release(
        {"all": (Remote("https://figshare.com/ndownloader/files/36035789", "transition1x.h5"),)},
        ("all",), "atomsift prepare transition1x --source DEST/transition1x.h5 --out STORE"),
    "oc20": Release(
        {**{k: (Remote(f"{_FB}/{f}", f, md5=m),) for k, (f, m) in _OC20_S2EF.items()},
         "metadata": (Remote(f"{_FB}/oc20_data_mapping.pkl", "oc20_data_mapping.pkl"),),
         "ref_energies": (Remote(f"{_FB}/oc22/oc20_ref.pkl", "oc20_ref.pkl", md5="043e1e0b0cce64c62f01a8563dbc3178"),)},
        ("2M", "val_id", "metadata"),
        "tar xf each .tar (S2EF *.extxyz.xz + *.txt.xz); put the train and val folders under one SRC/{train,val_id}; "
        "atomsift prepare oc20 --source SRC --metadata DEST/oc20_data_mapping.pkl --out STORE"),
    "oc22": Release(
        {"s2ef_total": (Remote(f"{_FB}/oc22/s2ef_total_train_val_test_lmdbs.tar.gz", "s2ef_total_train_val_test_lmdbs.tar.gz",
                               md5="ebea523c6f8d61248a37b4dd660b11e6"),),
         "metadata": (Remote(f"{_FB}/oc22/oc22_metadata.pkl", "oc22_metadata.pkl"),)},
        ("s2ef_total", "metadata"),
        "tar xzf the archive; atomsift prepare oc22 --source .../s2ef-total --metadata DEST/oc22_metadata.pkl --out STORE "
        "(sub-folders train, val_id, ... become splits)"),
    "rmd17": Release(
        {"all": (Remote("https://figshare.com/ndownloader/articles/12672038/versions/3", "rmd17_figshare_12672038.zip"),)},
        ("all",), "unzip, then tar xjf rmd17.tar.bz2; atomsift prepare rmd17 --source rmd17/npz_data/rmd17_MOLECULE.npz --out STORE"),
    "md22": Release(
        {m: (Remote(f"{_GDML}/repo/datasets/md22_{m}.npz", f"md22_{m}.npz"),) for m in MD22_MOLECULES},
        MD22_MOLECULES, "atomsift prepare md22 --source DEST/md22_MOLECULE.npz --out STORE"),
    "md17": Release(
        {m: (Remote(f"{_GDML}/data/npz/md17_{f}.npz", f"md17_{f}.npz"),) for m, f in MD17_MOLECULES.items()},
        tuple(MD17_MOLECULES), "atomsift prepare md17 --source DEST/md17_MOLECULE.npz --out STORE"),
    "spice": Release(
        {"dipeptides": (Remote("https://fm-datasets.s3.amazonaws.com/dipeptides.h5", "dipeptides.h5"),),
         "solvated_amino_acids": (Remote("https://fm-datasets.s3.amazonaws.com/solvated_amino_acids.h5", "solvated_amino_acids.h5"),)},
        ("dipeptides", "solvated_amino_acids"), "atomsift prepare spice --source DEST/dipeptides.h5 --out STORE"),
    "qm9": Release(
        {"xyz": (Remote("https://springernature.figshare.com/ndownloader/files/3195389", "dsgdb9nsd.xyz.tar.bz2"),)},
        ("xyz",), "atomsift prepare qm9 --source DEST/dsgdb9nsd.xyz.tar.bz2 --out STORE (or no --source: the qm9pack wheel)"),
    "qmof": Release(
        {"all": (Remote("https://figshare.com/ndownloader/articles/13147324/versions/14", "qmof_figshare_13147324.zip"),)},
        ("all",), "unzip (it holds qmof_database.zip; unzip that too); atomsift prepare qmof --source qmof_database --out STORE"),
    "matbench": Release(
        {t: (Remote(f"{_MB}/matbench_{t}.json.gz", f"matbench_{t}.json.gz", sha256=h),) for t, h in _MATBENCH_SHA256.items()},
        tuple(_MATBENCH_SHA256), "atomsift prepare matbench --source DEST/matbench_TASK.json.gz --out STORE"),
    "jmp-s": Release(
        {"checkpoint": (Remote(f"{_JMP}/jmp-s.pt", "jmp-s.pt"),)},
        ("checkpoint",), "atomsift moments --extractor DEST/jmp-s.pt ...; atomsift finetune --pretrained DEST/jmp-s.pt ...",
        kind="jmp"),
    "jmp-l": Release(
        {"checkpoint": (Remote(f"{_JMP}/jmp-l.pt", "jmp-l.pt"),)},
        ("checkpoint",), "atomsift moments --extractor DEST/jmp-l.pt ...; atomsift finetune --pretrained DEST/jmp-l.pt ...",
        kind="jmp"),
    "eqv2-31m": Release(
        {"checkpoint": (Remote(_EQV2_31M, "eq2_31M_ec4_allmd.pt"),)},
        ("checkpoint",), "atomsift moments --extractor eqv2:DEST/eq2_31M_ec4_allmd.pt ...", kind="eqv2"),
}


# ----------------------------------------------------------------------------------------- fetch


def check_url(url: str, field: str = "url") -> str:
    """``url`` if it is http(s) with a host; anything else (``file://``, ``ftp://``, a path) is refused
    before any network: a download must not become a copy of a local file."""
    parts = urllib.parse.urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"only http:// and https:// URLs are fetched, got {url!r}", field=field)
    return str(url)


def check_sha256(value: str, field: str = "sha256") -> str:
    """``value`` lower-cased if it is 64 hexadecimal digits (checked before any network)."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise InputError(f"expected 64 hexadecimal digits, got {value!r}", field=field)
    return value.lower()


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib also follows ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise InputError(f"redirected to {newurl!r}; only http(s) redirects are followed", path=req.full_url)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    """urllib with http(s) handlers only: no file://, ftp:// or data: URLs, even through a redirect."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    _HttpOnlyRedirects(), urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _verify(path: Path, url: str, size: int | None, sha256: str | None, md5: str | None) -> str | None:
    """None when ``path`` matches what is published (size, checksums), else the reason."""
    got = path.stat().st_size
    if size is not None and got != size:
        return f"size {got} bytes, published {size}"
    for algo, want in (("sha256", sha256), ("md5", md5)):
        if want:
            have = file_digest(path, algo)
            if have != want.lower():
                return f"{algo} {have} does not match the published {want.lower()}"
    return None


# ------------------------------------------------------------------------------- format checks
# Releases that publish no checksum (figshare, quantum-machine.org, S3) are checked for being a
# complete file of their format: each check reads to the format's end marker without executing
# anything (a pickle's opcodes are walked, never loaded).


def _complete_hdf5(path: Path) -> None:
    import h5py

    with h5py.File(path, "r"):  # HDF5 compares the superblock's end-of-file address with the size
        pass


def _complete_zip(path: Path) -> None:
    size = path.stat().st_size
    with zipfile.ZipFile(path) as zf:  # the central directory sits at the end: a cut file has none
        for info in zf.infolist():
            if info.header_offset + info.compress_size > size:
                raise ValueError(f"member {info.filename} extends past the end of the file")


def _complete_tar(path: Path) -> None:
    size = path.stat().st_size
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            if m.offset_data + (m.size if m.isreg() else 0) > size:
                raise ValueError(f"member {m.name} extends past the end of the file")


def _complete_stream(path: Path, opener) -> None:
    """A compressed stream read to its end marker (gzip also checks its CRC and length)."""
    with opener(path, "rb") as fh:
        while fh.read(1 << 22):
            pass


def _complete_pickle(path: Path) -> None:
    import pickletools

    with open(path, "rb") as fh:
        last = None
        for last, _, _ in pickletools.genops(fh):  # opcodes only: nothing is constructed or called
            pass
        if last is None or last.name != "STOP" or fh.read(1):
            raise ValueError("does not end with the pickle STOP opcode")


def _complete_json(path: Path) -> None:
    with open(path, "rb") as fh:
        json.load(fh)


def _complete_torch(path: Path) -> None:
    """A torch zip checkpoint whose directory, records and pickle are whole (read through the
    safe loader: pickled classes become inert stand-ins, tensor bytes are not read)."""
    from atomsift.safeload import ANY, check_torch

    check_torch(path, stand_ins=ANY)


def _format_check(name: str):
    """(format label, check) for a release file name, or None when no check is known."""
    import bz2
    import gzip
    import lzma

    n = name.lower()
    table = [
        ((".h5", ".hdf5"), "HDF5", _complete_hdf5),
        ((".zip", ".npz"), "zip", _complete_zip),
        ((".tar",), "tar", _complete_tar),
        ((".tar.gz", ".tgz", ".json.gz", ".gz"), "gzip", lambda p: _complete_stream(p, gzip.open)),
        ((".tar.bz2", ".bz2"), "bzip2", lambda p: _complete_stream(p, bz2.open)),
        ((".tar.xz", ".xz"), "xz", lambda p: _complete_stream(p, lzma.open)),
        ((".pkl", ".pickle"), "pickle", _complete_pickle),
        ((".json",), "JSON", _complete_json),
        ((".pt", ".ckpt"), "torch checkpoint", _complete_torch),
    ]
    for suffixes, label, check in table:
        if n.endswith(suffixes):
            return label, check
    return None


def _format_problem(path: Path, name: str) -> str | None:
    """None when ``path`` is a complete file of the format its name says, else the reason."""
    fmt = _format_check(name)
    if fmt is None:
        return f"no checksum is published and atomsift has no format check for '{name}'; pass --sha256"
    label, check = fmt
    try:
        check(path)
    except Exception as exc:  # each library's own error for a cut or corrupt file
        text = " ".join(str(exc).split())[:160]
        return f"not a complete {label} file ({type(exc).__name__}: {text})"
    return None


def fetch(url: str, dest: str | Path, *, size: int | None = None, sha256: str | None = None, md5: str | None = None,
          timeout: float = 60.0, chunk: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed with Range), verify, rename.

    Verified means: the published checksum matches; where none is published, the file is a
    complete file of its format (:func:`_format_problem`) and as long as the server announced.
    An existing ``dest`` that verifies is kept (nothing is fetched). Raises :class:`InputError`
    (one line) on HTTP and network errors, on an interrupted transfer or a file cut short without
    a length (the ``.part`` is kept for the next run to resume) and on a size, checksum or
    format mismatch of a whole transfer (the ``.part`` is deleted).
    """
    check_url(url)
    if sha256 is not None:
        sha256 = check_sha256(sha256)
    final = Path(dest)
    part = final.with_name(final.name + ".part")
    checksummed = bool(sha256 or md5)

    def problem(path: Path) -> str | None:
        return _verify(path, url, size, sha256, md5) or (None if checksummed else _format_problem(path, final.name))

    if final.exists():
        why = problem(final)
        if why is None:
            return final
        raise InputError(f"exists but does not match the release ({why}); delete it to download again", path=final)
    final.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "atomsift-download", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    complete = False  # the server has nothing more to send (416 on a resume)
    expected = None
    try:
        resp = _opener().open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the partial file is already whole
            complete = True
        else:
            raise InputError(f"HTTP {exc.code} {exc.reason}", path=url) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"cannot download ({reason})", path=url) from None
    if not complete:
        with resp:
            start = 0
            if offset and resp.status == 206:
                cr = resp.headers.get("Content-Range", "")
                if not cr.startswith(f"bytes {offset}-"):
                    raise InputError(f"server answered the resume request with Content-Range {cr!r}", path=url)
                start = offset
            length = resp.headers.get("Content-Length")
            expected = start + int(length) if length is not None and length.isdigit() else None
            written = start
            try:
                with open(part, "ab" if start else "wb") as fh:
                    for block in iter(lambda: resp.read(chunk), b""):
                        fh.write(block)
                        written += len(block)
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as exc:
                raise InputError(f"transfer interrupted after {part.stat().st_size} bytes ({type(exc).__name__}); "
                                 f"run again to resume from {part.name}", path=url) from None
            except OSError as exc:
                if exc.filename is not None or exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise InputError(f"cannot write ({exc.strerror or exc}); the partial download is {part.name}",
                                     path=final) from None
                raise InputError(f"transfer interrupted after {part.stat().st_size} bytes ({type(exc).__name__}); "
                                 f"run again to resume from {part.name}", path=url) from None
            if expected is not None and written != expected:
                raise InputError(f"transfer interrupted after {written} of {expected} bytes; run again to resume from "
                                 f"{part.name}", path=url)
    why = _verify(part, url, size, sha256, md5)
    if why is not None:
        part.unlink(missing_ok=True)
        raise InputError(f"downloaded file rejected: {why}; nothing kept", path=url)
    if not checksummed:
        why = _format_problem(part, final.name)
        if why is not None:
            if expected is None and not complete and _format_check(final.name) is not None:
                # no length announced: the server may have closed early; a rerun resumes (Range)
                raise InputError(f"transfer ended after {part.stat().st_size} bytes without a length, and the file is "
                                 f"incomplete: {why}; run again to resume from {part.name}", path=url)
            part.unlink(missing_ok=True)
            raise InputError(f"downloaded file rejected: {why}; nothing kept", path=url)
    os.replace(part, final)
    return final


# -------------------------------------------------------------------------------------- datasets


def select(name: str, subsets: list[str] | None = None) -> list[Remote]:
    """The files of ``name`` for ``subsets`` (default: the release's default subsets)."""
    rel = DATASETS.get(name)
    if rel is None:
        raise InputError(f"unknown dataset '{name}' (known: {', '.join(sorted(DATASETS))})", field="DATASET")
    chosen = subsets or list(rel.default)
    unknown = [s for s in chosen if s not in rel.files]
    if unknown:
        raise InputError(f"{name} has no subset '{unknown[0]}' (has: {', '.join(rel.files)})", field="subset")
    out: list[Remote] = []
    for s in chosen:
        out.extend(f for f in rel.files[s] if f not in out)
    return out


def download(name: str, dest: str | Path, *, subsets: list[str] | None = None, url: str | None = None,
             sha256: str | None = None, timeout: float = 60.0) -> list[Path]:
    """Fetch the selected files of dataset ``name`` into ``dest``; return their paths.

    ``url`` replaces the URL of the (single) selected file, e.g. a mirror; its published size
    and checksums still apply unless ``sha256`` is given, which replaces them.
    """
    if url is not None:
        check_url(url)
    if sha256 is not None:
        sha256 = check_sha256(sha256)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise InputError("exists and is not a directory", path=dest, field="dest")
    files = select(name, subsets)
    if url is not None:
        if len(files) != 1:
            raise InputError(f"--url replaces one file, but {len(files)} are selected; name one --subset", field="url")
        f = files[0]
        files = [Remote(url, f.filename, f.size, f.sha256, f.md5)]
    if sha256 is not None:
        if len(files) != 1:
            raise InputError(f"--sha256 checks one file, but {len(files)} are selected; name one --subset", field="sha256")
        files = [Remote(files[0].url, files[0].filename, None, sha256, None)]
    return [fetch(f.url, dest / f.filename, size=f.size, sha256=f.sha256, md5=f.md5, timeout=timeout) for f in files]
