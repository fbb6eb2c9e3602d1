"""Reading pickle-bearing files without ever running code from them.

A pickle is a small program: ``GLOBAL``/``STACK_GLOBAL``/``INST``/``EXT*`` name any importable
callable, and ``REDUCE``, ``NEWOBJ``/``NEWOBJ_EX``, ``INST``/``OBJ`` and ``BUILD``
(``__setstate__``) call it; persistent ids hand arbitrary values to the loader. ``pickle.load``
and ``torch.load(weights_only=False)`` run all of it (``os.system``, ``builtins.exec``, and
code-running helpers inside trusted namespaces such as ``numpy.testing._private.utils.runstring``
or ``torch.storage._load_from_bytes``, which itself calls an unrestricted ``torch.load``).

This module is the one loader for every pickle we read: our checkpoints, JMP's Lightning
checkpoints (``jmp-s.pt`` / ``jmp-l.pt``), Lightning's ``last.ckpt`` / ``best.ckpt``, OC20/OC22
LMDB values and their ``length`` key, and metadata / reference-energy pickles. It runs Python's
own pickle machine (``pickle._Unpickler``) with every code-calling opcode replaced:

* a global resolves to one of three things, never to an imported object:
  an *allow-listed reconstructor* (:data:`ALLOWED`: our own wrapper around exactly what a tensor,
  a state dict, a numpy array or a PyG ``Data`` needs, which checks its arguments before it
  calls numpy or torch), an *inert stand-in class* (:class:`Inert`, only where the caller
  permits stand-ins for that module), or a refusal;
* ``REDUCE``/``INST``/``OBJ`` call only allow-listed reconstructors; on a stand-in class they
  record the arguments; ``NEWOBJ``/``NEWOBJ_EX`` only make stand-ins;
* ``BUILD`` only stores the state on a stand-in, calls numpy's own ``__setstate__`` on an
  array or dtype this load has just made for that purpose, or sets the ``_metadata`` dict of a
  state dict (an ``OrderedDict``); nothing else is built;
* ``APPEND(S)``/``SETITEM(S)``/``ADDITEMS`` only fill lists, dicts, sets or stand-ins;
* ``EXT*`` (extension registry) is refused; persistent ids are accepted only as torch storage
  records of a zip checkpoint (or of torch's legacy storage stream), with their sizes checked
  against the file;
* the memo is a dict (the C unpickler pre-allocates a list as long as the largest memo index, so
  a 10-byte pickle can ask it for gigabytes).

Torch checkpoints are read from their zip records here (``torch.load`` is never called): the
records must be stored uncompressed, lie within the file and pass their CRC; TorchScript
archives, big-endian files and the legacy (pre-zip) ``torch.save`` format are refused.
Tensors pickled inside plain pickles (LMDB values) are decoded from torch's legacy storage
stream with numpy, without torch.
"""

from __future__ import annotations

import functools
import io
import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from atomsift.errors import InputError

ANY = "*"  # stand_ins=ANY: every global outside the allow-list becomes an inert stand-in


class UnsafePickle(pickle.UnpicklingError):
    """The pickle asks for something this loader does not do (a callable outside the allow-list,
    a build on a real object, an extension code, ...). Nothing was called."""


