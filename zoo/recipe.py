"""Training recipes: declarative TOML files, checked against a schema, with `--set key=value` overrides."""

import copy
import difflib
import math
import pathlib
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from zoo.augment import PADDING_MODES
from zoo.files import shipped_folder

RECIPES_DIR = shipped_folder("recipes")
REQUIRED = object()
OPTIONAL = None

# section -> key -> (type, default). REQUIRED keys must be given; OPTIONAL (None) ones may be absent.
SCHEMA = {
    "model": {
        "name": (str, REQUIRED),
        "weights": (str, "none"),  # start from: a released tag, a .weights.h5/.keras file, a run folder, or "none"
        "num_classes": (int, OPTIONAL),  # pins the class count: data with another count is an error
        "batch_norm": (bool, OPTIONAL),
        "dropout": (float, OPTIONAL),
        "fc_units": (list, OPTIONAL),
    },
    "data": {
        "source": (str, "cifar10"),  # a tensorflow-datasets name
        "data_dir": (str, ""),  # an image-folder tree; overrides `source`
        "tfds_data_dir": (str, ""),
        "image_size": (list, [32, 32]),
        "channels": (int, 3),  # 1: greyscale models (RGB files converted), 3: RGB
        "validation_size": (int, 5000),  # the best epoch is kept by its accuracy; 0: all images train, the last epoch is kept
        "validation_fraction": (float, 0.0),  # > 0: this fraction of each class of train, instead of validation_size
        "test_fraction": (float, 0.2),  # for a single folder of class folders (no train/ and test/): each class's share
        "batch_size": (int, 128),  # per replica
        "limit": (int, 0),  # keep only this many images per split (0: all)
    },
    "augment": {
        "crop_padding": (int, 4),
        "padding_mode": (str, "constant"),  # the crop's border: zeros, or the image mirrored (Page, airbench)
        "flip": (bool, True),
        "alternate_flip": (bool, False),  # airbench's derandomized flip: each image flipped in every other epoch
        "cutout": (int, 0),
    },
    "optimizer": {
        "learning_rate": (float, 0.05),  # the peak of the schedule
        "momentum": (float, 0.9),
        "nesterov": (bool, True),
        "weight_decay": (float, 5e-4),  # not applied to biases and batch-norm parameters
        "use_ema": (bool, False),  # validate, checkpoint and release the weights' moving average
        "ema_momentum": (float, 0.99),  # per step: the average forgets with a horizon of 1 / (1 - momentum) steps
        "batch_norm_bias_lr_scale": (float, 1.0),  # batch norms' biases learn this many times faster (airbench: 64)
        "lookahead": (bool, False),  # airbench's lookahead: every 5 steps the weights and batch-norm statistics move to a slow copy of them
    },
    "schedule": {
        "name": (str, "warmup_cosine"),
        "warmup_epochs": (float, 1.0),
        "final_fraction": (float, 0.0),  # learning rate at the end, as a fraction of the peak
    },
    "finetune": {  # applies when [model] weights is not "none"
        "frozen_epochs": (int, 0),  # the first epochs train the head only, the backbone frozen
        "backbone_lr_scale": (float, 0.1),  # then the backbone learns at this fraction of the head's rate
        "batch_norm_frozen": (bool, True),  # batch norm stays in inference mode throughout (Keras' guide)
    },
    "training": {
        "epochs": (int, 30),
        "label_smoothing": (float, 0.0),
        "seed": (int, 0),
        "precision": (str, "auto"),  # auto: mixed_bfloat16 on GPUs and bf16-capable CPUs, else float32
        "tta_flip": (bool, False),  # average the logits of each test image and its mirror
        "whitening_init": (bool, False),  # the first convolution starts as a whitening of the training patches (airbench)
        "dirac_init": (bool, False),  # every later convolution starts as the identity on its first channels (airbench)
        "freeze_whitening": (bool, False),  # the whitened first convolution's filters stay as they start (airbench)
        "batch_norm_momentum": (float, OPTIONAL),  # the batch norms' moving statistics keep this share a step (Keras: 0.99; airbench: 0.4)
        "ghost_batch_size": (int, 0),  # > 0: batch norms normalize groups of this many images while training (Page: 32; 0: the whole batch)
        "freeze_batch_norm_scales": (bool, False),  # every batch norm's scale (gamma) stays 1 (airbench; Page's frozen scales)
    },
    "expected": {
        "test_accuracy": (float, OPTIONAL),
        "hardware": (str, ""),
        "train_time": (str, ""),
        "notes": (str, ""),
    },
}

CHOICES = {
    ("schedule", "name"): ("warmup_cosine", "warmup_linear", "constant"),
    ("augment", "padding_mode"): PADDING_MODES,
    ("training", "precision"): ("auto", "float32", "mixed_bfloat16", "mixed_float16"),
}


