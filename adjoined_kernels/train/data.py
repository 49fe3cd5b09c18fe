"""In-memory datasets for the trainer, and augmentation on batched uint8 tensors (fast on CPU).

Formats:
- ``fashion-mnist`` / ``mnist``: the four IDX files (``train-images-idx3-ubyte[.gz]``, ...).
- ``cifar10`` / ``cifar100``: the python-pickle directories (``cifar-10-batches-py``, ``cifar-100-python``).
- ``imagefolder``: ``DIR/train/<class>/*.png|jpg...`` and ``DIR/val/<class>/...`` (or ``test/``), read with
  PIL and resized to a square ``image_size``.

Every dataset is held as ``uint8 [N, C, H, W]`` images and ``int64 [N]`` labels. Any missing or malformed
input raises :class:`DataError` with a message saying which path was expected and how to get it.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass

import numpy as np
import torch

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
MNIST_DIR = "/usr/share/datasets/mnist"
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Per-dataset normalisation (of pixel/255), train-split statistics. imagefolder computes its own.
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),  # seeds/000 App. B
}
# Augmentation that suits the data: crop padding (pixels) and horizontal flip. Digits must not be flipped.
AUGMENT = {"fashion-mnist": (2, True), "mnist": (2, False), "cifar10": (4, True), "cifar100": (4, True),
           "imagefolder": (None, True)}

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
    """A whole dataset in memory."""

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
        xtr, ytr, xte, yte, num_classes = _load_imagefolder(root, image_size or 64)
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
    if name in STATS:
        mean, std = STATS[name]
    else:
        f = xtr.float().div_(255)
        mean = tuple(f.mean((0, 2, 3)).tolist())
        std = tuple(f.std((0, 2, 3)).clamp_min(1e-3).tolist())
    pad, flip = AUGMENT[name]
    if pad is None:
        pad = max(1, xtr.shape[-1] // 8)
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


# -------------------------------------------------------------------------------------------- ImageFolder

def _load_imagefolder(root: str, size: int):
    try:
        from PIL import Image
    except ImportError:
        raise DataError("--dataset imagefolder needs Pillow: `pip install pillow`") from None
    train_dir = os.path.join(root, "train")
    val_dir = next((os.path.join(root, d) for d in ("val", "test") if os.path.isdir(os.path.join(root, d))), None)
    if not os.path.isdir(train_dir) or val_dir is None:
        raise DataError(f"imagefolder: expected {train_dir}/<class>/ and {os.path.join(root, 'val')}/<class>/ "
                        f"directories; {HOW_TO_GET['imagefolder']}")
    classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
    if not classes:
        raise DataError(f"imagefolder: {train_dir} has no class subdirectories; {HOW_TO_GET['imagefolder']}")
    index = {c: i for i, c in enumerate(classes)}

    def load(split_dir):
        xs, ys = [], []
        for c in sorted(os.listdir(split_dir)):
            cdir = os.path.join(split_dir, c)
            if not os.path.isdir(cdir):
                continue
            if c not in index:
                raise DataError(f"imagefolder: class {c!r} in {split_dir} is not among the train classes "
                                f"{classes[:5]}...")
            for fn in sorted(os.listdir(cdir)):
                if not fn.lower().endswith(IMAGE_EXTS):
                    continue
                p = os.path.join(cdir, fn)
                try:
                    with Image.open(p) as im:
                        im = im.convert("RGB").resize((size, size), Image.BILINEAR)
                        xs.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
                                  .reshape(size, size, 3).permute(2, 0, 1).contiguous())
                except Exception as e:  # noqa: BLE001 - PIL raises many kinds
                    raise DataError(f"imagefolder: cannot read image {p} ({type(e).__name__}: {e})") from None
                ys.append(index[c])
        if not xs:
            raise DataError(f"imagefolder: no images ({', '.join(IMAGE_EXTS)}) under {split_dir}/<class>/")
        return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)

    return (*load(train_dir), *load(val_dir), len(classes))


# ----------------------------------------------------------------------------------------- batches, augment

def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 ``(x/255 - mean) / std``."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s


def augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and (if ``flip``) horizontal flip, per image, on a uint8 batch.

    All randomness comes from ``gen`` (a CPU generator), so a run is reproducible from its seed.
    """
    b, c, h, w = x.shape
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        rows = (oy[:, None] + torch.arange(h)).view(b, 1, h, 1)
        cols = (ox[:, None] + torch.arange(w)).view(b, 1, 1, w)
        x = xp[torch.arange(b).view(b, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]  # [B, C, H, W]
    if flip:
        m = torch.rand(b, generator=gen) < 0.5
        x = torch.where(m.view(-1, 1, 1, 1), x.flip(-1), x)
    return nchw(x)


def nchw(x: torch.Tensor) -> torch.Tensor:
    """``x`` with standard NCHW strides. ``.contiguous()`` is not enough: with one channel, channels-last
    strides also count as contiguous, and CPU convs then run (and propagate) channels_last, where oneDNN
    (torch 2.14) computes wrong weight gradients for 1x1 stride-2 convs with 2-7 input channels."""
    if x.stride() == torch.empty(x.shape, device="meta").stride():
        return x
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator for shuffling and augmentation in ``epoch``: seeded ``seed*1000 + epoch``, so resume is exact."""
    return torch.Generator().manual_seed(seed * 1000 + epoch)


# --augment auto turns augmentation on from this many epochs: a regulariser that short runs cannot afford.
AUTO_AUGMENT_EPOCHS = 10


def augmenting(args) -> bool:
    """Whether training batches are augmented: ``--augment on``, or ``auto`` with enough ``--epochs``."""
    return args.augment == "on" or (args.augment == "auto" and args.epochs >= AUTO_AUGMENT_EPOCHS)


def train_batches(ds: Dataset, batch_size: int, gen: torch.Generator, augment_data: bool = True):
    """Yield ``(uint8 images, labels)`` for one shuffled epoch; a partial last batch is dropped when the
    split holds at least one full batch (BatchNorm needs > 1 sample)."""
    n = len(ds.x_train)
    perm = torch.randperm(n, generator=gen)
    steps = steps_per_epoch(n, batch_size)
    for i in range(steps):
        idx = perm[i * batch_size:(i + 1) * batch_size]
        x = ds.x_train[idx]
        if augment_data:
            x = augment(x, ds.pad, ds.flip, gen)
        yield x, ds.y_train[idx]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)