def _one_line(text: str) -> str:
    """A name from a file for a message: one line, bounded (pickled names are any string)."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 120 else text[:117] + "..."


def _printable(module: str, name: str) -> str:
    return _one_line(f"{module}.{name}")


def _short(v: Any) -> str:
    """A short description of a pickled value for an error message (never a huge repr)."""
    if isinstance(v, (bool, float, str, bytes, type(None))) or (type(v) is int and abs(v) < 10**30):
        r = repr(v)
        return r if len(r) <= 40 else r[:37] + "..."
    if _is_stand_in_class(v):
        return f"stand-in class {v.pickled_name}"
    if isinstance(v, Inert):
        return f"stand-in {v.pickled_name}"
    return type(v).__name__


# ------------------------------------------------------------------------------ stand-ins


class Inert:
    """Stand-in for a pickled object of a class outside the allow-list: it records what the
    pickle gives it (constructor arguments, ``__setstate__`` state, items) and does nothing
    else. ``__slots__`` (no instance ``__dict__``) so that no pickled state can shadow a method."""

    __slots__ = ("args", "kwargs", "state", "items", "listitems")
    pickled_name = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state, self.items, self.listitems = args, kwargs, None, {}, []

    def __repr__(self) -> str:
        return f"<stand-in for {self.pickled_name}>"

    def fields(self) -> dict:
        """The recorded state as one mapping: items (dict subclasses), then the ``__setstate__``
        state (a dict, or the ``(dict, slots)`` pair of objects with ``__slots__``)."""
        out = dict(self.items)
        st = self.state
        if isinstance(st, tuple) and len(st) == 2 and all(s is None or isinstance(s, dict) for s in st):
            out.update(st[0] or {})
            out.update(st[1] or {})
        elif isinstance(st, dict):
            out.update(st)
        return out


@functools.lru_cache(maxsize=4096)
def _stand_in_class(module: str, name: str) -> type:
    # cached: one class per pickled name (making a class costs more than unpickling a small Data)
    return type(name, (Inert,), {"__slots__": (), "__module__": module, "__qualname__": name,
                                 "pickled_name": _printable(module, name)})


def _is_stand_in_class(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, Inert)


# ------------------------------------------------------------------------- reconstructors


class _Call:
    """An allow-listed reconstructor: the only kind of object a REDUCE/INST/OBJ may call."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn):
        self.name, self.fn = name, fn

    def __repr__(self) -> str:
        return f"<reconstructor {self.name}>"


