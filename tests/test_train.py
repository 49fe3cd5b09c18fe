"""The trainer (adjoined-train): data loading and errors, a smoke run with every output, exact resume,
the baselines, --check (and that it can fail), and ONNX vs onnxruntime. CPU, tiny synthetic datasets."""
import gzip
import json
import math
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

import adjoined_kernels as ak
from adjoined_kernels.train import cli
from adjoined_kernels.train.data import DataError, augment, load_dataset

# --threads 1: on a loaded 2-core machine, 2 OpenMP threads can be 10x slower than one.
FAST = ["--width", "8", "--batch-size", "32", "--bench-runs", "1", "--no-progress", "--eval-batch-size", "64",
        "--threads", "1"]


def write_idx(path, arr, gz=True):
    arr = np.asarray(arr, dtype=np.uint8)
    head = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(head + arr.tobytes())


def synthetic_images(n, c, size, classes, seed):
    """Images whose class is a bright horizontal band position: learnable, cheap."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 60, (n, c, size, size))
    band = size // classes if size >= classes else 1
    for i, k in enumerate(y):
        r = (k * band) % size
        x[i, :, r:r + max(band, 1)] += 150
    return x.astype(np.uint8), y.astype(np.uint8)


def make_idx_dir(d, n_train=128, n_test=64, gz=True, size=16):
    """Fashion-MNIST-like IDX files; 16x16 images by default to keep the training tests fast."""
    d.mkdir(parents=True, exist_ok=True)
    xtr, ytr = synthetic_images(n_train, 1, size, 10, 0)
    xte, yte = synthetic_images(n_test, 1, size, 10, 1)
    ext = ".gz" if gz else ""
    write_idx(d / f"train-images-idx3-ubyte{ext}", xtr[:, 0], gz)
    write_idx(d / f"train-labels-idx1-ubyte{ext}", ytr, gz)
    write_idx(d / f"t10k-images-idx3-ubyte{ext}", xte[:, 0], gz)
    write_idx(d / f"t10k-labels-idx1-ubyte{ext}", yte, gz)
    return d


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return make_idx_dir(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def smoke_run(idx_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = cli.main(["--data-dir", str(idx_dir), "--epochs", "2", "--out", str(out), *FAST])
    return rc, out


# ------------------------------------------------------------------------------------------------ data

def test_idx_loads_gz_and_raw(tmp_path):
    for gz in (True, False):
        d = make_idx_dir(tmp_path / f"gz{gz}", 40, 20, gz, size=28)
        ds = load_dataset("fashion-mnist", str(d))
        assert ds.x_train.shape == (40, 1, 28, 28) and ds.x_train.dtype == torch.uint8
        assert ds.y_test.shape == (20,) and ds.y_test.dtype == torch.int64
        assert ds.num_classes == 10 and ds.flip and ds.pad == 2
    assert not load_dataset("mnist", str(d)).flip  # digits are not flipped


def test_subset(idx_dir):
    ds = load_dataset("fashion-mnist", str(idx_dir), subset=50, seed=3)
    assert len(ds.x_train) == 50 and len(ds.x_test) == 50


def test_augment_crop_flip_per_sample_seed():
    x = torch.randint(0, 255, (6, 3, 12, 12), dtype=torch.uint8)
    seeds = torch.randint(0, 2 ** 62, (6,), generator=torch.Generator().manual_seed(5))
    a = augment(x, 2, False, seeds)
    oy, ox = seeds % 5, (seeds // 5) % 5
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        assert torch.equal(a[i], xp[i, :, oy[i]:oy[i] + 12, ox[i]:ox[i] + 12])
    assert a.stride() == (3 * 144, 144, 12, 1)  # plain NCHW
    assert len({(int(u), int(v)) for u, v in zip(oy, ox)}) > 1, "offsets must vary between samples"
    f = augment(x, 0, True, seeds)
    flipped = [torch.equal(f[i], x[i].flip(-1)) for i in range(6)]
    assert all(flipped[i] or torch.equal(f[i], x[i]) for i in range(6)) and 0 < sum(flipped) < 6
    # an image's augmentation depends on its seed alone, not on the rest of its batch
    assert torch.equal(augment(x[2:4], 2, True, seeds[2:4]), augment(x, 2, True, seeds)[2:4])
    one = augment(x[:, :1], 2, True, seeds)
    assert one.stride() == (144, 144, 12, 1)  # one channel: still NCHW strides, not channels-last


def test_cifar_pickle_dirs(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name, n in [(f"data_batch_{i}", 8) for i in range(1, 6)] + [("test_batch", 6)]:
        x, y = synthetic_images(n, 3, 32, 10, n)
        with open(root / name, "wb") as f:
            pickle.dump({b"data": x.reshape(n, -1), b"labels": [int(v) for v in y]}, f)
    ds = load_dataset("cifar10", str(tmp_path))  # the parent works too
    assert ds.x_train.shape == (40, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    assert ds.num_classes == 10 and ds.pad == 4 and len(ds.mean) == 3
    root100 = tmp_path / "cifar-100-python"
    root100.mkdir()
    for name, n in (("train", 12), ("test", 5)):
        x, _ = synthetic_images(n, 3, 32, 10, n)
        with open(root100 / name, "wb") as f:
            pickle.dump({b"data": x.reshape(n, -1), b"fine_labels": list(range(100 - n, 100)),
                         b"coarse_labels": [0] * n}, f)
    ds = load_dataset("cifar100", str(root100))
    assert ds.x_train.shape == (12, 3, 32, 32) and ds.num_classes == 100
    (root100 / "test").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test"):
        load_dataset("cifar100", str(root100))


def make_imagefolder(root, sizes=(("train", 3), ("val", 2)), classes=("cat", "dog")):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in sizes:
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i}.png")
    return root


def test_imagefolder_streams_with_the_reference_transforms(tmp_path):
    from adjoined_kernels.train.loader import EpochBatches, ShardBatches, make_loader
    make_imagefolder(tmp_path)
    ds = load_dataset("imagefolder", str(tmp_path), image_size=16)
    assert (ds.size("train"), ds.size("test"), ds.sample_shape, ds.num_classes) == (6, 4, (3, 16, 16), 2)
    x, y = ds.take(torch.arange(6))
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.uint8 and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(ds.take(torch.arange(6))[0], x), "the evaluation transform is deterministic"
    sampler = EpochBatches(6, 3, seed=0)
    sampler.set_epoch(0)
    aug = [b for b in make_loader(ds.split("train", True), sampler, 0, False)]
    assert [b[0].shape for b in aug] == [(3, 3, 16, 16)] * 2
    assert not torch.equal(torch.cat([b[0] for b in aug]), x[torch.cat([torch.tensor([i for i, _ in b])
                                                                         for b in sampler])])
    sampler.set_epoch(0)
    two = [b for b in make_loader(ds.split("train", True), sampler, 2, False)]  # seeded per sample, any worker
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(aug, two))
    test = [b for b in make_loader(ds.split("test"), ShardBatches(4, 3), 0, False)]
    assert [b[1].tolist() for b in test] == [[0, 0, 1], [1]]
    (tmp_path / "val" / "dog" / "bad.jpg").write_bytes(b"garbage")
    ds = load_dataset("imagefolder", str(tmp_path), image_size=16)  # indexing decodes nothing
    with pytest.raises(DataError, match="bad.jpg"):
        list(make_loader(ds.split("test"), ShardBatches(5, 5), 0, False))
    (tmp_path / "val" / "fox").mkdir()
    with pytest.raises(DataError, match="'fox'.*not among the train classes"):
        load_dataset("imagefolder", str(tmp_path), image_size=16)


def test_missing_dataset_dir_exit_2_no_traceback(tmp_path):
    missing = tmp_path / "nope"
    r = subprocess.run([sys.executable, "-m", "adjoined_kernels.train", "--data-dir", str(missing),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert str(missing) in r.stderr and "apt-get install dataset-fashion-mnist" in r.stderr
    assert "--data-dir" in r.stderr and "Traceback" not in r.stderr + r.stdout


def test_missing_and_malformed_files(tmp_path, capsys):
    d = make_idx_dir(tmp_path / "d", 20, 10)
    os.remove(d / "t10k-labels-idx1-ubyte.gz")
    assert cli.main(["--data-dir", str(d), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte" in err and str(d) in err
    make_idx_dir(d, 20, 10)
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 7))
    assert cli.main(["--data-dir", str(d), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "malformed IDX file" in err and "train-images-idx3-ubyte.gz" in err
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    assert cli.main(["--data-dir", str(d), "--out", str(tmp_path / "o")]) == 2
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err


def test_bad_arguments_exit_2(idx_dir, tmp_path, capsys):
    assert cli.main(["--data-dir", str(idx_dir), "--width", "8", "--alpha", "3", "--out", str(tmp_path)]) == 2
    assert "alpha" in capsys.readouterr().err
    assert cli.main(["--data-dir", str(idx_dir), "--resume", "--out", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["--arch", "resnet7"])
    assert e.value.code == 2


# ----------------------------------------------------------------------------------------------- training

def test_smoke_outputs(smoke_run):
    rc, out = smoke_run
    assert rc == 0
    for f in ("metrics.jsonl", "summary.json", "curves.png", "checkpoint.pt", "small.onnx", "small.pt"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert not list(out.glob("*.tmp*"))
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]
    keys = ("epoch", "lambda", "loss", "ce", "kl", "train_acc_full", "train_acc_small", "test_acc_full",
            "test_acc_small", "lr", "time")
    for r in recs:
        assert all(k in r for k in keys)
        assert all(np.isfinite(r[k]) for k in keys)
        assert all(0 <= r[k] <= 1 for k in keys if "acc" in k)
        assert r["kl"] >= 0 and abs(r["loss"] - (r["ce"] + r["lambda"] * r["kl"])) < r["loss"]
    spe = 128 // 32
    assert recs[0]["lambda"] == pytest.approx(ak.lambda_schedule((spe - 1) / (2 * spe)))
    s = json.loads((out / "summary.json").read_text())
    assert s["acc_full"] == recs[-1]["test_acc_full"] and s["acc_small"] == recs[-1]["test_acc_small"]
    assert s["params_full"] > s["params_small"] > 0 and s["flops_full"] > s["flops_small"] > 0
    for b in (1, 64):
        assert s[f"latency_cpu_b{b}_ms_full"] > 0 and s[f"latency_cpu_b{b}_ms_small"] > 0
    assert s["versions"]["torch"] == torch.__version__ and s["versions"]["python"]
    assert s["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # --device auto
    assert s["backend"] == "auto" and s["args"]["width"] == 8
    assert s["onnx_max_rel_err"] < 1e-4
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["epoch"] == 2 and ck["global_step"] == 2 * spe
    assert {"torch", "python"} <= set(ck["rng"]) and ck["epoch_step"] == 0 and ck["partial"] is None


def test_onnx_matches_onnxruntime_and_small_branch(smoke_run, idx_dir):
    ort = pytest.importorskip("onnxruntime")
    _, out = smoke_run
    small = torch.load(out / "small.pt", weights_only=False).eval()
    x = torch.randn(5, 1, 16, 16)
    sess = ort.InferenceSession(str(out / "small.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.inference_mode():
        ref = small(x)
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-4
    # small.pt is the small branch of the trained adjoined model (checkpoint) in eval
    model = ak.models.adjoined_resnet18(num_classes=10, alpha=4, in_channels=1, stem="cifar", width=8)
    model.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=False)["model"])
    with torch.inference_mode():
        _, ls = model.eval()(x)
    assert torch.allclose(ls, ref, rtol=1e-4, atol=1e-5)


def test_resume_is_exact(idx_dir, tmp_path):
    args = ["--data-dir", str(idx_dir), "--subset", "64", "--epochs", "2", "--no-onnx", *FAST, "--bench-runs", "0",
            "--device", "cpu"]  # bitwise: on a GPU cudnn.benchmark may pick other algorithms per run
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--stop-after", "1"]) == 0
    assert not (tmp_path / "b" / "summary.json").exists()
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--resume"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["global_step"] == b["global_step"] and a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    la = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(la) == len(lb) == 2
    assert [json.loads(x)["loss"] for x in la] == [json.loads(x)["loss"] for x in lb]
    # resuming with other arguments is refused
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--resume", "--lr", "0.01"]) == 2


def test_gpu_algorithms_set_and_restore_the_flags():
    from adjoined_kernels.train.loop import gpu_algorithms
    cudnn = torch.backends.cudnn
    before = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    with gpu_algorithms(deterministic=False):
        assert cudnn.benchmark and not cudnn.deterministic and not torch.are_deterministic_algorithms_enabled()
    with gpu_algorithms(deterministic=True):
        assert not cudnn.benchmark and cudnn.deterministic and torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled()) == before


def test_resume_is_exact_on_gpu_with_deterministic(idx_dir, tmp_path, device):
    if device != "cuda":
        pytest.skip("GPU only: on the CPU test_resume_is_exact covers resuming")
    args = ["--data-dir", str(idx_dir), "--subset", "64", "--epochs", "2", "--no-onnx", *FAST, "--bench-runs", "0",
            "--device", "cuda", "--deterministic"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--stop-after", "1"]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--resume"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_loader_workers_change_nothing(idx_dir, tmp_path):
    args = ["--data-dir", str(idx_dir), "--subset", "64", "--epochs", "1", "--no-onnx", *FAST, "--bench-runs", "0",
            "--device", "cpu", "--augment", "on"]  # bitwise: on a GPU cudnn.benchmark may pick other algorithms
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--workers", "2"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _train_direct(idx_dir, out, extra, device="cpu"):
    """loop.train on parsed arguments, bypassing cli's device checks (so --cuda-graphs runs on the CPU, where
    GraphedStep does everything but the capture). Returns (final checkpoint, metrics records)."""
    from adjoined_kernels.train.loop import gpu_algorithms, train
    args = cli.build_parser().parse_args(["--data-dir", str(idx_dir), "--subset", "96", "--epochs", "2",
                                          "--out", str(out), *FAST, "--device", device, *extra])
    ds = load_dataset(args.dataset, args.data_dir, args.image_size, args.subset, args.seed)
    os.makedirs(out, exist_ok=True)
    with gpu_algorithms(args.deterministic):
        train(args, ds, torch.device(device), log=lambda *_: None)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return torch.load(out / "checkpoint.pt", weights_only=False), recs


def test_graphed_step_changes_nothing_on_cpu(idx_dir, tmp_path):
    """Static buffers, lam as a device tensor, the warm-up and its buffer restore, fresh gradients per step:
    everything --cuda-graphs does but the capture gives the eager run's bits (CPU)."""
    a, ra = _train_direct(idx_dir, tmp_path / "eager", [])
    b, rb = _train_direct(idx_dir, tmp_path / "graphs", ["--cuda-graphs"])
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:  # running statistics included: the warm-up's updates were undone
        assert torch.equal(a["model"][k], b["model"][k]), k
    for x, y in zip(ra, rb):
        for k in ("loss", "ce", "kl", "train_acc_full", "train_acc_small", "lambda", "lr"):
            assert x[k] == y[k], k


