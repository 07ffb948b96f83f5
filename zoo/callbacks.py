"""The callbacks a training run drives: the best checkpoint, backups, the NaN guard, the run state, stops asked for by a signal."""

import json
import math
import pathlib
import sys
import time

import keras

from zoo import interrupts
from zoo.files import write_atomically, write_text_atomically
from zoo.run_folder import describe_setting, epoch_range, validation_score


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the model of the best validation accuracy (ties: the lower validation loss) in `path`,
    written atomically (a kill never leaves half a file).

    With `every` > 1 the best weights wait in memory and are written every `every` epochs (with the
    backup, so a resumed run finds the checkpoint of the epoch it resumes from) and at the end.
    The file holds the model without its compile state: the optimizer lives in the backup, and a
    model file loads anywhere, without zoo (fine-tuning's optimizer is a zoo class).
    With `last`, there is no validation (a release trained on every training image): each epoch
    whose loss is finite replaces the one before.
    """

    def __init__(self, path, best=(-math.inf, -math.inf), every=1, last=False):
        super().__init__()
        self.path, self.best, self.every, self.last = pathlib.Path(path), best, every, last
        self.waiting = None  # the best weights, while not yet written

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        score = (epoch,) if self.last else validation_score(logs.get("val_accuracy"), logs.get("val_loss"))
        improved = score is not None and score > self.best and math.isfinite(logs.get("loss", 0.0))
        if improved:
            self.best = score
        if (epoch + 1) % self.every == 0:
            if improved:
                self.waiting = None
                self._write()
            else:
                self._write_waiting()
        elif improved:
            self.waiting = self.model.get_weights()

    def on_train_end(self, logs=None):
        self._write_waiting()

    def _write(self):
        model = self.model
        plain = keras.Model(model.input, model.output, name=model.name) if model.compiled else model  # same layers, not compiled
        frozen = [layer for layer in plain.layers if not layer.trainable]  # by a fine-tuning phase: not the file's business
        for layer in frozen:
            layer.trainable = True
        try:
            write_atomically(self.path, plain.save)
        finally:
            for layer in frozen:
                layer.trainable = False

    def _write_waiting(self):
        if self.waiting is None:
            return
        current = self.model.get_weights()
        self.model.set_weights(self.waiting)
        try:
            self._write()
        finally:
            self.model.set_weights(current)
        self.waiting = None


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Keras' `SwapEMAWeights(swap_on_epoch=True)`, resumable: the optimizer's moving average of the
    weights (`use_ema`) is in the model for validation and from each epoch's end to the next one's
    start, so the best checkpoint and the backup hold it, while the steps train the raw weights.
    A backup is therefore written with the average in the model: `resumed` says the run starts so."""

    def __init__(self, resumed=False):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed


class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead (Zhang et al. 2019, on Keller Jordan's schedule): every `every` steps, and at each
    epoch's last step, a slow copy of the model's float variables (weights and the batch norms' moving
    statistics) moves toward them, slow += (1 - decay) * (fast - slow), and training continues from it
    (fast = slow). The decay rises as `peak_decay` * (step / total steps) ** 3: no pull early, 0.95**5 at the
    end, so the run ends on the slow weights. With a pull at every epoch's end, checkpoints and backups hold
    the slow weights, and a resumed run continues exactly as an unbroken one."""

    def __init__(self, steps_per_epoch, epochs, every=5, peak_decay=0.95**5):
        super().__init__()
        self.steps_per_epoch, self.total_steps, self.every, self.peak_decay = steps_per_epoch, steps_per_epoch * epochs, every, peak_decay
        self._slow = None

    def on_train_begin(self, logs=None):
        self._slow = None  # taken at the first step: after a backup was restored

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self._slow is None:
            self._variables = [v for v in self.model.variables if "float" in str(v.dtype)]
            self._slow = [keras.ops.copy(keras.ops.stop_gradient(v.value)) for v in self._variables]

    def on_train_batch_end(self, batch, logs=None):
        step = self._epoch * self.steps_per_epoch + batch + 1
        if step % self.every == 0 or batch + 1 == self.steps_per_epoch:
            self.pull(self.peak_decay * min(step / self.total_steps, 1.0) ** 3)

    def pull(self, decay):
        """slow += (1 - decay) * (fast - slow); fast = slow."""
        if keras.backend.backend() == "jax":
            self.model.jax_state_sync()  # the trainer re-reads the variables at the next step
        for i, variable in enumerate(self._variables):
            slow = self._slow[i] + (1.0 - decay) * (keras.ops.stop_gradient(variable.value) - self._slow[i])
            self._slow[i] = slow
            variable.assign(keras.ops.copy(slow))  # not the slow copy's own buffer: JAX's step donates the variables'


class PeriodicBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` every `every` epochs (a kill loses at most `every` - 1 of them).

    A VGG16-BN backup takes about 0.5 s to write, which is a large share of a GPU epoch of a few seconds.
    """

    def __init__(self, backup_dir, every=1):
        super().__init__(backup_dir, double_checkpoint=True)
        self.every = every

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            super().on_epoch_end(epoch, logs)


class StopOnNaN(keras.callbacks.Callback):
    """Stop training once the loss is not finite, and remember that it did.

    The loss in the logs is the epoch's running mean, so it stays NaN once it was; reading it every
    `every` batches (not every batch) keeps an accelerator from waiting on the host at each step.
    """

    stopped = False

    def __init__(self, every=16):
        super().__init__()
        self.every = every

    def on_train_batch_end(self, batch, logs=None):
        if batch % self.every == self.every - 1 and not math.isfinite(float((logs or {}).get("loss", 0.0))):
            self.stopped = self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite(float((logs or {}).get("loss", 0.0))):
            self.stopped = self.model.stop_training = True


class RunState(keras.callbacks.Callback):
    """Keeps `state.json`: training seconds so far (an epoch a resume trains again counts once), the epochs the
    run resumed from, and where each stretch of epochs trained (`setting`: precision, backend, CPU; a resume on
    another machine may differ)."""

    def __init__(self, path, initial_epoch, epochs, setting=None):
        super().__init__()
        self.path, self.epochs = pathlib.Path(path), epochs
        self.state = {"train_seconds": 0.0, "resumed_from_epoch": []}
        if self.path.exists():
            try:
                self.state = {**self.state, **json.loads(self.path.read_text())}
            except (ValueError, TypeError):  # bookkeeping only: the weights and the resume point are in the backup
                print(f"warning: {self.path} is damaged (not JSON): the training time, resumes and setting before epoch {initial_epoch + 1} "
                      "are not known, so results.json will count from here", file=sys.stderr, flush=True)
        if initial_epoch:
            self.state["resumed_from_epoch"].append(initial_epoch)
        # The seconds so far at each epoch's end: epochs trained after the backup train again, and count once.
        at_epoch = {"0": 0.0, **self.state.get("seconds_at_epoch", {})}
        # A state.json from before zoo kept them: its total stands, pinned here so that a second resume from the
        # same backup does not count the epochs trained in between.
        at_epoch.setdefault(str(initial_epoch), self.state["train_seconds"])
        self.state["train_seconds"] = at_epoch[str(initial_epoch)]
        self.state["seconds_at_epoch"] = {epoch: seconds for epoch, seconds in at_epoch.items() if 0 < int(epoch) <= initial_epoch}
        self.initial_epoch, self.seconds_before = initial_epoch, self.state["train_seconds"]
        if setting is not None:
            # A resume restarts at its backup: the stretches that trained the epochs from there on are superseded.
            before = [s for s in self.state.get("segments", []) if s["from_epoch"] < initial_epoch]
            if initial_epoch and not before:  # a state.json from before zoo kept stretches, or a damaged one
                before = [{"from_epoch": 0, "unrecorded": True}]
            if before and describe_setting(before[-1]) != describe_setting(setting):
                print(f"note: {epoch_range(before[-1]['from_epoch'] + 1, initial_epoch)} trained {describe_setting(before[-1])}; the rest train "
                      f"{describe_setting(setting)} here (results.json records both)", file=sys.stderr, flush=True)
            self.state["segments"] = [*before, {"from_epoch": initial_epoch, **setting}]

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        self.state["train_seconds"] += seconds
        if math.isfinite(logs.get("loss", 0.0)):  # an epoch cut short by a NaN loss does not count
            self.state["epoch"] = epoch + 1
            self.state["seconds_at_epoch"][str(epoch + 1)] = self.state["train_seconds"]
        write_text_atomically(self.path, json.dumps(self.state))
        per_epoch = (self.state["train_seconds"] - self.seconds_before) / (epoch + 1 - self.initial_epoch)  # this machine's pace
        validation = f"val_accuracy {logs['val_accuracy']:.4f}, " if "val_accuracy" in logs else ""
        print(
            f"epoch {epoch + 1}/{self.epochs}: {seconds:.0f}s, loss {logs.get('loss', float('nan')):.4f}, "
            f"{validation}ETA {_duration(per_epoch * (self.epochs - epoch - 1))}",
            flush=True,
        )


def _duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class StopWhenAsked(keras.callbacks.Callback):
    """Ctrl-C or SIGTERM that arrived during a batch and was lost on its way (see `zoo.interrupts`): raised
    at the batch's end, before anything of an unfinished epoch is written."""

    def on_train_batch_end(self, batch, logs=None):
        interrupts.raise_pending()

    on_test_batch_end = on_epoch_end = on_train_batch_end