class _Marker:
    """A global that is only ever an argument (``numpy.ndarray`` for ``_reconstruct``, a torch
    storage type for a persistent id): not callable."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype=None):
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"<{self.name}>"


_NDARRAY = _Marker("numpy.ndarray")


def _record(cls: type, args: tuple, kwargs: dict | None = None) -> Inert:
    """An instance of a stand-in class holding the arguments it was called with."""
    inst = cls.__new__(cls)
    Inert.__init__(inst, *args, **(kwargs or {}))
    return inst


def _copyreg_reconstructor(cls, base, state=None):
    if not _is_stand_in_class(cls):
        raise UnsafePickle(f"copyreg._reconstructor: refusing to build {_short(cls)}")
    return _record(cls, () if state is None else (state,))


def _copyreg_newobj(cls, *args):
    if not _is_stand_in_class(cls):
        raise UnsafePickle(f"copyreg.__newobj__: refusing to build {_short(cls)}")
    return _record(cls, args)


def _copyreg_newobj_ex(cls, args=(), kwargs=None):
    if not _is_stand_in_class(cls) or not isinstance(args, (list, tuple)) or not isinstance(kwargs or {}, dict):
        raise UnsafePickle(f"copyreg.__newobj_ex__: refusing to build {_short(cls)}")
    return _record(cls, tuple(args), kwargs)


def _index(v, what: str) -> int:
    if type(v) is not int or v < 0:
        raise UnsafePickle(f"{what}: expected a non-negative int, got {_short(v)}")
    return v


def _shape(v, what: str) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or len(v) > 64:
        raise UnsafePickle(f"{what}: expected a tuple of ints, got {_short(v)}")
    return tuple(_index(x, what) for x in v)


def _plain(v, what: str):
    if not isinstance(v, (type(None), bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset)):
        raise UnsafePickle(f"{what}: expected a plain value, got {_short(v)}")
    return v


def _ordered_dict(items=()):
    return OrderedDict(_plain(items, "collections.OrderedDict"))


def _set(items=()):
    return set(_plain(items, "builtins.set"))


def _frozenset(items=()):
    return frozenset(_plain(items, "builtins.frozenset"))


def _complex(real=0.0, imag=0.0):
    for x in (real, imag):
        if not isinstance(x, (int, float, str)):
            raise UnsafePickle(f"builtins.complex: got {_short(x)}")
    return complex(real, imag) if not isinstance(real, str) else complex(real)


def _slice(*args):
    if len(args) > 3 or any(a is not None and type(a) is not int for a in args):
        raise UnsafePickle("builtins.slice: expected ints or None")
    return slice(*args)


def _bytes_like(kind):
    def make(data=b"", *rest):
        # never bytes(n) / bytearray(n): an int argument allocates n bytes
        if isinstance(data, str) and rest:
            if rest[0] not in ("latin1", "latin-1", "utf-8", "utf8", "ascii") or rest[1:] not in ((), ("strict",)):
                raise UnsafePickle(f"builtins.{kind.__name__}: encoding {_short(rest[0])} not decoded")
            return kind(data, rest[0])
        if not isinstance(data, (bytes, bytearray, list, tuple)):
            raise UnsafePickle(f"builtins.{kind.__name__}: expected bytes or a list of ints, got {_short(data)}")
        return kind(data)

    return make


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    # protocol <= 2 pickles bytes as _codecs.encode(str, 'latin1'); no other codec is needed
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1") or errors != "strict":
        raise UnsafePickle(f"_codecs.encode: only latin1 text is decoded, got {_short(encoding)}")
    return text.encode("latin1")


def _np_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str) or len(spec) > 64:
        raise UnsafePickle(f"numpy.dtype: expected a type string, got {_short(spec)}")
    return np.dtype(spec, bool(align), True)  # always a copy: BUILD must not alter numpy's singletons


def _np_reconstruct(subtype, shape, dtype):
    if subtype is not _NDARRAY:
        raise UnsafePickle(f"numpy _reconstruct: only plain ndarrays are read, got {_short(subtype)}")
    if _shape(shape, "numpy _reconstruct shape") != (0,):
        raise UnsafePickle("numpy _reconstruct: expected shape (0,)")  # BUILD sets the real shape
    return np.ndarray((0,), dtype=np.uint8)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype):
        raise UnsafePickle(f"numpy scalar: expected a dtype, got {_short(dtype)}")
    if dtype.hasobject:
        return data
    if isinstance(data, str):  # protocol-0/Python-2 pickles keep the bytes as latin1 text
        data = data.encode("latin1")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise UnsafePickle(f"numpy scalar: {dtype} needs {dtype.itemsize} bytes")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _np_frombuffer(buf, dtype, shape, order="C"):
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(dtype, np.dtype) or order not in ("C", "F"):
        raise UnsafePickle("numpy _frombuffer: expected bytes, a dtype and C/F order")
    return np.frombuffer(buf, dtype=dtype).reshape(_shape(shape, "numpy _frombuffer shape"), order=order)


def _torch_size(dims=()):
    return _shape(dims, "torch.Size")


def _check_hooks_and_metadata(hooks, metadata, what: str) -> None:
    # torch never saves hooks (Note [Don't serialize hooks]); restoring them would hand a pickled
    # callable to autograd
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise UnsafePickle(f"{what}: backward hooks are not restored")
    if metadata:
        raise UnsafePickle(f"{what}: tensor metadata (conj/neg bits) is not restored")


def _extent(offset: int, size: tuple, stride: tuple, what: str) -> int:
    """Elements of storage a strided view needs (0 for an empty view)."""
    if len(size) != len(stride):
        raise UnsafePickle(f"{what}: size {size} and stride {stride} differ in length")
    if not all(size):
        return 0
    return offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1


def _np_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """``torch._utils._rebuild_tensor_v2`` in a plain pickle, as a numpy array."""
    what = "torch._utils._rebuild_tensor_v2"
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise UnsafePickle(f"{what}: expected a decoded storage, got {_short(storage)}")
    offset, size, stride = _index(offset, what), _shape(size, what), _shape(stride, what)
    _check_hooks_and_metadata(hooks, metadata, what)
    n = math.prod(size)
    need = _extent(offset, size, stride, what)
    if need > storage.size or n > max(storage.size, 1):
        raise UnsafePickle(f"{what}: tensor of shape {size} needs {need} elements, its storage has {storage.size}")
    if n == 0:
        return np.zeros(size, dtype=storage.dtype)
    step, contiguous = 1, True
    for sz, st in zip(reversed(size), reversed(stride)):
        if sz != 1 and st != step:
            contiguous = False
            break
        step *= sz
    if contiguous:
        return storage[offset:offset + n].reshape(size)
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=tuple(st * storage.itemsize for st in stride))
    return np.array(view)


def _np_parameter(data, requires_grad=False, hooks=None):
    _check_hooks_and_metadata(hooks, None, "torch._utils._rebuild_parameter")
    if not isinstance(data, np.ndarray):
        raise UnsafePickle(f"torch._utils._rebuild_parameter: expected a tensor, got {_short(data)}")
    return data


class _ZipStorage:
    """One storage record of a torch zip checkpoint (``data`` None when only checking)."""

    __slots__ = ("data", "dtype", "numel")

    def __init__(self, data, dtype, numel: int):
        self.data, self.dtype, self.numel = data, dtype, numel


def _torch_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """``torch._utils._rebuild_tensor_v2`` in a zip checkpoint: a view on the record's bytes."""
    import torch

    what = "torch._utils._rebuild_tensor_v2"
    if not isinstance(storage, _ZipStorage):
        raise UnsafePickle(f"{what}: expected a storage record, got {_short(storage)}")
    offset, size, stride = _index(offset, what), _shape(size, what), _shape(stride, what)
    _check_hooks_and_metadata(hooks, metadata, what)
    if type(requires_grad) is not bool:
        raise UnsafePickle(f"{what}: requires_grad is {_short(requires_grad)}")
    need = _extent(offset, size, stride, what)
    if need > storage.numel:
        raise UnsafePickle(f"{what}: tensor of shape {size} needs {need} elements, its storage has {storage.numel}")
    if storage.data is None:  # checking only: shapes without memory
        return torch.empty_strided(size, stride, dtype=storage.dtype, device="meta")
    t = torch.empty((0,), dtype=storage.dtype).set_(storage.data, offset, size, stride)
    if requires_grad and (t.is_floating_point() or t.is_complex()):
        t.requires_grad_(True)
    return t


