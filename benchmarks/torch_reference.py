"""Same-data reference: a zoo network trained in native PyTorch with the pytorch-cifar-models recipe.

    python benchmarks/torch_reference.py --model vgg16_bn --data-dir ../shared/data/cifar10 --epochs 200 --json ref.json

The question it answers: at equal data and epochs, does the zoo train a network as well (and as fast)
as a plain PyTorch script with the peers' hyper-parameters? So everything but the training code is
shared with the zoo's run: the network (translated layer by layer from the zoo's Keras model, the
parameter count checked, see `train_speed.torch_network`; with the architecture's own dropout, as the
peers' classifier has it), the images (the same folder, decoded the same way, the same train/validation
split of the model's shipped recipe) and the test images.
The training is PyTorch's own: SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 256, cosine decay
per step, random crop (pad 4) + horizontal flip done on the device, cross-entropy, no label smoothing;
bfloat16 autocast and channels_last on a GPU (or a CPU with bfloat16 instructions), optionally
`torch.compile`. Prints one line per epoch; `--json` gets the accuracies, images/s, history, and each test
image's label and predicted class (to pair with a zoo run: `benchmarks/paired.py`). Stopped by SIGTERM or
Ctrl-C (a lease's deadline), it ends the step it is in, then tests and reports what it has trained, saying
after how many of its epochs it stopped (with the schedule not run out, that is no equal-epoch figure).
"""

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]


def load(model_name, data_dir, limit=None, overrides=()):
    """The zoo recipe's network (as torch modules) and data split (uint8 NHWC arrays); `overrides` as `zoo train --set`.
    The test split is every test image in the order `zoo eval --data-dir` takes them (`limit` or not), so that
    the predictions pair image by image with a zoo model's (`benchmarks/paired.py`)."""
    import dataclasses

    import zoo
    from train_speed import _recipe_options, torch_network
    from zoo import recipe as recipes
    from zoo.data import load_dataset, load_test_images

    recipe = recipes.load(f"{model_name}_cifar10", list(overrides))
    data = recipe["data"]
    dataset = load_dataset(
        "cifar10", data_dir=data_dir, image_size=tuple(data["image_size"]), validation_size=data["validation_size"],
        seed=recipe["training"]["seed"], limit=limit or data["limit"] or None,
    )
    dataset = dataclasses.replace(dataset, test=load_test_images(data_dir, tuple(data["image_size"]), 3, dataset.split)[0])
    # The peers' classifier keeps its architecture's dropout (0.5 in VGG's and AlexNet's), whatever the zoo's recipe sets.
    options = {key: value for key, value in _recipe_options(model_name).items() if key != "dropout"}
    keras_model = zoo.get_model(model_name, num_classes=len(dataset.class_names), input_shape=(*data["image_size"], 3), **options)
    return torch_network(keras_model), dataset


def crop_and_flip(images, padding, generator):
    """Random crop of the zero-padded images and a horizontal flip for half of them; uint8 NHWC in and out."""
    import torch

    n, h, w, _ = images.shape
    device = images.device
    dy, dx = (torch.randint(-padding, padding + 1, (n, 1, 1), device=device, generator=generator) for _ in range(2))
    flip = torch.rand(n, 1, 1, device=device, generator=generator) < 0.5
    rows = torch.arange(h, device=device).view(1, h, 1) + dy
    cols = torch.arange(w, device=device).view(1, 1, w)
    cols = torch.where(flip, w - 1 - cols, cols) + dx
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(-1)
    batch = torch.arange(n, device=device).view(n, 1, 1)
    return images[batch, rows.clamp(0, h - 1), cols.clamp(0, w - 1)] * inside


def to_input(images):
    """uint8 NHWC -> float32 NCHW in channels_last memory (the same bytes, no copy of the layout)."""
    import torch

    return images.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)


def evaluate(net, images, labels, batch, autocast):
    """Top-1 accuracy, the same with the flipped image's probabilities averaged in (flip TTA), and the plain
    predicted class of each image (to pair the run with another on the same images)."""
    import torch

    net.eval()
    predicted, predicted_tta = [], []
    with torch.no_grad(), autocast():
        for start in range(0, len(images), batch):
            x = to_input(images[start : start + batch])
            p = net(x).float().softmax(1)
            predicted.append(p.argmax(1))
            predicted_tta.append((p + net(torch.flip(x, dims=[3])).float().softmax(1)).argmax(1))
    predicted, predicted_tta = torch.cat(predicted), torch.cat(predicted_tta)
    accuracy = (predicted == labels).float().mean().item()
    return accuracy, (predicted_tta == labels).float().mean().item(), predicted.tolist()


