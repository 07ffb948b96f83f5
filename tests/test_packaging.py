"""A non-editable install (a wheel) carries the shipped recipes and released weights, and uses them."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

CHECK = """
import json
from zoo import lenet5, list_models, pretrained, recipe
model = lenet5(weights="cifar10")
print(json.dumps({"recipes_dir": str(recipe.RECIPES_DIR), "recipes": recipe.available(),
                  "saved_models_dir": str(pretrained.saved_models_dir()), "pretrained": list_models(pretrained=True),
                  "params": model.count_params()}))
"""


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_a_built_package_bundles_the_recipes_and_released_weights_and_finds_them(tmp_path):
    pytest.importorskip("setuptools", reason="building the package needs setuptools")
    build = tmp_path / "lib"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)], cwd=ROOT, check=True, capture_output=True)
    bundled = build / "zoo" / "_bundled"
    assert files_under(bundled / "recipes") == sorted(p.name for p in (ROOT / "recipes").glob("*.toml"))
    assert files_under(bundled / "saved_models") == files_under(ROOT / "saved_models")

    env = {**os.environ, "PYTHONPATH": str(build), "KERAS_BACKEND": "tensorflow"}
    env.pop("ZOO_SAVED_MODELS", None)
    run = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    assert found["recipes_dir"] == str(bundled / "recipes") and found["saved_models_dir"] == str(bundled / "saved_models")
    assert found["recipes"] == sorted(p.stem for p in (ROOT / "recipes").glob("*.toml"))
    assert found["pretrained"] == ["alexnet_lite", "lenet5", "vgg11_bn", "vgg16_bn"]
    assert found["params"] == json.loads((ROOT / "saved_models" / "lenet5_cifar10" / "model_card.json").read_text())["params"]


def test_without_shipped_folders_the_errors_say_where_they_looked(tmp_path, monkeypatch):
    from zoo import pretrained, recipe

    monkeypatch.setattr(recipe, "RECIPES_DIR", tmp_path / "recipes")
    with pytest.raises(recipe.RecipeError, match=f"No shipped recipes found in {tmp_path / 'recipes'}; or give a path"):
        recipe.load("lenet5_cifar10")
    monkeypatch.setenv("ZOO_SAVED_MODELS", str(tmp_path / "saved_models"))
    with pytest.raises(ValueError, match=f"No model has 'cifar10' weights in {tmp_path / 'saved_models'}"):
        pretrained.card("vgg16_bn", "cifar10")


def test_release_from_a_wheel_install_needs_an_out_folder(tmp_path, monkeypatch):
    from zoo import files, pretrained
    from zoo.release import release

    run = tmp_path / "run"
    run.mkdir()
    for name, text in (("model.keras", ""), ("recipe.toml", ""), ("results.json", '{"model": "lenet5"}')):
        (run / name).write_text(text)
    monkeypatch.setattr(pretrained, "SAVED_MODELS_DIR", files.BUNDLED / "saved_models")
    monkeypatch.delenv("ZOO_SAVED_MODELS", raising=False)
    with pytest.raises(ValueError, match="installed from a wheel.*pass --out"):
        release(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_the_test_session_removes_its_image_cache(tmp_path):
    """Each pytest session decoded its images into a new zoo-test-cache-* folder (32 MB) and left it behind."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("ZOO_CACHE_DIR")
    test = "tests/test_data.py::test_images_are_resized_to_the_model_input"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]
    assert not list(tmp_path.glob("zoo-test-cache-*"))