def _torch_parameter(data, requires_grad=False, hooks=None):
    import torch

    _check_hooks_and_metadata(hooks, None, "torch._utils._rebuild_parameter")
    if not isinstance(data, torch.Tensor) or type(requires_grad) is not bool:
        raise UnsafePickle(f"torch._utils._rebuild_parameter: expected a tensor, got {_short(data)}")
    return torch.nn.Parameter(data, requires_grad=requires_grad and (data.is_floating_point() or data.is_complex()))


# torch's legacy storage stream (the argument of torch.storage._load_from_bytes, which is what
# pickle.dumps(tensor) writes): storage class -> numpy dtype of its little-endian bytes
_LEGACY_STORAGES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
}
# storage class -> torch dtype name, in zip checkpoints (UntypedStorage holds bytes)
_ZIP_STORAGES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}

_HEADERS: list[bytes] = []  # legacy-stream prefixes (magic, protocol, little-endian info) already checked


def storage_from_bytes(raw) -> np.ndarray:
    """The 1-D numpy array of a pickled torch storage (``torch.storage._load_from_bytes``'s
    argument), decoded here; torch (whose own decoder is an unrestricted ``torch.load``) is
    never called.

    The stream: pickled magic number, protocol and system info, the storage (a persistent id
    naming its type), the list of storage keys, then an int64 element count and the raw
    little-endian bytes.
    """
    if not isinstance(raw, (bytes, bytearray)):
        raise UnsafePickle(f"torch.storage._load_from_bytes: expected bytes, got {_short(raw)}")
    raw = bytes(raw)
    fh = io.BytesIO(raw)
    up = _Unpickler(fh, mode="legacy-storage")
    for head in _HEADERS:  # magic, protocol and system info repeat verbatim: skip them
        if raw.startswith(head):
            fh.seek(len(head))
            break
    else:
        up.load()  # magic number
        up.load()  # protocol version
        info = up.load()
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise UnsafePickle("torch storage: only little-endian storages are read")
        if len(_HEADERS) < 8:
            _HEADERS.append(raw[: fh.tell()])
    ref = up.load()
    keys = up.load()
    if not isinstance(ref, _Marker) or not isinstance(keys, list) or len(keys) != 1:
        raise UnsafePickle("torch storage: expected exactly one storage")
    count = int(np.frombuffer(fh.read(8).ljust(8, b"\0"), dtype="<i8")[0])
    bf16 = ref.dtype == "bfloat16"
    dt = np.dtype(np.uint16 if bf16 else ref.dtype).newbyteorder("<")
    if count < 0 or count * dt.itemsize > len(raw) - fh.tell():
        raise UnsafePickle(f"torch storage: {count} elements need more than the {len(raw) - fh.tell()} bytes that follow")
    arr = np.frombuffer(raw, dtype=dt, offset=fh.tell(), count=count)
    if bf16:  # bfloat16 is the top half of a float32
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