def _positive_ints(count=None):
    return lambda v: (count is None or len(v) == count) and all(type(i) is int and i >= 1 for i in v)


# (section, key) -> (what is valid, in words; test). Checked after the type, before any work.
RANGES = {
    ("model", "dropout"): ("in [0, 1)", lambda v: 0 <= v < 1),
    ("model", "fc_units"): ("a list of integers >= 1", _positive_ints()),
    ("data", "image_size"): ("[height, width], integers >= 1", _positive_ints(2)),
    ("data", "channels"): ("1 (greyscale) or 3 (RGB)", lambda v: v in (1, 3)),
    ("model", "num_classes"): (">= 2", lambda v: v >= 2),
    ("data", "validation_size"): (">= 0 (0: train on every image and keep the last epoch)", lambda v: v >= 0),
    ("data", "validation_fraction"): ("in [0, 1) (0: use validation_size)", lambda v: 0 <= v < 1),
    ("data", "test_fraction"): ("in (0, 1)", lambda v: 0 < v < 1),
    ("finetune", "frozen_epochs"): (">= 0", lambda v: v >= 0),
    ("finetune", "backbone_lr_scale"): ("in (0, 1]", lambda v: 0 < v <= 1),
    ("data", "batch_size"): (">= 1", lambda v: v >= 1),
    ("data", "limit"): (">= 0 (0: all images)", lambda v: v >= 0),
    ("augment", "crop_padding"): (">= 0 (0: off)", lambda v: v >= 0),
    ("augment", "cutout"): (">= 0 (0: off)", lambda v: v >= 0),
    ("optimizer", "learning_rate"): ("> 0", lambda v: v > 0),
    ("optimizer", "momentum"): ("in [0, 1)", lambda v: 0 <= v < 1),
    ("optimizer", "weight_decay"): (">= 0", lambda v: v >= 0),
    ("optimizer", "ema_momentum"): ("in (0, 1)", lambda v: 0 < v < 1),
    ("optimizer", "batch_norm_bias_lr_scale"): ("> 0", lambda v: v > 0),
    ("schedule", "warmup_epochs"): (">= 0", lambda v: v >= 0),
    ("schedule", "final_fraction"): ("in [0, 1]", lambda v: 0 <= v <= 1),
    ("training", "epochs"): (">= 1", lambda v: v >= 1),
    ("training", "label_smoothing"): ("in [0, 1)", lambda v: 0 <= v < 1),
    ("training", "seed"): (">= 0", lambda v: v >= 0),
    ("training", "batch_norm_momentum"): ("in [0, 1)", lambda v: 0 <= v < 1),
    ("training", "ghost_batch_size"): ("0 (off) or >= 2", lambda v: v == 0 or v >= 2),
    ("expected", "test_accuracy"): ("in [0, 1]", lambda v: 0 <= v <= 1),
}


class RecipeError(ValueError):
    """A recipe that does not match the schema."""


