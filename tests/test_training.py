"""`zoo train` / `zoo eval` on the real CIFAR-10 copy: results, files, resume, determinism, NaN, strategies."""

import csv
import json
import math
import os
import pathlib
import shutil
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import keras
from zoo import distribute
from zoo import recipe as recipes
from zoo.cli import main

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_args(data_dir, out, epochs=2, limit=2000):
    return [
        "train", "lenet5_cifar10", "--data-dir", str(data_dir), "--epochs", str(epochs), "--out", str(out),
        "--set", "data.validation_size=500", "--set", f"data.limit={limit}", "--set", "training.tta_flip=false",
    ]


def zoo_process(args, env=None, **kwargs):
    """`zoo ARGS` as a user starts it: Ctrl-C acts even when the tests run as a background job (which
    starts them with SIGINT ignored)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "zoo.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env, cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs,
    )


def run_zoo(args, env=None, timeout=400):
    return finished(zoo_process(args, env), timeout)


def finished(proc, timeout=400):
    """The output of a `zoo_process` once it ended well (a failure shows its end)."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def kill_after_backup(processes, run_dir, epoch):
    """SIGKILL `processes` (zoo train) once the run's backup holds `epoch` epochs; fails if training ends first."""
    metadata = run_dir / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    while not (metadata.exists() and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= epoch):
        assert all(p.poll() is None for p in processes) and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    for process in processes:
        process.send_signal(signal.SIGKILL)
        process.communicate()


def epochs_logged(run_dir):
    with open(run_dir / "history.csv") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def weights_of(path):
    return keras.saving.load_model(path, compile=False).get_weights()


