import re

import pytest

from zoo import recipe as recipes
from zoo.recipe import RecipeError


@pytest.mark.parametrize("name", recipes.available())
def test_shipped_recipes_resolve_and_name_registered_models(name):
    import zoo

    recipe = recipes.load(name)
    assert recipe["name"] == name
    assert recipe["model"]["name"] in zoo.list_models()
    assert recipe["optimizer"]["nesterov"] is True
    assert recipe["schedule"]["name"] in ("warmup_cosine", "warmup_linear")  # every shipped recipe decays its rate
    assert recipes.resolve(recipes.tomllib.loads(recipes.to_toml(recipe))) | {"name": name} == recipe


def test_shipped_recipes_cover_the_released_models():
    assert {"lenet5_cifar10", "alexnet_lite_cifar10", "vgg11_bn_cifar10", "vgg16_bn_cifar10"} <= set(recipes.available())


def test_overrides_parse_toml_values_and_bare_words():
    recipe = recipes.load(
        "lenet5_cifar10",
        ["optimizer.learning_rate=0.2", "data.batch_size=64", "augment.flip=false", "model.name=vgg11_bn",
         "model.fc_units=[256, 128]", 'data.data_dir="/tmp/my data"'],
    )
    assert recipe["optimizer"]["learning_rate"] == 0.2
    assert recipe["data"]["batch_size"] == 64
    assert recipe["augment"]["flip"] is False
    assert recipe["model"]["name"] == "vgg11_bn"
    assert recipe["model"]["fc_units"] == [256, 128]
    assert recipe["data"]["data_dir"] == "/tmp/my data"


def test_an_override_that_changes_the_run_drops_the_files_expected_figures():
    filed = recipes.load("vgg11_bn_cifar10_20ep")
    assert filed["expected"]["test_accuracy"] is not None
    shorter = recipes.load("vgg11_bn_cifar10_20ep", ["data.data_dir='/data'", "training.epochs=10", "augment.cutout=16"])
    assert shorter["expected"] == {"test_accuracy": None, "hardware": "", "train_time": "", "notes": "Not measured: vgg11_bn_cifar10_20ep with training.epochs=10, augment.cutout=16."}
    assert "test_accuracy" not in recipes.to_toml(shorter)  # what a run folder keeps
    assert shorter["description"] == filed["description"]
    # Moving the data, restating a value the file has, or measuring anew keeps what is given.
    for same in (["data.data_dir='/data'"], [f"training.epochs={filed['training']['epochs']}"], ["training.epochs=10", "expected.notes='measured'"]):
        assert recipes.load("vgg11_bn_cifar10_20ep", same)["expected"]["test_accuracy"] == filed["expected"]["test_accuracy"], same


def test_an_int_is_accepted_where_a_float_is_expected():
    assert recipes.load("lenet5_cifar10", ["optimizer.learning_rate=1"])["optimizer"]["learning_rate"] == 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lr=0.1", r"unknown key 'optimizer.lr'. Valid keys in \[optimizer\]: learning_rate, momentum"),
        ("optimiser.learning_rate=0.1", r"unknown recipe key 'optimiser'"),
        ("data.batch_size=big", r"data.batch_size must be of type int. Received: data.batch_size='big'"),
        ("data.batch_size=true", r"data.batch_size must be of type int"),
        ("data.image_size=64", r"data.image_size must be of type list \(TOML: data.image_size=\[64, 64\]\). Received: data.image_size=64"),
        ("training.precision=float16", r"training.precision must be one of auto, float32, mixed_bfloat16, mixed_float16"),
        ("schedule.name=step", r"schedule.name must be one of warmup_cosine, warmup_linear, constant. Received: schedule.name='step'"),
        ("augment.padding_mode=edge", r"augment.padding_mode must be one of constant, reflect. Received: augment.padding_mode='edge'"),
        ("learning_rate", r"must look like section.key=value. Received: 'learning_rate'"),
        ("data.batch_size=0", r"data.batch_size must be >= 1. Received: data.batch_size=0"),
        ("augment.crop_padding=-1", r"augment.crop_padding must be >= 0 \(0: off\). Received: augment.crop_padding=-1"),
        ("augment.cutout=-3", r"augment.cutout must be >= 0"),
        ("training.label_smoothing=1.5", r"training.label_smoothing must be in \[0, 1\). Received: training.label_smoothing=1.5"),
        ("training.epochs=0", r"training.epochs must be >= 1"),
        ("training.seed=-1", r"training.seed must be >= 0"),
        ("optimizer.learning_rate=0", r"optimizer.learning_rate must be > 0. Received: optimizer.learning_rate=0.0"),
        ("optimizer.momentum=1.5", r"optimizer.momentum must be in \[0, 1\)"),
        ("optimizer.weight_decay=-1e-4", r"optimizer.weight_decay must be >= 0"),
        ("schedule.warmup_epochs=-1", r"schedule.warmup_epochs must be >= 0"),
        ("schedule.final_fraction=2", r"schedule.final_fraction must be in \[0, 1\]"),
        ("data.limit=-2", r"data.limit must be >= 0"),
        ("data.validation_size=-1", r"data.validation_size must be >= 0 \(0: train on every image and keep the last epoch\)"),
        ("data.image_size=[32]", r"data.image_size must be \[height, width\], integers >= 1. Received: data.image_size=\[32\]"),
        ("model.fc_units=[64, 0]", r"model.fc_units must be a list of integers >= 1"),
        ("model.dropout=1.0", r"model.dropout must be in \[0, 1\)"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(RecipeError, match=message) as error:
        recipes.load("lenet5_cifar10", [override])
    assert str(error.value).startswith(f"--set {override}: "), "the error names the --set option, not the recipe file"


def test_alternate_flip_needs_flips():
    assert recipes.load("lenet5_cifar10", ["augment.alternate_flip=true"])["augment"]["alternate_flip"] is True
    with pytest.raises(RecipeError, match=r"^--set augment.alternate_flip=true: augment.alternate_flip .* needs augment.flip = true. Received: augment.flip=false"):
        recipes.load("lenet5_mnist", ["augment.alternate_flip=true"])  # digits train without flips


@pytest.mark.parametrize("value", ["inf", "+inf", "nan", "-inf"])
def test_float_keys_must_be_finite(value):
    with pytest.raises(RecipeError, match=rf"--set optimizer.learning_rate={re.escape(value)}: optimizer.learning_rate must be a finite number"):
        recipes.load("lenet5_cifar10", [f"optimizer.learning_rate={value}"])


def test_errors_of_the_file_itself_name_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[model]\nname = "lenet5"\ndropout = 2.0\n')
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(path))}: model.dropout must be in"):
        recipes.load(path, ["optimizer.learning_rate=0.1"])


def test_recipe_files_are_checked(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[model]\nname = "lenet5"\ndepth = 3\n')
    with pytest.raises(RecipeError, match=r"mine.toml: unknown key 'model.depth'"):
        recipes.load(path)
    path.write_text("[data]\nbatch_size = 32\n")
    with pytest.raises(RecipeError, match=r"missing required key model.name"):
        recipes.load(path)
    path.write_text("[model\n")
    with pytest.raises(RecipeError, match=r"invalid TOML"):
        recipes.load(path)
    with pytest.raises(RecipeError, match=r"Unknown recipe 'vgg99_cifar10'\..* Shipped recipes: alexnet_lite_cifar10"):
        recipes.load("vgg99_cifar10")
    with pytest.raises(RecipeError, match=r"Recipe file not found"):
        recipes.load(tmp_path / "absent.toml")
