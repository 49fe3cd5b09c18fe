"""timm CNNs adjoined: the default split point of a timm model and what ``adjoined-train --arch timm:NAME``
builds (docs/adjoin.md, "timm models"). Needs the ``timm`` extra."""
from __future__ import annotations

import os

import torch.nn as nn

from .model import AdjoinedModel, adjoin


def timm_start(model: nn.Module) -> str:
    """Where the branches of a timm model split: the first module that runs after the feature at 1/4 of the
    input resolution (timm's ``feature_info``), i.e. the stage that brings it to 1/8, as ``layer2`` in a
    ResNet. The stem and the first stage are shared.

    Raises:
        ValueError: the model has no ``feature_info`` module at 1/4 (or 1/8) of the resolution.
    """
    info = getattr(model, "feature_info", None) or []
    names = [n for n, _ in model.named_modules()]
    quarter = [f["module"] for f in info if f.get("reduction") == 4 and f.get("module") in names]
    if not quarter:  # feature modules that are not module paths (HRNet): the 1/8 stage itself
        eighth = [f["module"] for f in info if f.get("reduction") == 8 and f.get("module") in names]
        if eighth:
            return eighth[0]
        raise ValueError(f"{type(model).__name__} has no timm feature_info module at reduction 4; pass start=")
    last = quarter[-1]
    i = names.index(last)
    after = next((n for n in names[i + 1:] if not n.startswith(last + ".")), None)
    if after is None:
        raise ValueError(f"no module of {type(model).__name__} runs after {last!r}; pass start=")
    # the outermost module that begins with that one (a stage rather than its first conv)
    parts = after.split(".")
    for k in range(1, len(parts) + 1):
        cand = ".".join(parts[:k])
        first = next(n for n in names if n == cand or n.startswith(cand + "."))
        if first == cand and names.index(cand) > i and not last.startswith(cand + "."):
            return cand
    return after


def build_timm(name: str, num_classes: int, in_channels: int, alpha: int, start: str | None,
               pretrained: str | None, small_images: bool, backend: str) -> AdjoinedModel:
    """``timm.create_model(name, num_classes=..., in_chans=...)``, adapted and adjoined.

    Args:
        name: a timm model name, e.g. "mobilenetv3_large_100", "resnet50d".
        num_classes, in_channels: of the task (timm adapts the stem conv to ``in_channels``).
        alpha: width divisor of the small network.
        start: module path where the branches split; None takes :func:`timm_start`.
        pretrained: path of a local checkpoint file (a state dict, ``.pth`` / ``.bin`` / ``.safetensors``)
            loaded with timm's own loader (``pretrained_cfg_overlay=dict(file=...)``), which adapts the first
            conv to ``in_channels`` and drops a classifier of another size. Nothing is downloaded.
        small_images: adapt the stem to ~28-32 pixel inputs: stride 1 in the first conv, and the stem
            max-pool (``maxpool``, ResNet-style models) becomes an ``Identity``.
        backend: of the fused adjoined convs.

    Returns:
        An :class:`AdjoinedModel` in train mode; ``model(x [N, in_channels, H, W])`` gives
        ``(logits_full, logits_small)``, each ``[N, num_classes]``.

    Raises:
        ImportError: timm is not installed (``pip install adjoined-kernels[timm]``).
        ValueError: an unknown model name, or anything :func:`adjoin` refuses.
        FileNotFoundError: ``pretrained`` is not a file.
    """
    try:
        import timm
    except ImportError as e:
        raise ImportError("--arch timm:NAME needs timm: pip install 'adjoined-kernels[timm]'") from e
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; timm.list_models('*{name[:4]}*') lists similar names")
    kw = {}
    if pretrained is not None:
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"pretrained weights for {name} not found at {pretrained!r}. Nothing is "
                                    f"downloaded: copy a timm checkpoint of {name} to that path.")
        kw = {"pretrained": True, "pretrained_cfg_overlay": {"file": pretrained}}
    model = timm.create_model(name, num_classes=num_classes, in_chans=in_channels, **kw)
    if small_images:
        adapt_small_images(model)
    hw = 32 if small_images else 64
    return adjoin(model.train(), alpha=alpha, start=start or timm_start(model), backend=backend,
                  input_shape=(in_channels, hw, hw))


def adapt_small_images(model: nn.Module) -> None:
    """Stride 1 in the first conv and no stem max-pool, in place (for ~28-32 pixel inputs)."""
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first.stride = (1, 1)
    if isinstance(getattr(model, "maxpool", None), (nn.MaxPool2d, nn.AvgPool2d)):
        model.maxpool = nn.Identity()
