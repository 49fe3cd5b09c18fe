"""The GPU benchmark harness (bench/) on CPU: shape lists, FLOP/byte counts, priority plan, time budget, CSV rows,
report tables and the scripts' command lines. The timing itself needs a GPU and is not exercised here."""
import csv
import json
import importlib.util
import math
import os
import runpy
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import adjoined_kernels as ak  # noqa: E402
from adjoined_kernels._backend import triton_interpreting  # noqa: E402
import bench_conv  # noqa: E402
import bench_e2e  # noqa: E402
import bench_loss  # noqa: E402
import common  # noqa: E402
import report  # noqa: E402

# (name, C_in, C_out, c_in_s, c_out_s, k, stride, input hw) at alpha 4; c_in_s = C_in where the small branch
# starts from the shared layer1 output (docs/maths.md, "Where the small branch starts")
RESNET50_A4 = [
    ("l2.b0.conv1", 256, 128, 256, 32, 1, 1, 56), ("l2.b0.conv2", 128, 128, 32, 32, 3, 2, 56),
    ("l2.b0.conv3", 128, 512, 32, 128, 1, 1, 28), ("l2.b0.ds", 256, 512, 256, 128, 1, 2, 56),
    ("l2.b1.conv1", 512, 128, 128, 32, 1, 1, 28), ("l2.b1.conv2", 128, 128, 32, 32, 3, 1, 28),
    ("l3.b0.conv1", 512, 256, 128, 64, 1, 1, 28), ("l3.b0.conv2", 256, 256, 64, 64, 3, 2, 28),
    ("l3.b0.conv3", 256, 1024, 64, 256, 1, 1, 14), ("l3.b0.ds", 512, 1024, 128, 256, 1, 2, 28),
    ("l3.b1.conv1", 1024, 256, 256, 64, 1, 1, 14), ("l3.b1.conv2", 256, 256, 64, 64, 3, 1, 14),
    ("l4.b0.conv1", 1024, 512, 256, 128, 1, 1, 14), ("l4.b0.conv2", 512, 512, 128, 128, 3, 2, 14),
    ("l4.b0.conv3", 512, 2048, 128, 512, 1, 1, 7), ("l4.b0.ds", 1024, 2048, 256, 512, 1, 2, 14),
    ("l4.b1.conv1", 2048, 512, 512, 128, 1, 1, 7), ("l4.b1.conv2", 512, 512, 128, 128, 3, 1, 7),
]
CIFAR18_A4 = [
    ("l2.b0.conv1", 64, 128, 64, 32, 3, 2, 32), ("l2.b0.conv2", 128, 128, 32, 32, 3, 1, 16),
    ("l2.b0.ds", 64, 128, 64, 32, 1, 2, 32), ("l3.b0.conv1", 128, 256, 32, 64, 3, 2, 16),
    ("l3.b0.conv2", 256, 256, 64, 64, 3, 1, 8), ("l3.b0.ds", 128, 256, 32, 64, 1, 2, 16),
    ("l4.b0.conv1", 256, 512, 64, 128, 3, 2, 8), ("l4.b0.conv2", 512, 512, 128, 128, 3, 1, 4),
    ("l4.b0.ds", 256, 512, 64, 128, 1, 2, 8),
]
PEAKS = {"peak_tflops": 800.0, "peak_gbps": 3000.0}
META = {"gpu_name": "test", "torch": "t", "triton": "t", "git_sha": "abc"}


def _tuples(shapes):
    return [(s.name, s.cin, s.cout, s.cin_s, s.cout_s, s.k, s.stride, s.hw) for s in shapes]


