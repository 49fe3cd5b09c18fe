"""The ``--check`` verdict shared by the offline compiler reports in tools/ (run as scripts, so this folder is
on sys.path): one ``CHECK:`` line per finding, then ``CHECK: ok`` or ``CHECK: FAILED``."""


def verdict(failed: list[str]) -> int:
    """Print each finding and the verdict; returns the exit status: 1 when anything failed, else 0."""
    for f in failed:
        print(f"CHECK: {f}")
    print(f"CHECK: {'FAILED' if failed else 'ok'}")
    return 1 if failed else 0