def test_graphed_step_rejects_a_new_batch_shape():
    from adjoined_kernels.train.graphed import GraphedStep
    net = torch.nn.BatchNorm1d(3)
    step = GraphedStep(net, lambda x, y, lam: net(x).sum() * lam, capture=False, warmup=1)
    step(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="batch x has shape"):
        step(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), 0.5)


def test_cuda_graphs_needs_a_cuda_device(idx_dir, tmp_path, capsys):
    argv = ["--data-dir", str(idx_dir), "--out", str(tmp_path), *FAST, "--device", "cpu", "--cuda-graphs"]
    assert cli.main(argv) == 2
    assert "--cuda-graphs" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_cuda_graphs_train_like_eager_on_gpu(backend, idx_dir, tmp_path, device):
    if device != "cuda":
        pytest.skip("GPU only: captures CUDA graphs (test_graphed_step_changes_nothing_on_cpu covers the rest)")
    extra = ["--deterministic", "--backend", backend]
    a, ra = _train_direct(idx_dir, tmp_path / "eager", extra, device)
    b, rb = _train_direct(idx_dir, tmp_path / "graphs", [*extra, "--cuda-graphs"], device)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-5, msg=k)
    for x, y in zip(ra, rb):
        assert abs(x["loss"] - y["loss"]) <= 1e-4 * abs(x["loss"]), (x["loss"], y["loss"])


