"""A trainer that never loses a good run: bad arguments refused up front, a non-finite loss stops the run
without saving, a corrupt checkpoint falls back to the previous one, and the seeded batches do not depend
on the number of processes or workers."""
import json
import warnings

import pytest
import torch

from adjoined_kernels.train import checkpoint, cli, loop
from adjoined_kernels.train.guard import NonFiniteError, detect_anomaly
from adjoined_kernels.train.loader import EpochBatches, ShardBatches
from test_train import FAST, make_idx_dir, make_imagefolder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_idx_dir(tmp_path_factory.mktemp("fmnist-rel"))


def run_args(data, out, *extra):
    return ["--data-dir", str(data), "--subset", "64", "--epochs", "2", "--no-onnx", *FAST, "--bench-runs", "0",
            "--device", "cpu", "--out", str(out), *extra]


# Each bad input and the words its error must contain (the closing note of issue 16 lists what they print).
BAD = [(["--lr", "nan"], "--lr must be a finite number"), (["--lr", "inf"], "--lr must be a finite number"),
       (["--lr", "0"], "--lr must be > 0"), (["--lr", "-1"], "--lr must be > 0"),
       (["--momentum", "1.5"], "--momentum must be < 1"), (["--weight-decay=-1e-4"], "--weight-decay must be >= 0"),
       (["--temperature", "0"], "--temperature must be > 0"), (["--pct-start", "1"], "--pct-start must be a fraction"),
       (["--lam-scale", "nan"], "--lam-scale must be a finite"), (["--epochs", "0"], "--epochs must be >= 1"),
       (["--batch-size", "-4"], "--batch-size must be >= 1"), (["--workers", "-1"], "--workers must be >= 0"),
       (["--save-every", "-1"], "--save-every must be >= 0"), (["--alpha", "3"], "--alpha 3 must divide --width 8"),
       (["--image-size", "4"], "--image-size must be >= 8"), (["--gamma", "0"], "--gamma must be > 0"),
       (["--milestones", "0"], "--milestones must be epochs >= 1"), (["--subset", "1"], "--subset must be >= 2")]


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_numbers_exit_2_before_any_work(argv, words, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["--data-dir", str(tmp_path / "absent"), "--out", str(out), *FAST, *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not out.exists(), "nothing may be written for bad arguments"


def _poison_at(monkeypatch, bad_step):
    """Make the full logits NaN from training step ``bad_step`` on (CE and KL become NaN)."""
    real, calls = loop.forward_loss, []

    def forward_loss(net, method, x, y, lam, args, model=None):
        calls.append(1)
        loss, lf, ls = real(net, method, x, y, lam, args, model)
        if len(calls) > bad_step:
            lf = lf * float("nan")
            loss = loss + lf.sum()
        return loss, lf, ls
    monkeypatch.setattr(loop, "forward_loss", forward_loss)


def test_non_finite_loss_stops_and_keeps_the_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    assert cli.main(run_args(data, tmp_path, "--stop-after", "1")) == 0
    good = (tmp_path / "checkpoint.pt").read_bytes()
    _poison_at(monkeypatch, 0)  # the resumed run's first step (global step 2, epoch 2)
    assert cli.main(run_args(data, tmp_path, "--resume")) == 3
    err = capsys.readouterr().err
    assert "non-finite loss, CE, KL, gradient at step 2 (epoch 2" in err, err
    assert f"last good checkpoint is {tmp_path / 'checkpoint.pt'} (epoch 1, step 2)" in err
    assert (tmp_path / "checkpoint.pt").read_bytes() == good, "a broken run must not overwrite a good checkpoint"
    assert not (tmp_path / "small.pt").exists() and not (tmp_path / "summary.json").exists()


def test_non_finite_before_any_checkpoint_and_mid_epoch_saves(data, tmp_path, monkeypatch, capsys):
    _poison_at(monkeypatch, 1)  # step 1: after the --save-every checkpoint of step 1
    assert cli.main(run_args(data, tmp_path, "--save-every", "1", "--subset", "96")) == 3
    err = capsys.readouterr().err
    assert "at step 1 (epoch 1" in err and "(epoch 0, step 1)" in err, err
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert (ck["epoch"], ck["epoch_step"]) == (0, 1)
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_detect_anomaly_names_the_first_bad_layer():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(4, 4)))
    with torch.no_grad():
        net[1][1].weight[0, 0] = float("inf")
    x = torch.randn(3, 4) + 5.0
    with pytest.raises(NonFiniteError, match=r"1\.1 \(Linear\) produced a non-finite output from finite inputs"):
        with detect_anomaly(net):
            net(x)
    assert not net._forward_hooks and not net[1][1]._forward_hooks, "the hooks are removed afterwards"