# ------------------------------------------------------------------------------ allow-list


def _np_names(*pairs):
    # numpy 1 pickles name numpy.core.*, numpy 2 numpy._core.*
    out = {}
    for mod, name, call in pairs:
        for prefix in ("numpy.core.", "numpy._core."):
            out[(prefix + mod, name)] = call
    return out


_COMMON = {
    ("collections", "OrderedDict"): _Call("collections.OrderedDict", _ordered_dict),
    ("builtins", "set"): _Call("builtins.set", _set),
    ("builtins", "frozenset"): _Call("builtins.frozenset", _frozenset),
    ("builtins", "complex"): _Call("builtins.complex", _complex),
    ("builtins", "slice"): _Call("builtins.slice", _slice),
    ("builtins", "bytes"): _Call("builtins.bytes", _bytes_like(bytes)),
    ("builtins", "bytearray"): _Call("builtins.bytearray", _bytes_like(bytearray)),
    ("_codecs", "encode"): _Call("_codecs.encode", _codecs_encode),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Call("numpy.dtype", _np_dtype),
    **_np_names(("multiarray", "_reconstruct", _Call("numpy._reconstruct", _np_reconstruct)),
                ("multiarray", "scalar", _Call("numpy.scalar", _np_scalar)),
                ("numeric", "_frombuffer", _Call("numpy._frombuffer", _np_frombuffer))),
    ("torch", "Size"): _Call("torch.Size", _torch_size),
    ("copyreg", "_reconstructor"): _Call("copyreg._reconstructor", _copyreg_reconstructor),
    ("copyreg", "__newobj__"): _Call("copyreg.__newobj__", _copyreg_newobj),
    ("copyreg", "__newobj_ex__"): _Call("copyreg.__newobj_ex__", _copyreg_newobj_ex),
}
# base classes named by copyreg._reconstructor (protocol 0/1 pickles of subclasses): arguments only
_BASES = {("builtins", n): _Marker(f"builtins.{n}") for n in ("object", "dict", "list", "tuple", "int", "float", "str")}

