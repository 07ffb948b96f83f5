"""A recipe's `[optimizer]` and `[schedule]` -> a Keras optimizer: SGD with decoupled weight decay, its
learning-rate schedule, per-variable rate multipliers, and the optional exponential moving average of the
weights (Keras' `use_ema`).

Schedules (the learning rate at each step, peaking at `optimizer.learning_rate`):
- `warmup_cosine`: linear warm-up from 0, then a cosine down to `final_fraction` of the peak;
- `warmup_linear`: linear warm-up from 0, then a straight line down to `final_fraction` of the peak
  (with 0: linear-to-zero; the triangular one-cycle of the fast-CIFAR work);
- `constant`: the peak throughout.
"""

import keras


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """0 -> `peak` over `warmup_steps`, then a straight line to `peak * final_fraction` at `total_steps`."""

    def __init__(self, peak, warmup_steps, total_steps, final_fraction=0.0):
        self.peak, self.warmup_steps, self.total_steps, self.final_fraction = peak, warmup_steps, total_steps, final_fraction

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = keras.ops.cast(self.warmup_steps, "float32")
        rising = self.peak * step / keras.ops.maximum(warmup, 1.0)
        progress = keras.ops.clip((step - warmup) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        falling = self.peak * (1.0 - (1.0 - self.final_fraction) * progress)
        return keras.ops.where(step < warmup, rising, falling)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps, "final_fraction": self.final_fraction}


def learning_rate(recipe, steps_per_epoch):
    """The recipe's schedule as a Keras schedule (or a number, for `constant`)."""
    opt, sched = recipe["optimizer"], recipe["schedule"]
    total = recipe["training"]["epochs"] * steps_per_epoch
    warmup = min(int(sched["warmup_epochs"] * steps_per_epoch), total - 1)
    if sched["name"] == "warmup_cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else opt["learning_rate"],
            decay_steps=max(total - warmup, 1),
            alpha=sched["final_fraction"],
            warmup_target=opt["learning_rate"] if warmup else None,
            warmup_steps=warmup,
        )
    if sched["name"] == "warmup_linear":
        return WarmupLinearDecay(opt["learning_rate"], warmup, total, sched["final_fraction"])
    return opt["learning_rate"]


class ScaledSGD(keras.optimizers.SGD):
    """SGD with a learning-rate multiplier per variable (`scales`: variable path -> factor), the parameter
    groups of timm and torchvision recipes that a Keras optimizer lacks: the fine-tuned backbone's lower
    rate, airbench's faster batch-norm biases. Decoupled weight decay applies at the base rate. It is never
    saved in a model file (the run's checkpoints are written uncompiled), so files load without zoo."""

    def __init__(self, *args, scales=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.scales = dict(scales or {})
        self._scale_of_index = {}

    def build(self, variables):
        super().build(variables)
        # update_step sees backend variables (a tf.Variable under TensorFlow): match them by index
        self._scale_of_index = {self._get_variable_index(v): self.scales[v.path] for v in variables if v.path in self.scales}

    def update_step(self, gradient, variable, learning_rate):
        scale = self._scale_of_index.get(self._get_variable_index(variable), 1.0)
        return super().update_step(gradient, variable, learning_rate * scale if scale != 1.0 else learning_rate)


def learning_rate_scales(model, batch_norm_bias_scale=1.0, backbone_paths=(), backbone_scale=1.0):
    """Variable path -> rate multiplier: every batch norm's bias (`beta`) at `batch_norm_bias_scale`, the
    variables in `backbone_paths` at `backbone_scale` (both, multiplied); only the factors other than 1."""
    scales = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.center:
            scales[layer.beta.path] = batch_norm_bias_scale
    for path in backbone_paths:
        scales[path] = scales.get(path, 1.0) * backbone_scale
    return {path: scale for path, scale in scales.items() if scale != 1.0}


def make_optimizer(recipe, steps_per_epoch, scales=None):
    """SGD on the recipe's schedule, each variable's steps times its factor in `scales` (path -> factor).
    With `optimizer.use_ema`, it also keeps the weights' moving average (`ema_momentum` per step)."""
    opt = recipe["optimizer"]
    optimizer = (ScaledSGD if scales else keras.optimizers.SGD)(
        learning_rate=learning_rate(recipe, steps_per_epoch),
        momentum=opt["momentum"],
        nesterov=opt["nesterov"],
        weight_decay=opt["weight_decay"] or None,
        use_ema=opt["use_ema"],
        ema_momentum=opt["ema_momentum"],
        **({"scales": scales} if scales else {}),
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer
