"""Training speed of zoo against the same network written in native PyTorch, side by side.

    python benchmarks/train_speed.py --models vgg11_bn vgg16_bn --repeats 3

For each model: images/s of one training step (batch 128, in-memory data, steady state) of
- zoo's model under each installed Keras backend (`--backends`), with the recipe's optimizer and loss,
  in float32 and in the precision `precision = "auto"` picks on this machine;
- the full `zoo train` path (the recipe's precision, augmenting `zoo.data.Batches` + `model.fit`) on
  the first of `--backends`, which `--backend auto` picks on a CPU;
- native PyTorch: the same layers (translated one by one from the Keras model, so the same network:
  the parameter counts are checked), channels_last, SGD with Nesterov momentum, in float32 and, where
  the CPU has bfloat16 instructions, under bfloat16 autocast.
`--jit` adds zoo with `jit_compile=True` (XLA under TensorFlow and JAX, torch.compile under torch),
`--compile` native PyTorch under torch.compile, `--with KEY=VALUE` the zoo train path with a recipe
option set beside it (what the option costs), and `ZOO_BENCH_NO_BN=1` measures both sides without
batch norm (where the gap on CPUs comes from). On a machine with an NVIDIA GPU both sides run there
(`--backends jax` for zoo; `--steps` of a few hundred).
Each measurement runs in its own process (one backend per process); the configurations are run in
turn `--repeats` times, alternating, and the table shows medians, spread, and the ratio to the best
native PyTorch setting. The CPU and its flags are printed with it: figures differ between CPU kinds.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def zoo_step(model_name, precision, batch, steps, pipeline, jit_compile="auto"):
    """Images/s of zoo's training step for one recipe's model (`KERAS_BACKEND` picks the backend)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the zoo command sets it
    import numpy as np

    import keras
    from zoo import keras_input
    from zoo import recipe as recipes
    from zoo.data import Batches, Split, one_hot
    from zoo.optimizer import make_optimizer
    from zoo.training import build_model, has_accelerator, resolve_precision, step_callbacks

    recipe = recipes.load(f"{model_name}_cifar10", _overrides())
    keras.config.set_dtype_policy(resolve_precision(recipe["training"]["precision"] if precision == "recipe" else precision))
    keras.utils.set_random_seed(0)
    model = build_model(recipe, (32, 32, 3), 10)
    model.compile(
        optimizer=make_optimizer(recipe, steps),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=recipe["training"]["label_smoothing"]),
        metrics=["accuracy"],
        jit_compile=jit_compile,  # "auto": XLA under JAX and on TensorFlow GPUs, not on CPUs; torch: torch.compile
    )
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (batch * steps, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, batch * steps).astype("int32"))
    if pipeline:
        on_device = has_accelerator() and keras.backend.backend() != "tensorflow"  # as zoo train's --augment-on auto
        data = Batches(split, batch, seed=0, augmentation=recipe["augment"], one_hot=10, on_device=on_device)
        callbacks = step_callbacks(recipe, steps)  # airbench's lookahead, where the recipe has it
        data = keras_input.batches_input(data)  # as zoo.training does
        fit = lambda: model.fit(data, shuffle=False, epochs=1, verbose=0, callbacks=callbacks)  # noqa: E731
    else:
        arrays = keras_input.fit_arrays(split.images, one_hot(split.labels, 10), batch)
        fit = lambda: model.fit(**arrays, shuffle=False, epochs=1, verbose=0)  # noqa: E731
    fit()  # tracing, compilation, warm-up
    start = time.perf_counter()
    fit()
    return {"images_per_second": batch * steps / (time.perf_counter() - start), "precision": keras.config.dtype_policy().name,
            "backend": keras.backend.backend(), "params": model.count_params()}