ALLOWED = {
    # plain pickles (LMDB values, metadata): tensors come back as numpy arrays
    "plain": {
        **_COMMON, **_BASES,
        ("torch.storage", "_load_from_bytes"): _Call("torch.storage._load_from_bytes", storage_from_bytes),
        ("torch._utils", "_rebuild_tensor_v2"): _Call("torch._utils._rebuild_tensor_v2", _np_tensor),
        ("torch._utils", "_rebuild_parameter"): _Call("torch._utils._rebuild_parameter", _np_parameter),
    },
    # torch zip checkpoints: tensors come back as torch tensors
    "torch": {
        **_COMMON, **_BASES,
        ("torch._utils", "_rebuild_tensor_v2"): _Call("torch._utils._rebuild_tensor_v2", _torch_tensor),
        ("torch._utils", "_rebuild_parameter"): _Call("torch._utils._rebuild_parameter", _torch_parameter),
        **{("torch", k): _Marker(f"torch.{k}", v) for k, v in _ZIP_STORAGES.items()},
    },
    # inside torch.storage._load_from_bytes
    "legacy-storage": {
        ("collections", "OrderedDict"): _Call("collections.OrderedDict", _ordered_dict),
        **{("torch", k): _Marker(f"torch.{k}", v) for k, v in _LEGACY_STORAGES.items()},
    },
}
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


# ------------------------------------------------------------------------------ unpickler


class _Unpickler(pickle._Unpickler):
    """Python's pickle machine with every opcode that can call code replaced (module docstring)."""

    def __init__(self, file, *, mode: str = "plain", stand_ins: Iterable[str] | str = (), storage=None):
        super().__init__(file, encoding="latin1")
        self.allowed = ALLOWED[mode]
        self.mode = mode
        self.stand_ins = stand_ins if stand_ins == ANY else tuple(stand_ins)
        self.storage = storage  # mode "torch": key, dtype, numel -> _ZipStorage
        self.made: set[tuple[str, str]] = set()
        self.fresh: dict[int, Any] = {}  # arrays / dtypes made for a BUILD that has not come yet (held: ids stay unique)

    # -- globals
    def find_class(self, module, name):
        module = _PY2_MODULES.get(module, module)
        key = (module, name)
        found = self.allowed.get(key)
        if found is not None:
            return found
        if self.stand_ins == ANY or any(module == m or module.startswith(m + ".") for m in self.stand_ins):
            self.made.add(key)
            return _stand_in_class(module, name)
        raise UnsafePickle(f"refusing to unpickle {_printable(module, name)} (only tensors, arrays and plain containers are read)")

    def stand_ins_made(self) -> set[str]:
        return {_printable(m, n) for m, n in self.made}

    # -- calls
    def _call(self, func, args, kwargs=None):
        if type(args) is not tuple:
            raise UnsafePickle(f"call arguments must be a tuple, got {_short(args)}")
        if _is_stand_in_class(func):
            return _record(func, args, kwargs)
        if type(func) is _Call and not kwargs:
            out = func.fn(*args)
            if func.fn in (_np_reconstruct, _np_dtype):
                self.fresh[id(out)] = out
            return out
        raise UnsafePickle(f"refusing to call {_short(func) if not isinstance(func, _Marker) else func.name}")

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        if not _is_stand_in_class(cls):
            raise UnsafePickle(f"NEWOBJ: refusing to build {_short(cls)}")
        self.append(self._call(cls, args))

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if not _is_stand_in_class(cls) or not isinstance(kwargs, dict):
            raise UnsafePickle(f"NEWOBJ_EX: refusing to build {_short(cls)}")
        self.append(self._call(cls, args, kwargs))

    def _instantiate(self, klass, args):  # INST and OBJ
        self.append(self._call(klass, tuple(args)))

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Inert):
            inst.state = state
        elif self.fresh.get(id(inst)) is inst and isinstance(state, tuple):
            del self.fresh[id(inst)]
            if isinstance(inst, np.ndarray) and not (len(state) in (4, 5) and isinstance(state[-3], np.dtype)):
                raise UnsafePickle("numpy array state: expected (version, shape, dtype, fortran, data)")
            type(inst).__setstate__(inst, state)
        elif type(inst) is OrderedDict and isinstance(state, dict) and set(state) <= {"_metadata"}:
            # a module's state dict carries its version table as the attribute _metadata (a dict);
            # no other attribute is set (an instance attribute could shadow a method)
            if not isinstance(state.get("_metadata", {}), dict):
                raise UnsafePickle("state dict _metadata: expected a dict")
            inst.__dict__.update(state)
        else:
            raise UnsafePickle(f"BUILD: refusing to set the state of {_short(inst)}")

    # -- containers
    def load_append(self):
        value = self.stack.pop()
        self._extend(self.stack[-1], [value])

    def load_appends(self):
        items = self.pop_mark()
        self._extend(self.stack[-1], items)

    @staticmethod
    def _extend(obj, items):
        if type(obj) is list:
            obj.extend(items)
        elif isinstance(obj, Inert):
            obj.listitems.extend(items)
        else:
            raise UnsafePickle(f"APPEND: refusing to append to {_short(obj)}")

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._setitems(self.stack[-1], [key, value])

    def load_setitems(self):
        items = self.pop_mark()
        self._setitems(self.stack[-1], items)

    @staticmethod
    def _setitems(obj, items):
        if type(obj) in (dict, OrderedDict):
            target = obj
        elif isinstance(obj, Inert):
            target = obj.items
        else:
            raise UnsafePickle(f"SETITEM: refusing to set items of {_short(obj)}")
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]

    def load_additems(self):
        items = self.pop_mark()
        obj = self.stack[-1]
        if type(obj) is set:
            obj.update(items)
        elif isinstance(obj, Inert):
            obj.listitems.extend(items)
        else:
            raise UnsafePickle(f"ADDITEMS: refusing to add to {_short(obj)}")

    # -- extension codes and persistent ids
    def get_extension(self, code):
        raise UnsafePickle(f"refusing extension code {code} (copyreg registry)")

    def persistent_load(self, pid):
        if self.mode == "legacy-storage":
            if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "storage" and isinstance(pid[1], _Marker):
                return pid[1]
        elif self.mode == "torch" and self.storage is not None:
            if (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Marker)
                    and pid[1].name.endswith("Storage") and isinstance(pid[2], str) and isinstance(pid[3], str)):
                return self.storage(pid[2], pid[1].dtype, _index(pid[4], "storage size"))
        raise UnsafePickle(f"refusing persistent id {_short(pid)}")

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems


