import ctypes
import importlib.util
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the zoo command sets it
# Decoded-image caches of this test session go to a temporary folder, never beside the data, removed when the
# session ends (about 32 MB each). pytest-xdist's workers share the folder of the process that started them.
OWN_CACHE_DIR = not ("PYTEST_XDIST_WORKER" in os.environ and "ZOO_CACHE_DIR" in os.environ)
if OWN_CACHE_DIR:
    os.environ["ZOO_CACHE_DIR"] = tempfile.mkdtemp(prefix="zoo-test-cache-")
CACHE_DIR = os.environ["ZOO_CACHE_DIR"]
# The JAX processes the tests start compile the same train steps again and again: they share a compilation cache
# for the session (a short LeNet-5 run takes 12 s instead of 22 s; only compile time changes, not a number). A size
# limit turns on the cache's file lock, so that two processes never read an entry half-written.
if importlib.util.find_spec("filelock") is not None:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(CACHE_DIR, "jax"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2**31))
# oneDNN's own memory pool keeps every byte it ever held until the process ends: the test process, which builds
# hundreds of models, grew past 3 GB that way. The system allocator gives freed tensors back (only where memory
# comes from changes, not a number). TensorFlow reads the setting once, at its first tensor; the `zoo` processes
# the tests start after that keep the pool, which trains a VGG about 1.5 times as fast (see `system_allocator`).
SETS_ALLOCATOR = "TF_ONEDNN_USE_SYSTEM_ALLOCATOR" not in os.environ
if SETS_ALLOCATOR:
    os.environ["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] = "1"


# With -n 2 --dist loadscope each process takes a whole module at a time, in this order (--no-loadscope-reorder):
# the GPU-session rehearsal first (its two tests run several trainings each, memory_heavy) while the other process
# works through modules without such tests, then the longest (measured alone on a 2-core AVX512-BF16 EPYC,
# 2026-11-29), so that both processes end together. A module not listed comes last.
MODULE_ORDER = ("test_gpu_session", "test_models", "test_finetune", "test_training", "test_pretrained", "test_export",
                "test_backends", "test_augment", "test_mobile", "test_portability")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(MODULE_ORDER)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(MODULE_ORDER)))


def pytest_sessionfinish(session, exitstatus):
    if OWN_CACHE_DIR:
        shutil.rmtree(CACHE_DIR, ignore_errors=True)

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10"
MNIST = ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def cifar10_dir():
    """The real CIFAR-10 image folders beside the repository (read-only)."""
    if not (CIFAR10 / "train").is_dir():
        pytest.skip(f"CIFAR-10 image folders not found at {CIFAR10}")
    return CIFAR10


@pytest.fixture(scope="session")
def mnist_dir():
    """MNIST's idx files beside the repository (read-only): 60,000 training and 5,000 test digits."""
    if not (MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST idx files not found at {MNIST}")
    return MNIST


def link_subset(source, target, per_class):
    """An image-folder tree under `target` with links to the first `per_class[split]` images of each class."""
    for split, count in per_class.items():
        for class_dir in sorted((source / split).iterdir()):
            out = target / split / class_dir.name
            out.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:count]:
                (out / image.name).symlink_to(image)
    return target


@pytest.fixture(scope="session")
def small_cifar10(cifar10_dir, tmp_path_factory):
    """3,000 training and 500 test images of the real CIFAR-10 copy, as an image-folder tree."""
    return link_subset(cifar10_dir, tmp_path_factory.mktemp("cifar10_small"), {"train": 300, "test": 50})



@pytest.fixture
def disk_fills_writing():
    """`disk_fills_writing(monkeypatch, name)`: from then on, `Path.write_text` on a file whose name ends with `name`
    (a temporary file beside it included) writes half its text, then fails as a disk that fills."""
    import errno

    def patch(monkeypatch, name):
        write_text = pathlib.Path.write_text

        def write(path, text, *args, **kwargs):
            if path.name.endswith(name):
                write_text(path, text[: len(text) // 2], *args, **kwargs)
                raise OSError(errno.ENOSPC, "No space left on device")
            return write_text(path, text, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "write_text", write)

    return patch


@pytest.fixture(scope="session", autouse=True)
def system_allocator():
    """The test process's first tensor fixes its allocator: from then on the processes it starts inherit an
    environment without the setting."""
    import tensorflow as tf

    tf.zeros(1)
    if SETS_ALLOCATOR:
        os.environ.pop("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", None)


@pytest.fixture(autouse=True)
def one_memory_heavy_test_at_a_time(request):
    """Tests marked memory_heavy run several training processes at once: with the suite split over
    processes (-n 2), each waits for the other's to end, so that their memory never adds up."""
    if request.node.get_closest_marker("memory_heavy") is None:
        yield
        return
    import fcntl

    with open(os.path.join(CACHE_DIR, "memory-heavy.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


_collected_at = [0]  # the process's resident size after the last full collection


@pytest.fixture(autouse=True)
def forget_the_models_of_each_test():
    """Keras keeps every model a test built in its global state until cleared: without this the test
    process grows past 7 GB (ImageNet-sized VGGs in test_models), and the suite's peak with it. The
    references go after every test (2 ms); a full collection (a third of a second) frees the models
    only once the process has grown by 100 MB since the last one."""
    yield
    import keras

    keras.backend.clear_session(free_memory=False)
    if os.path.exists("/proc/self/statm") and resident_bytes() > _collected_at[0] + 0.1e9:
        import gc

        gc.collect()
        release_freed_heap()
        _collected_at[0] = resident_bytes()


def release_freed_heap():
    """Hand the C heap's freed pages back to the system (glibc keeps them otherwise: the process stays at
    its high-water mark after the models are gone)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
