"""Fine-tuning released weights on one's own images: recipes that start from weights, a new head for
the data's classes, the two-phase schedule and its resume, single-folder data, bad input."""

import json

import numpy as np
import pytest

import keras
from zoo import finetune, lenet5, vgg11_bn
from zoo import recipe as recipes
from zoo.cli import main
from zoo.data import load_dataset
from zoo.optimizer import ScaledSGD

from conftest import ROOT

# A task the released models never trained on: CIFAR-10 *test* images (the releases trained on the
# train split), relabelled into three classes that cut across the CIFAR-10 ones.
TASK = {"drives": ["automobile", "truck"], "flies": ["airplane", "bird"], "floats": ["ship"]}


def relabelled(cifar10_dir, root, per_class, layout="split", first=0):
    """`root` with links to real CIFAR-10 test images, `per_class = {"train": n, "test": m}` of each new
    class (from image `first` on); `layout="single"` puts all of them in one folder of class folders."""
    for name, sources in TASK.items():
        files = [cifar10_dir / "test" / s / f"{i:04d}.jpg" for i in range(first, 500) for s in sources]
        start = 0
        for split, count in per_class.items():
            folder = root / name if layout == "single" else root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for f in files[start : start + count]:
                (folder / f"{f.parent.name}-{f.name}").symlink_to(f)
            start += count
    return root


@pytest.fixture(scope="module")
def photos(cifar10_dir, tmp_path_factory):
    """Tens of images per class (30 to train on, 100 to test), as a user's photo folders."""
    return relabelled(cifar10_dir, tmp_path_factory.mktemp("photos"), {"train": 30, "test": 100})


def finetune_args(data_dir, out, weights="cifar10", epochs=6, frozen=3):
    return [
        "train", "vgg11_bn_finetune", "--data-dir", str(data_dir), "--out", str(out), "--epochs", str(epochs),
        "--set", f"model.weights={weights}", "--set", f"finetune.frozen_epochs={frozen}",
        "--set", "training.precision='float32'",  # the same numbers on CPUs with and without bfloat16
    ]


@pytest.fixture(scope="module")
def finetuned_and_scratch(photos, tmp_path_factory):
    """The shipped recipe from the released weights and from scratch, at equal epochs."""
    runs = tmp_path_factory.mktemp("runs")
    for weights in ("cifar10", "none"):
        assert main(finetune_args(photos, runs / weights, weights)) == 0
    return runs / "cifar10", runs / "none"