# ------------------------------------------------------------------------------ public API


def loads(data: bytes, *, stand_ins: Iterable[str] | str = ()) -> Any:
    """Unpickle ``data`` (a plain pickle; tensors come back as numpy arrays).

    ``stand_ins``: module prefixes (e.g. ``("torch_geometric",)``) whose classes become
    :class:`Inert` stand-ins, or :data:`ANY`; any other global outside the allow-list raises
    :class:`UnsafePickle`. Malformed data raises ``pickle.UnpicklingError``, ``EOFError``,
    ``ValueError``, ``TypeError`` and the like: callers turn them into one-line errors."""
    return _Unpickler(io.BytesIO(data), stand_ins=stand_ins).load()


def load(file, *, stand_ins: Iterable[str] | str = ()) -> Any:
    """:func:`loads` from an open binary file."""
    return _Unpickler(file, stand_ins=stand_ins).load()


def describe(exc: BaseException) -> str:
    """One line for a failed load (exception type and the first line of its message)."""
    try:
        msg = str(exc).splitlines()[0] if str(exc) else ""
    except Exception:  # a message that cannot even be formatted
        msg = ""
    msg = msg[:300]
    return msg if isinstance(exc, UnsafePickle) else f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def load_torch(path, *, stand_ins: Iterable[str] | str = (), found: set | None = None, read_data: bool = True) -> Any:
    """The object of a ``torch.save`` zip checkpoint, read without ``torch.load`` (see the
    module docstring); tensors are CPU torch tensors.

    ``stand_ins`` as in :func:`loads`; the names of the stand-ins made are added to ``found``.
    ``read_data=False`` checks the file (zip directory, record sizes, the pickle and every
    tensor's extent) without reading tensor bytes: tensors come back on the meta device.
    Any problem is an :class:`~atomsift.errors.InputError` naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint does not exist" if not path.exists() else "checkpoint is not a file", path=path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InputError(_not_zip(path, exc), path=path) from None
    try:
        with zf:
            up = _zip_unpickler(zf, path, stand_ins, read_data)
            obj = up.load()
    except InputError:
        raise
    except Exception as exc:  # truncated, malformed or refused pickle
        raise InputError(f"cannot read the checkpoint ({describe(exc)})", path=path) from None
    if found is not None:
        found.update(up.stand_ins_made())
    return obj


def check_torch(path, **kw) -> None:
    """Check a zip checkpoint without reading its tensor data (:func:`load_torch` with
    ``read_data=False``): refuses what :func:`load_torch` refuses, at the cost of reading the
    pickle only."""
    load_torch(path, read_data=False, **kw)


def _not_zip(path: Path, exc: BaseException) -> str:
    with open(path, "rb") as fh:
        head = fh.read(2)
    if not head:
        return "not a torch checkpoint (empty file)"
    if head[:1] == b"\x80":
        return "a legacy (pre-zip) torch.save file: not read (save it again with torch >= 1.6)"
    return f"not a torch checkpoint (truncated, or not torch's zip format: {describe(exc)})"


def _zip_unpickler(zf: zipfile.ZipFile, path: Path, stand_ins, read_data: bool) -> _Unpickler:
    size = path.stat().st_size
    infos = zf.infolist()
    pkls = [i.filename for i in infos if i.filename.count("/") == 1 and i.filename.endswith("/data.pkl")]
    if len(pkls) != 1:
        raise InputError("not a torch checkpoint (no single <archive>/data.pkl record)", path=path)
    prefix = pkls[0][: -len("data.pkl")]
    names = {i.filename: i for i in infos}
    if prefix + "constants.pkl" in names or any(n.startswith(prefix + "code/") for n in names):
        raise InputError("a TorchScript archive: not read (only torch.save checkpoints are)", path=path)
    total = 0
    for i in infos:
        if i.compress_type != zipfile.ZIP_STORED or i.compress_size != i.file_size:
            raise InputError(f"record {_one_line(i.filename)} is compressed (torch stores records uncompressed)", path=path)
        if i.header_offset + i.file_size > size:
            raise InputError(f"record {_one_line(i.filename)} ends past the end of the file (truncated)", path=path)
        total += i.file_size
    if total > size:
        raise InputError(f"records claim {total} bytes but the file holds {size} (overlapping records)", path=path)
    order = names.get(prefix + "byteorder")
    if order is not None and zf.read(order).strip() != b"little":
        raise InputError("a big-endian checkpoint: not read", path=path)
    cache: dict[str, _ZipStorage] = {}

    def storage(key: str, dtype_name: str, numel: int) -> _ZipStorage:
        import torch

        if key in cache:
            return cache[key]
        info = names.get(f"{prefix}data/{key}")
        if info is None:
            raise UnsafePickle(f"storage {_one_line(key)}: no such record")
        dtype = getattr(torch, dtype_name)
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if nbytes != info.file_size:
            raise UnsafePickle(f"storage {_one_line(key)}: {numel} x {dtype_name} is {nbytes} bytes, its record holds {info.file_size}")
        data = None
        if read_data:
            buf = torch.empty(nbytes, dtype=torch.uint8)
            view = memoryview(buf.numpy())
            with zf.open(info) as fh:  # reading to the end checks the record's CRC
                pos = 0
                while pos < nbytes:
                    chunk = fh.read(min(1 << 24, nbytes - pos))
                    if not chunk:
                        raise UnsafePickle(f"storage {_one_line(key)}: record truncated")
                    view[pos:pos + len(chunk)] = chunk
                    pos += len(chunk)
                fh.read(1)
            data = buf.untyped_storage()
        cache[key] = _ZipStorage(data, dtype, numel)
        return cache[key]

    return _Unpickler(io.BytesIO(zf.read(prefix + "data.pkl")), mode="torch", stand_ins=stand_ins, storage=storage)
