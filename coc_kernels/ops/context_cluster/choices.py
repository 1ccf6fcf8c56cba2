"""The launch configurations chosen per shape class (see :mod:`.tuning`, which makes them): keys, the choices held in
this process, the cache and pinned files, and the lookup the geometry makes (:func:`config_for`). Nothing here
times or launches anything.

A **key** names a kernel and what its best configuration may depend on: the kernel source, triton and torch
versions, device name, compute capability and SM count, dtype, dot precision, centre class and channel classes;
never the image size. A file (cache or pinned) is ``{"format": 1, "entries": {key: {"choice": {BLOCK_N,
num_warps, STAGES}, ...}}}``; the cache also keeps every candidate's median time and check outcome per key.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import os
import tempfile
import warnings

import torch

from .config import _SETTINGS as _CHECKS
from .config import KERNELS, SETTINGS, policy, with_settings

#: cache format version (a different one is ignored)
FORMAT = 1


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """Hash of the kernels' source files: a changed kernel invalidates every choice made for the old one."""
    h = hashlib.sha256()
    for text in kernel_sources().values():
        h.update(text)
    return h.hexdigest()[:16]


#: the files that make the kernels, their launches and the tables they read
KERNEL_SOURCES = ("tiles.py", "dots.py", "membership.py", "fwd.py", "bwd.py", "config.py", "host.py")


def kernel_sources(folder: str = os.path.dirname(os.path.abspath(__file__))) -> dict:
    """``{path: bytes}`` of :data:`KERNEL_SOURCES`, read now (the tuning key's code version; the compile gate
    compares them at the start and the end of a run)."""
    out = {}
    for name in KERNEL_SOURCES:
        path = os.path.join(folder, name)
        with open(path, "rb") as f:
            out[path] = f.read()
    return out


@functools.lru_cache(maxsize=None)
def _device_facts(device: torch.device) -> tuple:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return p.name, f"{p.major}.{p.minor}", p.multi_processor_count
    return f"{device.type} (triton interpreter)", "-", 0


def key(kernel: str, q) -> str:
    """The tuning key of ``kernel`` for geometry ``q`` (no image size in it)."""
    import triton
    from .config import pow2
    name, cc, sms = _device_facts(q.device)
    return json.dumps(dict(kernel=kernel, code=code_version(), triton=triton.__version__,
                           torch=torch.__version__.split("+")[0], device=name, cc=cc, sms=sms,
                           dtype=str(q.dtype).replace("torch.", ""), precision=q.dot["PREC"], centres=q.BM,
                           d=pow2(q.D), dv=pow2(q.DV)), sort_keys=True)


TABLE: dict = {}  # key -> entry (this process: pinned, cached or tuned, or rank 0's)
_LOADED = {"cache": None, "pinned": None}  # paths read into TABLE
_GENERATION = [0]  # bumped whenever TABLE changes (geometries made before are rebuilt)
FORCED: contextvars.ContextVar = contextvars.ContextVar("coc_tuning_forced", default=None)
ACTIVE: contextvars.ContextVar = contextvars.ContextVar("coc_tuning_active", default=False)
_WARNED: set = set()


def changed():
    """Mark the held choices as changed (geometries made before are rebuilt)."""
    _GENERATION[0] += 1


def token() -> tuple:
    """What a geometry's launch configurations depend on besides the shape and the policy."""
    return _GENERATION[0], FORCED.get()


def clear():
    """Forget every choice held in memory (the files stay)."""
    TABLE.clear()
    _LOADED.update(cache=None, pinned=None)
    _GENERATION[0] += 1
    _WARNED.clear()


def cache_path() -> str:
    p = os.environ.get("COC_TUNING_CACHE", "").strip()
    if p:
        return p
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "coc_kernels", "tuning.json")


def read_file(path: str, strict: bool = False) -> dict:
    """``{key: entry}`` of a cache / pinned file; a missing file is empty; an unreadable one is an error naming it
    with ``strict`` (a pinned file: the user's), else a warning and empty (the cache: rewritten by the next tuning)."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        if strict:
            raise ValueError(f"tuning file {path} is not readable JSON ({e}): fix it or unset COC_TUNING_PINNED") \
                from None
        warn_once(f"unreadable:{path}", f"tuning cache {path} is not readable JSON ({e}): ignored (the next tuning "
                                        "rewrites it)")
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        warn_once(f"format:{path}", f"tuning file {path} has another format (expected {FORMAT}): ignored")
        return {}
    out = {}
    for k, e in data["entries"].items():
        if isinstance(e, dict) and _valid_choice(e.get("choice")):
            out[k] = e
        else:
            warn_once(f"entry:{path}:{k}", f"tuning file {path}: entry {k} has no valid choice: ignored")
    return out


def _valid_choice(c) -> bool:
    return (isinstance(c, dict) and set(c) == set(SETTINGS)
            and all(isinstance(v, int) and not isinstance(v, bool) and _CHECKS[s][0](v) for s, v in c.items()))


def write_cache(entries: dict, path: str = None):
    """Merge ``entries`` into the cache file atomically (a temporary file in the same folder, then a rename: a
    reader sees the old file or the new one, never a part)."""
    path = path or cache_path()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    merged = read_file(path) if os.path.exists(path) else {}
    merged.update(entries)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tuning-", suffix=".json")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # readable like any file the user writes (mkstemp makes it private)
        with os.fdopen(fd, "w") as f:
            json.dump(dict(format=FORMAT, entries=merged), f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load(pinned_only: bool = False):
    """Read the pinned file (and, unless ``pinned_only``, the cache) into the table once per path."""
    pinned = os.environ.get("COC_TUNING_PINNED", "").strip() or None
    if pinned != _LOADED["pinned"]:
        for k, e in read_file(pinned, strict=True).items():
            TABLE[k] = dict(e, source="pinned")
        _LOADED["pinned"] = pinned
        _GENERATION[0] += 1
    if not pinned_only and cache_path() != _LOADED["cache"]:
        for k, e in read_file(cache_path()).items():
            if TABLE.get(k, {}).get("source") != "pinned":
                TABLE[k] = dict(e, source="cache")
        _LOADED["cache"] = cache_path()
        _GENERATION[0] += 1


def keys_of(q) -> dict:
    """``{kernel: key}`` of geometry ``q``, made once per geometry (a key costs a few microseconds)."""
    keys = q.__dict__.get("tuning_keys")
    if keys is None:
        keys = q.tuning_keys = {n: key(n, q) for n in KERNELS}
    return keys


def config_for(kernel: str, q, base: dict) -> dict:
    """The launch configuration of ``kernel`` in geometry ``q``: a tuning run's candidate, else the choice held for
    its key (tuning on, the kernel not overridden by the policy), else ``base`` (shipped + overrides)."""
    forced = FORCED.get()
    if forced is not None:
        return with_settings(base, dict(forced[1])) if forced[0] == kernel else base
    p = policy()
    if not p.tuning or kernel in p.config_overrides or "*" in p.config_overrides or not TABLE:
        return base
    e = TABLE.get(keys_of(q)[kernel])
    return with_settings(base, e["choice"]) if e else base


def report() -> list:
    """``[(key dict, entry)]`` of the choices held in memory."""
    return [(json.loads(k), e) for k, e in sorted(TABLE.items())]


def warn_once(what: str, msg: str):
    if what not in _WARNED:
        _WARNED.add(what)
        warnings.warn(msg, stacklevel=3)