@pytest.mark.parametrize("suite,want", [("resnet50", RESNET50_A4), ("cifar18", CIFAR18_A4)])
def test_model_shapes_are_the_distinct_adjoined_convs(suite, want):
    shapes = bench_conv.model_shapes(suite, 4)
    assert _tuples(shapes) == want
    assert all(s.pad == s.k // 2 for s in shapes)


@pytest.mark.parametrize("alpha", [2, 16])
def test_model_shapes_follow_alpha(alpha):
    first = {"l2.b0.conv1", "l2.b0.ds"}  # fed the shared full-width tensor
    for s in bench_conv.model_shapes("resnet50", alpha):
        assert s.cin_s == (s.cin if s.name in first else s.cin // alpha)
        assert s.cout_s == s.cout // alpha


@pytest.mark.parametrize("name", ["l2.b0.conv2", "l2.b0.ds"])
def test_conv_flops_match_torch_flop_counter(name):
    s = next(s for s in bench_conv.model_shapes("resnet50", 4) if s.name == name)
    pb = bench_conv.make_problem(s, 2, device="cpu", dtype=torch.float32)
    args = (pb.xf, pb.xs, pb.w, *bench_conv.conv_args(pb))
    with FlopCounterMode(display=False) as fwd:
        outs = ak.adjoined_conv2d_ref(*args)
    assert fwd.get_total_flops() == bench_conv.conv_flops(s, 2, "fwd")
    assert [tuple(z.shape) for z in outs] == [tuple(pb.dzf.shape), tuple(pb.dzs.shape)]
    with FlopCounterMode(display=False) as full:
        torch.autograd.grad(ak.adjoined_conv2d_ref(*args), (pb.xf, pb.xs, pb.w), (pb.dzf, pb.dzs))
    assert full.get_total_flops() == bench_conv.conv_flops(s, 2, "full") == 3 * fwd.get_total_flops()
    assert bench_conv.conv_flops(s, 2, "bwd") == 2 * fwd.get_total_flops()


def test_conv_bytes_count_each_operand_once_per_pass():
    s = bench_conv.ConvShape("t", "t", cin=8, cout=16, cin_s=8, cout_s=4, k=3, stride=2, pad=1, hw=10)
    assert s.out_hw == 5
    x, z, w = 2 * 100 * (8 + 8), 2 * 25 * (16 + 4), 16 * 8 * 9  # N = 2
    assert bench_conv.conv_bytes(s, 2, "fwd") == 2 * (x + z + w)
    assert bench_conv.conv_bytes(s, 2, "bwd") == 2 * 2 * (x + z + w)
    assert bench_conv.conv_bytes(s, 2, "full") == 3 * 2 * (x + z + w)


def test_plan_runs_the_targets_first_and_compile_max_last():
    plan = bench_conv.build_plan()
    items = [(j.shape.suite, j.shape.name, j.n, j.alpha, m, p) for j in plan for m, p in j.items]
    n_r50, n_c18 = len(bench_conv.model_shapes("resnet50", 4)), len(bench_conv.model_shapes("cifar18", 4))
    assert len(items) == len(set(items)) == (n_r50 + n_c18) * 2 * 4 * 3 * 8
    assert [j.tier for j in plan] == sorted(j.tier for j in plan)
    first = [j for j in plan if j.tier == 0]
    assert len(first) == n_r50 * 2 * 2
    assert plan[:len(first)] == first
    assert {(j.shape.suite, j.alpha, m) for j in first for m, _ in j.items} == \
        {("resnet50", 2, "full"), ("resnet50", 4, "full")}
    assert all([p for _, p in j.items] == ["cudnn2", "authors", "triton", "cuda", "compile"] for j in first)
    assert (plan[0].alpha, plan[0].n, plan[0].shape.name) == (2, 32, "l2.b0.conv1")
    n_last = (n_r50 + n_c18) * 2 * 4  # one compile_max job per problem, all three modes in it
    assert {p for j in plan[-n_last:] for _, p in j.items} == {"compile_max"}
    assert "compile_max" not in {p for j in plan[:-n_last] for _, p in j.items}
    cifar = [j for j in plan if j.shape.suite == "cifar18"]
    assert all(j.tier >= 3 for j in cifar)


def test_triton_nocache_times_with_the_relaunch_cache_off(monkeypatch):
    from adjoined_kernels.ops.conv.triton import launch as _launch
    monkeypatch.setattr(_launch, "FAST", True)
    seen = []
    p = bench_conv.Provider(lambda: seen.append(_launch.FAST) or (torch.ones(1),), (), (), bench_conv._same,
                            bench_conv._triton_launch_path)
    bench_conv.runner(p, "fwd")()
    assert seen == [False] and _launch.FAST  # off inside the timed call only
    plain = bench_conv.Provider(lambda: seen.append(_launch.FAST) or (torch.ones(1),), (), (), bench_conv._same)
    bench_conv.runner(plain, "fwd")()
    assert seen == [False, True]


def test_triton_configs_names_the_passes_of_the_mode(monkeypatch):
    import triton
    from adjoined_kernels.ops.conv.triton import dgrad as conv_dgrad, fprop as conv_fprop, wgrad as conv_wgrad
    cfg = triton.Config(dict(BM=128, BN=64, BK=32, GROUP_M=8), num_warps=4, num_stages=3)
    monkeypatch.setattr(conv_fprop._fprop_launcher, "last_config", cfg)
    monkeypatch.setattr(conv_dgrad._dgrad_launcher, "last_config", None)  # not autotuned
    monkeypatch.setattr(conv_wgrad._wgrad_launcher, "last_config", cfg)
    assert bench_conv.triton_configs("full") == "fprop 128x64x32/4/3; wgrad 128x64x32/4/3"
    assert bench_conv.triton_configs("bwd") == "wgrad 128x64x32/4/3"
    assert bench_conv.triton_configs("fwd") == "fprop 128x64x32/4/3"


def test_plan_leaves_out_done_items_and_filters():
    done = {("resnet50", "l2.b0.conv1", 32, 2, "full", "cudnn2")}
    plan = bench_conv.build_plan(("resnet50",), (32,), (2,), ("full",), ("cudnn2", "triton"), done=done)
    assert plan[0].shape.name == "l2.b0.conv1" and plan[0].items == (("full", "triton"),)
    assert len(plan) == 18
    quick = bench_conv.build_plan(("resnet50", "cifar18"), (32,), (4,), ("full",), ("cudnn2",), "", 2)
    assert [(j.shape.suite, j.shape.name) for j in quick] == [
        ("resnet50", "l2.b0.conv1"), ("resnet50", "l2.b0.conv2"), ("cifar18", "l2.b0.conv1"),
        ("cifar18", "l2.b0.conv2")]


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _run(durations, seconds, fail=()):
    clock, ran, logs = FakeClock(), [], []
    budget = common.Budget(seconds, clock=clock, min_job_s=5)

    def job(i):
        ran.append(i)
        clock.t += durations[i]
        if i in fail:
            raise RuntimeError("boom")
    done, skipped = common.run_plan(list(range(len(durations))), job, budget, label=lambda i: f"tier{i // 4}",
                                    log=logs.append)
    return ran, done, skipped, logs


def test_budget_stops_before_a_job_that_would_overrun():
    ran, done, skipped, logs = _run([10] * 20, 100)
    assert ran == done == list(range(10)) and skipped == list(range(10, 20))
    assert "skipped 10 of 20 jobs" in logs[0]
    assert [line.split("x ")[1] for line in logs[1:]] == ["tier2", "tier3", "tier4"]
    assert logs[1].split()[1] == "2"  # jobs 10 and 11 of tier 2


def test_budget_predicts_from_the_longest_recent_job():
    ran, _, skipped, _ = _run([10, 40, 10, 10, 10, 10], 100)
    assert ran == [0, 1, 2, 3] and skipped == [4, 5]  # 30 s left < 40 s
    ran, _, _, _ = _run([2, 2, 2], 5.5)  # min_job_s = 5: only the first fits
    assert ran == [0]


def test_failed_jobs_are_logged_and_three_in_a_row_stop_the_run():
    ran, done, skipped, logs = _run([1] * 8, 100, fail={1, 3, 4, 5})
    assert ran == [0, 1, 2, 3, 4, 5] and skipped == [6, 7]
    assert sum("boom" in line for line in logs) == 4
    assert [line for line in logs if line.startswith("stopping")] == [
        "stopping (3 failed jobs in a row, 94 s left); skipped 2 of 8 jobs:"]


def test_timing_method_and_tolerance():
    assert common.choose_timing(0.01) == "cudagraph"
    assert common.choose_timing(0.2) == "do_bench"
    assert common.choose_timing(0.01, graph_ok=False) == "do_bench"
    assert common.within_tolerance(2.9e-3, 1e-3) and not common.within_tolerance(3.1e-3, 1e-3)
    assert not common.within_tolerance(float("nan"), 1e-3)
    assert common.ratio(2.0, 0.5) == 4.0 and math.isnan(common.ratio(None, 1.0))
    assert math.isnan(common.ratio(1.0, float("nan")))


def test_conv_rows_resume_and_speedups(tmp_path):
    out = str(tmp_path / "conv.csv")
    bench = bench_conv.ConvBench(out, PEAKS, META)
    s = bench_conv.model_shapes("resnet50", 2)[0]
    job = bench_conv.Job(0, "t", s, 32, 2, (("full", "triton"),))
    t = common.Timing(1.5, 2.0, 2.5, "do_bench", 100.0)
    row = bench_conv.make_row(job, "full", "triton", t, 1e-3, True, "", {"cudnn2": 1.0, "authors": 4.0},
                              PEAKS, META)
    assert row["speedup_vs_cudnn"] == 0.5 and row["speedup_vs_authors"] == 2.0
    assert math.isnan(row["speedup_vs_compile"])
    assert row["tflops"] == pytest.approx(bench_conv.conv_flops(s, 32, "full") / 2e9)
    bench.csv.write(row)
    failed = bench_conv.make_row(job, "full", "cuda", None, float("nan"), False, "RuntimeError: x", {}, PEAKS, META)
    bench.csv.write(failed)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == bench_conv.FIELDS and [r["provider"] for r in rows] == ["triton", "cuda"]
    assert rows[1]["error"] == "RuntimeError: x" and rows[1]["ms_p50"] == "nan"
    resumed = bench_conv.ConvBench(out, PEAKS, META)
    assert ("resnet50", s.name, 32, 2, "full", "triton") in resumed.done()
    with pytest.raises(ValueError):
        common.CsvWriter(out, ["other"])


def _fake_time_fn(calls):
    def time_fn(fn, graph_ok=True, method=None):
        fn()
        calls.append((graph_ok, method))
        return common.Timing(0.9, 1.0, 1.1, method or "do_bench", 1.0)
    return time_fn


def _fake_shared_timing(picks):
    """Records how many providers each shared pick saw; "cudagraph" whenever graphs are allowed."""
    def shared_timing(fns, graph_ok=True):
        for fn in fns:
            fn()
        picks.append((len(fns), graph_ok))
        return "cudagraph" if graph_ok and fns else "do_bench"
    return shared_timing


def test_shared_timing_uses_the_fastest_providers_gpu_time(monkeypatch):
    """One method for every provider of a comparison, from graph-replay GPU time (host launch overhead would
    push a launch-bound kernel over the threshold); eager time for a provider that cannot be captured."""
    gpu = {"a": 0.2, "b": 0.03}

    def graph_ms(fn):
        if fn() not in gpu:
            raise RuntimeError("capture refused")
        return gpu[fn()]
    monkeypatch.setattr(common, "graph_ms", graph_ms)
    monkeypatch.setattr(common, "estimate_ms", lambda fn: 0.5)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)  # after a refused capture, on a GPU
    assert common.shared_timing([lambda: "a", lambda: "b"]) == "cudagraph"
    assert common.shared_timing([lambda: "a", lambda: "c"]) == "do_bench"
    assert common.shared_timing([lambda: "b"], graph_ok=False) == "do_bench"
    assert common.shared_timing([]) == "do_bench"
    monkeypatch.setattr(common, "estimate_ms", lambda fn: 0.01)
    assert common.shared_timing([lambda: "c"]) == "cudagraph"


def test_kernel_ms_sums_device_events(monkeypatch):
    from torch.autograd import DeviceType

    class Ev:
        def __init__(self, dev, us):
            self.device_type, self.device_time_total = dev, us

    class Prof:
        def __init__(self, events, **kw):
            self._events = events

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def events(self):
            return self._events

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    evs = [Ev(DeviceType.CUDA, 300.0), Ev(DeviceType.CPU, 1000.0), Ev(DeviceType.CUDA, 200.0)]
    monkeypatch.setattr(torch.profiler, "profile", lambda **kw: Prof(evs, **kw))
    assert common.kernel_ms(lambda: calls.append(1), iters=5) == pytest.approx(0.1)  # 500 us over 5 calls
    assert len(calls) == 5
    monkeypatch.setattr(torch.profiler, "profile", lambda **kw: Prof([Ev(DeviceType.CPU, 5.0)], **kw))
    assert math.isnan(common.kernel_ms(lambda: None))  # no kernel recorded


def test_graph_gpu_ms_is_nan_when_not_captured(monkeypatch):
    """The GPU time recorded beside a do_bench p50: the graph replay's, else NaN (never a made-up figure)."""
    def graph_ms(fn):
        if fn() == "refused":
            raise RuntimeError("capture refused")
        return 0.25
    monkeypatch.setattr(common, "graph_ms", graph_ms)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    assert common.graph_gpu_ms(lambda: "ok", graph_ok=True) == 0.25
    assert math.isnan(common.graph_gpu_ms(lambda: "ok", graph_ok=False))
    assert math.isnan(common.graph_gpu_ms(lambda: "refused", graph_ok=True))


def test_conv_job_checks_providers_and_records_failures(tmp_path, monkeypatch):
    calls, picks = [], []
    monkeypatch.setattr(bench_conv, "time_fn", _fake_time_fn(calls))
    monkeypatch.setattr(bench_conv, "shared_timing", _fake_shared_timing(picks))
    bench = bench_conv.ConvBench(str(tmp_path / "conv.csv"), PEAKS, META, device="cpu")
    s = bench_conv.ConvShape("resnet50", "tiny", cin=16, cout=8, cin_s=4, cout_s=2, k=3, stride=2, pad=1, hw=6)
    job = bench_conv.Job(0, "t", s, 2, 4, tuple((m, p) for m in ("full", "bwd") for p in ("authors", "cuda")))
    bench.run(job)
    rows = common.read_rows(str(tmp_path / "conv.csv"))
    # cudnn2 was not asked for but is every speedup's baseline, so it is measured first
    assert [(r["mode"], r["provider"]) for r in rows] == [
        ("full", "cudnn2"), ("bwd", "cudnn2"), ("full", "authors"), ("full", "cuda"), ("bwd", "authors"),
        ("bwd", "cuda")]
    ok = {r["provider"]: r for r in rows}
    assert ok["authors"]["correct"] == "True" and float(ok["authors"]["max_rel_err"]) < 1e-2  # bf16
    assert ok["cuda"]["correct"] == "False" and ok["cuda"]["error"].startswith("RuntimeError")
    assert ok["authors"]["speedup_vs_cudnn"] == "1.0"
    # no CUDA graph for a backward over a saved forward; one method per mode, picked over its correct providers
    assert picks == [(2, True), (0, False)]
    assert calls == [(True, "cudagraph"), (False, "do_bench"), (True, "cudagraph"), (False, "do_bench")]
    assert [r["timing"] for r in rows if r["provider"] == "authors"] == ["cudagraph", "do_bench"]


def test_loss_rows(tmp_path):
    bench = bench_loss.LossBench(str(tmp_path / "loss.csv"), "bf16", PEAKS, META)
    row = bench.row(256, 1000, "triton", common.Timing(0.01, 0.02, 0.03, "cudagraph", 5.0), 1e-3, True, "",
                    {"eager": 0.1, "compile": 0.01})
    assert row["gbps"] == pytest.approx(4 * 256 * 1000 * 2 / 0.02 / 1e6)
    assert row["speedup_vs_eager"] == pytest.approx(5.0) and row["speedup_vs_compile"] == pytest.approx(0.5)
    assert set(row) == set(bench_loss.FIELDS)
    assert [j[:2] for j in bench_loss.build_plan((256,), (10, 100), ("triton", "eager"))] == [(256, 10), (256, 100)]
    assert bench_loss.build_plan((256,), (10,), ("triton", "eager"))[0][2] == ("eager", "triton")


def test_loss_job_records_skipped_and_failed_providers(tmp_path, monkeypatch):
    calls, picks = [], []
    monkeypatch.setattr(bench_loss, "time_fn", _fake_time_fn(calls))
    monkeypatch.setattr(bench_loss, "shared_timing", _fake_shared_timing(picks))
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # import fails like a missing package
    bench = bench_loss.LossBench(str(tmp_path / "loss.csv"), "fp32", PEAKS, META, device="cpu")
    bench.run((8, 10, ("eager", "liger", "cuda", "triton")))
    all_rows = common.read_rows(str(tmp_path / "loss.csv"))
    rows = {r["provider"]: r for r in all_rows if r["mode"] == "full"}
    assert rows["eager"]["correct"] == "True" and rows["eager"]["speedup_vs_eager"] == "1.0"
    assert rows["liger"]["error"].startswith("skipped: ") and rows["liger"]["ms_p50"] == "nan"
    assert rows["cuda"]["error"].startswith("RuntimeError")
    triton_modes = [r["mode"] for r in all_rows if r["provider"] == "triton"]
    if triton_interpreting():  # Triton runs on these CPU tensors: timed in full and alone (fused)
        assert triton_modes == ["full", "kernel"]
        assert picks == [(2, True), (1, True)]  # full: eager and triton; kernel: triton
        assert calls == [(True, "cudagraph")] * 3
    else:  # on a GPU machine CPU tensors make the triton backend fail like cuda's
        assert triton_modes == ["full"] and rows["triton"]["error"].startswith("RuntimeError")
        assert picks == [(1, True), (0, True)] and calls == [(True, "cudagraph")]


def _write(path, fields, rows):
    w = common.CsvWriter(str(path), fields)
    for r in rows:
        w.write(r)


def test_report_tables_and_geomeans(tmp_path):
    base = dict(kernel="adjoined_conv2d", suite="resnet50", mode="full", alpha=2, dtype="bf16", N=32,
                correct=True, error="", **META)
    times = {"cudnn2": (1.0, 2.0), "authors": (3.0, 2.0), "triton": (0.5, 4.0), "cuda": (float("nan"),) * 2}
    gpu = {"cudnn2": (0.5, 2.0), "triton": (0.25, 0.5)}  # triton's p50 / gpu_ms: 2 and 8, geomean 4
    conv = [dict(base, provider=p, shape=f"s{i}", ms_p50=t[i], correct=math.isfinite(t[i]), timing="do_bench",
                 gpu_ms=gpu.get(p, ("",) * 2)[i])
            for p, t in times.items() for i in range(2)]
    _write(tmp_path / "2030-01-01-X-conv.csv", bench_conv.FIELDS, conv)
    lbase = dict(kernel="adjoined_loss", mode="full", dtype="bf16", N=256, peak_gbps_measured=3000, **META)
    loss = [dict(lbase, provider="eager", C=c, shape=f"256x{c}", ms_p50=1.0, speedup_vs_eager=1.0) for c in (10, 100)]
    loss += [dict(lbase, provider="triton", C=c, shape=f"256x{c}", ms_p50=1 / s, speedup_vs_eager=s, gbps=100.0,
                  gpu_ms=0.25 / s) for c, s in ((10, 2.0), (100, 8.0))]
    _write(tmp_path / "2030-01-01-X-loss.csv", bench_loss.FIELDS, loss)
    ebase = dict(kernel="t", mode="train", shape="224px", alpha=4, dtype="bf16-autocast", N=256, steps=20,
                 finite=True, error="", **META)
    _write(tmp_path / "2030-01-01-X-e2e.csv", bench_e2e.FIELDS,
           [dict(ebase, provider="standard", images_per_s=1000, speedup_vs_standard=1.0),
            dict(ebase, provider="adjoined-triton", images_per_s=800, speedup_vs_standard=0.8),
            dict(ebase, provider="standard-graph", images_per_s=1100, speedup_vs_standard=1.0),
            dict(ebase, provider="adjoined-cuda-graph", images_per_s=990, speedup_vs_standard=0.9)])
    text = report.build_report(str(tmp_path), str(tmp_path / "RESULTS.md"), plots=False)
    # triton vs cudnn2: sqrt(1/0.5 * 2/4) = 1.00; vs authors: sqrt(3/0.5 * 2/4) = 1.73
    assert "| 32 | 2 | triton | 2 | 1.00 | 1.73 | - | 2/2 | cudnn2 >= 1.00: met; authors >= 1.30: met |" in text
    assert "| 32 | 2 | cuda | 0 | - | - | - | 0/2 |  |" in text
    assert "| resnet50 | full | 32 | 2 | 0.58 | - | 1.00 |" in text  # columns: authors, cuda, triton
    assert "| full | 32 | triton | 2 | 4.00 |" in text and "| full | 32 | cudnn2 | 2 | 1.41 |" in text
    assert "| full | 32 | authors |" not in text  # no GPU time recorded: left out
    assert "| triton, full | 4.00 | 2 |" in text  # loss geomean of 2x and 8x
    assert "| 0.1250 | 400 |" in text  # GPU ms by graph replay, and the GB/s at it (4x the p50's 100)
    assert "| 256 | adjoined-triton | 800 |" in text and "| 0.80 |" in text
    assert "Headline, adjoined over standard images/s: N=256: 0.80x (adjoined-triton)." in text
    assert "In CUDA graphs (adjoined-*-graph over standard-graph): N=256: 0.90x (adjoined-cuda-graph)." in text
    assert open(tmp_path / "RESULTS.md").read() == text
    if importlib.util.find_spec("matplotlib"):  # the GPU machine may lack it; the report runs elsewhere
        text = report.build_report(str(tmp_path), str(tmp_path / "RESULTS.md"))
        assert "](2030-01-01-X-conv.png)" in text and "](2030-01-01-X-loss.png)" in text
        assert (tmp_path / "2030-01-01-X-conv.png").exists() and (tmp_path / "2030-01-01-X-loss.png").exists()


def test_conv_targets():
    assert report.conv_targets("cuda", 32, 4) == [("cudnn2", 1.15), ("authors", 1.5)]
    assert report.conv_targets("triton", 256, 2) == [("cudnn2", 1.0), ("authors", 1.3)]
    assert report.conv_targets("triton", 256, 8) == [("cudnn2", 1.0)]
    assert report.conv_targets("compile", 32, 2) == []


@pytest.mark.parametrize("script", ["bench_conv.py", "bench_loss.py", "bench_e2e.py", "report.py"])
def test_scripts_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(BENCH, script), run_name="__main__")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and ("--budget-s" in out or script == "report.py")


