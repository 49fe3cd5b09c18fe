"""The baselines kd, kddp and pwh (adjoined_kernels.baselines; docs/baselines.md): the KD loss against an eager
float64 formula, a frozen teacher, KDDP's pruning of dead fc1 neurons, PWH's least squares and widths, the
teacher errors, and short end-to-end runs with their outputs and an exact resume. CPU, tiny synthetic data."""
import json
import types

import pytest
import torch
import torch.nn.functional as F
from test_train import FAST, make_idx_dir

import adjoined_kernels as ak
from adjoined_kernels.baselines import Distilled, kd_loss
from adjoined_kernels.baselines import kddp, pwh
from adjoined_kernels.train import cli
from adjoined_kernels.train.report import count_flops


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_idx_dir(tmp_path_factory.mktemp("fmnist_bl"))


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    """OUT/checkpoint.pt of a one-epoch standard run (the teacher of every test here)."""
    out = tmp_path_factory.mktemp("teacher")
    assert cli.main(["--data-dir", str(data), "--subset", "64", "--epochs", "1", "--method", "standard",
                     "--no-onnx", "--out", str(out), *FAST, "--bench-runs", "0"]) == 0
    return out / "checkpoint.pt"


def base(data, out, method, teacher, epochs):
    return ["--data-dir", str(data), "--subset", "64", "--epochs", str(epochs), "--method", method,
            "--teacher", str(teacher), "--out", str(out), *FAST]


# ------------------------------------------------------------------------------------------------ KD

@pytest.mark.parametrize("a,T", [(0.5, 1.0), (0.3, 4.0), (1.0, 2.0), (0.0, 3.0)])
def test_kd_loss_matches_eager_float64_formula(a, T):
    g = torch.Generator().manual_seed(1)
    ls64 = (3 * torch.randn(8, 11, generator=g, dtype=torch.float64)).requires_grad_(True)
    lt64 = 3 * torch.randn(8, 11, generator=g, dtype=torch.float64)
    y = torch.randint(0, 11, (8,), generator=g)
    p = (lt64 / T).softmax(-1)
    ref = (1 - a) * F.cross_entropy(ls64, y) + a * T * T * (p * (p.log() - (ls64 / T).log_softmax(-1))).sum(-1).mean()
    ls = ls64.detach().float().requires_grad_(True)
    lt = lt64.float().requires_grad_(True)
    got = kd_loss(ls, lt, y, a, T, backend="reference")
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) <= 1e-5 * abs(ref.item()) + 1e-6
    got.backward()
    (gref,) = torch.autograd.grad(ref, ls64)
    torch.testing.assert_close(ls.grad.double(), gref, rtol=1e-4, atol=1e-6)
    assert lt.grad is None or not lt.grad.abs().any()  # the teacher gets no gradient


def test_a_kd_step_leaves_the_teacher_unchanged(data, teacher):
    from adjoined_kernels.train.data import load_dataset
    from adjoined_kernels.train.loop import build_net, make_optimizer, step_body
    args = cli.build_parser().parse_args(base(data, "unused", "kd", teacher, 1))
    ds = load_dataset(args.dataset, args.data_dir, subset=64, seed=0)
    net = build_net(args, ds, torch.device("cpu"))
    assert isinstance(net, Distilled) and not list(net.teacher.parameters())[0].requires_grad
    t_before = {k: v.clone() for k, v in net.teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in net.student.state_dict().items()}
    opt = make_optimizer(args, net.parameters())
    assert {id(p) for p in net.parameters()} == {id(p) for p in net.student.parameters()}
    x = (ds.x_train[:16].float() / 255 - 0.3) / 0.3
    step_body(net, "kd", args, torch.device("cpu"), False)(x, ds.y_train[:16], 0.0)
    opt.step()
    for k, v in net.teacher.state_dict().items():  # weights and BN statistics: the teacher ran in eval
        assert torch.equal(v, t_before[k]), k
    assert any(not torch.equal(v, s_before[k]) for k, v in net.student.state_dict().items())
    assert not net.teacher.training


