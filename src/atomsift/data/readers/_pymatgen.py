"""Parse pymatgen ``Structure.as_dict()`` JSON without pymatgen.

The layout is plain JSON (QMOF's ``qmof_structure_data.json``, MatBench's ``matbench_*.json.gz``)::

    {"@module": "pymatgen.core.structure", "@class": "Structure", "charge": 0,
     "lattice": {"matrix": [[ax, ay, az], [bx, by, bz], [cx, cy, cz]], "pbc": [true, true, true], ...},
     "sites": [{"species": [{"element": "Cu", "occu": 1}], "abc": [fa, fb, fc],
                "xyz": [x, y, z], "label": "Cu", "properties": {...}}, ...]}

Rows of ``lattice.matrix`` are the lattice vectors (Angstrom); ``xyz`` are Cartesian Angstrom,
``abc`` fractional (used when ``xyz`` is absent: xyz = abc @ matrix). The element of a site is its
``label`` when that is an element symbol (as JMP reads QMOF), else ``species[0].element``.
Disordered sites (several species or occupancy below one) are rejected: the store holds one
element per atom.
"""

from __future__ import annotations

import zlib

import numpy as np
from ase.data import chemical_symbols

from atomsift.errors import InputError

ATOMIC_NUMBERS = {s: z for z, s in enumerate(chemical_symbols) if z > 0}


def _site_number(site, where: str, path, i: int) -> int:
    label = site.get("label") if isinstance(site, dict) else None
    if isinstance(label, str) and label in ATOMIC_NUMBERS:
        return ATOMIC_NUMBERS[label]
    species = site.get("species") if isinstance(site, dict) else None
    if not isinstance(species, list) or not species:
        raise InputError(f"{where}: site {i} has no species list", path=path, field="sites.species")
    if len(species) != 1:
        raise InputError(f"{where}: site {i} is disordered ({len(species)} species)", path=path, field="sites.species")
    sp = species[0]
    el = sp.get("element") if isinstance(sp, dict) else None
    if el not in ATOMIC_NUMBERS:
        raise InputError(f"{where}: site {i} has unknown element {el!r}", path=path, field="sites.species.element")
    occu = sp.get("occu", 1)
    if not isinstance(occu, (int, float)) or abs(float(occu) - 1.0) > 1e-6:
        raise InputError(f"{where}: site {i} has partial occupancy {occu!r}", path=path, field="sites.species.occu")
    return ATOMIC_NUMBERS[el]


def _fast_sites(sites):
    """(numbers, Cartesian positions) when every site is ordered, labelled by an element symbol and
    has ``xyz``; None otherwise (the per-site path then gives the exact error or the fallbacks)."""
    try:
        numbers = np.fromiter((ATOMIC_NUMBERS[s["label"]] for s in sites), dtype=np.int64, count=len(sites))
        pos = np.array([s["xyz"] for s in sites], dtype=np.float64)
        for s in sites:
            sp = s["species"]
            if len(sp) != 1 or sp[0].get("occu", 1) != 1:
                return None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if pos.shape != (len(sites), 3):
        return None
    return numbers, pos


