"""Model names -> builders, and what is known about each model at its default configuration."""

import dataclasses
import difflib
import fnmatch
from typing import Callable

from zoo.pretrained import cards, released_models

_MODELS = {}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Facts about a registered model, at its default options (input 32x32x3, 10 classes).

    `params` and `macs` (multiply-accumulates per image) are pinned figures; the tests check
    that the builder reproduces them.
    """

    name: str
    builder: Callable
    params: int
    macs: int
    min_input_size: int
    reference: str

    @property
    def weights(self):
        """Tags of this model's released weights (`weights=TAG`), from the model cards in saved_models/."""
        return tuple(sorted(tag for model, tag in cards() if model == self.name))


def register_model(*, params, macs, min_input_size, reference):
    """Decorator that registers a builder under its function name."""

    def register(builder):
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"A model named '{name}' is already registered.")
        _MODELS[name] = ModelInfo(name, builder, params, macs, min_input_size, reference)
        return builder

    return register


def list_models(include=None, exclude=None, pretrained=False):
    """Sorted names of registered models, filtered by fnmatch patterns (a string or a list);
    with `pretrained`, only those with released weights."""
    names = sorted(_MODELS)
    if pretrained:
        released = set(released_models())
        names = [n for n in names if n in released]
    if include is not None:
        names = [n for n in names if _matches(n, include)]
    if exclude is not None:
        names = [n for n in names if not _matches(n, exclude)]
    return names


def _matches(name, patterns):
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def model_info(name):
    """The `ModelInfo` of a registered model; a ValueError naming close matches otherwise."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown model name.{hint} Available models: {', '.join(sorted(_MODELS))}. "
            f"Received: name={name!r}"
        )
    return _MODELS[name]


def get_model(name, **kwargs):
    """Build the registered model `name` with the builder's keyword options."""
    return model_info(name).builder(**kwargs)