def test_e2e_variants_and_graph_suffix():
    """Eager variants first (the headline), then the same CUDA-graphed, then the authors' form; a graphed
    variant names its backend like the eager one and refuses a device without CUDA graphs."""
    assert bench_e2e.variants(["reference", "cuda"]) == [
        "standard", "adjoined-auto", "adjoined-cuda", "adjoined-reference", "standard-graph", "adjoined-auto-graph",
        "adjoined-cuda-graph", "adjoined-reference-graph", "authors"]
    assert bench_e2e.parse_variant("adjoined-triton-graph") == ("adjoined-triton", "triton", True)
    assert bench_e2e.parse_variant("standard") == ("standard", "reference", False)
    with pytest.raises(ValueError, match="device must be cuda"):
        bench_e2e.make_step("standard-graph", 2, device="cpu")


@pytest.mark.parametrize("variant", ["standard", "authors", "adjoined-reference"])
def test_e2e_step_trains_a_tiny_model_on_cpu(variant):
    tiny = (ak.models.adjoined_resnet18, {"num_classes": 10, "stem": "cifar", "width": 8}, 8)
    step = bench_e2e.make_step(variant, 2, device="cpu", model=tiny)
    losses = [step() for _ in range(2)]
    assert all(torch.isfinite(v) for v in losses) and losses[0] != losses[1]