def train(args):
    import functools

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    net, dataset = load(args.model, args.data_dir, args.limit, args.set)
    net = net.to(device, memory_format=torch.channels_last)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and (device.type == "cuda" or _cpu_has_bf16()))
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=bf16)
    step_net = torch.compile(net) if args.compile else net
    images = torch.from_numpy(dataset.train.images).to(device)
    labels = torch.from_numpy(dataset.train.labels.astype("int64")).to(device)
    test_images = torch.from_numpy(dataset.test.images).to(device)
    test_labels = torch.from_numpy(dataset.test.labels.astype("int64")).to(device)
    steps = len(images) // args.batch  # the last, incomplete batch is dropped (one shape for torch.compile)
    if steps < 1:
        raise SystemExit(f"--batch {args.batch} is larger than the {len(images)} training images")
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=args.nesterov)
    total = steps * args.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator(device).manual_seed(args.seed)
    history, trained_seconds = [], 0.0
    with _stop_on_signals() as stopped:  # the handlers before it come back once the report is written
        print(
            f"{args.model} in native PyTorch {torch.__version__} on {device} ({'bf16 autocast' if bf16 else 'float32'}, channels_last"
            f"{', torch.compile' if args.compile else ''}): {len(images):,} train / {len(test_images):,} test images; "
            f"{args.epochs} epochs of {steps} steps", flush=True,
        )
        for epoch in range(args.epochs):
            net.train()
            _sync(device)
            start = time.perf_counter()
            order = torch.randperm(len(images), device=device, generator=generator)
            loss_sum = torch.zeros((), device=device)
            done = 0
            for i in range(steps):
                if stopped:
                    break
                chosen = order[i * args.batch : (i + 1) * args.batch]
                x = to_input(crop_and_flip(images[chosen], 4, generator))
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    loss = loss_fn(step_net(x), labels[chosen])
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.detach()
                done += 1
            _sync(device)
            if done < steps:  # stopped within the epoch: it does not count
                print(f"{stopped[0]} in epoch {epoch + 1}: stopping after {epoch} of {args.epochs} epochs", flush=True)
                break
            seconds = time.perf_counter() - start
            if epoch:  # the first epoch holds compilation and warm-up
                trained_seconds += seconds
            history.append({"epoch": epoch + 1, "loss": loss_sum.item() / steps, "seconds": round(seconds, 3)})
            print(f"epoch {epoch + 1}/{args.epochs}: {seconds:.1f}s, loss {history[-1]['loss']:.4f}", flush=True)
        accuracy, accuracy_tta, predictions = evaluate(net, test_images, test_labels, 1000, autocast)
        timed = steps * args.batch * (len(history) - 1)
        report = {
            "model": args.model, "framework": f"torch {torch.__version__}", "device": _device_name(device),
            "precision": "bf16 autocast" if bf16 else "float32", "channels_last": True, "compiled": args.compile,
            "recipe": {"optimizer": "SGD", "lr": args.lr, "momentum": 0.9, "nesterov": args.nesterov, "weight_decay": 5e-4, "batch": args.batch,
                       "schedule": "cosine per step", "augment": "crop (pad 4) + flip", "epochs": args.epochs, "seed": args.seed},
            "data": {"dir": os.path.abspath(args.data_dir), "train": len(images), "test": len(test_images)},
            "test_accuracy": accuracy, "test_accuracy_flip_tta": accuracy_tta,
            "images_per_second": timed / trained_seconds if trained_seconds else None,
            "train_seconds": round(sum(h["seconds"] for h in history), 1), "history": history,
            "epochs_trained": len(history),
            "stopped": f"by {stopped[0]} after {len(history)} of {args.epochs} epochs" if len(history) < args.epochs else None,
            "test_predictions": predictions,  # plain top-1 class of each test image, in `zoo eval --data-dir`'s order
            "test_labels": dataset.test.labels.tolist(),
        }
        print(f"test accuracy {accuracy:.4f} ({accuracy_tta:.4f} with flip TTA); {report['images_per_second'] or 0:.0f} images/s"
              + (f"; stopped {report['stopped']}" if report["stopped"] else ""), flush=True)
        if args.json:  # whole or not at all, should a second signal kill the process while it writes
            path = os.path.abspath(args.json)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".partial", "w") as f:
                json.dump(report, f, indent=2)
            os.replace(path + ".partial", path)
        return report


@contextlib.contextmanager
def _stop_on_signals():
    """A list that SIGTERM or SIGINT (Ctrl-C) fills with the signal's name, instead of ending the process,
    while the block runs; the handlers from before are restored after it."""
    stopped = []

    def note(signum, frame):
        stopped.append(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, note) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopped
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device):
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"


def _cpu_has_bf16():
    from train_speed import cpu_description

    return cpu_description()[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model with a shipped CIFAR-10 recipe: lenet5, alexnet_lite, vgg11_bn, vgg16_bn")
    parser.add_argument("--data-dir", required=True, help="image folders DIR/train/<class>/*, DIR/test/<class>/* (as zoo train takes)")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--nesterov", action="store_true")
    parser.add_argument("--precision", choices=("auto", "bf16", "float32"), default="auto", help="auto: bf16 autocast on a GPU or a bf16 CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--device", help="default: cuda if there is one, else cpu")
    parser.add_argument("--limit", type=int, help="use only this many training images (a quick check)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides, as zoo train's (the data.* keys matter here)")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = "torch"  # zoo reads the images and builds the Keras model once, to translate it
    return train(args)


if __name__ == "__main__":
    main()
