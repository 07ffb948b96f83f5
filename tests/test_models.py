"""Every registered model: shapes, pinned figures, options, published parameter counts."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras
import zoo
from zoo.models.base import count_macs

MODELS = zoo.list_models()


def random_images(n, shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape)).astype("float32")


@pytest.mark.parametrize("name", MODELS)
def test_defaults_match_pinned_figures_and_give_finite_logits(name):
    info = zoo.model_info(name)
    model = zoo.get_model(name, num_classes=7)
    out = model.predict(random_images(2, (32, 32, 3)), verbose=0)
    assert out.shape == (2, 7)
    assert np.isfinite(out).all()
    default = info.builder()
    assert default.count_params() == info.params
    assert count_macs(default) == info.macs
    assert default.name == name
    assert default.input.shape[1:] == (32, 32, 3)
    assert default.output.shape[1:] == (10,)


@pytest.mark.parametrize("name", MODELS)
def test_headless_with_pooling_and_other_channel_counts(name):
    info = zoo.model_info(name)
    last_conv = [l for l in info.builder().layers if isinstance(l, keras.layers.Conv2D)][-1]
    for pooling in ("avg", "max"):
        model = zoo.get_model(name, include_top=False, pooling=pooling)
        assert model.output.shape[1:] == (last_conv.filters,)
    fmap = zoo.get_model(name, include_top=False)
    assert len(fmap.output.shape) == 4
    for channels in (1, 4):
        model = zoo.get_model(name, input_shape=(32, 32, channels), num_classes=3)
        assert model.predict(random_images(1, (32, 32, channels)), verbose=0).shape == (1, 3)


@pytest.mark.parametrize("name", MODELS)
def test_minimum_input_size_is_exact(name):
    size = zoo.model_info(name).min_input_size
    zoo.get_model(name, input_shape=(size, size, 3), include_top=False)
    with pytest.raises(ValueError, match=f"at least {size}x{size}"):
        zoo.get_model(name, input_shape=(size - 1, size, 3))


def test_bn_variants_switch_batch_norm_and_name_layers_like_keras_applications():
    plain, bn = zoo.vgg11(), zoo.vgg11_bn()
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in plain.layers)
    names = [l.name for l in bn.layers]
    assert names[:6] == ["image", "rescaling", "block1_conv1", "block1_bn1", "block1_act1", "block1_pool"]
    assert names[-6:] == ["flatten", "fc1", "fc1_drop", "fc2", "fc2_drop", "predictions"]
    assert zoo.vgg11(batch_norm=True).count_params() == bn.count_params()
    assert zoo.vgg11_bn(batch_norm=False).count_params() == plain.count_params()


def test_lenet5_is_the_classic_62006_parameter_network():
    model = zoo.lenet5()
    assert model.count_params() == 62_006
    dense = [l.units for l in model.layers if isinstance(l, keras.layers.Dense)]
    convs = [l.filters for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert (convs, dense) == ([6, 16], [120, 84, 10])


# Trainable parameters of torchvision's ImageNet VGGs (torchvision.models docs): BN's running
# statistics are buffers there, not parameters.
TORCHVISION_PARAMS = {
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
}


def in_a_fresh_process(code):
    """What `code` prints (JSON) when run in a Python process of its own: ImageNet-sized VGGs take 0.5 GB
    each, which a process does not give back to the system once it held them (the suite's peak)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def imagenet_figures():
    """Trainable and total parameters and MACs of every VGG in its ImageNet configuration (224x224, 1000 classes)."""
    return in_a_fresh_process(f"""
        import gc
        import json
        import math

        import keras
        import zoo
        from zoo.models.base import count_macs

        # Counts and shapes only: every weight starts at zero (a memset) instead of drawing 1.1 billion random numbers.
        add_weight = keras.layers.Layer.add_weight
        keras.layers.Layer.add_weight = lambda self, *args, **kwargs: add_weight(self, *args, **{{**kwargs, "initializer": "zeros"}})
        figures = {{}}
        for name in {sorted(TORCHVISION_PARAMS)!r}:
            model = zoo.get_model(name, input_shape=(224, 224, 3), num_classes=1000, fc_units=(4096, 4096))
            figures[name] = [sum(math.prod(w.shape) for w in model.trainable_weights), model.count_params(), count_macs(model)]
            del model
            keras.backend.clear_session()
            gc.collect()  # the next one reuses its memory
        print(json.dumps(figures))
    """)


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_imagenet_configuration_matches_published_parameter_counts(name, imagenet_figures):
    trainable, total, macs = imagenet_figures[name]
    assert trainable == TORCHVISION_PARAMS[name]
    if name == "vgg16":
        assert total == 138_357_544
        assert macs == 15_470_264_320  # torchvision: 15.47 GFLOPS (multiply-adds)


def test_keras_applications_vgg16_and_vgg19_weights_transfer():
    assert in_a_fresh_process("""
        import gc
        import json
        import keras
        import numpy as np
        import zoo

        reference = keras.applications.VGG16(weights=None)
        x = keras.applications.vgg16.preprocess_input(np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3)).astype("float32"))
        expected = keras.ops.convert_to_numpy(reference(x, training=False))
        model = zoo.vgg16(
            input_shape=(224, 224, 3), num_classes=1000, fc_units=(4096, 4096), classifier_activation="softmax",
            include_preprocessing=False,
        )
        assert model.count_params() == reference.count_params() == 138_357_544
        ref_names = [l.name for l in reference.layers if l.weights]
        assert [l.name for l in model.layers if l.weights] == ref_names
        for name in ref_names:  # variable to variable: get_weights() would copy 0.55 GB through NumPy
            for ours, theirs in zip(model.get_layer(name).weights, reference.get_layer(name).weights, strict=True):
                ours.assign(theirs)
        del reference
        gc.collect()
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)), expected, rtol=1e-5, atol=1e-7)
        del model
        gc.collect()
        # VGG19 the same way, by its variables' names and shapes (what `weights="imagenet"`'s error promises).
        reference = keras.applications.VGG19(weights=None)
        model = zoo.vgg19(
            input_shape=(224, 224, 3), num_classes=1000, fc_units=(4096, 4096), classifier_activation="softmax",
            include_preprocessing=False,
        )
        assert model.count_params() == reference.count_params() == 143_667_240
        shapes = lambda m: [(l.name, [tuple(w.shape) for w in l.weights]) for l in m.layers if l.weights]
        assert shapes(model) == shapes(reference)
        print(json.dumps("same outputs"))
    """) == "same outputs"


def test_softmax_activation_gives_probabilities():
    out = zoo.lenet5(classifier_activation="softmax").predict(random_images(3, (32, 32, 3)), verbose=0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_preprocessing_maps_raw_pixels_to_unit_range():
    model = zoo.lenet5()
    rescale = keras.Model(model.input, model.get_layer("rescaling").output)
    out = rescale.predict(np.array([[[[0, 127.5, 255]] * 32] * 32], "float32"), verbose=0)
    np.testing.assert_allclose(out[0, 0, 0], [-1, 0, 1], atol=1e-6)
    assert "rescaling" not in [l.name for l in zoo.lenet5(include_preprocessing=False).layers]