def test_report_cpu_section_quantiles_and_speedups(tmp_path):
    def entry(data_s, **extra):
        return {"stats": {"median": sorted(data_s)[len(data_s) // 2], "data": data_s}, "extra_info": extra}

    full = [1.0, 1.1, 1.2, 1.3, 1.4]  # seconds: p50 1.2, p20 1.08, p80 1.32
    small = [0.3, 0.4, 0.4, 0.4, 0.5]
    data = {"machine_info": {"cpu": {"brand_raw": "test cpu", "count": 2}, "python_version": "3"},
            "benchmarks": [entry(full, model="m", batch=8, variant="eager", net="full"),
                           entry(small, model="m", batch=8, variant="eager", net="small"),
                           entry([0.2] * 3, kind="compact"), entry([0.5] * 3, kind="authors")]}
    path = tmp_path / "2026-01-01-cpu.json"
    path.write_text(json.dumps(data))
    text = "\n".join(report.cpu_section(str(path)))
    assert "| m | 8 | eager | 1200.0 [1080.0, 1320.0] | 400.0 [380.0, 420.0] | 3.00x |" in text
    assert "| authors | 500.0 [500.0, 500.0] | 2.50x |" in text


def test_e2e_reports_the_backend_auto_gave_each_layer(tmp_path, monkeypatch, capsys):
    from adjoined_kernels import _autotune
    monkeypatch.setenv("ADJOINED_AUTOTUNE_CACHE", "")
    _autotune.clear()
    def timed(**ms):  # candidates that carry their own fake time
        fns = {}
        for name, t in ms.items():
            fns[name] = lambda: None
            fns[name].ms = t
        return fns
    _autotune.choose("adjoined_conv2d", (1,), timed(reference=2.0, triton=1.0), timer=lambda fn: fn.ms)
    _autotune.choose("adjoined_conv2d", (2,), timed(reference=0.5, triton=1.0), timer=lambda fn: fn.ms)
    bench = bench_e2e.E2EBench(str(tmp_path / "e2e.csv"), 1, 1, {})
    bench.report_auto("adjoined-auto", 2)
    rows = json.loads((tmp_path / "e2e.auto.json").read_text())
    assert [(r["op"], r["key"], r["backend"], r["N"]) for r in rows] == [
        ("adjoined_conv2d", "(1,)", "triton", 2), ("adjoined_conv2d", "(2,)", "reference", 2)]
    assert "geometries per backend: adjoined_conv2d reference: 1, adjoined_conv2d triton: 1" in capsys.readouterr().out
    _autotune.clear()
