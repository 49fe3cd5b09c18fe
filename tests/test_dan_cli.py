"""adjoined-search and adjoined-train --arch-json on a tiny synthetic Fashion-MNIST: outputs, exact resume with the
tau schedule, the arch.json round trip into an exact export, and clear errors."""
import json

import pytest
import torch
from test_train import FAST, idx_dir  # noqa: F401 - idx_dir is a fixture

import adjoined_kernels as ak
from adjoined_kernels.dan import tau_at_step
from adjoined_kernels.train import cli

SEARCH = ["--subset", "64", "--search-alphas", "1", "2", "4", "--tau-end", "0.5", "--arch-lr", "0.2",
          "--flops-target", "0.5", "--flops-tolerance", "0.1",
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
        assert layer["probs"] == pytest.approx(torch.softmax(torch.tensor(layer["eta"]), 0).tolist(), abs=1e-6)
        assert layer["argmax"] == layer["candidates"][max(range(3), key=layer["probs"].__getitem__)]
    fl = arch["flops"]
    assert fl["budget"] == pytest.approx(0.5 * fl["full"]) and fl["band"] == pytest.approx([0.45 * fl["full"], fl["budget"]])
    assert fl["band"][0] <= fl["small"] <= fl["band"][1]  # the exported network, counted by flop_counter
    assert fl["small_searched"] == fl["small"] - fl["shared"] and fl["argmax_searched"] == fl["argmax"] - fl["shared"]
    assert arch["log_prob"]["given_up"] >= 0 and arch["log_prob"]["argmax"] <= 0
    assert [w for la in arch["layers"] for w in [la["width"]]] == _flat(arch["small_widths"])
    assert [w for la in arch["layers"] for w in [la["argmax"]]] == _flat(arch["argmax_widths"])
    opts = arch["search_options"]
    assert opts["tau_schedule"] == "step" and opts["tau_end"] == 0.5 and opts["arch_lr"] == 0.2 and opts["seed"] == 0
    recs = [json.loads(x) for x in (searched / "metrics.jsonl").read_text().splitlines()]
    total = recs[-1]["step"]
    assert [r["tau"] for r in recs] == pytest.approx([tau_at_step(r["step"] - 1, total, 15.0, 0.5) for r in recs])
    assert recs[-1]["tau"] == pytest.approx(0.5)
    for r in recs:  # what will be exported is what the epoch's eval ran
        assert fl["band"][0] <= r["projected_flops"] <= fl["band"][1] and r["argmax_flops"] > 0
        assert set(r["eta"]) == set(r["probs"])
    assert recs[-1]["projected_flops"] == fl["small"] and recs[-1]["test_acc_small"] == arch["projected_test_acc_small"]
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


def _flat(widths):
    """Per stage: out, then the inner widths (the order of the gates)."""
    return [w for st in widths for w in [st["out"], *sum(st["inner"], [])]]


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
    (["--tau-end", "0"], "--tau-end"), (["--flops-tolerance", "1"], "--flops-tolerance"),
    (["--flops-target", "0.01"], "the reachable FLOPs per image range from"),
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
    assert "counted FLOPs are within [0.95, 1.00]" in table
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert all(19 * r["uniform"]["flops_small"] <= 20 * r["dan"]["flops_small"] <= 20 * r["uniform"]["flops_small"]
               for r in runs)
    capsys.readouterr()
    assert demo.main(argv) == 0
    assert capsys.readouterr().out.count("exists, skipping that run") == 6
    assert (tmp_path / "table.md").read_text() == table
