"""adjoined-train --config FILE (YAML) and --print-config: precedence, errors naming the key, the round trip,
and every recipe of python/recipes/."""
import glob
import os

import pytest
import yaml

from adjoined_kernels.train import cli
from adjoined_kernels.train.config import ConfigError, dump_config, load_config, parse_args
from adjoined_kernels.train.validate import check_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "python", "recipes", "*.yaml")))


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_file_values_and_command_line_precedence(tmp_path):
    path = write(tmp_path, "lr: 0.01\nepochs: 3\nmilestones: [5, 7]\nweight_decay: 1e-4\namp: true\n"
                           "subset: null\naugment: 'off'\nmethod: kd\nteacher: t.pt\n")
    parser = cli.build_parser()
    a = parse_args(parser, ["--config", path, "--epochs", "5"])
    assert (a.lr, a.epochs, a.milestones, a.weight_decay, a.amp, a.subset, a.augment, a.method, a.teacher) == (
        0.01, 5, [5, 7], 1e-4, True, None, "off", "kd", "t.pt")  # the flag wins over the file
    a = parse_args(cli.build_parser(), ["--lr", "0.2", "--config", path])  # wherever --config stands
    assert a.lr == 0.2 and a.epochs == 3
    assert parse_args(cli.build_parser(), ["--config", path, "--no-augment"]).augment == "off"
    assert parse_args(cli.build_parser(), []).lr == cli.DEFAULTS["lr"]  # no file: the defaults


def test_print_config_round_trips(tmp_path, capsys):
    path = write(tmp_path, "lr: 0.01\nalpha: 2\nmilestones: [4]\n")
    assert cli.main(["--config", path, "--width", "32", "--print-config"]) == 0
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    assert printed["lr"] == 0.01 and printed["alpha"] == 2 and printed["width"] == 32 and printed["milestones"] == [4]
    assert "config" not in printed and "print_config" not in printed
    again = parse_args(cli.build_parser(), ["--config", write(tmp_path, text, "again.yaml")])
    want = parse_args(cli.build_parser(), ["--config", path, "--width", "32"])
    assert {k: v for k, v in vars(again).items() if k != "config"} == \
        {k: v for k, v in vars(want).items() if k != "config"}


@pytest.mark.parametrize("text,words", [
    ("lr: 0.1\nlearning_rate: 0.2\n", ["unknown key 'learning_rate'"]),
    ("batch-size: 64\n", ["unknown key 'batch-size'", "batch_size"]),
    ("config: other.yaml\n", ["unknown key 'config'"]),
    ("optimizer: lamb\n", ["optimizer", "lamb", "sgd"]),
    ("epochs: 2.5\n", ["epochs", "integer"]),
    ("epochs: many\n", ["epochs", "many"]),
    ("amp: 1\n", ["amp", "true or false"]),
    ("lr: [0.1, 0.2]\n", ["lr", "one value"]),
    ("- lr\n", ["mapping"]),
    ("lr: [0.1\n", ["not valid YAML"]),
])
def test_bad_files_exit_2_naming_the_key(text, words, tmp_path, capsys):
    path = write(tmp_path, text)
    assert cli.main(["--config", path, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert path in err and all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


def test_missing_file(tmp_path, capsys):
    assert cli.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_search_parser_rejects_train_only_keys(tmp_path):
    parser = cli.build_parser(search=True)
    assert load_config(write(tmp_path, "tau0: 5\n"), parser) == {"tau0": 5.0}
    with pytest.raises(ConfigError, match="'teacher'"):
        load_config(write(tmp_path, "teacher: t.pt\n"), parser)


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_recipes_are_valid(path):
    parser = cli.build_parser()
    a = parse_args(parser, ["--config", path])
    assert check_args(a) is None
    assert yaml.safe_load(dump_config(parser, a))["arch"] == a.arch


def test_recipes_hold_the_papers_settings():
    names = {os.path.basename(p) for p in RECIPES}
    assert {"cifar100_resnet50.yaml", "cifar100_resnet18.yaml", "imagenet_resnet50_alpha2.yaml",
            "imagenet_resnet50_alpha4.yaml", "fashion_mnist_cpu.yaml"} <= names

    def args(name):
        return parse_args(cli.build_parser(), ["--config", os.path.join(ROOT, "python", "recipes", name)])
    for arch in ("resnet50", "resnet18"):
        a = args(f"cifar100_{arch}.yaml")
        assert (a.dataset, a.arch, a.optimizer, a.lr, a.epochs, a.schedule, a.milestones, a.gamma) == (
            "cifar100", arch, "sgd", 0.05, 240, "multistep", [150, 180, 210], 0.1)
    for alpha in (2, 4):
        a = args(f"imagenet_resnet50_alpha{alpha}.yaml")
        assert (a.arch, a.alpha, a.optimizer, a.weight_decay, a.lr, a.epochs, a.stem, a.image_size) == (
            "resnet50", alpha, "adamw", 0.0, 4e-3, 100, "imagenet", 224)
    demo = vars(args("fashion_mnist_cpu.yaml"))
    default = vars(parse_args(cli.build_parser(), []))
    assert {k: v for k, v in demo.items() if k not in ("config", "device", "threads")} == \
        {k: v for k, v in default.items() if k not in ("config", "device", "threads")}
