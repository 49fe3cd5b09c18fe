"""The auto backend's selection logic on CPU, with fake timings (no GPU needed)."""
import json

import pytest

from adjoined_kernels import _autotune


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "autotune.json"
    monkeypatch.setenv("ADJOINED_AUTOTUNE_CACHE", str(path))
    _autotune.clear()
    _autotune._LOADED = False
    yield path
    _autotune.clear()


def _fake(ms):
    return lambda fn: ms[fn()]


def test_picks_fastest_and_times_once(cache):
    calls = []
    cands = {name: (lambda n=name: calls.append(n) or n) for name in ("cuda", "triton", "reference")}
    timer = _fake({"cuda": 3.0, "triton": 2.0, "reference": 1.5})
    assert _autotune.choose("conv2d_fprop", (1, 2), cands, timer) == "reference"
    assert sorted(calls) == ["cuda", "reference", "triton"]
    assert _autotune.choose("conv2d_fprop", (1, 2), cands, timer) == "reference"
    assert len(calls) == 3, "a cached key must not be timed again"
    assert _autotune.choose("conv2d_fprop", (1, 3), cands, _fake({"cuda": 1, "triton": 2, "reference": 3})) == "cuda"
    rows = _autotune.report()
    assert [(r["op"], r["key"], r["backend"]) for r in rows] == [("conv2d_fprop", (1, 2), "reference"),
                                                                ("conv2d_fprop", (1, 3), "cuda")]
    assert rows[0]["ms"] == {"cuda": 3.0, "triton": 2.0, "reference": 1.5}


def test_disk_cache_survives_a_new_process(cache):
    cands = {"cuda": lambda: "cuda", "reference": lambda: "reference"}
    assert _autotune.choose("loss", ("k",), cands, _fake({"cuda": 1.0, "reference": 2.0})) == "cuda"
    assert json.loads(cache.read_text())["version"] == _autotune._VERSION
    _autotune.clear()
    _autotune._LOADED = False  # as a fresh process

    def never(fn):
        raise AssertionError("a key on disk must not be timed")
    assert _autotune.choose("loss", ("k",), cands, never) == "cuda"
    assert _autotune.report()[0]["ms"] == {}


def test_failing_backend_is_skipped(cache):
    def boom():
        raise RuntimeError("no kernel for this shape")
    cands = {"triton": boom, "reference": lambda: "reference"}
    with pytest.warns(UserWarning, match="'triton' failed"):
        assert _autotune.choose("op", (0,), cands, lambda fn: fn() and 1.0) == "reference"


def test_corrupt_cache_warns_and_retimes(cache):
    cache.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable autotune cache"):
        assert _autotune.choose("op", (0,), {"a": lambda: "a", "b": lambda: "b"}, _fake({"a": 2, "b": 1})) == "b"
    assert json.loads(cache.read_text())["choices"], "the corrupt file is replaced by a good one"


def test_env_switches(cache, monkeypatch):
    assert _autotune.enabled()
    monkeypatch.setenv("ADJOINED_AUTOTUNE", "0")
    assert not _autotune.enabled()
    monkeypatch.setenv("ADJOINED_AUTOTUNE_CACHE", "")
    assert _autotune.cache_path() is None
    assert _autotune.choose("op", (0,), {"a": lambda: "a"}, _fake({"a": 1})) == "a"
