"""A run folder's state: what it holds, whether a command may train in it, and the lock.

A run folder holds `recipe.toml` (the resolved recipe), `model.keras` (best on validation),
`history.csv`, `state.json` (training seconds, resumes, where each stretch of epochs trained), `results.json` once finished, `logs/`,
`plots/` and, while training, `backup/` (the resume point). One training at a time holds a run
folder (a lock file beside it, so `--overwrite` can move the folder).
"""

import contextlib
import json
import math
import os
import pathlib
import shutil
import sys
import zipfile

from zoo import recipe as recipes
from zoo.files import LockedError, exclusive_lock, write_text_atomically

BACKUP = "backup"
STATE = "state.json"
CHECKPOINT = "model.keras"


class RunFolderError(FileExistsError):
    """A run folder that cannot be used as asked (finished, or started with another recipe)."""


def prepare_run_folder(run_dir, recipe, overwrite=False):
    """Create `run_dir`, or check that it can be resumed; return the epoch to resume from (0: fresh)."""
    run_dir = pathlib.Path(run_dir)
    recipe_text = recipes.to_toml(recipe)
    if run_dir.exists() and any(run_dir.iterdir()):
        if overwrite:  # the last finished run is kept aside until the new one has finished
            previous = previous_run(run_dir)
            if previous.exists():  # run_dir is an unfinished replacement of it: only that goes
                shutil.rmtree(run_dir)
            else:
                os.replace(run_dir, previous)
            print(f"--overwrite: the previous run is kept in {previous} until this one finishes", flush=True)
        elif (run_dir / "results.json").exists():
            raise RunFolderError(f"Run folder {run_dir} holds a finished run. Use another --out, or --overwrite to replace it.")
        elif (run_dir / "recipe.toml").exists() and not same_run(run_dir / "recipe.toml", recipe):
            if (run_dir / BACKUP).exists() or (run_dir / "model.keras").exists():
                raise RunFolderError(
                    f"Run folder {run_dir} was started with a different recipe, so it cannot be resumed with this one. "
                    "Use another --out, or --overwrite to start again."
                )
            # Stopped before its first backup (e.g. by bad data): nothing to keep, start this recipe in it.
            print(f"{run_dir} holds no epoch of its other recipe: starting this one there", flush=True)
            for leftover in (run_dir / STATE, run_dir / "history.csv"):
                leftover.unlink(missing_ok=True)
            shutil.rmtree(run_dir / "logs", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(run_dir / "recipe.toml", recipe_text)  # a resume rewrites it: a full disk must not cut it
    metadata = run_dir / BACKUP / "training_metadata.json"  # written by keras.callbacks.BackupAndRestore
    try:
        epoch = int(json.loads(metadata.read_text())["epoch"]) if metadata.exists() else 0
    except (ValueError, KeyError, TypeError):
        raise RunFolderError(
            f"The backup in {run_dir / BACKUP} is damaged ({metadata.name} holds no epoch): the run cannot resume from it. "
            "Use another --out to start afresh (this folder keeps its best checkpoint so far), or --overwrite to start again here."
        ) from None
    drop_epochs_from(run_dir / "history.csv", epoch)
    if epoch:
        _check_checkpoint(run_dir, epoch, recipe["training"]["epochs"])
    return epoch


def checkpoint_problem(path):
    """Why the Keras file `path` cannot be a run's best checkpoint ("missing", "damaged (...)"), or None."""
    if not path.exists():
        return "missing"
    try:
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                return "damaged (no config.json in it)"
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"damaged ({e})"
    return f"damaged ({bad} fails its CRC)" if bad else None


def _check_checkpoint(run_dir, epoch, epochs):
    """A resume needs the best checkpoint that the history's best score stands for: if it is gone (a failing disk,
    a hand clean-up), the best starts again from the epochs still to train, and a damaged file is kept aside."""
    path = run_dir / CHECKPOINT
    problem = checkpoint_problem(path)
    if problem is None:
        return
    if epoch >= epochs:
        raise RunFolderError(
            f"{path}, the run's best checkpoint, is {problem}, and its backup is at the last epoch ({epoch}): no epoch is "
            f"left to train a new one. The last epoch's weights are in {run_dir / BACKUP / 'latest.weights.h5'}; --overwrite trains the run again."
        )
    kept = ""
    if path.exists():
        os.replace(path, path.with_name(f"{path.name}.damaged"))
        kept = f" (the damaged file is kept as {path.name}.damaged)"
    print(
        f"warning: {path}, the run's best checkpoint, is {problem}: the run resumes from epoch {epoch}, and its best "
        f"checkpoint is chosen again among the epochs still to train{kept}",
        file=sys.stderr, flush=True,
    )


def same_run(recipe_file, recipe):
    """Whether a run folder's `recipe_file` defines the same run as `recipe`: only the location of
    the data (`data_dir`, `tfds_data_dir`, so a run resumes after its data moved) and the words
    (`description`, `[expected]`) may differ."""
    try:
        stored = recipes.load(recipe_file)
    except recipes.RecipeError:
        return False
    return recipes.run_defining(stored) == recipes.run_defining(recipe)


def previous_run(run_dir):
    """Where `--overwrite` keeps the finished run it replaces until the new one finishes."""
    return run_dir.with_name(f".{run_dir.name}-previous")


WRITTEN = ("recipe.toml", "labels.txt", STATE, "history.csv", "logs", "plots", BACKUP)  # what training writes before a checkpoint


def drop_if_empty(run_dir):
    """After a failure: a run folder that holds no checkpoint (it failed before its first good epoch,
    e.g. on bad data or a NaN loss) loses what training wrote, and the folder itself if nothing else
    is left in it (a user's own files stay); a finished run it was replacing is put back."""
    if (run_dir / "model.keras").exists() or (run_dir / "results.json").exists():
        return
    for name in WRITTEN:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name, ignore_errors=True)
        else:
            (run_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: it holds files of the user's
        run_dir.rmdir()
    if previous_run(run_dir).exists() and not run_dir.exists():
        os.replace(previous_run(run_dir), run_dir)
        print(f"the previous run is back in {run_dir}", flush=True)


@contextlib.contextmanager
def run_folder_lock(run_dir):
    """One training process per run folder: the lock file lies beside it, so `--overwrite` can move it."""
    try:
        folder = run_dir.resolve()
        with exclusive_lock(folder.parent / f".{folder.name}.lock"):
            yield
    except LockedError as e:
        raise RunFolderError(f"Run folder {run_dir} is in use by another training ({e}). Wait for it to end, or use another --out.") from None


def history_rows(history_csv):
    """The header and whole rows of a CSVLogger file (None, [] if there is none yet). A row cut short (the disk
    filled as it was appended) is left out: the resumed run logs its epoch again."""
    lines = history_csv.read_text().splitlines() if history_csv.exists() else []
    if not lines:
        return None, []
    fields = lines[0].count(",")
    return lines[0], [l for l in lines[1:] if l.count(",") == fields and l.split(",")[0].isdigit() and not l.endswith(",")]


def drop_epochs_from(history_csv, epoch):
    """Forget rows logged for `epoch` and later: a resumed run logs them again."""
    header, rows = history_rows(history_csv)
    if header:
        # Atomic: a history cut short would make the next epoch look best and overwrite the best checkpoint.
        write_text_atomically(history_csv, "\n".join([header, *(r for r in rows if int(r.split(",")[0]) < epoch)]) + "\n")


def best_validation(history_csv, from_epoch=0):
    """The best `(val_accuracy, -val_loss)` logged so far from epoch `from_epoch` (the best checkpoint's score), or -infinities."""
    header, rows = history_rows(history_csv)
    rows = [r for r in rows if int(r.split(",")[0]) >= from_epoch]
    columns = header.split(",") if header else []
    if "val_accuracy" not in columns:
        return (-math.inf, -math.inf)
    accuracy, loss = columns.index("val_accuracy"), columns.index("val_loss") if "val_loss" in columns else None
    number = lambda row, column: None if column is None or row.split(",")[column] == "NA" else float(row.split(",")[column])  # noqa: E731
    scores = [score for r in rows if (score := validation_score(number(r, accuracy), number(r, loss))) is not None]
    return max(scores, default=(-math.inf, -math.inf))


def validation_score(accuracy, loss):
    """What the best checkpoint maximises: validation accuracy, then the lower validation loss (on
    the few dozen validation images of a fine-tuning run, accuracy often ties, even at 100%)."""
    if accuracy is None:
        return None
    return (accuracy, -loss if loss is not None and math.isfinite(loss) else -math.inf)


def describe_setting(setting):
    """One stretch of a run's epochs, for people: "in float32 under tensorflow on AMD EPYC, 2 cores (avx2)"."""
    if setting.get("unrecorded"):
        return "where and how not recorded (state.json older than this record, or damaged)"
    flags = f" ({' '.join(setting['cpu_flags'])})" if setting["cpu_flags"] else ""  # none read on macOS and ARM
    where = " + ".join(setting["accelerators"]) or setting["cpu"] + flags
    return f"in {setting['precision']} under {setting['backend']} on {where}"


def epoch_range(first, last):
    """1-based, as the progress lines count: "epoch 3", or "epochs 3-7"."""
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"
