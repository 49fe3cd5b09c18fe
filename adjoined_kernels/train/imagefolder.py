"""``--dataset imagefolder``: images streamed from disk with ``torchvision.datasets.ImageFolder``.

Layout ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (or ``test/``); class indices come from the train
directory's sorted class names, and the validation split uses the same mapping. Augmentation follows
torchvision's ImageNet reference recipe with ``transforms.v2``: ``RandomResizedCrop(image_size)`` and a
horizontal flip for training; ``Resize(image_size / 0.875)`` and ``CenterCrop(image_size)`` for evaluation
(256 and 224 at the usual size). Nothing is decoded up front: each batch is read by the loader's workers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torchvision.datasets import ImageFolder

from .data import HOW_TO_GET, STATS, DataError

EVAL_CROP = 0.875  # the centre crop's share of the resized side: 224 of 256


class _Folder(ImageFolder):
    """``torchvision.datasets.ImageFolder`` with a given class mapping (the train split's)."""

    def __init__(self, root: str, class_to_idx: dict):
        self._mapping = dict(class_to_idx)
        try:
            super().__init__(root, allow_empty=True)
        except (OSError, RuntimeError) as e:
            raise DataError(f"imagefolder: cannot list {root}: {e}") from None

    def find_classes(self, directory):
        return list(self._mapping), dict(self._mapping)


def _transforms(size: int, train: bool):
    from torchvision.transforms import v2
    if train:
        steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize(round(size / EVAL_CROP), antialias=True), v2.CenterCrop(size)]
    return v2.Compose(steps + [v2.PILToTensor()])


class FolderSplit(torch.utils.data.Dataset):
    """One split read per batch; ``__getitems__`` decodes, transforms and stacks ``uint8 [B, 3, S, S]``.

    Sample ``(index, seed)`` is transformed with torch's global generator seeded ``seed`` (inside
    ``torch.random.fork_rng`` in the training process), so its crop and flip depend on the seed alone, in any
    worker.
    """

    def __init__(self, folder, transform, seeded: bool):
        self.folder, self.transform, self.seeded = folder, transform, seeded

    def __len__(self) -> int:
        return len(self.folder.samples)

    def _one(self, index: int, seed: int) -> torch.Tensor:
        path = self.folder.samples[index][0]
        try:
            img = self.folder.loader(path)
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds
            raise DataError(f"imagefolder: cannot read image {path} ({type(e).__name__}: {e})") from None
        if not self.seeded:
            return self.transform(img)
        if torch.utils.data.get_worker_info() is not None:  # a worker's generator serves nothing else
            torch.manual_seed(seed)
            return self.transform(img)
        with torch.random.fork_rng(devices=[]):  # in the training process: leave its generator as it was
            torch.manual_seed(seed)
            return self.transform(img)

    def __getitems__(self, items):
        xs = [self._one(i, s) for i, s in items]
        ys = torch.tensor([self.folder.targets[i] for i, _ in items], dtype=torch.int64)
        return torch.stack(xs), ys

    def __getitem__(self, item):
        x, y = self.__getitems__([item])
        return x[0], y[0]


@dataclass
class FolderDataset:
    """An ImageFolder dataset streamed from disk; the same interface as the in-memory ``data.Dataset``."""

    root: str
    image_size: int
    train_folder: object
    test_folder: object
    classes: list
    name: str = "imagefolder"
    in_channels: int = 3
    pad: int = 0
    flip: bool = True
    mean: tuple = field(default=STATS["imagefolder"][0])
    std: tuple = field(default=STATS["imagefolder"][1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def sample_shape(self) -> tuple:
        return (3, self.image_size, self.image_size)

    def size(self, split: str) -> int:
        return len((self.train_folder if split == "train" else self.test_folder).samples)

    def split(self, split: str, augment_data: bool = False) -> FolderSplit:
        train = split == "train" and augment_data
        folder = self.train_folder if split == "train" else self.test_folder
        return FolderSplit(folder, _transforms(self.image_size, train), seeded=train)

    def take(self, index: torch.Tensor, split: str = "train"):
        """``(uint8 images, int64 labels)`` at ``index``, with the evaluation transform."""
        return self.split(split).__getitems__([(int(i), 0) for i in index])


def load_imagefolder(root: str, image_size: int, subset: int | None = None, seed: int = 0) -> FolderDataset:
    """Index ``root``'s train and val/test directories (no image is decoded). DataError when the layout is
    wrong, a split has no images, or val holds a class that train lacks."""
    train_dir = os.path.join(root, "train")
    val_dir = next((os.path.join(root, d) for d in ("val", "test") if os.path.isdir(os.path.join(root, d))), None)
    if not os.path.isdir(train_dir) or val_dir is None:
        raise DataError(f"imagefolder: expected {train_dir}/<class>/ and {os.path.join(root, 'val')}/<class>/ "
                        f"directories; {HOW_TO_GET['imagefolder']}")
    classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
    if not classes:
        raise DataError(f"imagefolder: {train_dir} has no class subdirectories; {HOW_TO_GET['imagefolder']}")
    extra = sorted(d for d in os.listdir(val_dir) if os.path.isdir(os.path.join(val_dir, d)) and d not in classes)
    if extra:
        raise DataError(f"imagefolder: class {extra[0]!r} in {val_dir} is not among the train classes "
                        f"{classes[:5]}...")
    mapping = {c: i for i, c in enumerate(classes)}
    folders = [_Folder(d, mapping) for d in (train_dir, val_dir)]
    for d, f in zip((train_dir, val_dir), folders):
        if not f.samples:
            raise DataError(f"imagefolder: no images under {d}/<class>/ (extensions {', '.join(f.extensions)})")
    if subset:
        g = torch.Generator().manual_seed(seed)
        for f in folders:
            keep = sorted(torch.randperm(len(f.samples), generator=g)[:subset].tolist())
            f.samples = [f.samples[i] for i in keep]
            f.targets = [s[1] for s in f.samples]
    return FolderDataset(root, image_size, folders[0], folders[1], classes)
