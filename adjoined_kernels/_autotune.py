"""Per-geometry backend choice for ``backend="auto"`` on CUDA tensors (docs/kernels.md, "auto").

The first call of an op with a new key (shapes, strides, dtype, memory format, alpha, device) times every
available implementation once on the real inputs and keeps the fastest, in memory and in a JSON file, the
way ``torch.backends.cudnn.benchmark`` does. Later calls with that key cost one dict lookup.

``ADJOINED_AUTOTUNE=0`` turns timing off: callers then use their fixed order.
``ADJOINED_AUTOTUNE_CACHE=path`` moves the on-disk cache (default ``~/.cache/adjoined_kernels/autotune.json``;
an empty value keeps the cache in memory only).
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch

_VERSION = 1  # bump when the meaning of a key or of a timing changes: old files are then ignored
_CHOICES: dict[str, str] = {}  # key string -> chosen backend name
_TIMINGS: dict[str, dict[str, float]] = {}  # key string -> {name: median ms} for the keys timed here
_SEEN: dict[str, tuple[str, tuple]] = {}  # key string -> (op, key) for every key asked for in this process
_MEMO: dict[tuple, str] = {}  # (op, key) -> choice: a repeat skips building the key string (device name, repr)
_LOADED = False


def enabled() -> bool:
    """False when ``ADJOINED_AUTOTUNE=0``: ``auto`` then uses each op's fixed order."""
    return os.environ.get("ADJOINED_AUTOTUNE", "1") != "0"


def cache_path() -> Path | None:
    """The on-disk cache, or None when ``ADJOINED_AUTOTUNE_CACHE`` is set to the empty string."""
    env = os.environ.get("ADJOINED_AUTOTUNE_CACHE")
    if env is not None:
        return Path(env) if env else None
    return Path.home() / ".cache" / "adjoined_kernels" / "autotune.json"


def _key_str(op: str, key: tuple) -> str:
    # the device name and versions belong to the key: a cache file may move between machines or installs
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return repr((op, tuple(key), dev, torch.__version__, _VERSION))


def _load() -> None:
    global _LOADED
    _LOADED = True
    path = cache_path()
    if path is None or not path.exists():
        return
    try:
        data = json.loads(path.read_text())
        if data.get("version") == _VERSION:
            _CHOICES.update({k: v for k, v in data["choices"].items() if isinstance(v, str)})
    except (OSError, ValueError, KeyError, AttributeError) as e:
        warnings.warn(f"ignoring the unreadable autotune cache {path}: {e}", stacklevel=3)


def _save() -> None:
    path = cache_path()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".autotune-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": _VERSION, "choices": _CHOICES}, f, indent=0, sort_keys=True)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    except OSError as e:
        warnings.warn(f"could not write the autotune cache {path}: {e}", stacklevel=3)


def time_cuda(fn: Callable[[], object], warmup: int = 2, reps: int = 5) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream (CUDA events; warm-up calls not timed)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def timer(fn: Callable[[], object]) -> float:
    """``time_cuda`` looked up at call time (tests replace it with fake timings)."""
    return time_cuda(fn)


def lookup(op: str, key: tuple) -> str | None:
    """The choice already made in this process for ``(op, key)``, or None: one dict lookup, for the hot path."""
    return _MEMO.get((op, key))


def choose(op: str, key: tuple, candidates: dict[str, Callable[[], object]],
           timer: Callable[[Callable[[], object]], float] = time_cuda) -> str:
    """The fastest of ``candidates`` for ``(op, key)``, timed once per key and then cached.

    Args:
        op: the op's name, e.g. ``"conv2d_fprop"``.
        key: hashable description of everything that changes the timing (shapes, strides, dtype,
            memory format, alpha, ...); the device name and torch version are added here.
        candidates: backend name -> zero-argument callable running that backend on the real inputs. The
            callables must not modify their inputs: each runs several times.
        timer: ``fn -> milliseconds``; tests pass fake timings.

    Returns:
        the chosen name. A candidate that raises is skipped (with a warning); if all raise, the first
        name is returned so that the caller's own call reports the error.
    """
    if not _LOADED:
        _load()
    k = _key_str(op, key)
    _SEEN[k] = (op, tuple(key))
    hit = _CHOICES.get(k)
    if hit in candidates:
        _MEMO[(op, key)] = hit
        return hit
    timings = {}
    for name, fn in candidates.items():
        try:
            timings[name] = float(timer(fn))
        except Exception as e:  # noqa: BLE001 - a backend that fails here must not stop training
            warnings.warn(f"autotune: backend {name!r} failed on {op} {key}: {e}", stacklevel=2)
    if not timings:
        return next(iter(candidates))
    best = min(timings, key=timings.get)
    _CHOICES[k], _TIMINGS[k], _MEMO[(op, key)] = best, timings, best
    _save()
    return best


def report() -> list[dict]:
    """One row per key asked for in this process: ``{"op", "key", "backend", "ms": {name: median ms}}``.

    Keys answered from the disk cache have an empty ``ms``.
    """
    return [{"op": op, "key": key, "backend": _CHOICES[k], "ms": dict(_TIMINGS.get(k, {}))}
            for k, (op, key) in _SEEN.items() if k in _CHOICES]


def clear(memory_only: bool = True) -> None:
    """Forget the choices (tests; after a driver change). ``memory_only=False`` also deletes the file."""
    global _LOADED
    _CHOICES.clear()
    _TIMINGS.clear()
    _MEMO.clear()
    _SEEN.clear()
    _LOADED = memory_only  # keep the file out of memory after a memory-only clear
    path = cache_path()
    if not memory_only and path is not None and path.exists():
        path.unlink()
