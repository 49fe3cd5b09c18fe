"""Run the GPU test bodies of tests/test_cuda_ext.py (Python wrappers, autograd wiring, format handling)
on the CPU emulation of the kernels. The emulation library must register its ops in the ``adjoined``
namespace, so build it with -DADJ_NS=adjoined (see build_emu.sh: NS=adjoined csrc/emu/build_emu.sh).

    LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \\
        .venv/bin/python csrc/emu/check_emu_tests.py build/emu-adjoined/libadjoined_emu.so [--all]

Without --all the large conv cases and the 5000-row loss (slow under emulation) are left out; --conv-from=N / --conv-to=M pick conv
cases [N, M), --no-conv skips them, --no-loss stops after them, --dtypes=float16,bfloat16 and --formats=cl
narrow the conv runs (the large cases take minutes each).
"""
import os
import sys
import traceback
import types

os.environ["ADJOINED_POISON_OUTPUTS"] = "1"

import torch  # noqa: E402

# libtriton does not load under AddressSanitizer; the package works without triton.
sys.modules["triton"] = None
torch.ops.load_library(sys.argv[1])
sys.modules["adjoined_kernels._C"] = types.ModuleType("adjoined_kernels._C")  # the emulation stands in for _C
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
import test_cuda_ext as t  # noqa: E402

t.DEV = "cpu"
SLOW = {5, 6, 8}
failed = []


def run(name, fn, *args):
    try:
        fn(*args)
        print(f"ok   {name} {args}", flush=True)
    except Exception:  # noqa: BLE001 - report and continue
        failed.append((name, args))
        print(f"FAIL {name} {args}\n{traceback.format_exc()}", flush=True)


conv_from = next((int(a.split("=")[1]) for a in sys.argv if a.startswith("--conv-from=")), 0)
conv_to = next((int(a.split("=")[1]) for a in sys.argv if a.startswith("--conv-to=")), len(t.CONV_CASES))
dtypes = next((a.split("=")[1].split(",") for a in sys.argv if a.startswith("--dtypes=")), None)
formats = next((a.split("=")[1].split(",") for a in sys.argv if a.startswith("--formats=")), ["nchw", "cl", "strided"])
for case in range(conv_from, 0 if "--no-conv" in sys.argv else conv_to):
    if case in SLOW and "--all" not in sys.argv:
        continue
    for dtype in t.DTYPES:
        if dtypes is not None and str(dtype).removeprefix("torch.") not in dtypes:
            continue
        for fmt in formats:
            run("conv", t.test_conv_forward_and_grads_vs_float64, case, dtype, fmt)
if "--no-loss" in sys.argv:
    print("FAILED:", failed if failed else "none")
    sys.exit(1 if failed else 0)
for dtype in t.DTYPES:
    run("share", t.test_conv_share_weights_gives_same_result, dtype)
for shape in t.LOSS_SHAPES:
    if shape[0] > 1000 and "--all" not in sys.argv:  # thousands of blocks: very slow under emulation
        continue
    for dtype in t.DTYPES:
        for red in ("mean", "sum", "none"):
            run("loss", t.test_loss_vs_float64, shape, dtype, red)
for eps in (1e-30, 0.3):
    run("loss_eps", t.test_loss_eps_extremes, eps)
run("loss_no_grad", t.test_loss_no_grad_skips_gradients)
run("loss_all_ignored", t.test_loss_all_rows_ignored_mean)
print("FAILED:", failed if failed else "none")
sys.exit(1 if failed else 0)