def test_kd_run_outputs_and_the_an_small_network(data, teacher, tmp_path):
    out = tmp_path / "kd"
    assert cli.main(base(data, out, "kd", teacher, 1)) == 0
    s = json.loads((out / "summary.json").read_text())
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert s["acc_full"] is None and 0 <= s["acc_small"] <= 1 and rec["train_acc_full"] is None
    model = ak.models.adjoined_resnet18(num_classes=10, alpha=4, in_channels=1, stem="cifar", width=8)
    small = ak.export_small(model)
    assert s["params_small"] == sum(p.numel() for p in small.parameters())
    assert s["flops_small"] == count_flops(small, (1, 16, 16))
    assert (out / "small.pt").is_file() and s["onnx_max_rel_err"] < 1e-4
    net = torch.load(out / "small.pt", weights_only=False)
    assert type(net).__name__ == "PlainResNet"  # the student alone, no teacher inside


# ------------------------------------------------------------------------------------------ teacher

def test_teacher_errors(data, teacher, tmp_path, capsys):
    def err(argv):
        assert cli.main(argv) == 2
        return capsys.readouterr().err

    argv = base(data, tmp_path / "o", "kd", teacher, 1)
    i = argv.index("--teacher") + 1
    assert "--teacher CKPT is required" in err(argv[:i - 1] + argv[i + 1:])
    missing = str(tmp_path / "nope.pt")
    e = err(argv[:i] + [missing] + argv[i + 1:])
    assert missing in e and "no such file" in e
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert "cannot read" in err(argv[:i] + [str(garbage)] + argv[i + 1:])
    ck = torch.load(teacher, weights_only=False)
    wrong = tmp_path / "adjoined.pt"
    torch.save({**ck, "args": {**ck["args"], "method": "adjoined"}}, wrong)
    assert "--method adjoined" in err(argv[:i] + [str(wrong)] + argv[i + 1:])
    e = err([*argv, "--width", "16"])
    assert "--width 8" in e and "--width 16" in e
    e = err([*argv, "--arch", "resnet34"])
    assert "'resnet18'" in e and "'resnet34'" in e
    classes = tmp_path / "classes.pt"
    model = {**ck["model"], "fc.weight": ck["model"]["fc.weight"][:5], "fc.bias": ck["model"]["fc.bias"][:5]}
    torch.save({**ck, "model": model}, classes)
    e = err(argv[:i] + [str(classes)] + argv[i + 1:])
    assert "5 classes" in e and "has 10" in e
    for method in ("kddp", "pwh"):
        assert "--teacher CKPT is required" in err(["--data-dir", str(data), "--method", method, "--epochs", "3",
                                                    "--out", str(tmp_path / "p"), *FAST])


# ------------------------------------------------------------------------------------------------ KDDP

def tiny_ds(x):
    from adjoined_kernels.train.data import Dataset
    y = torch.zeros(len(x), dtype=torch.int64)
    return Dataset("tiny", x, y, x, y, 10, (0.3,), (0.3,), 0, False, "")


