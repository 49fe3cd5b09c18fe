"""The CUDA extension adjoined_kernels._C, built when torch has CUDA and nvcc exists.

The project's metadata, dependencies, extras and console scripts are in pyproject.toml; setuptools reads them
from there. This file only adds the extension.

Env vars: ADJOINED_SKIP_CUDA_BUILD=1 (never build _C), ADJOINED_CUDA_ARCHS (default "8.0;9.0"),
MAX_JOBS, NVCC_THREADS. Install with `pip install --no-build-isolation -e .[train,test]` (isolation pulls
another torch).
"""
import glob
import os
import shutil

from setuptools import setup


def cuda_extensions():
    """The _C extension, or [] with a message saying why it is not built."""
    if os.environ.get("ADJOINED_SKIP_CUDA_BUILD", "0") == "1":
        print("adjoined_kernels: ADJOINED_SKIP_CUDA_BUILD=1, not building the CUDA extension")
        return [], {}
    sources = sorted(glob.glob("csrc/*.cu") + glob.glob("csrc/*.cpp"))
    if not sources:
        print("adjoined_kernels: no CUDA sources in csrc/ yet, building no extension")
        return [], {}
    # An nvcc on PATH outside a toolkit tree (e.g. /usr/local/bin/nvcc) makes torch guess CUDA_HOME=/usr/local,
    # which has no CUDA headers: prefer the real toolkit when it is there (docs/kernels.md, "Building the
    # extension").
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        print("adjoined_kernels: torch is not importable at build time, building no extension")
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None or shutil.which("nvcc", path=os.path.join(CUDA_HOME, "bin")) is None:
        print("adjoined_kernels: torch has no CUDA or nvcc was not found, building no extension")
        return [], {}
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", os.environ.get("ADJOINED_CUDA_ARCHS", "8.0;9.0"))
    nvidia_inc = os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu13", "include")
    # No --use_fast_math: the loss needs accurate expf/logf and the fp32 conv path is meant to be exact.
    # No -std flag: torch.utils.cpp_extension adds the C++ standard its own headers need (C++20 in 2.14).
    # -isystem, not -I: searched after CUDA_HOME/include, whose cuda_runtime.h must win over the pip copy
    # (that one lacks crt/host_config.h); the pip dir only supplies headers CUDA_HOME lacks (cusparse.h etc.).
    sys_inc = ["-isystem", os.path.abspath(nvidia_inc)]
    nvcc = ["-O3", f"--threads={os.environ.get('NVCC_THREADS', '2')}"] + sys_inc
    # csrc/tests/ holds stand-alone C++ programs for the CMake build; they are not part of _C.
    depends = sorted(glob.glob("csrc/*.h") + glob.glob("csrc/*.cuh"))
    ext = CUDAExtension("adjoined_kernels._C", sources, include_dirs=[os.path.abspath("csrc")],
                        depends=depends, extra_compile_args={"cxx": ["-O3"] + sys_inc, "nvcc": nvcc})
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = cuda_extensions()

setup(ext_modules=ext_modules, cmdclass=cmdclass)