@pytest.mark.parametrize("method", ["standard", "small"])
def test_baselines(method, idx_dir, tmp_path):
    out = tmp_path / method
    assert cli.main(["--data-dir", str(idx_dir), "--subset", "64", "--epochs", "1", "--method", method,
                     "--out", str(out), *FAST]) == 0
    s = json.loads((out / "summary.json").read_text())
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["kl"] is None and rec["lambda"] is None
    if method == "standard":
        assert s["acc_small"] is None and 0 <= s["acc_full"] <= 1 and s["params_small"] is None
        assert (out / "full.onnx").is_file() and (out / "full.pt").is_file()
    else:
        assert s["acc_full"] is None and 0 <= s["acc_small"] <= 1 and s["params_full"] is None
        assert (out / "small.onnx").is_file()
    assert s["onnx_max_rel_err"] < 1e-4


# -------------------------------------------------------------------------------------------------- check

CHECK = ["--check", "--backend", "reference", "--width", "8", "--check-batch", "8", "--threads", "1"]


def test_check_reference_passes(idx_dir, capsys):
    assert cli.main([*CHECK, "--data-dir", str(idx_dir)]) == 0
    out = capsys.readouterr().out
    assert "check passed" in out and "adjoined.0.convs.0" in out and "loss" in out


def _perturbed_conv(monkeypatch, where):
    import adjoined_kernels.ops.conv as mod
    real = mod.adjoined_conv2d

    class ScaleGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 1.01

    def broken(x_full, x_small, weight, *args, **kwargs):
        if where == "weight_grad":
            weight = ScaleGrad.apply(weight)
        zf, zs = real(x_full, x_small, weight, *args, **kwargs)
        return (zf, zs * 1.01) if where == "forward" else (zf, zs)

    monkeypatch.setattr(mod, "adjoined_conv2d", broken)


