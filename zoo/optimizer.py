"""A recipe's `[optimizer]` and `[schedule]` -> a Keras optimizer: SGD with decoupled weight decay, its
learning-rate schedule, and the optional exponential moving average of the weights (Keras' `use_ema`).

Schedules (the learning rate at each step, peaking at `optimizer.learning_rate`):
- `warmup_cosine`: linear warm-up from 0, then a cosine down to `final_fraction` of the peak;
- `warmup_linear`: linear warm-up from 0, then a straight line down to `final_fraction` of the peak
  (with 0: linear-to-zero; the triangular one-cycle of the fast-CIFAR work);
- `constant`: the peak throughout.
"""

import keras

from zoo import finetune


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


def make_optimizer(recipe, steps_per_epoch, backbone_paths=(), backbone_scale=1.0):
    """SGD on the recipe's schedule; with `backbone_paths`, their steps scaled by `backbone_scale`.
    With `optimizer.use_ema`, it also keeps the weights' moving average (`ema_momentum` per step)."""
    opt = recipe["optimizer"]
    scaled = {"backbone_paths": backbone_paths, "backbone_scale": backbone_scale} if backbone_paths else {}
    optimizer = (finetune.BackboneScaledSGD if backbone_paths else keras.optimizers.SGD)(
        learning_rate=learning_rate(recipe, steps_per_epoch),
        momentum=opt["momentum"],
        nesterov=opt["nesterov"],
        weight_decay=opt["weight_decay"] or None,
        use_ema=opt["use_ema"],
        ema_momentum=opt["ema_momentum"],
        **scaled,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer
