"""The Triton relaunch cache (adjoined_kernels/ops/conv/triton/launch.py) against Triton's own launch path, offline."""


def test_relaunches_match_tritons_own_launches(sm90_tool):
    """Every launch of fprop, dgrad, wgrad and its reduction, from Triton's path, from the cache's first step
    and from the cache: the same compiled kernel, grid and arguments (tools/launch_report.py --check; kernels
    compiled for sm_90, the C launcher recorded instead of called). The check fails when the cache key
    leaves out the tensors' alignment or the int arguments."""
    proc = sm90_tool("launch_report.py", "--check", timeout=900)
    assert proc.returncode == 0 and "CHECK: ok" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.count(" launches: ") == 5