@pytest.mark.parametrize("student", ["paper", "resnet"])
def test_kddp_prunes_exactly_the_dead_neurons_and_keeps_the_outputs(student):
    torch.manual_seed(0)
    args = types.SimpleNamespace(kddp_student=student, kddp_fc1=20)
    ds = types.SimpleNamespace(in_channels=1, num_classes=10)
    adj = ak.models.adjoined_resnet18(num_classes=10, alpha=4, in_channels=1, stem="cifar", width=8)
    net = kddp.build_student(args, ds, adj).eval()
    dead = [3, 7, 11, 19]
    with torch.no_grad():
        net.fc.fc1.bias[dead] = -1e4  # ReLU output 0 on every input
        net.fc.fc1.bias[5] = 1e2  # alive on every input
    x = torch.randint(0, 255, (40, 1, 16, 16), dtype=torch.uint8)
    mean = kddp.mean_fc1_activations(net, tiny_ds(x), torch.device("cpu"), batch_size=16)
    assert mean.dtype == torch.float64 and mean.shape == (20,)
    keep = kddp.alive_neurons(mean)
    xn = (x.float() / 255 - 0.3) / 0.3
    with torch.no_grad():  # the activations, computed directly
        act = F.relu(net.fc.fc1(torch.flatten(net.pool(net.block(net.stem(xn))), 1) if student == "paper" else
                                torch.flatten(F.adaptive_avg_pool2d(net.stages(net.stem(xn)), 1), 1)))
    want = [i for i in range(20) if act[:, i].double().mean() >= 1e-6]
    assert keep.tolist() == want and 5 in want and not set(dead) & set(want)
    pruned = kddp.prune_fc1(net, keep)
    assert pruned.fc.fc1.out_features == len(want) and pruned.fc.fc2.in_features == len(want)
    assert kddp.count(net) - kddp.count(pruned) == (20 - len(want)) * (net.fc.fc1.in_features + 1 + 10)
    assert torch.equal(pruned.fc.fc1.weight, net.fc.fc1.weight[keep])
    assert torch.equal(pruned.fc.fc2.weight, net.fc.fc2.weight[:, keep])
    with torch.no_grad():
        torch.testing.assert_close(pruned(xn), net(xn), rtol=1e-5, atol=1e-5)