def parse_structure(d, *, path=None, where: str = "structure"):
    """(numbers (N,) int64, positions (N, 3) Angstrom, cell (3, 3), pbc (3,)) of a Structure dict.

    Raises :class:`InputError` naming ``path``, the field and ``where`` on a malformed dict.
    """
    if not isinstance(d, dict):
        raise InputError(f"{where}: expected a pymatgen Structure dict, got {type(d).__name__}", path=path, field="structure")
    lat = d.get("lattice")
    if not isinstance(lat, dict) or "matrix" not in lat:
        raise InputError(f"{where}: missing lattice.matrix", path=path, field="lattice.matrix")
    try:
        cell = np.asarray(lat["matrix"], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: lattice.matrix is not numeric", path=path, field="lattice.matrix") from None
    if cell.shape != (3, 3):
        raise InputError(f"{where}: lattice.matrix has shape {cell.shape}, expected (3, 3)", path=path, field="lattice.matrix")
    pbc = np.asarray(lat.get("pbc", (True, True, True)), dtype=bool).reshape(-1)
    if pbc.shape != (3,):
        raise InputError(f"{where}: lattice.pbc must hold 3 flags", path=path, field="lattice.pbc")
    sites = d.get("sites")
    if not isinstance(sites, list) or not sites:
        raise InputError(f"{where}: no sites", path=path, field="sites")
    fast = _fast_sites(sites)
    if fast is not None:
        return fast[0], fast[1], cell, pbc
    numbers = np.empty(len(sites), dtype=np.int64)
    pos = np.empty((len(sites), 3), dtype=np.float64)
    frac_rows = []
    for i, site in enumerate(sites):
        numbers[i] = _site_number(site, where, path, i)
        key = "xyz" if "xyz" in site else "abc"
        try:
            v = np.asarray(site[key], dtype=np.float64)
        except KeyError:
            raise InputError(f"{where}: site {i} has neither xyz nor abc", path=path, field="sites.xyz") from None
        except (TypeError, ValueError):
            raise InputError(f"{where}: site {i} {key} is not numeric", path=path, field=f"sites.{key}") from None
        if v.shape != (3,):
            raise InputError(f"{where}: site {i} {key} has shape {v.shape}, expected (3,)", path=path, field=f"sites.{key}")
        pos[i] = v
        if key == "abc":
            frac_rows.append(i)
    if frac_rows:
        pos[frac_rows] = pos[frac_rows] @ cell
    return numbers, pos, cell, pbc




# ------------------------------------------------------------------------------- JSON streaming


class JsonStream:
    """Read one large JSON document incrementally from a text file object.

    Release files are one big list (QMOF) or a pandas ``orient="split"`` object whose ``data`` list
    holds every structure (MatBench); :meth:`items` yields the elements of a list one at a time,
    so memory holds one structure, not the whole file. Any malformed or truncated input is an
    :class:`InputError` naming ``path``.
    """

    def __init__(self, fh, path, chunk: int = 1 << 22):
        import json

        self.fh, self.path, self.chunk = fh, path, chunk
        self.buf, self.pos, self.eof = "", 0, False
        self.dec = json.JSONDecoder()

    def _fill(self, grow: bool = False) -> bool:
        if self.eof:
            return False
        size = max(self.chunk, len(self.buf) - self.pos) if grow else self.chunk  # geometric for a big value
        try:
            data = self.fh.read(size)
        except (OSError, EOFError, UnicodeDecodeError, ValueError, zlib.error) as exc:
            raise InputError(f"cannot read ({type(exc).__name__}: {exc}; truncated file?)", path=self.path) from None
        if not data:
            self.eof = True
            return False
        self.buf = self.buf[self.pos:] + data
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the file), not consumed."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, ch: str) -> None:
        c = self.peek()
        if c != ch:
            found = f"'{c}'" if c else "the end of the file"
            raise InputError(f"not valid JSON: expected '{ch}', found {found} (truncated file?)", path=self.path)
        self.pos += 1

    def value(self):
        """Decode the next complete JSON value."""
        import json

        self.peek()
        while True:
            try:
                obj, end = self.dec.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number cut at the buffer's end must be re-read
                    self.pos = end
                    return obj
            except json.JSONDecodeError as exc:
                if self.eof:
                    raise InputError(f"not valid JSON ({exc.msg}; truncated file?)", path=self.path) from None
            if not self._fill(grow=True):
                continue

    def items(self):
        """Yield the elements of the JSON list that starts here."""
        self.expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            c = self.peek()
            self.pos += 1
            if c == "]":
                return
            if c != ",":
                found = f"'{c}'" if c else "the end of the file"
                raise InputError(f"not valid JSON: expected ',' or ']' in a list, found {found} (truncated file?)",
                                 path=self.path)

    def keys(self):
        """Yield the keys of the JSON object that starts here; the caller reads each value
        (with :meth:`value` or :meth:`items`) before asking for the next key."""
        self.expect("{")
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            key = self.value()
            if not isinstance(key, str):
                raise InputError("not valid JSON: object key is not a string", path=self.path)
            self.expect(":")
            yield key
            c = self.peek()
            self.pos += 1
            if c == "}":
                return
            if c != ",":
                found = f"'{c}'" if c else "the end of the file"
                raise InputError(f"not valid JSON: expected ',' or '}}' in an object, found {found} (truncated file?)",
                                 path=self.path)

    def end(self) -> None:
        """Check that nothing but blanks follows the document."""
        if self.peek() != "":
            raise InputError("not valid JSON: extra data after the document", path=self.path)