@pytest.mark.parametrize("where", ["forward", "weight_grad"])
def test_check_fails_on_broken_conv(where, idx_dir, monkeypatch, capsys):
    _perturbed_conv(monkeypatch, where)
    assert cli.main([*CHECK, "--data-dir", str(idx_dir)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "check FAILED" in out


def test_check_fails_on_broken_loss(idx_dir, monkeypatch, capsys):
    import adjoined_kernels.ops.loss as mod
    real = mod.adjoined_loss
    monkeypatch.setattr(mod, "adjoined_loss", lambda lf, ls, *a, **k: real(lf, ls * 0.9, *a, **k))
    assert cli.main([*CHECK, "--data-dir", str(idx_dir)]) == 1
    assert "check FAILED" in capsys.readouterr().out


def test_defaults_are_the_demo():
    a = cli.build_parser().parse_args([])
    assert (a.dataset, a.arch, a.stem, a.width, a.alpha, a.epochs, a.batch_size, a.optimizer, a.schedule,
            a.lam_schedule, a.method) == ("fashion-mnist", "resnet18", "cifar", 16, 4, 2, 128, "sgd", "onecycle",
                                          "quadratic", "adjoined")


@pytest.mark.parametrize("argv,epochs,want", [([], 2, False), ([], 10, True), (["--augment", "on"], 2, True),
                                              (["--augment", "off"], 50, False), (["--no-augment"], 50, False)])
def test_augmentation_auto_is_on_for_long_runs_only(argv, epochs, want):
    from adjoined_kernels.train.data import augmenting
    a = cli.build_parser().parse_args(argv + ["--epochs", str(epochs)])
    assert augmenting(a) is want


@pytest.mark.skipif(not ak.available_backends().count("triton"), reason="triton is not importable")
def test_check_triton_passes(idx_dir, capsys):
    """--check on the fused Triton kernels (the interpreter on CPU, the GPU elsewhere)."""
    argv = [*CHECK, "--data-dir", str(idx_dir), "--check-batch", "2"]
    argv[argv.index("reference")] = "triton"
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "check passed" in out and "adjoined.0.convs.0" in out and "loss" in out


@pytest.mark.skipif(not ak.available_backends().count("triton"), reason="triton is not importable")
def test_trains_with_the_triton_backend(idx_dir, tmp_path):
    """One step of adjoined training on the fused Triton kernels; same start and data as the reference
    run, so the losses must agree closely."""
    losses = {}
    for be in ("triton", "reference"):
        out = tmp_path / be
        argv = ["--data-dir", str(idx_dir), "--epochs", "1", "--out", str(out), *FAST, "--subset", "4",
                "--batch-size", "4", "--eval-batch-size", "4", "--bench-runs", "0", "--no-onnx", "--backend", be]
        assert cli.main(argv) == 0
        losses[be] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["loss"]
    assert math.isfinite(losses["triton"]) and abs(losses["triton"] - losses["reference"]) < 1e-3 * abs(
        losses["reference"]) + 1e-4, losses


def test_report_says_which_backend_auto_chose(tmp_path, monkeypatch, smoke_run):
    import types

    from adjoined_kernels import _autotune
    from adjoined_kernels.train.report import backends_chosen
    rows = [{"op": "conv2d_fprop", "key": (1,), "backend": "cuda", "ms": {"cuda": 1.0, "reference": 2.0}},
            {"op": "conv2d_fprop", "key": (2,), "backend": "reference", "ms": {}},
            {"op": "conv2d_dgrad", "key": (1,), "backend": "reference", "ms": {}}]
    monkeypatch.setattr(_autotune, "report", lambda: rows)
    args = types.SimpleNamespace(backend="auto")
    logged = []
    got = backends_chosen(args, torch.device("cuda"), str(tmp_path), logged.append)
    assert got == {"conv2d_fprop": {"cuda": 1, "reference": 1}, "conv2d_dgrad": {"reference": 1}}
    assert json.loads((tmp_path / "auto.json").read_text())[0]["ms"] == {"cuda": 1.0, "reference": 2.0}
    assert "conv2d_fprop {'cuda': 1, 'reference': 1}" in logged[0]
    assert backends_chosen(args, torch.device("cpu"), str(tmp_path)) == {"all": "reference"}
    _, out = smoke_run
    assert json.loads((out / "summary.json").read_text())["backends_chosen"] == {"all": "reference"}