@pytest.mark.slow
def test_finetuning_the_released_weights_beats_training_from_scratch_clearly(finetuned_and_scratch, capsys):
    """Measured on this task (300 test images, 6 epochs, 3 frozen): fine-tuned 93.7%, scratch 33.3% (chance)."""
    tuned, scratch = (json.loads((run / "results.json").read_text()) for run in finetuned_and_scratch)
    assert tuned["test_accuracy"] >= scratch["test_accuracy"] + 0.35, (tuned["test_accuracy"], scratch["test_accuracy"])
    assert tuned["test_accuracy"] > 0.8
    assert tuned["data"]["class_names"] == ["drives", "flies", "floats"] and tuned["data"]["test_images"] == 300
    start = tuned["starting_weights"]
    assert (start["weights"], start["kind"], start["new_layers"]) == ("cifar10", "released", ["predictions"])
    assert start["sha256"] == json.loads((ROOT / "saved_models" / "vgg11_bn_cifar10" / "model_card.json").read_text())["files"]["model.weights.h5"]["sha256"]
    assert start["head"] == "from cifar10 weights, new head: 10 -> 3 classes"
    assert scratch["starting_weights"] is None
    rows = (finetuned_and_scratch[0] / "history.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[0].startswith("epoch,")  # both phases in one history


@pytest.mark.slow
def test_the_run_keeps_the_released_batch_norm_and_saves_a_plain_model(finetuned_and_scratch):
    """Batch norm stays in inference mode (frozen, as in Keras' guide); the file is a plain model."""
    released = vgg11_bn(weights="cifar10")
    tuned = keras.saving.load_model(finetuned_and_scratch[0] / "model.keras", safe_mode=True)  # no zoo class inside
    assert tuned.output.shape[-1] == 3 and all(layer.trainable for layer in tuned.layers)
    for name in ("block1_bn1", "block4_bn2"):
        for a, b in zip(tuned.get_layer(name).get_weights(), released.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    moved = np.abs(tuned.get_layer("block4_conv2").get_weights()[0] - released.get_layer("block4_conv2").get_weights()[0]).max()
    assert moved < 0.05, "the backbone learns at a tenth of the head's rate, if at all (its best epoch may be a frozen one)"


def test_a_frozen_backbone_does_not_move_and_then_learns_at_its_scaled_rate():
    """One SGD step of each phase on the same batch: frozen, the backbone keeps its weights; then its
    step is `backbone_lr_scale` times the one plain SGD takes, while the head's is the same."""
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical(np.arange(8) % 2, 2)

    def model_after_a_step(optimizer, frozen):
        keras.utils.set_random_seed(0)
        model = lenet5(num_classes=2, batch_norm=True)
        finetune.transfer(finetune.resolve("lenet5", "cifar10", {"batch_norm": True}), model, ["a", "b"])
        before = {layer.name: layer.get_weights() for layer in model.layers}
        finetune.freeze_backbone(model, frozen)
        model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        model.train_on_batch(images, labels)
        return {layer.name: [a - b for a, b in zip(layer.get_weights(), before[layer.name])] for layer in model.layers}

    def scaled(scale):
        return ScaledSGD(0.1, scales=dict.fromkeys(["block1_conv1/kernel", "block2_conv1/kernel", "block1_conv1/bias", "block2_conv1/bias"], scale))

    frozen = model_after_a_step(scaled(0.1), frozen=True)
    assert not np.any(frozen["block1_conv1"][0]) and not np.any(frozen["block2_bn1"][0]) and np.any(frozen["fc1"][0])
    plain, tuned = model_after_a_step(keras.optimizers.SGD(0.1), frozen=False), model_after_a_step(scaled(0.1), frozen=False)
    np.testing.assert_allclose(tuned["block2_conv1"][0], 0.1 * plain["block2_conv1"][0], rtol=1e-4, atol=2e-7)  # float32 deltas
    np.testing.assert_allclose(tuned["fc1"][0], plain["fc1"][0], rtol=1e-4, atol=2e-7)
    assert not np.any(tuned["block2_bn1"][0]), "batch norm stays frozen"


@pytest.mark.slow
def test_a_finetuned_run_exports_predicts_and_draws_with_its_own_class_names(finetuned_and_scratch, photos, tmp_path, capsys, monkeypatch):
    run = finetuned_and_scratch[0]
    assert main(["eval", str(run), "--data-dir", str(photos), "--tta-flip", "--json"]) == 0  # as the recipe measured it
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(json.loads((run / "results.json").read_text())["test_accuracy"])
    out = tmp_path / "export"
    args = ["export", str(run), "--out", str(out), "--formats", "tflite", "--quantize", "int8", "--calibration-data", str(photos)]
    assert main(args) == 0
    capsys.readouterr()
    assert (out / "labels.txt").read_text().splitlines() == ["drives", "flies", "floats"]
    from zoo import mobile

    assert mobile.read_metadata(out / "model_int8.tflite")["labels"] == ["drives", "flies", "floats"]
    ship = next((photos / "test" / "floats").iterdir())
    assert main(["predict", str(out / "model_int8.tflite"), str(ship), "--top", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["class"] == "floats"
    from zoo import viz

    drawn, real = [], viz.plot_grad_cam
    monkeypatch.setattr(viz, "plot_grad_cam", lambda image, cams, path: (drawn.extend(c[0] for c in cams), real(image, cams, path)))
    assert main(["viz", str(run), "--image", str(ship), "--top-k", "1", "--out", str(tmp_path / "viz")]) == 0
    assert drawn == ["floats"]  # Grad-CAM titled with the run's own class


@pytest.mark.slow
def test_a_finetuned_run_is_released_with_its_starting_weights(finetuned_and_scratch, photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZOO_SAVED_MODELS", str(tmp_path / "saved_models"))
    assert main(["release", str(finetuned_and_scratch[0]), "--data-dir", str(photos), "--tag", "photos"]) == 0
    card = json.loads((tmp_path / "saved_models" / "vgg11_bn_photos" / "model_card.json").read_text())
    assert card["data"]["classes"] == ["drives", "flies", "floats"]
    assert card["training"]["starting_weights"]["weights"] == "cifar10"
    readme = (tmp_path / "saved_models" / "vgg11_bn_photos" / "README.md").read_text()
    assert "Fine-tuned from cifar10" in readme
    views = card["accuracy"]["test_top1_multi_view_tta"]  # the mirror and 1-pixel shifts, beside the plain figure
    assert 0 < views <= 1 and f"Multi-view TTA (the image and its mirror, each also shifted by 1 pixel up-left and down-right): {views * 100:.2f}%." in readme
    assert vgg11_bn(weights="photos").output.shape[-1] == 3


@pytest.mark.parametrize("classes", [2, 3])
def test_the_head_is_rebuilt_for_the_datas_classes_and_the_rest_keeps_the_weights(classes):
    start = finetune.resolve("lenet5", "cifar10", {"batch_norm": True})
    model = lenet5(num_classes=classes, batch_norm=True)
    change = finetune.transfer(start, model, [f"c{i}" for i in range(classes)])
    assert change == {"new": ["predictions"], "classes": (10, classes), "channels": None}
    for name in ("block1_conv1", "block2_bn1", "fc1", "fc2"):
        for a, b in zip(model.get_layer(name).get_weights(), start.model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert model.get_layer("predictions").get_weights()[0].shape == (84, classes)
    assert finetune.head_summary(start, change) == f"from cifar10 weights, new head: 10 -> {classes} classes"
    same = lenet5(batch_norm=True)
    assert finetune.transfer(start, same, start.class_names) == {"new": [], "classes": None, "channels": None}  # same classes: all kept


@pytest.mark.parametrize("weights, channels", [("cifar10", 1), ("mnist", 3)])
def test_weights_for_another_channel_count_are_adapted_in_the_first_convolution(weights, channels, mnist_dir):
    """RGB weights on grey data and grey weights on RGB data (timm's in_chans): a grey digit gives the
    model built for the new channel count the same probabilities as the released model gives it."""
    from zoo.data import as_rgb
    from zoo.idx import fit, load_split

    start = finetune.resolve("lenet5", weights, {"batch_norm": True})
    model = lenet5(batch_norm=True, input_shape=(32, 32, channels))
    change = finetune.transfer(start, model, start.class_names)
    before = start.model.input.shape[-1]
    assert change == {"new": [], "classes": None, "channels": (before, channels)}
    assert finetune.head_summary(start, change) == f"from {weights} weights, head kept, first convolution adapted: {before} -> {channels} channels"
    digits = fit(load_split(mnist_dir, "test")[0][:64], (32, 32), 1).astype("float32")
    as_channels = lambda images, c: images if c == 1 else as_rgb(images)
    np.testing.assert_allclose(
        model.predict(as_channels(digits, channels), verbose=0), start.model.predict(as_channels(digits, before), verbose=0), rtol=1e-5, atol=1e-4
    )


def test_another_image_size_keeps_the_backbone_and_renews_what_depends_on_it(small_cifar10, tmp_path, capsys):
    """48x48: LeNet's flattened map grows (fc1 is new); VGG's shrinks to 1x1x512 as at 32x32 (fc1 kept)."""
    start = finetune.resolve("lenet5", "cifar10", {"batch_norm": True})
    change = finetune.transfer(start, lenet5(input_shape=(48, 48, 3), num_classes=10, batch_norm=True), start.class_names)
    assert change["new"] == ["fc1"] and change["classes"] is None
    vgg = finetune.resolve("vgg11_bn", "cifar10", {})
    assert finetune.transfer(vgg, vgg11_bn(input_shape=(48, 48, 3), num_classes=2), ["a", "b"])["new"] == ["predictions"]
    run = tmp_path / "run48"
    args = ["train", "lenet5_cifar10", "--data-dir", str(small_cifar10), "--out", str(run), "--epochs", "2",
            "--set", "model.weights=cifar10", "--set", "finetune.frozen_epochs=1", "--set", "data.image_size=[48, 48]",
            "--set", "data.limit=300", "--set", "data.validation_size=100", "--set", "training.tta_flip=false"]
    assert main(args) == 0
    assert "from cifar10 weights, head kept (fc1 new: another image size)" in capsys.readouterr().out
    assert keras.saving.load_model(run / "model.keras").input.shape[1:] == (48, 48, 3)


def test_a_single_folder_is_split_per_class_with_the_seed(cifar10_dir, tmp_path):
    root = relabelled(cifar10_dir, tmp_path / "one", {"all": 40}, layout="single")
    a = load_dataset(data_dir=root, validation_fraction=0.25, test_fraction=0.2, seed=0)
    b = load_dataset(data_dir=root, validation_fraction=0.25, test_fraction=0.2, seed=0)
    c = load_dataset(data_dir=root, validation_fraction=0.25, test_fraction=0.2, seed=1)
    assert a.class_names == ["drives", "flies", "floats"]
    for split, per_class in ((a.test, 8), (a.val, 8), (a.train, 24)):  # 40 -> 8 test; 32 -> 8 validation, 24 train
        assert np.bincount(split.labels).tolist() == [per_class] * 3
    np.testing.assert_array_equal(a.test.images, b.test.images)
    assert not np.array_equal(np.sort(a.test.images.reshape(len(a.test), -1), axis=0), np.sort(c.test.images.reshape(len(c.test), -1), axis=0))
    keys = [{image.tobytes() for image in split.images} for split in (a.train, a.val, a.test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert a.split == {"seed": 0, "layout": "one folder of class folders, split per class", "test_fraction": 0.2, "validation_fraction": 0.25}


def test_zoo_train_takes_a_single_folder_and_says_how_it_split_it(cifar10_dir, tmp_path, capsys):
    root = relabelled(cifar10_dir, tmp_path / "one", {"all": 20}, layout="single")
    run = tmp_path / "run"
    args = ["train", "lenet5_cifar10", "--data-dir", str(root), "--out", str(run), "--epochs", "1", "--set", "model.weights=cifar10",
            "--set", "data.validation_fraction=0.25", "--set", "training.tta_flip=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"on {root.resolve()} (one folder, 20% of each class for test, seed 0): 36 train / 12 validation / 12 test images" in out
    results = json.loads((run / "results.json").read_text())
    assert results["data"]["split"]["test_fraction"] == 0.2 and results["data"]["test_images"] == 12
    assert main(["eval", str(run), "--data-dir", str(root), "--json"]) == 0  # the run's own test part
    assert json.loads(capsys.readouterr().out)["images"] == 12


@pytest.mark.slow
def test_resuming_in_either_phase_gives_the_weights_of_an_uninterrupted_run(small_cifar10, tmp_path, monkeypatch):
    from zoo import training

    recipe = recipes.load("lenet5_cifar10", [
        f"data.data_dir={recipes.toml_value(str(small_cifar10))}", "data.validation_size=100", "data.limit=300",
        "training.epochs=4", "training.tta_flip=false", "model.weights='cifar10'", "finetune.frozen_epochs=2",
    ])
    training.train(recipe, tmp_path / "whole", verbose=0)
    backed_up = training.PeriodicBackup.on_epoch_end
    for stop in (0, 2):  # in the frozen phase; in the second phase's first epoch
        def crash(self, epoch, logs=None, stop=stop):  # as a kill right after the epoch's backup
            backed_up(self, epoch, logs)
            if epoch == stop:
                raise KeyboardInterrupt

        run = tmp_path / f"stopped_after_{stop}"
        with monkeypatch.context() as m:
            m.setattr(training.PeriodicBackup, "on_epoch_end", crash)
            with pytest.raises(KeyboardInterrupt):
                training.train(recipe, run, verbose=0)
        assert json.loads((run / "backup" / "training_metadata.json").read_text())["epoch"] == stop + 1
        results = training.train(recipe, run, verbose=0)
        assert results["resumed_from_epoch"] == [stop + 1]
        for a, b in zip(keras.saving.load_model(run / "model.keras").get_weights(), keras.saving.load_model(tmp_path / "whole" / "model.keras").get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.weights='saved_models/vgg16_bn_cifar10/model.weights.h5'"], "does not fit"),
        (["model.name='vgg13_bn'"], "No released weights 'cifar10' for 'vgg13_bn'"),
        (["model.weights='nowhere.keras'"], "No such file or folder: 'nowhere.keras'"),
        (["model.num_classes=10"], "model.num_classes pins 10 classes, but {data} has 3 (drives, flies, floats)"),
        (["model.weights=RUN"], "holds a 'lenet5', and this recipe trains a 'vgg11_bn'"),
    ],
)
def test_bad_starting_points_are_one_line_before_any_work(overrides, message, photos, tmp_path, capsys, monkeypatch):
    import zoo.training

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(zoo.training, "load_dataset", lambda *a, **k: pytest.fail("data was loaded"))
    other_run = tmp_path / "lenet_run"
    other_run.mkdir()
    lenet5(batch_norm=True).save(other_run / "model.keras")
    args = ["train", "vgg11_bn_finetune", "--data-dir", str(photos), "--out", str(tmp_path / "run")]
    for override in overrides:
        args += ["--set", override.replace("RUN", str(other_run))]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message.format(data=photos) in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_folder_with_one_class_is_refused_before_any_work(cifar10_dir, tmp_path, capsys):
    (tmp_path / "one" / "cats").mkdir(parents=True)
    (tmp_path / "one" / "cats" / "a.jpg").symlink_to(cifar10_dir / "test" / "cat" / "0000.jpg")
    assert main(["train", "vgg11_bn_finetune", "--data-dir", str(tmp_path / "one"), "--out", str(tmp_path / "run")]) == 2
    assert "has 1 class folder (cats): a classifier needs at least 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_folder_of_images_without_class_folders_says_the_layout(cifar10_dir, tmp_path, capsys):
    (tmp_path / "cat").mkdir()
    for name in ("0000.jpg", "0001.jpg", "0002.jpg"):
        (tmp_path / "cat" / name).symlink_to(cifar10_dir / "test" / "cat" / name)
    assert main(["train", "vgg11_bn_finetune", "--data-dir", str(tmp_path / "cat"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'cat'} has no class folders. Expected one folder per class, {tmp_path / 'cat'}/<class>/*.jpg" in err, err
    assert "point --data-dir at the folder above their class folder" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
