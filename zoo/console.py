"""The console around a `zoo` command: TensorFlow's start-up lines kept off stderr, Keras imported quietly."""

import contextlib
import os
import sys
import tempfile

# TensorFlow's start-up lines on a machine without a GPU (or without AVX flags compiled in).
# They are printed by C++ before Python's logging exists; any other line still reaches stderr.
_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog",
    "cudart_stub.cc",
    "cpu_feature_guard.cc",
    "To enable the following instructions",
    "failed call to cuInit",
    "Unable to register cu",
    "computation_placer.cc",
    "oneDNN custom operations are on",
    # The TFLite converter and interpreter (export, predict, bench).
    "Created TensorFlow Lite XNNPACK delegate",
    "fully_quantize: ",
    "Estimated count of arithmetic ops",
)
QUIET_COMMANDS = {"export", "release", "viz", "predict", "bench", "info"}  # short commands: their stderr is replayed when they end


@contextlib.contextmanager
def startup_noise_filtered():
    """Capture file descriptor 2, then replay it without TensorFlow's known start-up lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not any(noise in line for noise in _STARTUP_NOISE):
                    print(line, file=sys.stderr)


def import_keras_quietly():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow turns its oneDNN CPU kernels on only for some CPUs; on the 2-core AMD EPYC this
    # project is developed on they train LeNet-5 2.7x faster. Set TF_ENABLE_ONEDNN_OPTS=0 to opt out.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    with startup_noise_filtered():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # device discovery logs its own start-up lines
        else:  # Keras imports TensorFlow later where it is installed (e.g. to seed it): now, quietly
            with contextlib.suppress(ImportError):
                import tensorflow  # noqa: F401