def available():
    """Names of the recipes shipped in `recipes/`."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def locate(name_or_path):
    """The path of a recipe given as a file path or as the name of a shipped recipe."""
    path = pathlib.Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise RecipeError(f"Recipe file not found: {path}")
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.toml"
    if not shipped.is_file():
        names = available()
        close = [n for n in names if n.startswith(f"{name_or_path}_")] or difflib.get_close_matches(name_or_path, names, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        shipped_ones = f"Shipped recipes: {', '.join(names)}" if names else f"No shipped recipes found in {RECIPES_DIR}"
        raise RecipeError(f"Unknown recipe {name_or_path!r}.{hint} {shipped_ones}; or give a path to a .toml file.")
    return shipped


def load(name_or_path, overrides=()):
    """The resolved recipe (every key, defaults filled in) of a recipe file plus `key=value` overrides;
    overrides that change the run replace the file's `[expected]` figures with a note naming them."""
    path = locate(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: invalid TOML: {e}") from None
    as_filed = copy.deepcopy(raw)
    given = {_apply_override(raw, override): override for override in overrides}
    recipe = resolve(raw, source=str(path), overrides=given)
    recipe["name"] = path.stem
    if given and "expected" not in {key.split(".")[0] for key in given}:
        if run_defining(recipe) != run_defining(resolve(as_filed, source=str(path))):  # the file's [expected] measured the file, not this run
            options = ", ".join(text for key, text in given.items() if key.removeprefix("data.") not in LOCATION)
            recipe["expected"] = {key: default for key, (_, default) in SCHEMA["expected"].items()} | {"notes": f"Not measured: {path.stem} with {options}."}
    return recipe


LOCATION = ("data_dir", "tfds_data_dir")  # [data] keys for where the data lies: moving it changes no run


def run_defining(recipe):
    """What defines a run: the recipe less its words (`name`, `description`, `[expected]`) and where its data lies."""
    return {**recipe, "name": None, "description": None, "expected": None, "data": {**recipe["data"], **dict.fromkeys(LOCATION, "")}}


def _apply_override(raw, override):
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise RecipeError(f"--set {override}: an override must look like section.key=value. Received: {override!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word, e.g. model.name=vgg11_bn
    *sections, leaf = key.strip().split(".")
    table = raw
    for section in sections:
        table = table.setdefault(section, {})
        if not isinstance(table, dict):
            raise RecipeError(f"--set {override}: {key!r} is not a recipe key.")
    table[leaf] = value
    return key.strip()


def resolve(raw, source="recipe", overrides=None):
    """Check `raw` against the schema and fill in defaults; a RecipeError names any bad key or value,
    and where it came from: `source`, or the `--set` option of `overrides` (dotted key -> option text)."""
    overrides = overrides or {}

    def where(*keys):
        dotted = ".".join(k for k in keys if k)
        given = [text for key, text in overrides.items() if key == dotted or key.startswith(f"{dotted}.")]
        return f"--set {given[0]}" if given else source

    for key in raw:
        if key not in SCHEMA and key != "description":
            raise RecipeError(
                f"{where(key)}: unknown recipe key {key!r}. Valid: description, {', '.join(f'[{s}]' for s in SCHEMA)}."
            )
    recipe = {"description": _check("", "description", raw.get("description", ""), str, where("description"))}
    for section, fields in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise RecipeError(f"{where(section)}: [{section}] must be a table. Received: {section}={given!r}")
        table = recipe[section] = {}
        for key, value in given.items():
            if key not in fields:
                raise RecipeError(
                    f"{where(section, key)}: unknown key '{section}.{key}'. Valid keys in [{section}]: {', '.join(fields)}."
                )
            table[key] = _check(section, key, value, fields[key][0], where(section, key))
        for key, (_, default) in fields.items():
            if key not in table:
                if default is REQUIRED:
                    raise RecipeError(f"{source}: missing required key {section}.{key}.")
                table[key] = copy.deepcopy(default)
    if recipe["augment"]["alternate_flip"] and not recipe["augment"]["flip"]:
        raise RecipeError(
            f"{where('augment', 'alternate_flip')}: augment.alternate_flip decides which images are flipped in each "
            "epoch, so it needs augment.flip = true. Received: augment.flip=false"
        )
    for key in ("whitening_init", "dirac_init"):
        if recipe["training"][key] and recipe["model"]["weights"] != "none":
            raise RecipeError(
                f"{where('training', key)}: training.{key} sets the start of a network trained from scratch, so it "
                f"needs model.weights = \"none\". Received: model.weights={recipe['model']['weights']!r}"
            )
    if recipe["training"]["freeze_whitening"] and not recipe["training"]["whitening_init"]:
        raise RecipeError(
            f"{where('training', 'freeze_whitening')}: training.freeze_whitening keeps the first convolution's whitening "
            "filters as they start, so it needs training.whitening_init = true. Received: training.whitening_init=false"
        )
    return recipe


def _dotted(section, key):
    return f"{section}.{key}" if section else key


def _check(section, key, value, kind, source):
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        form = ""
        if kind is list:  # the TOML form, from what was given: image_size=64 -> [64, 64]
            example = f"[{value}, {value}]" if key == "image_size" and isinstance(value, int) else f"[{value!r}]"
            form = f" (TOML: {_dotted(section, key)}={example})"
        raise RecipeError(f"{source}: {_dotted(section, key)} must be of type {kind.__name__}{form}. Received: {_dotted(section, key)}={value!r}")
    if kind is float and not math.isfinite(value):  # TOML has inf and nan
        raise RecipeError(f"{source}: {_dotted(section, key)} must be a finite number. Received: {_dotted(section, key)}={value!r}")
    choices = CHOICES.get((section, key))
    if choices and value not in choices:
        raise RecipeError(f"{source}: {_dotted(section, key)} must be one of {', '.join(choices)}. Received: {_dotted(section, key)}={value!r}")
    valid, test = RANGES.get((section, key), (None, None))
    if test and not test(value):
        raise RecipeError(f"{source}: {_dotted(section, key)} must be {valid}. Received: {_dotted(section, key)}={value!r}")
    return value


def to_toml(recipe):
    """The resolved recipe as TOML text (its `name` and unset optional keys are left out)."""
    lines = [f"description = {toml_value(recipe['description'])}"]
    for section in SCHEMA:
        lines += ["", f"[{section}]"] + [f"{k} = {toml_value(v)}" for k, v in recipe[section].items() if v is not None]
    return "\n".join(lines) + "\n"


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)
