"""The trainer under torchrun on CPU (2 gloo processes): DDP with SyncBatchNorm equals one process on the same
global batch, DDP without it stays close, FSDP2 takes one correct step, and a SIGKILLed run resumes
bitwise, alone and under torchrun."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from test_train import make_idx_dir

ROOT = Path(__file__).resolve().parents[1]
# lr 0.02 and 4 steps: differences stay at rounding level (at lr 0.15 training amplifies them to ~1e-2)
# --save-every 1 (a checkpoint every step) changes nothing in the weights; the kill tests need it
ARGS = ["--width", "8", "--no-progress", "--bench-runs", "0", "--no-onnx", "--threads", "1", "--device", "cpu",
        "--epochs", "2", "--batch-size", "32", "--subset", "96", "--lr", "0.02", "--save-every", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_idx_dir(tmp_path_factory.mktemp("fmnist-dist"))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _run(cmd, timeout=300):
    return subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def torchrun(*args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]


def train_cmd(data, out, *extra, nproc=1):
    args = ["--data-dir", str(data), *ARGS, "--out", str(out), *extra]
    if nproc == 1:
        return [sys.executable, "-m", "adjoined_kernels.train", *args]
    return torchrun("-m", "adjoined_kernels.train", *args, nproc=nproc)


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _model(out):
    return torch.load(Path(out) / "checkpoint.pt", weights_only=False)["model"]


def _losses(out):
    return [json.loads(line)["loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _max_rel(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max() / a[k].double().abs().max().clamp_min(1e-6))
               for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Uninterrupted runs with --sync-bn: {1: one process, 2: two gloo processes} -> (output dir, stdout)."""
    out = {}
    for nproc in (1, 2):
        d = tmp_path_factory.mktemp(f"whole{nproc}")
        out[nproc] = (d, _ok(_run(train_cmd(data, d, "--sync-bn", nproc=nproc))).stdout)
    return out


def test_ddp_with_sync_bn_equals_one_process(runs):
    (single, _), (ddp, stdout) = runs[1], runs[2]
    assert stdout.count("epoch   1 ") == 1, "rank 0 alone logs"
    la, lb = _losses(single), _losses(ddp)
    assert len(la) == len(lb) == 2
    assert max(abs(a - b) / abs(a) for a, b in zip(la, lb)) < 1e-5, (la, lb)
    assert _max_rel(_model(single), _model(ddp)) < 1e-4
    assert (ddp / "small.pt").exists() and (ddp / "summary.json").exists()


def test_ddp_without_sync_bn_trains_and_stays_close(data, runs, tmp_path):
    single = runs[1][0]
    _ok(_run(train_cmd(data, tmp_path, nproc=2)))
    la, lb = _losses(single), _losses(tmp_path)
    assert all(abs(a - b) / a < 0.1 for a, b in zip(la, lb)), (la, lb)
    assert la[1] != lb[1], "half-batch BatchNorm statistics must change the trajectory a little"
    assert lb[1] < lb[0]


def test_torchrun_refuses_what_runs_in_one_process():
    from adjoined_kernels.train import cli
    from adjoined_kernels.train.validate import check_args
    parse = cli.build_parser().parse_args
    assert "multiple of the 2 processes" in check_args(parse(["--batch-size", "33"]), world_size=2)
    assert check_args(parse(["--batch-size", "33"]), world_size=1) is None
    assert "one process" in check_args(parse(["--method", "kd", "--teacher", "t.pt"]), world_size=2)
    assert "one process" in check_args(parse(["--cuda-graphs"]), world_size=2)


def test_fsdp2_one_step_equals_one_process(tmp_path):
    _ok(_run(torchrun(str(ROOT / "tests" / "torchrun" / "fsdp_step.py"), str(tmp_path / "r.json"))))
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["sharded"] == "DTensor" and r["max_change"] > 1e-3
    assert r["max_rel_err"] < 1e-5, r


KILLER = textwrap.dedent("""
    import os, signal, sys
    from adjoined_kernels.train import checkpoint, cli
    save = checkpoint.save

    def save_then_die(path, state):  # SIGKILL right after the first mid-epoch checkpoint of epoch 2
        save(path, state)
        if state["epoch"] == 1 and state["epoch_step"] == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save = save_then_die
    sys.exit(cli.main(sys.argv[1:]))
""")


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_mid_epoch_then_resume_is_bitwise(data, runs, tmp_path, nproc):
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    args = ["--data-dir", str(data), *ARGS, "--sync-bn", "--out", str(tmp_path / "cut")]
    cmd = [sys.executable, str(killer), *args] if nproc == 1 else torchrun(str(killer), *args, nproc=nproc)
    proc = _run(cmd)
    assert proc.returncode != 0, "the run must have been killed"
    if nproc == 1:
        assert proc.returncode == -signal.SIGKILL
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert (ck["epoch"], ck["epoch_step"]) == (1, 1) and not (tmp_path / "cut" / "summary.json").exists()
    _ok(_run(train_cmd(data, tmp_path / "cut", "--sync-bn", "--resume", nproc=nproc)))
    whole = runs[nproc][0]
    a, b = _model(whole), _model(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert _losses(whole) == _losses(tmp_path / "cut")
