"""Datasets for the trainer. Small ones live in memory; ImageFolder streams from disk (:mod:`.imagefolder`).

Formats:
- ``fashion-mnist`` / ``mnist``: the four IDX files (``train-images-idx3-ubyte[.gz]``, ...), in memory.
- ``cifar10`` / ``cifar100``: the python-pickle directories (``cifar-10-batches-py``, ``cifar-100-python``),
  in memory.
- ``imagefolder``: ``DIR/train/<class>/*.jpg|png...`` and ``DIR/val/<class>/...`` (or ``test/``), read by
  ``torchvision.datasets.ImageFolder`` and decoded per batch (ImageNet-sized data does not fit in memory).

The IDX and CIFAR readers are ours rather than torchvision's: torchvision's classes want their download
layout (uncompressed ``FashionMNIST/raw/``) and check CIFAR's MD5 sums, so they reject the Debian package's
``.gz`` files and any re-packed copy, and their errors do not say what to do. Any missing or malformed input
raises :class:`DataError` with a message saying which path was expected and how to get it.

A split hands out batches through ``__getitems__([(index, seed), ...]) -> (uint8 [B, C, H, W], int64 [B])``
(:mod:`.loader`); the seed fixes that sample's augmentation.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass

import numpy as np
import torch

from ..layout import nchw

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
MNIST_DIR = "/usr/share/datasets/mnist"
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Per-dataset normalisation (of pixel/255), train-split statistics. imagefolder computes its own.
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),  # the paper's App. B
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's, as torchvision's recipes
}
# Augmentation that suits the data: crop padding (pixels) and horizontal flip. Digits must not be flipped.
AUGMENT = {"fashion-mnist": (2, True), "mnist": (2, False), "cifar10": (4, True), "cifar100": (4, True)}

HOW_TO_GET = {
    "fashion-mnist": f"install it with `apt-get install dataset-fashion-mnist` (it lands in {FASHION_DIR}), or "
                     "download the four IDX .gz files from github.com/zalandoresearch/fashion-mnist and pass "
                     "--data-dir DIR",
    "mnist": "download the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
             "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into a directory and pass --data-dir DIR",
    "cifar10": "download cifar-10-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html, untar it and pass "
               "--data-dir path/to/cifar-10-batches-py",
    "cifar100": "download cifar-100-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html, untar it and pass "
                "--data-dir path/to/cifar-100-python",
    "imagefolder": "pass --data-dir DIR where DIR/train/<class>/ and DIR/val/<class>/ hold the images",
}


class DataError(Exception):
    """A dataset is missing or malformed; the message says which path and how to get it."""


@dataclass
class Dataset:
    """A whole dataset in memory: ``uint8 [N, C, H, W]`` images, ``int64 [N]`` labels."""

    name: str
    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple
    pad: int
    flip: bool
    root: str

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[-1]

    @property
    def sample_shape(self) -> tuple:
        """``(C, H, W)`` of one image as the network sees it."""
        return tuple(self.x_train.shape[1:])

    def size(self, split: str) -> int:
        """Images in ``split`` ("train" or "test")."""
        return len(self.x_train if split == "train" else self.x_test)

    def split(self, split: str, augment_data: bool = False) -> "MemorySplit":
        """``split`` as a dataset for :mod:`.loader`, random crop + flip per sample when ``augment_data``."""
        if split == "train":
            return MemorySplit(self.x_train, self.y_train, self.pad if augment_data else 0, augment_data and self.flip)
        return MemorySplit(self.x_test, self.y_test, 0, False)

    def take(self, index: torch.Tensor, split: str = "train"):
        """``(uint8 images, int64 labels)`` at ``index`` of ``split``, not augmented."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        return x[index], y[index]