def test_paper_student_has_table_1_parameters():
    for neurons, fc1, total in ((50, 29_000, 85_000), (100, 58_000, 114_000), (500, 289_000, 349_000)):
        net = kddp.PaperStudent(3, 10, neurons)
        bn_buffers = sum(m.running_mean.numel() * 2 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert abs(sum(p.numel() for p in net.fc.fc1.parameters()) - fc1) <= 500  # Table 1 rounds to 1k
        assert abs(kddp.count(net) + bn_buffers - total) <= 500  # Keras counts BN's moving statistics too
        if neurons == 500:
            assert kddp.count(net) + bn_buffers == 349_254  # the paper's results table, SN_500
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_kddp_run_reports_the_pruning(data, teacher, tmp_path):
    out = tmp_path / "kddp"
    assert cli.main([*base(data, out, "kddp", teacher, 2), "--kddp-fc1", "30", "--no-onnx"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["kddp_fc1_neurons"] == 30 and 1 <= s["kddp_fc1_kept"] <= 30
    assert s["params_after_pruning"] == s["params_small"] <= s["params_before_pruning"]
    # each removed neuron: a row of fc1 over the 16 features of the width-8 alpha-4 small net, its bias, 10 fc2 weights
    assert s["params_before_pruning"] - s["params_after_pruning"] == (30 - s["kddp_fc1_kept"]) * (16 + 1 + 10)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"]) for r in recs] == [(1, 1), (2, 2)]
    assert (out / "phase1-l1" / "checkpoint.pt").is_file() and (out / "small.pt").is_file()
    kept = json.loads((out / "kddp_pruning.json").read_text())["kept"]
    assert len(kept) == s["kddp_fc1_kept"]


def test_kddp_resume_is_exact(data, teacher, tmp_path):
    argv = [*base(data, None, "kddp", teacher, 3), "--no-onnx", "--bench-runs", "0", "--device", "cpu"]
    argv.remove("None")
    argv.remove("--out")
    assert cli.main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "b"), "--stop-after", "1"]) == 0
    assert not (tmp_path / "b" / "summary.json").exists()
    assert cli.main([*argv, "--out", str(tmp_path / "b"), "--resume"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(x)["loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert len(la) == 3 and la == lb


# ------------------------------------------------------------------------------------------------- PWH

def test_least_squares_matches_lstsq():
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(300, 24, generator=g), torch.randn(300, 5, generator=g)
    torch.testing.assert_close(pwh.least_squares(X, Y), torch.linalg.lstsq(X.double(), Y.double()).solution)
    Xr = torch.cat([X, X[:, :3]], 1)  # rank deficient: the minimum-norm solution
    torch.testing.assert_close(pwh.least_squares(Xr, Y), torch.linalg.lstsq(Xr.double(), Y.double(),
                                                                            driver="gelsd").solution)
    lam = pwh.ridge_lambda(Xr, 1e-3)  # the ridge: least squares of the system stacked with sqrt(lam) I
    assert lam == pytest.approx(1e-3 * (Xr.double() ** 2).sum(0).mean().item())
    Xa = torch.cat([Xr.double(), lam ** 0.5 * torch.eye(27, dtype=torch.float64)])
    Ya = torch.cat([Y.double(), torch.zeros(27, 5, dtype=torch.float64)])
    torch.testing.assert_close(pwh.least_squares(Xr, Y, 1e-3), torch.linalg.lstsq(Xa, Ya).solution)


def test_hints_reconstruction_is_the_least_squares_fit():
    torch.manual_seed(0)
    model = ak.models.adjoined_resnet18(num_classes=10, alpha=4, in_channels=1, stem="cifar", width=8)
    teacher = ak.export_full(model).eval()
    full = pwh.block_widths(teacher)
    kept = pwh.select_channels(pwh.taylor_importance(teacher, torch.randn(8, 1, 16, 16), torch.arange(8), 4),
                               pwh.interpolate(full, pwh.small_widths(model.small_widths), 1, 1))
    student = pwh.prune_resnet(teacher, kept).eval()
    t_idx = kept["stream"][-1]
    fit, check = torch.randn(24, 1, 32, 32), torch.randn(24, 1, 32, 32)  # 24 * 4 * 4 rows > 16 * 9 columns
    X, Y = pwh.hint_data(student, teacher, t_idx, fit, 10)
    conv = pwh.hint_conv(student)
    assert X.shape == (24 * 4 * 4, conv.in_channels * 9) and Y.shape == (24 * 4 * 4, conv.out_channels)
    rep = pwh.reconstruct_hint(student, teacher, t_idx, fit, check, 10)
    assert rep["reconstructed"] and rep["hint_mse_reconstructed"] < rep["hint_mse_pruned"]
    lam = pwh.ridge_lambda(X, pwh.RIDGE)
    Xa = torch.cat([X.double(), lam ** 0.5 * torch.eye(X.shape[1], dtype=torch.float64)])
    Ya = torch.cat([Y.double(), torch.zeros(X.shape[1], Y.shape[1], dtype=torch.float64)])
    want = torch.linalg.lstsq(Xa, Ya).solution.T.reshape(conv.weight.shape)
    torch.testing.assert_close(conv.weight.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch,alpha", [("resnet18", 4), ("resnet50", 2)])
def test_pruned_widths_equal_the_an_small_network(arch, alpha):
    torch.manual_seed(0)
    model = getattr(ak.models, f"adjoined_{arch}")(num_classes=10, alpha=alpha, in_channels=1, stem="cifar", width=8)
    net = ak.export_full(model).eval()
    target = pwh.small_widths(model.small_widths)
    full = pwh.block_widths(net)
    for i in (1, 2):  # two iterations, scored by Taylor importance on random data
        x, y = torch.randn(6, 1, 16, 16), torch.randint(0, 10, (6,))
        widths = pwh.interpolate(full, target, i, 2)
        net = pwh.prune_resnet(net, pwh.select_channels(pwh.taylor_importance(net, x, y, 3), widths))
        assert pwh.block_widths(net) == widths
    small = ak.export_small(model)
    assert pwh.block_widths(net) == target
    assert [p.shape for p in net.parameters()] == [p.shape for p in small.parameters()]
    assert count_flops(net, (1, 16, 16)) == count_flops(small, (1, 16, 16))


def test_pruning_keeps_the_kept_channels_outputs():
    """Pruning nothing but dead stream channels is exact: a check of the index bookkeeping."""
    torch.manual_seed(0)
    model = ak.models.adjoined_resnet18(num_classes=10, alpha=4, in_channels=1, stem="cifar", width=8)
    net = ak.export_full(model).eval()
    full = pwh.block_widths(net)
    kept = {"stream": [torch.arange(w) for w in full["stream"]],
            "inner": [[torch.arange(w).flip(0) for w in b] for b in full["inner"]]}  # a permutation
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(pwh.prune_resnet(net, kept)(x), net(x), rtol=1e-5, atol=1e-5)


def test_bn_recalibration_estimates_the_samples_statistics():
    """Pruning changes the activations: the pruned net's BN statistics are re-estimated on the sample (with
    the teacher's, the least squares fit eval-mode features that training never sees)."""
    torch.manual_seed(0)
    model = ak.models.adjoined_resnet18(num_classes=10, alpha=4, in_channels=1, stem="cifar", width=8)
    net = ak.export_full(model)
    bn = pwh.convs_bns(net.stages[1][0])[1][0]
    with torch.no_grad():
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(9.0)
    x = torch.randn(12, 1, 16, 16)
    with pwh.capture(bn, "input") as inp:
        pwh.recalibrate_bn(net.eval(), x, 4)  # 3 equal batches: the average of their means is the mean
    assert len(inp) == 3 and not net.training and bn.momentum == 0.1
    h = torch.cat(inp).transpose(0, 1).flatten(1)
    torch.testing.assert_close(bn.running_mean, h.mean(1), rtol=1e-4, atol=1e-5)
    var = torch.stack([b.transpose(0, 1).flatten(1).var(1) for b in inp]).mean(0)  # per batch, unbiased
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)


def test_pwh_run(data, teacher, tmp_path):
    out = tmp_path / "pwh"
    assert cli.main([*base(data, out, "pwh", teacher, 3), "--no-onnx", "--pwh-samples", "32"]) == 0
    s = json.loads((out / "summary.json").read_text())
    model = ak.models.adjoined_resnet18(num_classes=10, alpha=4, in_channels=1, stem="cifar", width=8)
    assert s["pwh_widths"] == pwh.small_widths(model.small_widths)
    assert s["params_small"] == sum(p.numel() for p in ak.export_small(model).parameters())
    assert len(s["pwh_reconstruction"]) == 2 and s["pwh_iters"] == 2
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in recs] == [1, 2, 3] and all(r["test_acc_full"] is None for r in recs)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in recs)
    assert (out / "phase1-iter1" / "checkpoint.pt").is_file() and (out / "phase2-iter2" / "checkpoint.pt").is_file()


def test_phased_methods_need_an_epoch_per_phase(data, teacher, tmp_path, capsys):
    assert cli.main(base(data, tmp_path, "pwh", teacher, 2)) == 2
    assert "--epochs must be >= 3" in capsys.readouterr().err


def test_pwh_resume_is_exact(data, teacher, tmp_path):
    """Stopped between phases, then inside the last one: the resumed run ends with the uninterrupted run's bits."""
    argv = ["--data-dir", str(data), "--subset", "64", "--epochs", "4", "--method", "pwh", "--teacher", str(teacher),
            *FAST, "--no-onnx", "--bench-runs", "0", "--device", "cpu", "--pwh-samples", "32"]
    assert cli.main([*argv, "--out", str(tmp_path / "a")]) == 0
    b = ["--out", str(tmp_path / "b")]
    assert cli.main([*argv, *b, "--stop-after", "1"]) == 0
    assert not (tmp_path / "b" / "phase2-iter2").exists()
    assert cli.main([*argv, *b, "--resume", "--stop-after", "2"]) == 0  # phase 2, then 1 of phase 3's 2 epochs
    assert not (tmp_path / "b" / "summary.json").exists()
    assert cli.main([*argv, *b, "--resume"]) == 0
    ca = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    cb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
    la = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"], r["loss"]) for r in la] == [(r["epoch"], r["phase"], r["loss"]) for r in lb]
    assert [r["phase"] for r in la] == [1, 2, 3, 3]
