"""Bad options fail with a ValueError naming the value, before any layer is built."""

import numpy as np
import pytest

import zoo


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_classes": 0}, r"`num_classes` must be an int >= 1\. Received: num_classes=0"),
        ({"num_classes": 2.5}, r"Received: num_classes=2\.5"),
        ({"dropout": 1.0}, r"`dropout` must be a rate in \[0, 1\)\. Received: dropout=1\.0"),
        ({"dropout": -0.1}, r"Received: dropout=-0\.1"),
        ({"input_shape": (32, 32)}, r"3 positive ints .* Received: input_shape=\(32, 32\)"),
        ({"input_shape": (32, 32, 3.0)}, r"Received: input_shape=\(32, 32, 3\.0\)"),
        ({"input_shape": (16, 16, 3)}, r"at least 32x32 for 'vgg16'.* Received: input_shape=\(16, 16, 3\)"),
        ({"include_top": False, "pooling": "mean"}, r"None, 'avg' or 'max'\. Received: pooling='mean'"),
        ({"pooling": "avg"}, r"only with `include_top=False`\. Received: pooling='avg'"),
        ({"include_top": False, "fc_units": (256,)}, r"no effect with `include_top=False`\. Received: fc_units=\(256,\)"),
        ({"fc_units": (256, 0)}, r"positive ints\. Received: fc_units=\(256, 0\)"),
        ({"fc_units": 512}, r"sequence of positive ints\. Received: fc_units=512"),
        ({"classifier_activation": "sigmoid"}, r"Received: classifier_activation='sigmoid'"),
        ({"weights": "missing.weights.h5"}, r"path to an existing weights file\. Received: weights='missing\.weights\.h5'"),
        ({"weights": "imagenet"}, r"Received: weights='imagenet'"),
    ],
)
def test_bad_options_name_the_value(options, message, monkeypatch):
    built = []
    monkeypatch.setattr("keras.layers.Conv2D.__init__", lambda *a, **k: built.append(1) or None)
    with pytest.raises(ValueError, match=message):
        zoo.vgg16(**options)
    assert not built, "validation must run before any layer is built"


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="classes"):
        zoo.vgg16(classes=10)


def test_weights_file_round_trip(tmp_path):
    source = zoo.vgg11_bn(num_classes=5)
    path = tmp_path / "vgg11_bn.weights.h5"
    source.save_weights(path)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    loaded = zoo.vgg11_bn(num_classes=5, weights=str(path))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), source.predict(x, verbose=0))
    keras_file = tmp_path / "vgg11_bn.keras"
    source.save(keras_file)
    from_keras = zoo.vgg11_bn(num_classes=5, weights=keras_file)
    np.testing.assert_array_equal(from_keras.predict(x, verbose=0), source.predict(x, verbose=0))


def test_weights_that_do_not_fit_name_the_layer(tmp_path):
    path = tmp_path / "ten.weights.h5"
    zoo.lenet5().save_weights(path)
    with pytest.raises(ValueError, match=r"layer 'predictions' expects weights of shapes \[\(84, 5\), \(5,\)\]"):
        zoo.lenet5(num_classes=5, weights=path)
    with pytest.raises(ValueError, match=r"layer 'block1_bn1' expects"):
        zoo.lenet5(batch_norm=True, weights=path)
    with pytest.raises(ValueError, match=r"layer 'block1_conv1' expects weights of shapes \[\(5, 5, 1, 6\), \(6,\)\]"):
        zoo.lenet5(input_shape=(32, 32, 1), weights=path)


def test_weights_file_with_unknown_suffix(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"must end in \.weights\.h5 or \.keras\. Received: weights="):
        zoo.lenet5(weights=path)