class MemorySplit(torch.utils.data.Dataset):
    """One in-memory split; ``__getitems__`` gathers a batch and augments it in one batched op."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pad: int, flip: bool):
        self.x, self.y, self.pad, self.flip = x, y, pad, flip

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, items):
        idx = torch.tensor([i for i, _ in items], dtype=torch.long)
        x = self.x[idx]
        if self.pad or self.flip:
            x = augment(x, self.pad, self.flip, torch.tensor([s for _, s in items], dtype=torch.long))
        return x, self.y[idx]

    def __getitem__(self, item):
        x, y = self.__getitems__([item])
        return x[0], y[0]


def default_data_dir(name: str) -> str | None:
    return {"fashion-mnist": FASHION_DIR, "mnist": MNIST_DIR}.get(name)


def load_dataset(name: str, data_dir: str | None = None, image_size: int | None = None,
                 subset: int | None = None, seed: int = 0) -> Dataset:
    """Load ``name`` from ``data_dir`` (or its default location) into memory.

    ``subset`` keeps a seeded random sample of that many train and test images (smoke tests).
    Raises DataError for a missing or malformed dataset.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    root = data_dir or default_data_dir(name)
    if root is None:
        raise DataError(f"--dataset {name} needs --data-dir: {HOW_TO_GET[name]}")
    if not os.path.isdir(root):
        raise DataError(f"{name} directory {root} does not exist; {HOW_TO_GET[name]}")
    if name in ("fashion-mnist", "mnist"):
        xtr, ytr, xte, yte = _load_idx_dir(root, name)
        num_classes = 10
    elif name in ("cifar10", "cifar100"):
        xtr, ytr, xte, yte = _load_cifar(root, name)
        num_classes = 10 if name == "cifar10" else 100
    else:
        from .imagefolder import load_imagefolder
        return load_imagefolder(root, image_size or 64, subset, seed)
    if len(xtr) == 0 or len(xte) == 0:
        raise DataError(f"{name} at {root} has an empty train or test split")
    bad = [int(y.max()) for y in (ytr, yte) if int(y.max()) >= num_classes or int(y.min()) < 0]
    if bad:
        raise DataError(f"{name} at {root}: labels must be in [0, {num_classes}), found {bad[0]}; the files are corrupt")
    if subset:
        g = torch.Generator().manual_seed(seed)
        itr = torch.randperm(len(xtr), generator=g)[:subset]
        ite = torch.randperm(len(xte), generator=g)[:subset]
        xtr, ytr, xte, yte = xtr[itr], ytr[itr], xte[ite], yte[ite]
    mean, std = STATS[name]
    pad, flip = AUGMENT[name]
    return Dataset(name, nchw(xtr), ytr, nchw(xte), yte, num_classes, mean, std, pad, flip, root)


# ---------------------------------------------------------------------------------------------------- IDX

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find_idx(root: str, stem: str, name: str) -> str:
    variants = [stem, stem.replace("-idx", ".idx")]
    for v in variants:
        for ext in (".gz", ""):
            p = os.path.join(root, v + ext)
            if os.path.isfile(p):
                return p
    raise DataError(f"{name}: expected {os.path.join(root, stem + '.gz')} (or without .gz) but it is missing; "
                    f"{HOW_TO_GET[name]}")


