"""python/reproduce/paper_claims.py --quick end to end on a tiny synthetic dataset: every method runs, the
report has every row and claim, and a second invocation resumes (finished runs are skipped, an unfinished
one continues from its checkpoint)."""
import csv
import importlib.util
import json
import os

import pytest
from test_train import make_idx_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def claims():
    spec = importlib.util.spec_from_file_location("paper_claims", os.path.join(ROOT, "python", "reproduce",
                                                                              "paper_claims.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_end_to_end_and_resume(claims, tmp_path, capsys):
    data = make_idx_dir(tmp_path / "data", 64, 64)
    out = tmp_path / "claims"
    argv = ["--quick", "--seeds", "1", "--data-dir", str(data), "--out", str(out), "--threads", "1"]
    assert claims.main(argv) == 0
    methods = ["standard", "adjoined-a2", "adjoined-a4", "adjoined-a8", "small-a4", "kd-a4", "kddp-a4", "pwh-a4"]
    for m in methods:
        assert (out / "seed0" / m / "summary.json").is_file(), m
    md = (out / "claims.md").read_text()
    for row in ("| Standard |", "| AN-Full | 2 |", "| AN-Small | 8 |", "| Small from scratch | 4 |", "| KD | 4 |",
                "| KDDP | 4 |", "| PWH | 4 |"):
        assert row in md, row
    for claim in ("AN-Full (α=2) ≥ Standard", "AN-Full (α=8) ≥ Standard", "AN-Small ≥ KD at α=4",
                  "AN-Small ≥ small from scratch at α=4", "AN-Small ≥ KDDP at α=4", "AN-Small ≥ PWH at α=4"):
        line = next(x for x in md.splitlines() if claim in x)
        assert "Verdict: **" in line and "not measured" not in line, line
    assert "subset: 64 train and 64 test images" in md and "2 epochs per run" in md
    rows = list(csv.DictReader((out / "claims.csv").open()))
    assert len(rows) == 11 and all(0 <= float(r["acc_mean"]) <= 1 and int(r["params"]) > 0 for r in rows)
    pwh_row = next(r for r in rows if r["method"] == "PWH")
    an_row = next(r for r in rows if r["method"] == "AN-Small" and r["alpha"] == "4")
    assert pwh_row["params"] == an_row["params"] and pwh_row["flops"] == an_row["flops"]
    assert (out / "claims.png").stat().st_size > 0
    capsys.readouterr()

    # resume: the finished runs are skipped; one with a checkpoint but no summary.json (killed before its report)
    # runs again with --resume and ends where it had
    kd = out / "seed0" / "kd-a4"
    first = json.loads((kd / "summary.json").read_text())["acc_small"]
    os.remove(kd / "summary.json")
    assert claims.main(argv) == 0
    log = capsys.readouterr().out
    assert log.count("done, skipped") == len(methods) - 1
    assert "--resume" in next(x for x in log.splitlines() if "kd-a4" in x and "$ adjoined-train" in x)
    assert json.loads((kd / "summary.json").read_text())["acc_small"] == first