def test_detect_anomaly_flag_trains(data, tmp_path):
    assert cli.main(run_args(data, tmp_path, "--detect-anomaly", "--epochs", "1")) == 0


def test_corrupt_checkpoint_falls_back_to_the_previous_one(data, tmp_path):
    assert cli.main(run_args(data, tmp_path / "a")) == 0
    assert cli.main(run_args(data, tmp_path / "b", "--stop-after", "1", "--save-every", "1")) == 0
    ck = tmp_path / "b" / "checkpoint.pt"
    prev = tmp_path / "b" / "checkpoint.prev.pt"
    assert torch.load(prev, weights_only=False)["epoch_step"] == 1  # the mid-epoch one before the epoch end
    ck.write_bytes(ck.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.warns(UserWarning, match="cannot be read.*resuming from the previous one"):
        assert cli.main(run_args(data, tmp_path / "b", "--resume", "--save-every", "1")) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(ck, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resuming from the previous checkpoint is still exact"


def test_checkpoint_errors_stay_clear(data, tmp_path, capsys):
    assert cli.main(run_args(data, tmp_path, "--epochs", "1")) == 0
    assert cli.main(run_args(data, tmp_path, "--epochs", "1", "--resume", "--width", "16")) == 2
    assert "--width 8 (checkpoint) vs 16 (now)" in capsys.readouterr().err
    (tmp_path / "checkpoint.pt").write_bytes(b"junk")
    (tmp_path / "checkpoint.prev.pt").unlink(missing_ok=True)
    assert cli.main(run_args(data, tmp_path, "--epochs", "1", "--resume")) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_save_keeps_the_previous_file(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save(path, {"model": {}, "n": 1})
    checkpoint.save(path, {"model": {}, "n": 2})
    assert torch.load(path)["n"] == 2 and torch.load(checkpoint.prev_path(path))["n"] == 1
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


def _batches(sampler, epoch, start=0):
    sampler.set_epoch(epoch, start)
    return list(sampler)


@pytest.mark.parametrize("n,batch,world", [(100, 16, 1), (100, 16, 2), (100, 16, 4), (37, 8, 2), (5, 8, 1)])
def test_epoch_batches_shard_one_seeded_order(n, batch, world):
    ranks = [EpochBatches(n, batch, seed=3, rank=r, world=world) for r in range(world)]
    one = _batches(EpochBatches(n, batch, seed=3), 1)
    per_rank = [_batches(s, 1) for s in ranks]
    assert all(len(b) == len(one) for b in per_rank) and len(one) == max(1, n // batch)
    for step, whole in enumerate(one):
        parts = [b[step] for b in per_rank]
        assert len({len(p) for p in parts}) == 1, "every rank gets the same count"
        joined = [item for p in parts for item in p]
        assert joined == whole[:len(joined)], "the ranks' slices are the single-process batch, in order"
    seen = [i for b in one for i, _ in b]
    assert len(set(seen)) == len(seen), "no image twice in an epoch"
    assert _batches(EpochBatches(n, batch, seed=3), 2) != one, "another epoch, another order"
    assert _batches(EpochBatches(n, batch, seed=3), 1, start=1) == one[1:], "a resume starts at the next step"


def test_shard_batches_cover_the_split_once():
    got = [i for r in range(3) for b in ShardBatches(10, 3, r, 3) for i, _ in b]
    assert got == list(range(10))


def test_metrics_record_every_epoch_once_after_resume(data, tmp_path):
    assert cli.main(run_args(data, tmp_path, "--stop-after", "1", "--save-every", "1")) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean resume warns about nothing
        assert cli.main(run_args(data, tmp_path, "--resume")) == 0
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_corrupt_image_in_a_streamed_split_exits_2_naming_it(tmp_path, capsys, workers):
    make_imagefolder(tmp_path / "data")
    (tmp_path / "data" / "train" / "dog" / "bad.jpg").write_bytes(b"garbage")
    argv = ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--image-size", "16", "--epochs", "1",
            "--batch-size", "7", "--no-onnx", "--device", "cpu", "--out", str(tmp_path / "out"), "--workers", workers,
            "--width", "8", "--bench-runs", "0", "--no-progress", "--threads", "1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "bad.jpg" in err and "Traceback" not in err, err
