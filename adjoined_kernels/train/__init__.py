"""Trainer for adjoined networks: the ``adjoined-train`` and ``adjoined-search`` commands (:mod:`.cli`,
:mod:`.search`), datasets (:mod:`.data`, :mod:`.imagefolder`) and their seeded DataLoader batches
(:mod:`.loader`), the loop with exact resume (:mod:`.loop`, :mod:`.checkpoint`, :mod:`.guard`), torchrun
data parallelism (:mod:`.distributed`), the backend ``--check`` (:mod:`.check`) and reporting
(:mod:`.report`). ``python -m adjoined_kernels.train`` runs the command too."""
from .data import DataError, Dataset, load_dataset


def main(argv=None) -> int:
    """``adjoined-train`` with ``argv`` (default: sys.argv[1:]); returns the exit code."""
    from .cli import main as _main
    return _main(argv)


def search_main(argv=None) -> int:
    """``adjoined-search`` (the DAN width search) with ``argv``; returns the exit code."""
    from .cli import search_main
    return search_main(argv)


__all__ = ["main", "search_main", "load_dataset", "Dataset", "DataError"]
