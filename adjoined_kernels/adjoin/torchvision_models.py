"""torchvision classification models, adapted to small images and adjoined: what ``adjoined-train --arch
tv:NAME`` builds. Each change is listed in docs/adjoin.md ("torchvision models")."""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn

from .model import AdjoinedModel, adjoin

# Where the branches split, per model of the coverage list: the stem and the first stage at 1/4 of the input
# resolution are shared, as in the adjoined ResNets (stem + layer1); the branches start with the first
# stage at 1/8. ShuffleNetV2 is listed so that it is refused with the channel-shuffle error.
DEFAULT_START = {
    "resnet18": "layer2",
    "resnet50": "layer2",
    "resnext50_32x4d": "layer2",
    "wide_resnet50_2": "layer2",
    "vgg11_bn": "features.8",
    "mobilenet_v2": "features.4",
    "mobilenet_v3_small": "features.2",
    "efficientnet_b0": "features.3",
    "densenet121": "features.transition1",
    "shufflenet_v2_x0_5": "stage2",
}


def build_torchvision(name: str, num_classes: int, in_channels: int, alpha: int, start: str | None,
                      pretrained: str | None, small_images: bool, backend: str) -> AdjoinedModel:
    """``torchvision.models.<name>(num_classes=num_classes)``, randomly initialised, adapted and adjoined.

    Args:
        name: a torchvision classification model name, e.g. "resnet50", "mobilenet_v2".
        num_classes, in_channels: of the task. ``in_channels != 3`` replaces the first conv (from
            pretrained RGB weights: their sum over RGB for one channel, else RGB repeated and scaled by
            3/in_channels).
        alpha: width divisor of the small network.
        start: module path where the branches split; None takes ``DEFAULT_START[name]`` (or "layer2").
        pretrained: path of a local torchvision state dict for ``name``, loaded before any change; a
            classifier whose shape differs (other ``num_classes``) stays randomly initialised, with a warning.
            Nothing is ever downloaded.
        small_images: adapt the stem to inputs of ~28-32 pixels (per family, see docs/adjoin.md).
        backend: of the fused adjoined convs.

    Returns:
        An :class:`AdjoinedModel` in train mode; ``model(x [N, in_channels, H, W])`` gives
        ``(logits_full, logits_small)``, each ``[N, num_classes]``.

    Raises:
        ValueError: an unknown model name, a state dict that does not fit, or anything :func:`adjoin` refuses
            (e.g. ShuffleNetV2's channel shuffle).
        FileNotFoundError: ``pretrained`` is not a file (the message says where to put it).
    """
    import torchvision
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ValueError(f"unknown torchvision classification model {name!r}; available: {', '.join(names)}")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if pretrained is not None:
        _load_pretrained(model, name, pretrained)
    if small_images:
        adapt_small_images(model, name, in_channels)
    _adapt_in_channels(model, in_channels, from_pretrained=pretrained is not None)
    hw = 32 if small_images else 64
    return adjoin(model.train(), alpha=alpha, start=start or DEFAULT_START.get(name), backend=backend,
                  input_shape=(in_channels, hw, hw))


def _load_pretrained(model: nn.Module, name: str, path: str) -> None:
    if not os.path.isfile(path):
        import torchvision
        try:
            url = torchvision.models.get_model_weights(name).DEFAULT.url
        except Exception:  # noqa: BLE001 - not every model lists weights
            url = None
        hint = f" (torchvision's file is {url})" if url else ""
        raise FileNotFoundError(f"pretrained weights for {name} not found at {path!r}. Nothing is downloaded: "
                                f"copy a torchvision state dict for {name}{hint} to that path, or pass "
                                f"--pretrained with the path of one.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path} is not a state dict of torchvision's {name}: missing keys {missing[:5]}, "
                         f"unexpected keys {unexpected[:5]}")
    skipped = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if skipped:
        warnings.warn(f"{path}: keys {skipped} have other shapes (a classifier for another number of classes) "
                      f"and stay randomly initialised", stacklevel=3)
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)


def adapt_small_images(model: nn.Module, name: str, in_channels: int) -> None:
    """Change ``model`` in place for ~28-32 pixel inputs (Fashion-MNIST, CIFAR); docs/adjoin.md lists it."""
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif name.startswith("densenet"):
        conv0 = model.features.conv0
        model.features.conv0 = nn.Conv2d(in_channels, conv0.out_channels, 3, 1, 1, bias=False)
        model.features.pool0 = nn.Identity()
    elif name.startswith("vgg"):
        _vgg_small(model)
    elif name.startswith("shufflenet"):
        model.conv1[0].stride = (1, 1)
        model.maxpool = nn.Identity()
    else:
        _first_conv(model)[1].stride = (1, 1)


def _vgg_small(model: nn.Module) -> None:
    """Drop the first max-pool, and pool the last map to 1x1 with the first classifier Linear summed over the
    7x7 positions it used to read (the same function when that map is 1x1, as it is for 28-32 px inputs)."""
    first_pool = next(i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d))
    model.features[first_pool] = nn.Identity()
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    fc = model.classifier[0]
    pos = fc.in_features // 512
    new = nn.Linear(512, fc.out_features)
    with torch.no_grad():
        new.weight.copy_(fc.weight.view(fc.out_features, 512, pos).sum(-1))
        new.bias.copy_(fc.bias)
    model.classifier[0] = new


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    return next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _adapt_in_channels(model: nn.Module, in_channels: int, from_pretrained: bool) -> None:
    path, conv = _first_conv(model)
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    if from_pretrained:
        with torch.no_grad():
            w = conv.weight
            if in_channels == 1:
                new.weight.copy_(w.sum(1, keepdim=True))
            else:
                reps = -(-in_channels // w.shape[1])
                new.weight.copy_(w.repeat(1, reps, 1, 1)[:, :in_channels] * (w.shape[1] / in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
