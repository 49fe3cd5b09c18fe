"""The drop-in example runs and agrees with the reference."""
import importlib.util
import pathlib

import pytest

import adjoined_kernels as ak

EXAMPLE = pathlib.Path(__file__).parents[1] / "python" / "examples" / "drop_in.py"


def _load():
    spec = importlib.util.spec_from_file_location("drop_in", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_drop_in_example(backend, capsys):
    if backend not in ak.available_backends():
        pytest.skip(f"{backend} backend unavailable here")
    assert _load().main(["--backend", backend]) == 0
    assert "max rel. error" in capsys.readouterr().out