@pytest.fixture(scope="module")
def trained_run(small_cifar10, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "lenet5"
    assert main([*quick_args(small_cifar10, run_dir, epochs=2, limit=0)]) == 0
    return run_dir


def test_an_unfinished_run_says_so_and_names_its_classes(trained_run, small_cifar10, tmp_path, capsys):
    run = tmp_path / "unfinished"
    shutil.copytree(trained_run, run)
    (run / "results.json").unlink()  # as while it trains, or after a stop: its best checkpoint so far
    (run / "state.json").write_text(json.dumps({**json.loads((run / "state.json").read_text()), "epoch": 1}))
    assert (run / "labels.txt").read_text().splitlines()[3] == "cat"
    image = next((small_cifar10 / "test" / "cat").iterdir())
    assert main(["predict", str(run), str(image), "--top", "2"]) == 0
    out, err = capsys.readouterr()
    assert "note: run not finished (epoch 1/2): using its best checkpoint so far" in err
    names = [line.split()[1] for line in out.splitlines()[1:]]
    assert len(names) == 2 and set(names) <= set(CIFAR10_CLASSES)
    assert main(["predict", str(trained_run), str(image)]) == 0
    assert "not finished" not in capsys.readouterr().err


def test_real_data_smoke_run_writes_a_complete_run_folder(trained_run):
    results = json.loads((trained_run / "results.json").read_text())
    assert results["test_accuracy"] > 0.2, "LeNet-5 should beat chance (0.10, +-0.013 on 500 images) clearly after 2 epochs"
    assert results["model"] == "lenet5" and results["recipe"] == "lenet5_cifar10" and results["epochs"] == 2
    assert 0 < results["val_accuracy"] <= 1 and results["test_loss"] > 0
    assert results["data"]["class_names"][3] == "cat"
    assert (results["data"]["train_images"], results["data"]["val_images"], results["data"]["test_images"]) == (2500, 500, 500)
    assert results["train_seconds"] > 0 and results["images_per_second"] > 0
    assert results["resumed_from_epoch"] == [] and results["stopped"] is None
    assert results["hardware"]["cpu_cores"] >= 1 and results["versions"]["backend"] == "tensorflow"
    assert sum(map(sum, results["test_confusion_matrix"])) == 500
    assert epochs_logged(trained_run) == [0, 1]
    assert "[model]" in (trained_run / "recipe.toml").read_text()
    assert list((trained_run / "logs" / "train").glob("events.out.tfevents.*"))
    for png in ("history.png", "confusion_matrix.png"):
        assert Image.open(trained_run / "plots" / png).size[0] > 300
    assert not (trained_run / "backup").exists()


def test_run_folder_files_get_the_umasks_mode_like_any_new_file(trained_run, tmp_path):
    """model.keras, results.json and state.json were owner-only (mkstemp's 0600): a colleague or a
    serving process could not read a shared run folder."""
    from zoo.files import umask, write_atomically

    modes = {f.relative_to(trained_run).as_posix(): f.stat().st_mode & 0o777 for f in trained_run.rglob("*") if f.is_file()}
    assert {"model.keras", "results.json", "state.json", "history.csv", "recipe.toml"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask()}, modes
    previous = os.umask(0o022)
    try:
        write_atomically(tmp_path / "shared.json", lambda tmp: open(tmp, "w").write("{}"))
        os.umask(0o077)
        write_atomically(tmp_path / "private.json", lambda tmp: open(tmp, "w").write("{}"))
    finally:
        os.umask(previous)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    model = keras.saving.load_model(trained_run / "model.keras", safe_mode=True)
    assert model.name == "lenet5" and model.get_layer("block1_bn1")


def test_eval_reports_the_same_test_accuracy(trained_run, small_cifar10, capsys):
    results = json.loads((trained_run / "results.json").read_text())
    assert main(["eval", str(trained_run / "model.keras"), "--data-dir", str(small_cifar10), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == pytest.approx(results["test_accuracy"])
    assert report["images"] == 500 and len(report["per_class_accuracy"]) == 10
    assert main(["eval", str(trained_run / "model.keras"), "--data-dir", str(small_cifar10)]) == 0
    text = capsys.readouterr().out
    assert f"accuracy {results['test_accuracy']:.4f}" in text and "confusion matrix" in text


def test_multi_view_tta_averages_the_mirror_and_one_pixel_shifts_of_each_view(trained_run, small_cifar10, capsys):
    from zoo.data import load_image_folder_split
    from zoo.evaluation import probabilities

    model = keras.saving.load_model(trained_run / "model.keras")
    images = load_image_folder_split(small_cifar10, "test", (32, 32))[0].images[:40]
    padded = lambda x: np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # noqa: E731 - black edges
    up_left, down_right = lambda x: padded(x)[:, 2:, 2:], lambda x: padded(x)[:, :-2, :-2]  # noqa: E731 - moved by one pixel
    mirrored = images[:, :, ::-1]
    views = [images, mirrored, up_left(images), down_right(images), up_left(mirrored), down_right(mirrored)]
    expected = np.mean([probabilities(model, view) for view in views], axis=0)
    np.testing.assert_allclose(probabilities(model, images, tta_flip=True, tta_shift=1), expected, rtol=1e-6, atol=1e-9)
    assert main(["eval", str(trained_run), "--data-dir", str(small_cifar10), "--tta-flip", "--tta-shift", "1", "--limit", "40"]) == 0
    assert "(40 images, flip + 1-pixel shifts TTA)" in capsys.readouterr().out


def test_a_finished_run_is_not_overwritten(trained_run, small_cifar10, capsys):
    before = (trained_run / "model.keras").read_bytes()
    assert main([*quick_args(small_cifar10, trained_run)]) == 2
    assert "holds a finished run. Use another --out, or --overwrite" in capsys.readouterr().err
    assert (trained_run / "model.keras").read_bytes() == before


def test_overwrite_keeps_the_old_run_until_the_new_one_finishes(trained_run, small_cifar10, tmp_path, monkeypatch, capsys):
    from zoo import training

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    previous = tmp_path / ".run-previous"

    def crash(*args, **kwargs):
        raise RuntimeError("the new run died")

    with monkeypatch.context() as m:
        m.setattr(training, "_fit", crash)
        for _ in range(2):  # a replacement that dies before its first checkpoint puts the finished run back
            with pytest.raises(RuntimeError, match="the new run died"):
                main([*quick_args(small_cifar10, run_dir, epochs=1, limit=500), "--overwrite"])
            assert (run_dir / "results.json").read_bytes() == (trained_run / "results.json").read_bytes()
            assert not previous.exists() and f"the previous run is back in {run_dir}" in capsys.readouterr().out
    with monkeypatch.context() as m:  # one that dies after a checkpoint stays, beside the finished run
        m.setattr(training, "finish", crash)
        for _ in range(2):  # a second --overwrite replaces the unfinished run, not the finished one
            with pytest.raises(RuntimeError, match="the new run died"):
                main([*quick_args(small_cifar10, run_dir, epochs=1, limit=500), "--overwrite"])
    assert (previous / "results.json").read_bytes() == (trained_run / "results.json").read_bytes()
    assert (run_dir / "model.keras").exists() and not (run_dir / "results.json").exists()
    assert main([*quick_args(small_cifar10, run_dir, epochs=1, limit=500), "--overwrite"]) == 0
    assert f"previous run is kept in {previous}" in capsys.readouterr().out
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 1 and not previous.exists()


def test_a_failed_start_in_a_folder_of_the_users_keeps_the_users_files(small_cifar10, tmp_path, monkeypatch):
    from zoo import training

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")

    def crash(*args, **kwargs):
        raise RuntimeError("failed before the first epoch")

    monkeypatch.setattr(training, "_fit", crash)
    with pytest.raises(RuntimeError, match="failed before the first epoch"):
        main(quick_args(small_cifar10, out, epochs=1, limit=200))
    assert [p.name for p in out.iterdir()] == ["notes.txt"], "only what training wrote is removed"


def test_a_run_folder_of_another_recipe_is_not_resumed(small_cifar10, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "backup").mkdir(parents=True)
    (run_dir / "backup" / "training_metadata.json").write_text('{"epoch": 3}')
    (run_dir / "recipe.toml").write_text("description = 'something else'\n")
    assert main([*quick_args(small_cifar10, run_dir)]) == 2
    assert "started with a different recipe" in capsys.readouterr().err
    assert (run_dir / "recipe.toml").read_text() == "description = 'something else'\n"


def test_a_run_folder_in_use_by_another_training_is_refused(small_cifar10, tmp_path, capsys):
    from zoo.files import exclusive_lock

    run_dir = tmp_path / "run"
    with exclusive_lock(tmp_path / ".run.lock"):  # as a training in another process holds it
        assert main(quick_args(small_cifar10, run_dir)) == 2
    assert f"Run folder {run_dir} is in use by another training ({tmp_path / '.run.lock'} is held by process {os.getpid()})" in capsys.readouterr().err
    assert not run_dir.exists()


def test_a_run_that_failed_before_its_first_epoch_leaves_nothing_and_does_not_block_the_corrected_command(small_cifar10, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = quick_args(small_cifar10, run_dir, epochs=1, limit=500)
    typo = [*args, "--data-dir", str(tmp_path / "typo"), "--set", "optimizer.learning_rate=0.5"]  # the last --data-dir wins
    assert main(typo) == 2
    assert f"No such data folder: {tmp_path / 'typo'}" in capsys.readouterr().err
    assert not run_dir.exists(), "nothing is made for a run that cannot start"
    assert not list(tmp_path.glob(".*.lock")), "the lock goes with the command that took it"
    run_dir.mkdir()  # as a kill -9 before the first backup leaves it: the recipe of that attempt only
    (run_dir / "recipe.toml").write_text(recipes.to_toml(recipes.load("lenet5_cifar10", ["optimizer.learning_rate=0.5"])))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "holds no epoch of its other recipe: starting this one there" in out
    header = f"lenet5 (62,094 params, float32) on {small_cifar10.resolve()}: 500 train / 500 validation / 500 test images; 1 epoch of 4 steps -> {run_dir}"
    assert header in out.splitlines()
    assert re.search(r"^test accuracy \d\.\d{4} \(loss ", out, re.M)  # without TTA
    assert recipes.load(run_dir / "recipe.toml")["data"]["data_dir"] == str(small_cifar10)
    assert json.loads((run_dir / "results.json").read_text())["resumed_from_epoch"] == []
    assert not list(tmp_path.glob(".*.lock"))


def test_a_lock_is_removed_by_its_holder_and_never_held_twice(tmp_path):
    from zoo.files import LockedError, exclusive_lock

    lock = tmp_path / ".run.lock"
    with exclusive_lock(lock):
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(LockedError):
            with exclusive_lock(lock):
                pass
    assert not lock.exists()
    # A process that opened the file just before its holder removed it takes a new one, not the removed one.
    stale = open(lock, "a+")
    lock.unlink()
    with exclusive_lock(lock):
        import fcntl

        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the old inode is free: nobody holds it
        with pytest.raises(LockedError):
            with exclusive_lock(lock):
                pass
    stale.close()


def test_a_run_resumes_after_its_data_moved_or_its_notes_changed_but_not_with_other_settings(tmp_path):
    from zoo.run_folder import RunFolderError, prepare_run_folder

    run_dir = tmp_path / "run"
    started = recipes.load("lenet5_cifar10", ["data.data_dir='/old/place'"])
    prepare_run_folder(run_dir, started)
    (run_dir / "backup").mkdir()
    (run_dir / "backup" / "training_metadata.json").write_text('{"epoch": 2}')
    with pytest.raises(RunFolderError, match="started with a different recipe"):
        prepare_run_folder(run_dir, recipes.load("lenet5_cifar10", ["data.data_dir='/new/place'", "training.seed=1"]))
    moved = recipes.load("lenet5_cifar10", ["data.data_dir='/new/place'", "expected.notes='measured again'", "description='edited'"])
    assert prepare_run_folder(run_dir, moved) == 2
    assert recipes.load(run_dir / "recipe.toml")["data"]["data_dir"] == "/new/place"


def test_a_damaged_backup_or_state_file_is_named_and_nothing_is_lost(tmp_path, capsys):
    """The run folder's bookkeeping cut short (a disk that failed, a hand edit): a damaged backup is named before
    any work and kept; a damaged state.json costs only what it counted, and the card says which epochs it cannot place."""
    from zoo import release, training
    from zoo.callbacks import RunState
    from zoo.run_folder import RunFolderError, prepare_run_folder

    run_dir = tmp_path / "run"
    recipe = recipes.load("lenet5_cifar10")
    prepare_run_folder(run_dir, recipe)
    (run_dir / "backup").mkdir()
    (run_dir / "backup" / "training_metadata.json").write_text('{"epo')
    with pytest.raises(RunFolderError, match=r"The backup in .*backup is damaged \(training_metadata.json holds no epoch\): the run cannot resume"):
        prepare_run_folder(run_dir, recipe)
    assert (run_dir / "backup" / "training_metadata.json").read_text() == '{"epo'

    (run_dir / "state.json").write_text("")
    setting = {"precision": "float32", "backend": "tensorflow", "cpu": "AMD EPYC, 2 cores", "cpu_flags": ["avx2"], "accelerators": []}
    state = RunState(run_dir / "state.json", initial_epoch=3, epochs=5, setting=setting)
    err = capsys.readouterr().err
    assert f"warning: {run_dir / 'state.json'} is damaged (not JSON): the training time, resumes and setting before epoch 4 are not known" in err
    assert "note: epochs 1-3 trained where and how not recorded (state.json older than this record, or damaged); the rest train in float32" in err
    assert state.state == {
        "train_seconds": 0.0, "resumed_from_epoch": [3], "seconds_at_epoch": {"3": 0.0},
        "segments": [{"from_epoch": 0, "unrecorded": True}, {"from_epoch": 3, **setting}],
    }
    state.on_epoch_begin(3)
    state.on_epoch_end(3, {"loss": 1.0})
    assert json.loads((run_dir / "state.json").read_text())["epoch"] == 4
    results = {"segments": training.segments(state.state, 5), "hardware": {}, "versions": {}}
    assert release.hardware_summary(results) == (  # the card marks the epochs it cannot place
        "epochs 1-3 where and how not recorded (state.json older than this record, or damaged); "
        "epochs 4-5 in float32 under tensorflow on AMD EPYC, 2 cores (avx2)"
    )


HISTORY_HEADER = "epoch,accuracy,loss,val_accuracy,val_loss"


def resumable_run_folder(tmp_path, backup_epoch, history):
    """`(run_dir, recipe)`: a lenet5_cifar10 run folder whose backup is at `backup_epoch`, its history.csv `history`."""
    from zoo.run_folder import prepare_run_folder

    run_dir = tmp_path / "run"
    recipe = recipes.load("lenet5_cifar10")
    prepare_run_folder(run_dir, recipe)
    (run_dir / "backup").mkdir()
    (run_dir / "backup" / "training_metadata.json").write_text(f'{{"epoch": {backup_epoch}}}')
    (run_dir / "history.csv").write_text(history)
    return run_dir, recipe


@pytest.mark.parametrize("name", ["recipe.toml", "history.csv"])
def test_a_disk_that_fills_while_a_run_resumes_leaves_its_recipe_and_history_whole(name, tmp_path, monkeypatch, disk_fills_writing):
    """A resume rewrites recipe.toml and cuts history.csv back to the backup's epoch. Cut short by a full disk, the
    first would no longer match the recipe (the run could not resume) and the second would make the next epoch look
    best, overwriting the best checkpoint: both are written whole or not at all."""
    from zoo.files import DiskFull
    from zoo.run_folder import prepare_run_folder

    rows = [f"{e},0.{e},1.0,0.9{e},0.5" for e in range(4)]
    run_dir, recipe = resumable_run_folder(tmp_path, 2, "\n".join([HISTORY_HEADER, *rows]) + "\n")
    before = {f: (run_dir / f).read_text() for f in ("recipe.toml", "history.csv")}

    with monkeypatch.context() as patch:
        disk_fills_writing(patch, name)
        with pytest.raises(DiskFull, match=f"could not write {run_dir / name}; what was there before is kept"):
            prepare_run_folder(run_dir, recipe)
    assert {f: (run_dir / f).read_text() for f in before} == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["backup", "history.csv", "recipe.toml"]  # no temporary left
    assert prepare_run_folder(run_dir, recipe) == 2  # with space again, it resumes
    assert (run_dir / "history.csv").read_text().splitlines()[1:] == rows[:2]


@pytest.mark.parametrize("cut", ["1", "1,0.9", "12,0.9,0.1,0.8"])
def test_a_history_row_cut_short_by_a_full_disk_is_dropped_when_the_run_resumes(cut, tmp_path):
    """CSVLogger appends a row per epoch; the disk filling in the middle of epoch 12's leaves part of it, with no
    newline ("1" would read as epoch 1). The resume keeps the whole rows before its epoch, and their best score."""
    from zoo.run_folder import best_validation, prepare_run_folder

    rows = [f"{e},0.{e:02d},1.0,0.{50 + e},0.9" for e in range(12)]
    run_dir, recipe = resumable_run_folder(tmp_path, 12, "\n".join([HISTORY_HEADER, *rows, cut]))
    assert prepare_run_folder(run_dir, recipe) == 12
    assert (run_dir / "history.csv").read_text() == "\n".join([HISTORY_HEADER, *rows]) + "\n"
    assert best_validation(run_dir / "history.csv") == (0.61, -0.9)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.dropout=1.5", "Received: model.dropout=1.5"),  # the recipe's ranges
        ("model.name=vgg99", "Unknown model name"),  # the builder, called before any data is loaded
    ],
)
def test_bad_recipe_fails_before_any_data_is_loaded(override, message, tmp_path, capsys):
    assert main(["train", "lenet5_cifar10", "--data-dir", "/nonexistent", "--set", override, "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.memory_heavy
@pytest.mark.slow
def test_kill_9_then_resume_continues_and_matches_an_uninterrupted_run(small_cifar10, tmp_path):
    epochs = 4
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    uninterrupted = zoo_process(quick_args(small_cifar10, reference, epochs=epochs))  # beside it: the suite's time
    proc = zoo_process(quick_args(small_cifar10, resumed, epochs=epochs))
    kill_after_backup([proc], resumed, 2)
    assert not (resumed / "results.json").exists()
    out = run_zoo(quick_args(small_cifar10, resumed, epochs=epochs))
    finished(uninterrupted)
    metadata = resumed / "backup" / "training_metadata.json"
    done = json.loads(metadata.read_text())["epoch"] if metadata.exists() else None
    results = json.loads((resumed / "results.json").read_text())
    start = results["resumed_from_epoch"]
    assert len(start) == 1 and 2 <= start[0] < epochs and f"resuming from epoch {start[0]}" in out
    assert epochs_logged(resumed) == list(range(epochs))
    expected = json.loads((reference / "results.json").read_text())
    assert results["epochs"] == expected["epochs"] == epochs
    assert abs(results["test_accuracy"] - expected["test_accuracy"]) <= 0.03
    assert done is None


@pytest.mark.slow
def test_sigterm_stops_training_cleanly_saying_where_it_resumes(small_cifar10, tmp_path):
    run_dir = tmp_path / "run"
    args = quick_args(small_cifar10, run_dir, epochs=30, limit=500)
    proc = zoo_process(args)
    metadata = run_dir / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    while not (metadata.exists() and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= 1):
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be stopped"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)  # stderr is merged into it
    assert proc.returncode == 143, out[-2000:]
    done = json.loads(metadata.read_text())["epoch"]
    assert f"zoo train: terminated (SIGTERM): run the same command again to resume from its backup after epoch {done} (in {run_dir})" in out
    assert "Traceback" not in out and not (run_dir / "results.json").exists() and (run_dir / "model.keras").exists()
    assert not list(tmp_path.glob(".*.lock"))
    again = zoo_process(args)  # the same command: it resumes there (stopped again once it says so)
    for line in again.stdout:
        if line.startswith("resuming from epoch"):
            break
    again.send_signal(signal.SIGKILL)
    again.communicate()
    assert line.strip() == f"resuming from epoch {done}"


def test_a_sigterm_lost_on_its_way_still_stops_the_run_at_the_end_of_the_batch(small_cifar10, tmp_path, monkeypatch, capsys):
    """Under JAX a signal mostly arrives while NumPy copies Keras' logs off the device, and that C++ path drops
    the exception (4 SIGTERMs of 5 were lost: the run trained on until killed): the stop is raised again at
    the batch's end."""
    from zoo import callbacks, interrupts

    epochs, lost = [], []

    def a_batch_that_swallows_the_signal(self, batch, logs=None):
        epochs.extend([batch] if batch == 0 else [])
        if len(epochs) == 2 and batch == 1 and not lost:  # the second batch of the second epoch
            try:
                signal.raise_signal(signal.SIGTERM)
            except interrupts.Terminated:
                lost.append(batch)

    monkeypatch.setattr(callbacks.StopOnNaN, "on_train_batch_end", a_batch_that_swallows_the_signal)
    run_dir, before = tmp_path / "run", signal.getsignal(signal.SIGTERM)
    assert main([*quick_args(small_cifar10, run_dir, epochs=3, limit=1000), "--set", "data.batch_size=128"]) == 143
    assert lost == [1]
    assert capsys.readouterr().err.endswith(f"zoo train: terminated (SIGTERM): run the same command again to resume from its backup after epoch 1 (in {run_dir})\n")
    assert epochs_logged(run_dir) == [0] and not (run_dir / "results.json").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # put back, for what runs next
    interrupts.raise_pending()  # nothing left pending


def test_two_seeded_runs_give_identical_weights_with_one_or_two_data_threads(small_cifar10, tmp_path):
    for name, threads in (("a", "1"), ("b", "2")):
        assert main([*quick_args(small_cifar10, tmp_path / name, epochs=2, limit=1000), "--data-threads", threads]) == 0
    for a, b in zip(weights_of(tmp_path / "a" / "model.keras"), weights_of(tmp_path / "b" / "model.keras")):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(small_cifar10, tmp_path, monkeypatch, capsys):
    import zoo.training

    def exploding(recipe, steps_per_epoch, *backbone):
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([steps_per_epoch + 2], [0.01, 3e38])
        return keras.optimizers.SGD(learning_rate=schedule)

    monkeypatch.setattr(zoo.training, "make_optimizer", exploding)
    assert main([*quick_args(small_cifar10, tmp_path / "nan", epochs=4, limit=1000)]) == 0
    assert "the loss became NaN" in capsys.readouterr().out
    results = json.loads((tmp_path / "nan" / "results.json").read_text())
    assert results["stopped"] == "nan_loss" and results["epochs"] < 4
    assert all(np.isfinite(w).all() for w in weights_of(tmp_path / "nan" / "model.keras"))
    assert results["test_accuracy"] > 0.1


@pytest.mark.parametrize("learning_rate", ["1e6", "1e30"])
def test_a_run_that_diverges_before_its_first_checkpoint_ends_in_one_line(learning_rate, small_cifar10, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main([*quick_args(small_cifar10, run_dir, epochs=2, limit=500), "--set", f"optimizer.learning_rate={learning_rate}"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines() == [
        f"zoo train: error: the loss became NaN in the first epoch (its validation figures come from NaN weights), so there is no checkpoint to keep "
        f"(learning rate {float(learning_rate):g}): try a lower optimizer.learning_rate, or check the data."
    ]
    assert "keeping the last good checkpoint" not in captured.out
    assert not run_dir.exists(), "nothing to resume: the corrected command starts afresh"


def test_auto_precision_follows_the_cpu_flags_and_pinned_precision_does_not(tmp_path):
    """The machines differ (AVX2-only, AVX512-BF16, AMX): each kind, mocked here, gets its own policy."""
    from zoo.training import resolve_precision

    cpuinfo = tmp_path / "cpuinfo"
    for flags, expected in (
        ("fpu sse2 avx avx2 fma", "float32"),
        ("fpu avx2 avx512f avx512_bf16", "mixed_bfloat16"),
        ("fpu avx2 amx_bf16 amx_tile", "mixed_bfloat16"),
    ):
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        assert resolve_precision("auto", cpuinfo) == expected, flags
        assert resolve_precision("float32", cpuinfo) == "float32"
        assert resolve_precision("mixed_float16", cpuinfo) == "mixed_float16"
    assert resolve_precision("auto", tmp_path / "absent") == "float32"  # no /proc (macOS): the safe choice


@pytest.mark.parametrize("flags, policy", [({"avx2"}, "float32"), ({"avx2", "avx512_bf16"}, "mixed_bfloat16")])
def test_a_recipe_with_auto_precision_trains_in_the_policy_of_the_cpu_kind(flags, policy, small_cifar10, tmp_path, monkeypatch, capsys):
    import zoo.training

    monkeypatch.setattr(zoo.training, "cpu_flags", lambda cpuinfo=None: flags)
    run_dir = tmp_path / "run"
    args = [*quick_args(small_cifar10, run_dir, epochs=1, limit=200), "--set", "training.precision=auto", "--set", "training.tta_flip=true"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"lenet5 (62,094 params, {policy}) on " in out
    assert re.search(r"^test accuracy \d\.\d{4} with flip TTA \(loss ", out, re.M)  # the result line says what it measured
    assert json.loads((run_dir / "results.json").read_text())["precision"] == policy


def test_best_checkpoint_every_n_epochs_writes_the_best_weights_with_the_backups(tmp_path):
    from zoo.callbacks import BestCheckpoint

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = tmp_path / "model.keras"
    checkpoint = BestCheckpoint(path, every=3)
    checkpoint.set_model(model)

    def epoch_end(epoch, val_accuracy):  # the weights of epoch e are all e
        model.set_weights([np.full(w.shape, epoch, "float32") for w in model.get_weights()])
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "val_accuracy": val_accuracy})

    def written():
        return {float(w.flat[0]) for w in weights_of(path)} if path.exists() else None

    for epoch, accuracy in enumerate([0.1, 0.3]):
        epoch_end(epoch, accuracy)
    assert written() is None  # not before the third epoch
    epoch_end(2, 0.2)
    assert written() == {1.0} and {float(w.flat[0]) for w in model.get_weights()} == {2.0}
    epoch_end(3, 0.5)
    epoch_end(4, 0.4)
    epoch_end(5, 0.45)
    assert written() == {3.0}
    epoch_end(6, 0.6)
    assert written() == {3.0}
    checkpoint.on_train_end()  # a run that ends (or stops) between writes keeps its best epoch
    assert written() == {6.0}


def test_with_no_validation_images_a_run_trains_on_every_image_and_keeps_its_last_epoch(small_cifar10, tmp_path, monkeypatch):
    """Release mode (data.validation_size = 0, as the peers train on all 50,000): the last epoch is the
    checkpoint, results and the card say so."""
    from zoo import recipe as recipes
    from zoo import training
    from zoo import run_folder
    from zoo.release import card_readme

    recipe = recipes.load("lenet5_cifar10", [
        f"data.data_dir={recipes.toml_value(str(small_cifar10))}", "data.validation_size=0", "data.limit=1000",
        "training.epochs=2", "training.tta_flip=false", "training.precision='float32'",
    ])
    seen, end_of_epoch = {}, training.RunState.on_epoch_end

    def record(self, epoch, logs=None):
        seen[epoch] = self.model.get_weights()
        end_of_epoch(self, epoch, logs)

    monkeypatch.setattr(training.RunState, "on_epoch_end", record)
    results = training.train(recipe, tmp_path / "run", verbose=0)
    assert results["data"]["train_images"] == 1000 and results["data"]["val_images"] == 0
    assert results["val_accuracy"] is None and results["checkpoint"] == "last epoch (no validation images)"
    for a, b in zip(weights_of(tmp_path / "run" / "model.keras"), seen[1]):
        np.testing.assert_array_equal(a, b)
    assert [row["val_accuracy"] for row in csv.DictReader(open(tmp_path / "run" / "history.csv"))] == ["NA", "NA"]  # Keras' CSVLogger
    assert run_folder.best_validation(tmp_path / "run" / "history.csv") == (-math.inf, -math.inf)
    card = json.loads(pathlib.Path(REPO, "saved_models", "lenet5_mnist", "model_card.json").read_text())
    card["training"]["val_accuracy"], card["data"]["val_images"] = None, 0
    assert "trained on all 55,000 training images, no validation split: the last epoch is released." in card_readme(card)


def small_lenet_recipe(data_dir, epochs, *overrides):
    from zoo import recipe as recipes

    return recipes.load("lenet5_cifar10", [
        f"data.data_dir={recipes.toml_value(str(data_dir))}", "data.validation_size=500", "data.limit=1000",
        f"training.epochs={epochs}", "training.tta_flip=false", *overrides,
    ])


def record_epochs_and_stop_once(monkeypatch, stop_at):
    """`{epoch: ((val_accuracy, -val_loss), weights)}`, filled as training goes; a Ctrl-C, once, at the end of
    epoch `stop_at` (0-based), before its backup is written."""
    from zoo import training

    seen, end_of_epoch = {}, training.RunState.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        seen[epoch] = ((logs["val_accuracy"], -logs["val_loss"]), self.model.get_weights())
        end_of_epoch(self, epoch, logs)
        if epoch == stop_at and not seen.get("stopped"):
            seen["stopped"] = True
            raise KeyboardInterrupt

    monkeypatch.setattr(training.RunState, "on_epoch_end", on_epoch_end)
    return seen


def test_a_run_resumed_on_another_kind_of_cpu_records_where_each_stretch_of_epochs_trained(small_cifar10, tmp_path, monkeypatch, capsys):
    """`precision = "auto"` follows the CPU: a run begun in float32 on an AVX2-only CPU and resumed on one with
    bfloat16 instructions trains the rest in mixed bfloat16. It says so, and results.json and the card name both."""
    from zoo import release, training

    recipe, run_dir = small_lenet_recipe(small_cifar10, 3, "training.precision='auto'"), tmp_path / "run"
    monkeypatch.setattr(training, "cpu_flags", lambda cpuinfo=None: {"avx2", "fma"})
    record_epochs_and_stop_once(monkeypatch, 1)
    try:
        with pytest.raises(KeyboardInterrupt):
            training.train(recipe, run_dir, verbose=0)
        monkeypatch.setattr(training, "cpu_flags", lambda cpuinfo=None: {"avx2", "avx512f", "avx512_bf16"})
        results = training.train(recipe, run_dir, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    cpu = training.training_setting()["cpu"]
    assert [(s["from_epoch"], s["to_epoch"], s["precision"], s["cpu_flags"]) for s in results["segments"]] == [
        (0, 1, "float32", ["avx2"]), (1, 3, "mixed_bfloat16", ["avx2", "avx512f", "avx512_bf16"]),
    ]
    assert results["precision"] == "mixed_bfloat16" and results["resumed_from_epoch"] == [1]
    assert f"note: epoch 1 trained in float32 under tensorflow on {cpu} (avx2); the rest train in mixed_bfloat16 under tensorflow on {cpu} (avx2 avx512f avx512_bf16) here" in capsys.readouterr().err
    assert release.hardware_summary(results) == (
        f"epoch 1 in float32 under tensorflow on {cpu} (avx2); epochs 2-3 in mixed_bfloat16 under tensorflow on {cpu} (avx2 avx512f avx512_bf16)"
    )
    unbroken = {**results, "segments": results["segments"][1:]}  # one stretch: the card's summary as before
    assert release.hardware_summary(unbroken).endswith(f"{results['versions']['backend_version']}, mixed_bfloat16)")


def test_backup_every_2_resumes_from_the_last_backup_with_its_checkpoint(small_cifar10, tmp_path, monkeypatch):
    from zoo import training

    recipe, run_dir = small_lenet_recipe(small_cifar10, 5), tmp_path / "run"
    seen = record_epochs_and_stop_once(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        training.train(recipe, run_dir, backup_every=2, verbose=0)
    assert json.loads((run_dir / "backup" / "training_metadata.json").read_text())["epoch"] == 2
    best = max((0, 1), key=lambda e: seen[e][0])  # epoch 2 is not written: it is not backed up
    for a, b in zip(weights_of(run_dir / "model.keras"), seen[best][1]):
        np.testing.assert_array_equal(a, b)
    monkeypatch.undo()
    results = training.train(recipe, run_dir, backup_every=2, verbose=0)
    assert results["resumed_from_epoch"] == [2] and epochs_logged(run_dir) == list(range(5))
    assert not (run_dir / "backup").exists()
    at_epoch = json.loads((run_dir / "state.json").read_text())["seconds_at_epoch"]  # epoch 3 trained twice, counted once
    assert list(at_epoch) == ["1", "2", "3", "4", "5"] and results["train_seconds"] == round(at_epoch["5"], 1)


def test_an_epoch_a_resume_trains_again_counts_once_in_the_training_time_and_the_eta_follows_this_machine(tmp_path, capsys):
    """Epochs past the backup (`--backup-every 2`, or a kill mid-write) train again on resume: their first
    seconds inflated train_seconds and deflated images/s, and the ETA averaged in the other machine's pace."""
    from zoo.callbacks import RunState

    path = tmp_path / "state.json"
    path.write_text(json.dumps({"train_seconds": 300.0, "resumed_from_epoch": [], "epoch": 3, "seconds_at_epoch": {"1": 100.0, "2": 200.0, "3": 300.0}}))
    state = RunState(path, initial_epoch=2, epochs=10)
    assert state.state["train_seconds"] == 200.0 and state.state["seconds_at_epoch"] == {"1": 100.0, "2": 200.0}
    state.on_epoch_begin(2)
    state.on_epoch_end(2, {"loss": 1.0})
    saved = json.loads(path.read_text())
    assert list(saved["seconds_at_epoch"]) == ["1", "2", "3"] and 200.0 <= saved["train_seconds"] < 201.0
    assert "epoch 3/10: 0s, loss 1.0000, ETA 0m0" in capsys.readouterr().out  # 7 epochs at this resume's pace, not 100 s each

    path.write_text(json.dumps({"train_seconds": 300.0, "resumed_from_epoch": [], "epoch": 3}))  # before zoo kept them
    state = RunState(path, initial_epoch=2, epochs=10)
    assert state.state["train_seconds"] == 300.0 and state.state["seconds_at_epoch"] == {"2": 300.0}
    state.on_epoch_begin(2)
    state.on_epoch_end(2, {"loss": 1.0})
    assert RunState(path, initial_epoch=2, epochs=10).state["train_seconds"] == 300.0  # resumed twice: epoch 3 counts once
    assert RunState(path, initial_epoch=0, epochs=10).state["train_seconds"] == 0.0  # nothing kept: the run starts over


def test_a_resume_whose_best_checkpoint_is_gone_chooses_it_again_from_the_epochs_to_come(small_cifar10, tmp_path, monkeypatch, capsys):
    """model.keras lost or damaged mid-run (a failing disk, a hand clean-up): the resume compared its epochs with the
    history's best, which no file held any more; if none beat it, the run ended on a NaN story or Keras' traceback."""
    from zoo import training

    recipe, run_dir = small_lenet_recipe(small_cifar10, 4), tmp_path / "run"
    seen = record_epochs_and_stop_once(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        training.train(recipe, run_dir, verbose=0)
    (run_dir / "model.keras").write_bytes((run_dir / "model.keras").read_bytes()[:1000])  # cut short
    history = (run_dir / "history.csv").read_text().splitlines()
    columns = history[0].split(",")
    first = history[1].split(",")
    first[columns.index("val_accuracy")] = "0.99"  # the lost checkpoint's epoch: one no later epoch beats
    (run_dir / "history.csv").write_text("\n".join([history[0], ",".join(first), *history[2:]]) + "\n")
    damaged = (run_dir / "model.keras").read_bytes()
    results = training.train(recipe, run_dir, verbose=0)
    assert results["resumed_from_epoch"] == [2]
    assert f"warning: {run_dir / 'model.keras'}, the run's best checkpoint, is damaged (" in capsys.readouterr().err
    assert (run_dir / "model.keras.damaged").read_bytes() == damaged
    best = max((2, 3), key=lambda e: seen[e][0])
    for a, b in zip(weights_of(run_dir / "model.keras"), seen[best][1]):
        np.testing.assert_array_equal(a, b)
    assert results["val_accuracy"] == pytest.approx(seen[best][0][0])


def test_a_lost_best_checkpoint_with_no_epoch_left_is_named_before_any_work(tmp_path):
    from zoo.run_folder import RunFolderError, prepare_run_folder

    rows = [f"{e},0.5,1.0,0.6,0.9" for e in range(80)]
    run_dir, recipe = resumable_run_folder(tmp_path, 80, "\n".join([HISTORY_HEADER, *rows]) + "\n")
    (run_dir / "model.keras").write_text("not a zip")
    with pytest.raises(RunFolderError, match=r"model.keras, the run's best checkpoint, is damaged \(.*\), and its backup is at the last epoch \(80\): no epoch is left"):
        prepare_run_folder(run_dir, recipe)
    assert (run_dir / "model.keras").read_text() == "not a zip"


@pytest.mark.parametrize("option", ["data_threads", "backup_every"])
def test_train_rejects_counts_below_one_before_any_work(option, tmp_path):
    from zoo import recipe as recipes
    from zoo.training import train

    with pytest.raises(ValueError, match=f"{option} must be a whole number >= 1. Received: {option}=0"):
        train(recipes.load("lenet5_cifar10"), tmp_path / "run", **{option: 0})
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus(small_cifar10, tmp_path):
    code = f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from zoo import distribute
from zoo.cli import main

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
replicas = distribute.setup("mirrored").replicas
assert replicas == 2, replicas
raise SystemExit(main({[*quick_args(small_cifar10, tmp_path / "mirrored", epochs=1, limit=1000), "--strategy", "mirrored",
                         "--set", "training.whitening_init=true", "--set", "training.dirac_init=true"]!r}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=400,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # both starts assign to the strategy's mirrored variables, inside its scope
    assert "6 filters of block1_conv1 whitened; 1 convolution started as identities" in result.stdout, result.stdout[-3000:]
    assert json.loads((tmp_path / "mirrored" / "results.json").read_text())["test_accuracy"] > 0.1


def test_tf_config_names_this_worker_and_the_chief():
    worker = {"cluster": {"worker": ["a:1", "b:1", "c:1"]}, "task": {"type": "worker", "index": 2}}
    assert distribute.tf_config({"TF_CONFIG": json.dumps(worker)}) == (2, False, 3)
    worker["task"]["index"] = 0
    assert distribute.tf_config({"TF_CONFIG": json.dumps(worker)}) == (0, True, 3)
    with_chief = {"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}
    assert distribute.tf_config({"TF_CONFIG": json.dumps(with_chief)}) == (1, False, 2)
    with pytest.raises(ValueError, match="Received: TF_CONFIG unset"):
        distribute.tf_config({})
    with pytest.raises(ValueError, match="not a cluster and task description"):
        distribute.tf_config({"TF_CONFIG": "{"})
    worker["task"]["index"] = 3
    with pytest.raises(ValueError, match="task is not in its cluster"):
        distribute.tf_config({"TF_CONFIG": json.dumps(worker)})


def test_multi_worker_without_tf_config_fails_before_any_work(small_cifar10, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main([*quick_args(small_cifar10, tmp_path / "mw", epochs=1), "--strategy", "multi_worker"]) == 2
    assert "needs TF_CONFIG" in capsys.readouterr().err
    assert not (tmp_path / "mw").exists()


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(args, tmp_dir):
    """Two `zoo train --strategy multi_worker` processes on loopback ports; the chief first."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    tmp_dir.mkdir(exist_ok=True)
    return [
        zoo_process([*args, "--strategy", "multi_worker"], {
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            "TMPDIR": str(tmp_dir),  # where the non-chief keeps its scratch folder
        })
        for index in (0, 1)
    ]


def final_digests(workers, timeout=300):
    outputs = [w.communicate(timeout=timeout)[0] for w in workers]
    for worker, out in zip(workers, outputs):
        assert worker.returncode == 0, out[-4000:]
    return [re.findall(r"final weights sha256 ([0-9a-f]{64}), identical on all 2 replicas", out) for out in outputs], outputs


MULTI_WORKER_EPOCHS = 3


def multi_worker_args(data_dir, out):
    """A short run with the starts the GPU recipes use, which each worker computes on its own (the same)."""
    starts = ["--set", "training.whitening_init=true", "--set", "training.dirac_init=true"]
    return [*quick_args(data_dir, out, MULTI_WORKER_EPOCHS, limit=0), *starts]


@pytest.fixture(scope="module")
def multi_worker_run(small_cifar10, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi_worker")
    digests, outputs = final_digests(start_workers(multi_worker_args(small_cifar10, tmp / "run"), tmp / "scratch"))
    return tmp, digests, outputs


@pytest.mark.slow
def test_two_workers_on_loopback_train_a_recipe_and_end_with_identical_weights(multi_worker_run):
    tmp, digests, outputs = multi_worker_run
    assert len(digests[0]) == 1 and digests[0] == digests[1], outputs
    results = json.loads((tmp / "run" / "results.json").read_text())
    assert results["epochs"] == MULTI_WORKER_EPOCHS and results["test_accuracy"] > 0.1
    assert epochs_logged(tmp / "run") == list(range(MULTI_WORKER_EPOCHS))
    assert "test accuracy" in outputs[0] and "test accuracy" not in outputs[1]  # only the chief writes
    assert "6 filters of block1_conv1 whitened; 1 convolution started as identities" in outputs[0]
    assert list((tmp / "scratch").iterdir()) == []  # the other worker's scratch folder is gone


@pytest.mark.slow
def test_workers_stop_with_the_chief_when_its_run_folder_is_finished(multi_worker_run, small_cifar10):
    tmp = multi_worker_run[0]
    workers = start_workers(multi_worker_args(small_cifar10, tmp / "run"), tmp / "scratch")
    chief, other = (w.communicate(timeout=300)[0] for w in workers)
    assert [w.returncode for w in workers] == [2, 2]
    assert "holds a finished run" in chief
    assert "The chief worker cannot use its run folder" in other


@pytest.mark.slow
def test_killed_workers_resume_from_the_chiefs_backup_to_the_same_weights(multi_worker_run, small_cifar10, tmp_path):
    args = multi_worker_args(small_cifar10, tmp_path / "run")
    workers = start_workers(args, tmp_path / "scratch")
    kill_after_backup(workers, tmp_path / "run", 1)
    assert not (tmp_path / "run" / "results.json").exists()
    digests, outputs = final_digests(start_workers(args, tmp_path / "scratch"))
    start = json.loads((tmp_path / "run" / "results.json").read_text())["resumed_from_epoch"]
    assert len(start) == 1 and all(f"resuming from epoch {start[0]}" in out for out in outputs)
    assert digests[0] == digests[1] == multi_worker_run[1][0]  # as if never interrupted


@pytest.mark.memory_heavy
@pytest.mark.slow
def test_zoo_train_under_jax_is_quiet_beside_tensorflow_and_trains_data_parallel_without_it(small_cifar10, tmp_path):
    """Where TensorFlow is installed, Keras imports it under JAX too (to seed it): that must stay quiet.
    Where it is not (the GPU machines), a data-parallel run over two devices trains. Both at once."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    beside = subprocess.Popen(
        [sys.executable, "-m", "zoo.cli", *quick_args(small_cifar10, tmp_path / "quiet", epochs=1, limit=300)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )
    code = f"""
import sys

class NoTensorFlow:  # as on the GPU machines, which have JAX but no TensorFlow
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {{name!r}}")

sys.meta_path.insert(0, NoTensorFlow())
from zoo.cli import main

code = main({[*quick_args(small_cifar10, tmp_path / "jax", epochs=2), "--set", "data.batch_size=64", "--strategy", "mirrored"]!r})
assert "tensorflow" not in sys.modules
raise SystemExit(code)
"""
    without = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    for proc in (beside, without):
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        if proc is beside:
            assert "test accuracy" in out and err == ""
    results = json.loads((tmp_path / "jax" / "results.json").read_text())
    assert results["versions"]["backend"] == "jax"
    assert results["test_accuracy"] > 0.2


def fill_the_disk_at_the_second_call(monkeypatch, method, partial):
    """`keras.Model.<method>` writes `partial` and raises ENOSPC on its second call, as a disk that fills mid-write."""
    import errno

    real, calls = getattr(keras.Model, method), []

    def until_the_disk_fills(model, *a, **k):
        calls.append(a[0] if a else k["filepath"])
        if len(calls) == 2:
            pathlib.Path(calls[-1]).write_bytes(partial)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(model, *a, **k)

    monkeypatch.setattr(keras.Model, method, until_the_disk_fills)


def test_a_full_disk_while_writing_the_best_checkpoint_keeps_the_last_one_and_the_same_command_resumes(small_cifar10, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    args = quick_args(small_cifar10, run_dir, epochs=3, limit=500)
    fill_the_disk_at_the_second_call(monkeypatch, "save", b"PK\x03\x04 half a zip")  # the second checkpoint
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"zoo train: error: no space left on the device: could not write {run_dir / 'model.keras'}; what was there before is kept." in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".tmp")) == []  # no half-written file left
    keras.saving.load_model(run_dir / "model.keras")  # the first checkpoint, whole
    monkeypatch.undo()
    assert main(args) == 0  # space is free again: the same command resumes and finishes
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 3


def test_a_full_disk_while_writing_results_keeps_the_trained_run_and_the_same_command_finishes_it(small_cifar10, tmp_path, monkeypatch, capsys):
    import errno

    run_dir = tmp_path / "run"
    args = quick_args(small_cifar10, run_dir, epochs=2, limit=500)
    real_write_text = pathlib.Path.write_text

    def full_for_results(path, *a, **k):
        if path.name.endswith("results.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(path, *a, **k)

    monkeypatch.setattr(pathlib.Path, "write_text", full_for_results)
    assert main(args) == 1
    assert f"zoo train: error: no space left on the device: could not write {run_dir / 'results.json'}" in capsys.readouterr().err
    assert not (run_dir / "results.json").exists() and (run_dir / "backup").is_dir() and (run_dir / "model.keras").exists()
    trained = weights_of(run_dir / "model.keras")
    monkeypatch.undo()
    assert main(args) == 0  # nothing is trained again: the run is finished from its backup and checkpoint
    out = capsys.readouterr().out
    assert "resuming from epoch 2" in out and not re.search(r"^epoch \d+/2", out, re.M)
    assert epochs_logged(run_dir) == [0, 1] and not (run_dir / "backup").exists()
    for a, b in zip(weights_of(run_dir / "model.keras"), trained):
        np.testing.assert_array_equal(a, b)
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 2


def test_a_full_disk_while_writing_the_backup_says_so_and_the_same_command_resumes(small_cifar10, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    args = quick_args(small_cifar10, run_dir, epochs=3, limit=500)
    fill_the_disk_at_the_second_call(monkeypatch, "save_weights", b"\x89HDF half a file")  # the second backup
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"zoo train: error: no space left on the device: could not write {run_dir / 'backup'}; what was there before is kept." in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    assert main(args) == 0  # Keras' double checkpoint falls back to the backup before the damaged one
    assert "resuming from epoch" in capsys.readouterr().out
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 3 and epochs_logged(run_dir) == [0, 1, 2]


@pytest.mark.slow
def test_reading_the_checkpoint_while_a_run_writes_it_always_gets_a_whole_model(small_cifar10, tmp_path):
    from zoo.loading import load_keras_file

    run_dir = tmp_path / "run"
    proc = zoo_process(quick_args(small_cifar10, run_dir, epochs=6, limit=500))
    loads, deadline = 0, time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if (run_dir / "model.keras").exists():
            load_keras_file(run_dir / "model.keras")  # as `zoo eval RUN` does while it trains: never half a file
            loads += 1
    assert proc.wait() == 0 and loads >= 3


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once(small_cifar10, tmp_path):
    run_dir = tmp_path / "run"
    proc = zoo_process(quick_args(small_cifar10, run_dir, epochs=30, limit=500))
    metadata = run_dir / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    while not metadata.exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    started = time.time()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode in (130, -signal.SIGINT) and time.time() - started < 30, out[-2000:]
    assert not (run_dir / "results.json").exists() and metadata.exists()
