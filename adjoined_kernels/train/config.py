"""``--config FILE``: a YAML file of option values for ``adjoined-train`` / ``adjoined-search``.

Each key is an option's name as Python sees it (``batch_size`` for ``--batch-size``); each value is what the
option takes (a list for an option with several values, true/false for a switch, null for "none").
Command-line flags override the file's values. ``--print-config`` prints the resolved options in this
format (a valid ``--config`` file) and exits. Recipes live in ``python/recipes/``.
"""
from __future__ import annotations

import argparse
import sys

NOT_CONFIG = ("help", "config", "print_config")  # options that a config file cannot set


class ConfigError(ValueError):
    """A config file that cannot be read, is not a mapping, or has an unknown key or a bad value."""


def add_config_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("config")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="YAML file of option values (keys: option names with underscores, e.g. batch_size); "
                        "command-line flags override it. Recipes: python/recipes/*.yaml")
    g.add_argument("--print-config", action="store_true",
                   help="print the resolved options as a --config file and exit")


def _actions(parser: argparse.ArgumentParser) -> dict:
    """dest -> the action that takes a value for it (``--augment`` rather than ``--no-augment``)."""
    out = {}
    for a in parser._actions:
        if a.dest in NOT_CONFIG or a.dest is argparse.SUPPRESS:
            continue
        if a.dest not in out or isinstance(out[a.dest], argparse._StoreConstAction):
            out[a.dest] = a
    return out


def _convert(key: str, value, action: argparse.Action, path: str):
    """``value`` as the option's type, checked against its choices; ConfigError naming ``key`` otherwise."""
    def bad(why):
        return ConfigError(f"{path}: bad value {value!r} for {key} (--{key.replace('_', '-')}): {why}")

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise bad("expected true or false")
        return value
    if value is None:
        return None
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    items = value if isinstance(value, list) else [value]
    if not many and isinstance(value, list):
        raise bad("expected one value, got a list")
    out = []
    for v in items:
        if isinstance(v, (dict, list)) or isinstance(v, bool):
            raise bad(f"expected {getattr(action.type, '__name__', 'a string')}")
        if action.type is int and isinstance(v, float) and not v.is_integer():
            raise bad("expected an integer")
        try:
            v = action.type(v) if action.type is not None else str(v)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise bad(str(e)) from None
        if action.choices is not None and v not in action.choices:
            raise bad(f"choose from {', '.join(map(str, action.choices))}")
        out.append(v)
    return out if many else out[0]


def load_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """The option values of YAML file ``path`` (``yaml.safe_load``), converted and checked against
    ``parser``'s options.

    Raises:
        ConfigError: the file is missing or not YAML, is not a mapping, has a key that is not an option of
            ``parser`` (naming it), or a value of the wrong type or outside the option's choices.
    """
    import yaml
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    actions = _actions(parser)
    out = {}
    for key, value in data.items():
        if key not in actions:
            hint = f" (did you mean {key.replace('-', '_')}?)" if str(key).replace("-", "_") in actions else ""
            raise ConfigError(f"--config {path}: unknown key {key!r}: not an option of {parser.prog}{hint}")
        out[key] = _convert(key, value, actions[key], f"--config {path}")
    return out


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the values of ``--config FILE`` as defaults, so that flags win.

    Raises:
        ConfigError: see :func:`load_config`.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_config(known.config, parser))
    return parser.parse_args(argv)


def dump_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The options of ``args`` as YAML, in the parser's order: a file that ``--config`` reads back."""
    import yaml
    actions = _actions(parser)
    return yaml.safe_dump({k: getattr(args, k) for k in actions if hasattr(args, k)}, sort_keys=False)
