import os
import re
import signal
import subprocess
import sys

import pytest

from zoo.cli import main

from conftest import ROOT


def test_list_prints_every_model_with_params(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^vgg16_bn +15,262,026 +313.73M +32x32 +cifar10$", out, re.M)
    assert re.search(r"^vgg16 +15,245,130 +313.73M +32x32 +-$", out, re.M)
    assert out.count("\n") == 12  # header, rule and ten models


def test_list_filters(capsys):
    assert main(["list", "vgg1?", "--exclude", "*_bn"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [r.split()[0] for r in rows] == ["vgg11", "vgg13", "vgg16", "vgg19"]


def test_released_weights_built_with_other_options_show_their_own_params(capsys):
    """The released lenet5 has batch norm: 62,094 params, not the default builder's 62,006."""
    assert main(["list", "lenet5", "vgg16_bn"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^lenet5 +62,006 +651.72K +16x16 +cifar10 \(62,094 params\), mnist \(61,794 params\)$", out, re.M)
    assert re.search(r"^vgg16_bn +15,262,026 +313.73M +32x32 +cifar10$", out, re.M)  # the same as the default
    assert main(["info", "lenet5"]) == 0
    assert "released weights: cifar10 (62,094 params, with batch_norm=True)" in capsys.readouterr().out


def test_info_prints_the_layer_table(capsys):
    assert main(["info", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "params 62,006  MACs 651,720  min input 16x16" in out
    assert "block2_conv1  Conv2D        (10, 10, 16)  2,416" in out


def test_unknown_model_is_a_clean_error(capsys):
    assert main(["info", "vgg17"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo info: error: Unknown model name. Did you mean: vgg19, vgg16, vgg13?")


def test_command_line_output_is_free_of_tensorflow_startup_noise():
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "list", "lenet5"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.splitlines()[2].startswith("lenet5")
    assert result.stderr == ""


def test_eval_of_a_tflite_file_prints_only_its_figures(mnist_dir):
    """LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." stays off the terminal."""
    model = ROOT / "saved_models" / "lenet5_mnist" / "model_int8.tflite"
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "eval", str(model), "--data-dir", str(mnist_dir), "--limit", "50"], capture_output=True, text=True)
    assert result.returncode == 0 and "accuracy" in result.stdout.lower(), result.stderr
    assert result.stderr == ""


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`zoo info vgg19_bn | head -2`: the pipe closes before zoo writes; no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "zoo.cli", "info", "vgg19_bn"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (1, "")


def test_ctrl_c_is_a_message_not_a_traceback(monkeypatch, capsys, tmp_path):
    import zoo.training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo.training, "train", interrupted)
    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler; ignored in a shell's background job
    assert main(["train", "lenet5_cifar10", "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == f"\nzoo train: interrupted: {tmp_path / 'run'} holds no backup yet, so the same command starts afresh\n"
    assert signal.getsignal(signal.SIGINT) is before  # put back as it was


def test_a_sigterm_swallowed_until_the_command_finished_says_its_output_is_complete(monkeypatch, capsys, tmp_path):
    """A stop lost on its way (a C path or gc callback swallowed it) is raised when the command ends: it still
    exits 143, but says the work was done rather than pointing to a resume."""
    import zoo.training

    def finishes_with_the_stop_swallowed(*args, **kwargs):
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            pass

    monkeypatch.setattr(zoo.training, "train", finishes_with_the_stop_swallowed)
    assert main(["train", "lenet5_cifar10", "--out", str(tmp_path / "run")]) == 143
    assert capsys.readouterr().err == "\nzoo train: terminated (SIGTERM), but only after it had finished: what it wrote is complete\n"


def test_python_m_recipes_is_zoo_train():
    result = subprocess.run([sys.executable, "-m", "recipes", "vgg99_cifar10"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "zoo train: error: Unknown recipe 'vgg99_cifar10'" in result.stderr


@pytest.mark.parametrize(
    "name, hint", [("lenet5", "lenet5_cifar10"), ("vgg16", "vgg16_bn_cifar10"), ("vgg11_bn_cifar", "vgg11_bn_cifar10")]
)
def test_an_unknown_recipe_name_suggests_the_shipped_one(name, hint, capsys):
    assert main(["train", name]) == 2
    assert f"Unknown recipe {name!r}. Did you mean: {hint}" in capsys.readouterr().err  # the closest first


@pytest.mark.parametrize(
    "args, option",
    [
        (["train", "lenet5_cifar10", "--data-threads", "0"], "--data-threads"),
        (["train", "lenet5_cifar10", "--backup-every", "0"], "--backup-every"),
        (["eval", "m.keras", "--limit", "-1"], "--limit"),
        (["export", "m.keras", "--out", "x", "--calibration-images", "0"], "--calibration-images"),
        (["predict", "m.tflite", "a.png", "--top", "0"], "--top"),
        (["viz", "lenet5", "--out", "x", "--top-k", "zero"], "--top-k"),
        (["bench", "x", "--runs", "0"], "--runs"),
    ],
)
def test_counts_must_be_positive_whole_numbers(args, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert f"{option}: expected a whole number >= 1. Received: '{args[-1]}'" in capsys.readouterr().err


@pytest.mark.parametrize("page", ["README.md", "docs/accuracy-per-epoch.md"])
def test_the_files_and_recipes_readme_commands_name_exist(cifar10_dir, page):
    """A newcomer copies the README's (and docs') commands: every image, recipe and data folder they name
    must exist (or be made by an earlier command of the page, such as `cp`)."""
    import shlex

    from zoo import recipe as recipes

    made = set()
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / page).read_text(), re.S)
    assert blocks, f"{page} has no commands"
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split(" #")[0])
            if words[:1] == ["cp"]:
                made.add(words[-1])
            if words[:2] == ["zoo", "train"] and words[2] not in made:
                recipes.locate(words[2])  # a shipped recipe
            for word in words:
                if word.endswith((".jpg", ".png", ".toml")) or word.startswith("../shared/"):
                    assert word in made or (ROOT / word).exists(), f"{page} names {word}, which does not exist"


def test_version_and_the_shipped_recipes_are_one_command_away(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and re.fullmatch(r"zoo \d+\.\d+\.\d+\n", capsys.readouterr().out)
    assert main(["list", "--recipes"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^lenet5_cifar10 +LeNet-5", out, re.M) and re.search(r"^vgg16_bn_cifar10 +VGG16-BN on CIFAR-10", out, re.M)
    assert main(["list", "--recipes", "vgg*"]) == 0
    assert [r.split()[0] for r in capsys.readouterr().out.splitlines()[2:]] == ["vgg11_bn_cifar10", "vgg11_bn_cifar10_20ep", "vgg11_bn_finetune", "vgg16_bn_cifar10"]


def test_every_option_of_every_command_says_what_it_does():
    from zoo.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    silent = [f"zoo {name} {'/'.join(a.option_strings) or a.dest}" for name, parser in commands.items() for a in parser._actions if not a.help]
    assert not silent, silent


def test_an_unknown_tag_is_told_in_the_commands_own_words(capsys):
    assert main(["eval", "lenet5", "--weights", "imagenet", "--data-dir", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert "Pass --weights none for a random initialisation" in err and "Received: --weights imagenet" in err and "weights=None" not in err


def test_the_zoo_command_turns_onednn_on_unless_told_otherwise(monkeypatch):
    """oneDNN's kernels (LeNet-5 trains 2.7x faster with them on a 2-core EPYC); a user's own value stays."""
    from zoo.console import import_keras_quietly

    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    import_keras_quietly()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    import_keras_quietly()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