def read_idx(path: str, expect_ndim: int) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (gz or raw) into a uint8 tensor; DataError when malformed."""
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read IDX file {path}: {e}; the file looks corrupt, download it again") from None
    if len(raw) < 4:
        raise DataError(f"malformed IDX file {path}: only {len(raw)} bytes; download it again")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim != expect_ndim:
        raise DataError(f"malformed IDX file {path}: magic {raw[:4].hex()} (expected 0000080{expect_ndim}, "
                        f"unsigned bytes with {expect_ndim} dims); download it again")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"malformed IDX file {path}: truncated header; download it again")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    n = 1
    for d in dims:
        n *= d
    if len(raw) - header != n:
        raise DataError(f"malformed IDX file {path}: header says {dims} = {n} bytes of data, file has "
                        f"{len(raw) - header}; download it again")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims) if n else \
        torch.zeros(dims, dtype=torch.uint8)


def _load_idx_dir(root: str, name: str):
    out = []
    for split in ("train", "test"):
        ip, lp = (_find_idx(root, s, name) for s in IDX_FILES[split])
        x, y = read_idx(ip, 3), read_idx(lp, 1)
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{name} {split} split: {ip} has {x.shape[0]} images but {lp} has {y.shape[0]} "
                            "labels; download them again")
        out += [x.unsqueeze(1), y.long()]
    return out


# -------------------------------------------------------------------------------------------------- CIFAR

def _unpickle(path: str, name: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"{name}: expected {path} but it is missing; {HOW_TO_GET[name]}")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(f"{name}: cannot unpickle {path} ({type(e).__name__}: {e}); {HOW_TO_GET[name]}") from None
    if not isinstance(d, dict):
        raise DataError(f"{name}: {path} is not a CIFAR batch (a pickled dict); {HOW_TO_GET[name]}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_part(path: str, name: str, label_key: str):
    d = _unpickle(path, name)
    if "data" not in d or label_key not in d:
        raise DataError(f"{name}: {path} lacks the 'data' or '{label_key}' entry; {HOW_TO_GET[name]}")
    try:
        data = torch.from_numpy(np.ascontiguousarray(d["data"], dtype=np.uint8))
        labels = torch.as_tensor(np.asarray(d[label_key], dtype=np.int64))
    except (TypeError, ValueError) as e:
        raise DataError(f"{name}: {path} has malformed 'data'/'{label_key}' ({e}); {HOW_TO_GET[name]}") from None
    if data.numel() != len(labels) * 3072:
        raise DataError(f"{name}: {path} has {data.numel()} bytes of images for {len(labels)} labels "
                        f"(expected 3072 per 32x32 RGB image); {HOW_TO_GET[name]}")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar(root: str, name: str):
    sub = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    if os.path.isdir(os.path.join(root, sub)):
        root = os.path.join(root, sub)
    if name == "cifar10":
        parts = [_cifar_part(os.path.join(root, f"data_batch_{i}"), name, "labels") for i in range(1, 6)]
        xtr, ytr = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        xte, yte = _cifar_part(os.path.join(root, "test_batch"), name, "labels")
    else:
        xtr, ytr = _cifar_part(os.path.join(root, "train"), name, "fine_labels")
        xte, yte = _cifar_part(os.path.join(root, "test"), name, "fine_labels")
    return xtr, ytr, xte, yte


# ----------------------------------------------------------------------------------------- batches, augment

def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 ``(x/255 - mean) / std``."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s


def augment(x: torch.Tensor, pad: int, flip: bool, seeds: torch.Tensor) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and (if ``flip``) horizontal flip, per image, of a uint8 batch.

    The same transform as ``v2.RandomCrop(H, padding=pad)`` then ``v2.RandomHorizontalFlip()`` per image,
    done as one gather over the batch (9x faster than the per-image transforms on this CPU). Image ``i``'s
    offsets and flip are digits of ``seeds[i]`` (int64, uniform), so they depend on the sample alone.
    """
    b, c, h, w = x.shape
    k = 2 * pad + 1
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy, ox = seeds % k, (seeds // k) % k
        rows = (oy[:, None] + torch.arange(h)).view(b, 1, h, 1)
        cols = (ox[:, None] + torch.arange(w)).view(b, 1, 1, w)
        x = xp[torch.arange(b).view(b, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]  # [B, C, H, W]
    if flip:
        m = (seeds // (k * k)) % 2 == 1
        x = torch.where(m.view(-1, 1, 1, 1), x.flip(-1), x)
    return nchw(x)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of ``epoch``'s order and per-sample augmentation seeds: seeded ``seed*1000 + epoch``,
    so resume is exact."""
    return torch.Generator().manual_seed(seed * 1000 + epoch)


# --augment auto turns augmentation on from this many epochs: a regulariser that short runs cannot afford.
AUTO_AUGMENT_EPOCHS = 10


def augmenting(args) -> bool:
    """Whether training batches are augmented: ``--augment on``, or ``auto`` with enough ``--epochs``."""
    return args.augment == "on" or (args.augment == "auto" and args.epochs >= AUTO_AUGMENT_EPOCHS)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Steps of an epoch of ``n`` images: the partial last batch is dropped when the split holds at least one
    full batch (BatchNorm needs > 1 sample)."""
    return max(1, n // batch_size)