def torch_network(keras_model):
    """The Keras model's layers as a torch.nn.Sequential, one module per layer (same shapes, same params)."""
    import torch
    from torch import nn

    class Rescale(nn.Module):
        def __init__(self, scale, offset):
            super().__init__()
            self.scale, self.offset = scale, offset

        def forward(self, x):
            return x * self.scale + self.offset

    activations = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softmax": lambda: nn.Softmax(dim=1)}
    modules, channels, flat = [], keras_model.input.shape[-1], None
    for layer in keras_model.layers[1:]:
        kind, config = type(layer).__name__, layer.get_config()
        if kind == "Rescaling":
            modules.append(Rescale(config["scale"], config["offset"]))
        elif kind == "Conv2D":
            k, s = config["kernel_size"][0], config["strides"][0]
            modules.append(nn.Conv2d(channels, config["filters"], k, s, padding=k // 2 if config["padding"] == "same" else 0, bias=config["use_bias"]))
            channels = config["filters"]
        elif kind == "BatchNormalization":
            modules.append(nn.BatchNorm2d(channels, eps=config["epsilon"], momentum=1 - config["momentum"]))
        elif kind in ("MaxPooling2D", "AveragePooling2D"):
            pool = nn.MaxPool2d if kind == "MaxPooling2D" else nn.AvgPool2d
            modules.append(pool(config["pool_size"][0], config["strides"][0]))
        elif kind == "Flatten":
            modules.append(nn.Flatten())
            flat = int(torch.tensor(layer.input.shape[1:]).prod())
        elif kind == "Dense":
            modules.append(nn.Linear(flat, config["units"]))
            flat = config["units"]
        elif kind == "Dropout":
            modules.append(nn.Dropout(config["rate"]))
        elif kind == "Activation":
            modules.append(activations[config["activation"]]())
        else:
            raise ValueError(f"No torch translation for a {kind} layer ({layer.name}).")
        activation = config.get("activation")
        if kind in ("Conv2D", "Dense") and activation not in (None, "linear"):
            modules.append(activations[activation]())
    return nn.Sequential(*modules)


def torch_step(model_name, bf16, batch, steps, compiled=False):
    """Images/s of the same network's training step in native PyTorch, channels_last, on the GPU if there is one."""
    os.environ["KERAS_BACKEND"] = "torch"  # only to read the architecture; the step is plain torch
    import torch

    import zoo

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    keras_model = zoo.get_model(model_name, **_recipe_options(model_name))
    net = torch_network(keras_model).to(device, memory_format=torch.channels_last)
    params = sum(p.numel() for p in net.parameters())
    assert params == keras_model.count_params() - sum(_keras_only(keras_model)), (params, keras_model.count_params())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device).float().contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,), device=device)
    forward = torch.compile(net) if compiled else net

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(forward(images), labels)
        loss.backward()
        optimizer.step()

    net.train()
    for _ in range(3):
        step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return {"images_per_second": batch * steps / (time.perf_counter() - start), "precision": "bf16 autocast" if bf16 else "float32",
            "backend": f"torch {torch.__version__} on {device}{', compiled' if compiled else ''}", "params": params}


def _recipe_options(model_name):
    from zoo import recipe as recipes

    model = recipes.load(f"{model_name}_cifar10", _overrides())["model"]
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in model.items() if k in ("batch_norm", "dropout", "fc_units") and v is not None}


def _overrides():
    """`ZOO_BENCH_NO_BN=1` measures the recipe's network without batch norm, in zoo and in PyTorch alike;
    `ZOO_BENCH_SET` (a JSON list, from `--with`) holds recipe overrides of one configuration."""
    return (["model.batch_norm=false"] if os.environ.get("ZOO_BENCH_NO_BN") else []) + json.loads(os.environ.get("ZOO_BENCH_SET", "[]"))


def _keras_only(model):
    """Keras counts batch norm's moving mean and variance as parameters; torch keeps them as buffers."""
    return [int(w.shape[0]) * 2 for layer in model.layers if type(layer).__name__ == "BatchNormalization" for w in layer.weights[:1]]


def cpu_description():
    flags, name = set(), "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}, {os.cpu_count()} cores, flags: {' '.join(shown) or 'none of avx2/avx512'}", bool({"avx512_bf16", "amx_bf16"} & flags)


