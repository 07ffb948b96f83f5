"""Is the input pipeline ever the bottleneck? Images/s of `model.fit` through `zoo.data.Batches`
(shuffle + augmentation) against `model.fit` on the same uint8 images held in memory, no augmentation.

    python benchmarks/input_pipeline.py --data-dir ../shared/data/cifar10 --models lenet5 vgg11_bn

On a shared 2-core machine one measurement swings by +-25%, so the two are measured alternately
`--repeats` times and the ratio is taken between the medians.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the zoo command sets it

import keras

import zoo
from zoo import keras_input
from zoo.data import Batches, load_dataset


class Throughput(keras.callbacks.Callback):
    """Images/s over the epochs after the first (which includes tracing)."""

    def __init__(self, images_per_epoch):
        super().__init__()
        self.images_per_epoch, self.times = images_per_epoch, []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)

    @property
    def images_per_second(self):
        return self.images_per_epoch * (len(self.times) - 1) / sum(self.times[1:])


def measure(name, split, batch_size, epochs, pipeline, threads=1):
    keras.utils.set_random_seed(0)
    model = zoo.get_model(name)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    meter = Throughput(len(split))
    if pipeline:
        data = Batches(split, batch_size, augmentation={"crop_padding": 4, "flip": True}, threads=threads)
        model.fit(keras_input.batches_input(data), shuffle=False, epochs=epochs, callbacks=[meter], verbose=0)  # as zoo.training does
    else:
        model.fit(**keras_input.fit_arrays(split.images, split.labels, batch_size), shuffle=False, epochs=epochs, callbacks=[meter], verbose=0)
    return meter.images_per_second


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data/cifar10")
    parser.add_argument("--models", nargs="+", default=["lenet5", "vgg11_bn"])
    parser.add_argument("--images", type=int, default=10000, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="the first epoch is not timed")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements of each; medians compared")
    parser.add_argument("--threads", type=int, default=1, help="threads preparing batches ahead (zoo train --data-threads)")
    args = parser.parse_args()
    split = load_dataset(data_dir=args.data_dir, limit=args.images).train
    print(f"{'model':<14}{'in-memory img/s':>17}{'pipeline img/s':>16}{'ratio':>8}")
    for name in args.models:
        runs = {False: [], True: []}
        for _ in range(args.repeats):
            for pipeline in (False, True):
                runs[pipeline].append(measure(name, split, args.batch_size, args.epochs, pipeline, args.threads))
        plain, piped = statistics.median(runs[False]), statistics.median(runs[True])
        print(f"{name:<14}{plain:>17,.0f}{piped:>16,.0f}{piped / plain:>8.3f}", flush=True)
        print(f"  each run, in-memory: {', '.join(f'{x:,.0f}' for x in runs[False])}; pipeline: {', '.join(f'{x:,.0f}' for x in runs[True])}", flush=True)


if __name__ == "__main__":
    main()
