import pytest

import zoo
from zoo.registry import register_model

ALL = ["alexnet_lite", "lenet5", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]


def test_list_models_is_sorted_and_filters_with_fnmatch():
    assert zoo.list_models() == ALL
    assert zoo.list_models("vgg*") == ALL[2:]
    assert zoo.list_models(["lenet*", "alex*"]) == ["alexnet_lite", "lenet5"]
    assert zoo.list_models("vgg*", exclude="*_bn") == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert zoo.list_models("resnet*") == []


def test_get_model_builds_by_name_with_options():
    model = zoo.get_model("vgg11_bn", num_classes=100)
    assert model.name == "vgg11_bn"
    assert model.output.shape[-1] == 100


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"Did you mean: vgg\d\d.*Received: name='vgg17'"):
        zoo.get_model("vgg17")
    with pytest.raises(ValueError, match=r"Available models: alexnet_lite, lenet5"):
        zoo.model_info("resnet50")


def test_info_records_the_paper_and_minimum_input():
    info = zoo.model_info("vgg16_bn")
    assert "1409.1556" in info.reference
    assert (info.params, info.min_input_size) == (15_262_026, 32)
    assert zoo.model_info("lenet5").min_input_size == 16


def test_register_model_refuses_a_taken_name():
    def vgg16(**options):
        return None

    with pytest.raises(ValueError, match="'vgg16' is already registered"):
        register_model(params=1, macs=1, min_input_size=1, reference="")(vgg16)


def test_builders_are_keyword_only():
    with pytest.raises(TypeError):
        zoo.vgg16((32, 32, 3))


def test_readme_model_table_matches_the_registry():
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in ALL:
        info = zoo.model_info(name)
        assert f"{info.params:,}" in readme, name
        assert f"{info.macs / 1e6:.2f}M" in readme, name
