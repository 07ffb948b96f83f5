"""Writing files so that a crash or `kill -9` never leaves a half-written one in place; locks; their
sha256; float16 weight files; where the shipped recipes and released weights are."""

import contextlib
import errno
import hashlib
import os
import pathlib
import shutil
import tempfile

from zoo import interrupts

PACKAGE = pathlib.Path(__file__).resolve().parent
BUNDLED = PACKAGE / "_bundled"  # what a wheel carries of the top-level folders (see setup.py)


def umask():
    """The process's umask (read by setting it, and at once setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class DiskFull(OSError):
    """No space left on the device (or over quota) while writing a file or folder; what was there is kept."""


def disk_full(error, path):
    """`error` as a DiskFull naming `path`, if it says the disk is full; else None."""
    if isinstance(error, DiskFull) or not isinstance(error, OSError):
        return None
    if error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(error):
        return DiskFull(
            errno.ENOSPC, f"no space left on the device: could not write {path}; what was there before is kept. "
            "Free some space and run the same command again."
        )
    return None


def write_atomically(path, write):
    """Call `write(tmp_path)` on a temporary file beside `path`, then move it onto `path` in one step.

    The file gets the mode any new file gets under the umask (mkstemp's are owner-only), so a
    colleague or a serving process can read a shared run folder as it can read the exports.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.name)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        full = disk_full(e, path)
        if full:
            raise full from e
        raise


def write_text_atomically(path, text):
    write_atomically(path, lambda tmp: pathlib.Path(tmp).write_text(text))


@contextlib.contextmanager
def staged_folder(out, overwrite=True, command=None, what="Output folder"):
    """A new temporary folder beside `out` to write into; when the block ends, it replaces `out`
    (see `replace_folder`), or, if the block failed, it is removed and `out` stays as it was.

    Processes replacing the same `out` take turns (a lock beside it). With `command`, `out` is checked
    again, in that turn, as `check_output_folder` checked it before the work: another process may have
    written it meanwhile, and then it is kept and this output dropped."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield staging
        interrupts.raise_pending()  # a stop asked for and swallowed on the way: the old folder stays
        with exclusive_lock(out.parent / f".{out.name}.replace-lock", wait=True):
            if command:
                _check_again(out, overwrite, command, what)
            replace_folder(staging, out)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        full = disk_full(e, out)
        if full:
            raise full from e
        raise


# What marks a folder as one that `zoo <command>` wrote, so that --overwrite may replace it.
WRITTEN_BY = {
    "export": lambda folder: (folder / "export.json").is_file(),
    "release": lambda folder: (folder / "model_card.json").is_file(),
    "viz": lambda folder: (folder / "index.html").is_file() and ": inside the network</title>" in (folder / "index.html").read_text(errors="replace"),
}


def holds_current_folder(folder):
    """Whether `folder` is the current folder or one of its parents: replacing it would pull the folder from under the shell."""
    here = pathlib.Path.cwd().resolve()
    return pathlib.Path(folder).resolve() in (here, *here.parents)


def check_output_folder(out, overwrite, command, what="Output folder"):
    """Before any work: `out` may be written by `zoo <command>` if it is new, an empty folder, or, with
    `overwrite`, a folder that such a command wrote; never the current folder or one holding it."""
    out = pathlib.Path(out)
    if holds_current_folder(out):
        raise ValueError(f"--out {out} is the current folder{'' if out.resolve() == pathlib.Path.cwd().resolve() else ' or holds it'}: name a new folder for the output, e.g. --out {command}_out.")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise FileExistsError(f"{what} {out} is a file: name a folder.")
    if not overwrite:
        raise FileExistsError(f"{what} {out} exists. Use --overwrite to replace it (it is kept if the {command} fails).")
    if not WRITTEN_BY[command](out):
        raise FileExistsError(
            f"{what} {out} holds files that zoo {command} did not write: --overwrite replaces only an earlier "
            f"zoo {command} output, never other folders. Name a new folder."
        )


def _check_again(out, overwrite, command, what):
    try:
        check_output_folder(out, overwrite, command, what)
    except FileExistsError as e:
        raise FileExistsError(
            f"{e} It was written by another process while this zoo {command} ran: it is kept, and this output is dropped."
        ) from None


def replace_folder(staging, out):
    """Replace `out` by `staging` (a `tempfile.mkdtemp` folder, made world-readable like any new
    folder), keeping the old folder until the new one is in place."""
    os.chmod(staging, 0o777 & ~umask())
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}-previous")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old)


class LockedError(FileExistsError):
    """A lock that another process holds."""


@contextlib.contextmanager
def exclusive_lock(path, wait=False):
    """Hold an exclusive lock on the file `path` (made if needed) for the block, or raise LockedError
    naming the process that holds it (with `wait`, wait for it instead). The system drops the lock with
    its process, even on `kill -9`; the file is removed when the block ends (a process that opened it
    meanwhile sees it gone and takes a new one, so two holders never coexist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, so no check
        yield
        return
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise LockedError(f"{path} is held by process {holder}") from None
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()  # its holder removed it between our open and our lock: take the new one
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it
        f.close()


def sha256(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_folder(name):
    """A top-level folder of the project (`recipes`, `saved_models`): the copy a wheel carries in
    `BUNDLED`, else the one beside the package in a source checkout."""
    bundled = BUNDLED / name
    return bundled if bundled.is_dir() else PACKAGE.parent / name


def save_float16_weights(model, path):
    """`model.save_weights(path)` with every float32 array stored as float16 (Keras casts back on load)."""
    import h5py
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        full = pathlib.Path(tmp) / "model.weights.h5"
        model.save_weights(full)
        with h5py.File(full, "r") as src, h5py.File(path, "w") as dst:
            dst.attrs.update(src.attrs)

            def copy(name, item):
                if isinstance(item, h5py.Group):
                    dst.require_group(name).attrs.update(item.attrs)
                else:
                    data = item[()]
                    data = data.astype(np.float16) if data.dtype == np.float32 else data
                    dst.create_dataset(name, data=data).attrs.update(item.attrs)

            src.visititems(copy)