def gpu_name():
    """The NVIDIA GPU's name, or None (nvidia-smi, so no framework is imported here)."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def installed(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def configurations(args, bf16_cpu):
    """(label, worker arguments, environment) of everything measured for one model."""
    found = []
    for backend in args.backends:
        if not installed(backend):
            print(f"# {backend}: not installed, left out", file=sys.stderr)
            continue
        precisions = ["auto", "float32"] if bf16_cpu else ["float32"]
        for precision in precisions:
            found.append((f"zoo Keras/{backend} {precision}", ["zoo", precision, "0", "auto"], {"KERAS_BACKEND": backend}))
            if args.jit and precision == precisions[0]:
                found.append((f"zoo Keras/{backend} {precision} jit_compile", ["zoo", precision, "0", "1"], {"KERAS_BACKEND": backend}))
    found.append((f"zoo train (recipe, augmentation) Keras/{args.backends[0]}", ["zoo", "recipe", "1", "auto"], {"KERAS_BACKEND": args.backends[0]}))
    if args.with_:  # the same path with recipe options set: what an option costs per step
        found.append((f"zoo train Keras/{args.backends[0]} with {' '.join(args.with_)}", ["zoo", "recipe", "1", "auto"],
                      {"KERAS_BACKEND": args.backends[0], "ZOO_BENCH_SET": json.dumps(args.with_)}))
    if installed("torch"):
        found.append(("PyTorch fp32 channels_last", ["torch", "0", "0"], {}))
        if bf16_cpu:
            found.append(("PyTorch bf16 autocast channels_last", ["torch", "1", "0"], {}))
        if args.compile:
            found.append((f"PyTorch {'bf16 autocast' if bf16_cpu else 'fp32'} channels_last compiled", ["torch", "1" if bf16_cpu else "0", "1"], {}))
    return found


STEPS = {"lenet5": 100, "alexnet_lite": 20, "vgg11_bn": 10, "vgg16_bn": 6}  # a few seconds each on 2 cores


def run_worker(model, spec, env, args):
    steps = args.steps or STEPS.get(model, 10)
    command = [sys.executable, __file__, "--worker", model, *spec, "--batch", str(args.batch), "--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{model} {spec} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet5", "alexnet_lite", "vgg11_bn", "vgg16_bn"])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "torch"], help="Keras backends for zoo (jax is slow on CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, help="timed steps per measurement, after as many warm-up steps (default: by model, a few seconds)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help="also measure native PyTorch under torch.compile")
    parser.add_argument("--jit", action="store_true", help="also measure zoo with jit_compile=True (XLA on TensorFlow and JAX, torch.compile on torch)")
    parser.add_argument("--json", help="also write the medians here (and each measurement as it comes, so a stopped run keeps them)")
    parser.add_argument("--with", dest="with_", action="append", default=[], metavar="KEY=VALUE",
                        help="also measure the zoo train path with these recipe overrides, e.g. optimizer.use_ema=true")
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="only the configurations whose label holds one of these, in this order (e.g. 'zoo train' compiled)")
    args = parser.parse_args()
    if args.worker:
        model, kind, *rest = args.worker
        if kind == "zoo":
            jit = {"auto": "auto", "1": True}[rest[2]]
            result = zoo_step(model, rest[0], args.batch, args.steps or STEPS.get(model, 10), rest[1] == "1", jit_compile=jit)
        else:
            result = torch_step(model, rest[0] == "1", args.batch, args.steps or STEPS.get(model, 10), compiled=rest[1] == "1")
        print(json.dumps(result))
        return
    cpu, bf16_cpu = cpu_description()
    gpu = gpu_name()
    if gpu:  # bfloat16 is native there; the CPU only feeds it
        cpu, bf16_cpu = f"{gpu} (host: {cpu})", True
    print(f"# {cpu}; batch {args.batch}, {args.repeats} alternating repeats, median [min-max] images/s")
    report = {"cpu": cpu, "batch": args.batch, "models": {}}
    for model in args.models:
        configs = chosen(configurations(args, bf16_cpu), args.only)
        samples = {label: [] for label, _, _ in configs}
        details = {}
        for _ in range(args.repeats):
            for label, spec, env in configs:
                result = run_worker(model, spec, env, args)
                samples[label].append(result["images_per_second"])
                details[label] = result
                if args.json:
                    report["models"][model] = {"samples": samples, "details": details}
                    _write_json(args.json, report)
        medians = {label: statistics.median(values) for label, values in samples.items()}
        peer = max((v for label, v in medians.items() if label.startswith("PyTorch")), default=None)
        print(f"\n{model}")
        for label, values in samples.items():
            ratio = f"{medians[label] / peer:.2f}x" if peer else "-"
            print(f"  {label:<42} {medians[label]:8.1f} [{min(values):.1f}-{max(values):.1f}]  {ratio:>6} of PyTorch's best  ({details[label]['precision']})")
        report["models"][model] = {"median": medians, "samples": samples, "details": details, "pytorch_best": peer}
    if args.json:
        _write_json(args.json, report)


def chosen(configs, only):
    """The configurations whose label holds one of `only` (ordered as `only`), or all."""
    if not only:
        return configs
    rank = lambda label: next((i for i, text in enumerate(only) if text in label), None)  # noqa: E731
    return sorted((c for c in configs if rank(c[0]) is not None), key=lambda c: rank(c[0]))


def _write_json(path, report):
    with open(f"{path}.tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(f"{path}.tmp", path)


if __name__ == "__main__":
    main()
