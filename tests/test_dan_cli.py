"""adjoined-search and adjoined-train --arch-json on a tiny synthetic Fashion-MNIST: outputs, exact resume with the
tau schedule, the arch.json round trip into an exact export, and clear errors."""
import json

import pytest
import torch
from test_train import FAST, idx_dir  # noqa: F401 - idx_dir is a fixture

import adjoined_kernels as ak
from adjoined_kernels.dan import tau_at
from adjoined_kernels.train import cli

SEARCH = ["--subset", "64", "--search-alphas", "1", "2", "4", "--tau-decay", "0.5", "--arch-lr", "0.2",
          "--no-onnx", "--device", "cpu", *FAST, "--bench-runs", "0"]


@pytest.fixture(scope="module")
def searched(idx_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    assert cli.search_main(["--data-dir", str(idx_dir), "--epochs", "3", "--out", str(out), *SEARCH]) == 0
    return out


def test_search_writes_arch_json_metrics_and_plot(searched):
    arch = json.loads((searched / "arch.json").read_text())
    assert (searched / "search.png").stat().st_size > 10_000
    assert arch["arch"] == "resnet18" and arch["width"] == 8 and arch["search_alphas"] == [1, 2, 4]
    assert len(arch["layers"]) == 9  # per stage: the residual stream and two inner convs
    for layer in arch["layers"]:
        assert abs(sum(layer["probs"]) - 1) < 1e-5
        assert layer["width"] == layer["candidates"][max(range(3), key=layer["probs"].__getitem__)]
    assert 0 < arch["flops"]["small"] <= arch["flops"]["full"]
    recs = [json.loads(x) for x in (searched / "metrics.jsonl").read_text().splitlines()]
    assert [r["tau"] for r in recs] == pytest.approx([tau_at(e, 15.0, 0.5) for e in range(3)])
    assert all(set(r["probs"]) == {la["name"] for la in arch["layers"]} for r in recs)
    assert recs[0]["probs"] != recs[-1]["probs"]  # the gates moved


def test_search_resume_is_exact(idx_dir, searched, tmp_path):
    args = ["--data-dir", str(idx_dir), "--epochs", "3", "--out", str(tmp_path), *SEARCH]
    assert cli.search_main([*args, "--stop-after", "1"]) == 0
    assert not (tmp_path / "arch.json").exists()
    assert cli.search_main([*args, "--resume"]) == 0
    a = torch.load(searched / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["arch_optimizer"]["state"].keys() == b["arch_optimizer"]["state"].keys()
    ra = [json.loads(x) for x in (searched / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["tau"] for r in ra] == [r["tau"] for r in rb]
    assert json.loads((searched / "arch.json").read_text())["small_widths"] == \
        json.loads((tmp_path / "arch.json").read_text())["small_widths"]
    assert cli.search_main([*args, "--resume", "--flops-weight", "3"]) == 2  # other search arguments: refused


def test_arch_json_trains_exports_and_counts_the_searched_network(idx_dir, searched, tmp_path):
    arch = json.loads((searched / "arch.json").read_text())
    rc = cli.main(["--data-dir", str(idx_dir), "--subset", "64", "--epochs", "1", "--out", str(tmp_path),
                   "--arch-json", str(searched / "arch.json"), "--no-onnx", *FAST, "--device", "cpu"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["flops_small"] == arch["flops"]["small"] and summary["params_small"] == arch["params"]["small"]
    model = ak.models.adjoined_resnet18(num_classes=10, in_channels=1, stem="cifar", width=8,
                                        small_widths=_widths(arch))
    model.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"])
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        _, ls = model.eval()(x)
        got = ak.export_small(model)(x)
    assert (got - ls).norm() / ls.norm() < 1e-5


def _widths(arch):
    from adjoined_kernels.train.search import widths_from_json
    return widths_from_json(arch["small_widths"])


@pytest.mark.parametrize("extra,msg", [
    (["--width", "16"], "searched for another network: width 8 (searched) vs 16"),
    (["--stem", "imagenet"], "stem 'cifar' (searched) vs 'imagenet'"),
])
def test_arch_json_for_another_network_is_refused(idx_dir, searched, tmp_path, capsys, extra, msg):
    argv = ["--data-dir", str(idx_dir), "--subset", "8", "--epochs", "1", "--out", str(tmp_path), *FAST,
            "--arch-json", str(searched / "arch.json"), *extra]
    assert cli.main(argv) == 2
    assert msg in capsys.readouterr().err


def test_arch_json_missing_or_malformed(idx_dir, tmp_path, capsys):
    base = ["--data-dir", str(idx_dir), "--subset", "8", "--epochs", "1", "--out", str(tmp_path), *FAST]
    assert cli.main([*base, "--arch-json", str(tmp_path / "none.json")]) == 2
    assert "run adjoined-search first" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{\"small_widths\": 3}")
    assert cli.main([*base, "--arch-json", str(tmp_path / "bad.json")]) == 2
    assert "not an arch.json" in capsys.readouterr().err


@pytest.mark.parametrize("extra,msg", [
    (["--flops-target", "1.5"], "--flops-target"), (["--search-alphas", "2", "2"], "--search-alphas"),
    (["--search-alphas", "1", "3"], "layer2.out width=16 is not divisible by alpha=3"),
    (["--tau0", "0"], "--tau0"), (["--flops-weight", "nan"], "--flops-weight"),
])
def test_search_bad_arguments_exit_2(idx_dir, tmp_path, capsys, extra, msg):
    argv = ["--data-dir", str(idx_dir), "--subset", "8", "--epochs", "1", "--out", str(tmp_path), *FAST, *extra]
    assert cli.search_main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.startswith("adjoined-search: error")


def test_dan_demo_end_to_end_and_resume(idx_dir, tmp_path, capsys):
    """python/dan_demo.py on the synthetic data, two seeds, then again: every run is skipped, same table."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "python", "dan_demo.py")
    spec = importlib.util.spec_from_file_location("dan_demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    argv = ["--out", str(tmp_path), "--seeds", "0", "1", "--subset", "32", "--search-epochs", "1", "--threads", "1",
            "--data-dir", str(idx_dir)]
    assert demo.main(argv) == 0
    table = (tmp_path / "table.md").read_text()
    assert "DAN small (searched widths)" in table and " ± " in table and "2 seed(s)" in table
    capsys.readouterr()
    assert demo.main(argv) == 0
    assert capsys.readouterr().out.count("exists, skipping that run") == 6
    assert (tmp_path / "table.md").read_text() == table
