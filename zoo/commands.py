"""What each `zoo` command does and prints, given its parsed arguments (`zoo.cli` parses them)."""

import fnmatch
import os
import pathlib
import sys

import numpy as np

from zoo.files import check_output_folder

def _format_count(n):
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _table(rows, header):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _released(info, details=False):
    """The model's released weights tags; where a release was built with other options than the
    defaults (e.g. lenet5's cifar10 has batch norm), its own parameter count (and options)."""
    from zoo import pretrained
    from zoo.models.base import options_of

    tags = []
    for tag in info.weights:
        card = pretrained.card(info.name, tag)
        if card["params"] == info.params:
            tags.append(tag)
            continue
        changed = []
        if details:
            default = options_of(info.builder())
            changed = [f"{k}={v}" for k, v in card["options"].items() if default.get(k) != v]
        tags.append(f"{tag} ({card['params']:,} params{', with ' + ', '.join(changed) if changed else ''})")
    return ", ".join(tags)


def cmd_list(args):
    from zoo.models import list_models, model_info

    if args.recipes:
        from zoo import recipe as recipes

        names = [n for n in recipes.available() if not args.include or any(fnmatch.fnmatch(n, p) for p in args.include)]
        print(_table([(n, recipes.load(n)["description"]) for n in names], ("recipe", "description")))
        return
    rows = []
    for name in list_models(args.include, args.exclude, pretrained=args.pretrained):
        info = model_info(name)
        rows.append((name, f"{info.params:,}", _format_count(info.macs), f"{info.min_input_size}x{info.min_input_size}", _released(info) or "-"))
    print(_table(rows, ("model", "params", "MACs", "min input", "weights")))


def cmd_info(args):
    from zoo.models.base import count_macs
    from zoo.models import model_info

    if args.model.endswith(".tflite"):
        from zoo import mobile

        print("\n".join(mobile.describe(args.model)))
        return
    info = model_info(args.model)
    model = info.builder()
    print(f"{info.name}: {info.reference}")
    print(f"params {model.count_params():,}  MACs {count_macs(model):,}  min input {info.min_input_size}x{info.min_input_size}")
    print(f"input {tuple(model.input.shape[1:])} uint8-range RGB (0-255), output {tuple(model.output.shape[1:])} logits")
    print(f"released weights: {_released(info, details=True) or 'none'} (zoo list --pretrained)\n")
    rows = [(layer.name, type(layer).__name__, str(tuple(layer.output.shape[1:])), f"{layer.count_params():,}") for layer in model.layers]
    print(_table(rows, ("layer", "type", "output shape", "params")))


class CommandFailed(Exception):
    """A command that ran and failed for a reason its message says in full (exit code 1)."""


def cmd_train(args):
    from zoo import recipe as recipes
    from zoo.training import TrainingDiverged, train

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.data_dir={recipes.toml_value(args.data_dir)}")
    if args.tfds_data_dir:
        overrides.append(f"data.tfds_data_dir={recipes.toml_value(args.tfds_data_dir)}")
    if args.epochs is not None:
        overrides.append(f"training.epochs={args.epochs}")
    recipe = recipes.load(args.recipe, overrides)
    out = args.run_dir = args.out or os.path.join("runs", recipe["name"])
    try:
        train(
            recipe, out, overwrite=args.overwrite, strategy=args.strategy, data_threads=args.data_threads,
            backup_every=args.backup_every, backend_choice={"requested": args.backend, "why": args.backend_why},
            augment_on=args.augment_on,
        )
    except TrainingDiverged as e:
        raise CommandFailed(e) from None


def _tta_words(args):
    views = ["flip"] * args.tta_flip + [f"{args.tta_shift}-pixel shifts"] * bool(args.tta_shift)
    return f", {' + '.join(views)} TTA" if views else ""


def cmd_eval(args):
    import json

    from zoo import pretrained
    from zoo.data import DataUnavailableError, Split, load_dataset
    from zoo.evaluation import check_classes, evaluate
    from zoo.console import startup_noise_filtered
    from zoo.loading import KerasClassifier, load_classifier, test_images_for, trained_on, trained_with_flips

    with startup_noise_filtered():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" line
        classifier, model_class_names = load_classifier(args.model, weights=args.weights)  # a TFLite file, a SavedModel too
    height, width, channels = classifier.input_shape
    model = classifier.model if isinstance(classifier, KerasClassifier) else classifier  # `evaluate` runs Keras models itself
    if args.data_dir:  # only the test images are decoded
        test, class_names, part = test_images_for(args.model, (height, width, channels), args.data_dir, args.weights)
        source = os.path.abspath(args.data_dir)
        if args.limit:
            keep = np.random.default_rng(0).permutation(len(test))[: args.limit]
            test = Split(test.images[keep], test.labels[keep])
    else:
        try:
            dataset = load_dataset(
                args.source or trained_on(args.model, args.weights), tfds_data_dir=args.tfds_data_dir, image_size=(height, width), channels=channels,
                validation_size=0, limit=args.limit,
            )
        except DataUnavailableError as e:
            if not pretrained.is_tag(args.weights):
                raise
            card = pretrained.card(args.model, args.weights)
            raise DataUnavailableError(f"{e} The figures of {_model_title(args)} were measured on {card['data']['test']}.") from None
        test, class_names, source, part = dataset.test, dataset.class_names, dataset.source, "test"
    check_classes(model, class_names, model_class_names, source)
    if args.tta_flip and trained_with_flips(args.model, args.weights) is False:
        print(f"note: {_model_title(args)} was trained without mirrored images (augment.flip = false): --tta-flip "
              "averages in views it never saw (a mirrored digit is no digit)", file=sys.stderr, flush=True)
    result = evaluate(model, test, class_names, tta_flip=args.tta_flip, tta_shift=args.tta_shift or 0)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{_model_title(args)} on {source}, {part} ({result['images']} images{_tta_words(args)})")
    print(f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}\n")
    rows = [(name, f"{acc:.4f}") for name, acc in result["per_class_accuracy"].items()]
    print(_table(rows, ("class", "accuracy")))
    print("\nconfusion matrix (rows: true, columns: predicted)")
    print(_table([(n, *row) for n, row in zip(class_names, result["confusion_matrix"])], ("", *[n[:5] for n in class_names])))


def cmd_release(args):
    from zoo import pretrained
    from zoo.release import release, update_release

    if pathlib.Path(args.run, pretrained.CARD).is_file():  # a release: bring it up to today's
        card = update_release(
            args.run, data_dir=args.data_dir, tfds_data_dir=args.tfds_data_dir, source=args.source,
            tflite=not args.card_only, overwrite=args.overwrite,
        )
        verb = "updated the card of" if args.card_only else "re-exported the TFLite files of"
    else:
        if args.card_only:
            raise ValueError(f"--card-only updates a release folder (one with {pretrained.CARD}); {args.run} is not one.")
        card = release(
            args.run, data_dir=args.data_dir, tfds_data_dir=args.tfds_data_dir, source=args.source, tag=args.tag,
            out=args.out, quantize=_csv(args.quantize), data_description=args.data_description, overwrite=args.overwrite,
        )
        verb = "released"
    print(
        f"{verb} {card['model']}(weights={card['weights']!r}) -> {card['folder']}"
        f"\ntest top-1 {_pct(card['accuracy']['test_top1'])}"
        + (f" (flip TTA {_pct(card['accuracy']['test_top1_flip_tta'])})" if card["accuracy"]["test_top1_flip_tta"] is not None else "")
        + f", multi-view TTA {_pct(card['accuracy']['test_top1_multi_view_tta'])}, "
        f"int8 {_pct(card['int8']['test_top1'])}"
    )


def cmd_export(args):
    from zoo import export
    from zoo.loading import load_model

    formats = _csv(args.formats)
    quantize = _csv(args.quantize)
    check_output_folder(args.out, args.overwrite, "export")  # before the model loads
    model, class_names = load_model(args.model, weights=args.weights)
    calibration = verification = labels = None
    if args.calibration_data:
        from zoo.data import load_dataset
        from zoo.evaluation import check_classes

        height, width, channels = model.input.shape[1:]
        data = load_dataset(data_dir=args.calibration_data, image_size=(height, width), channels=channels, validation_size=0)
        check_classes(model, data.class_names, class_names, data.source)
        calibration = data.train.images[: args.calibration_images]
        verification, labels = data.test.images[: args.verify_images], data.test.labels[: args.verify_images]
        class_names = data.class_names
    record = export.export_model(
        model, args.out, formats=formats, quantize=quantize, calibration=calibration, verification=verification,
        verification_labels=labels, class_names=class_names, overwrite=args.overwrite, enforce_bounds=not args.no_verify,
    )
    rows = []
    for variant, entry in record["variants"].items():
        v = entry.get("verification", {})
        rows.append((entry["file"], f"{entry['bytes'] / 1e6:.2f} MB", _pct(v.get("agreement")), _pct(v.get("accuracy")), {True: "yes", False: "NO"}.get(v.get("passed"), "-")))
    if rows:
        print(_table(rows, ("file", "size", "agreement", "accuracy", "verified")))
    print(f"exported {record['model']} -> {args.out} (export.json, labels.txt{', saved_model/' if 'saved_model' in formats else ''})")


def cmd_viz(args):
    from zoo import viz
    from zoo.loading import load_model

    if args.image is None and not args.filters:
        raise ValueError("Nothing to draw: give --image IMAGE (filters, feature maps and Grad-CAM), or --filters.")
    model, class_names = load_model(args.model, weights=args.weights)
    image = viz.load_image(args.image, model) if args.image else None
    items = viz.report(
        model, args.out, image=image, image_name=os.path.basename(args.image) if args.image else "image",
        class_names=class_names, layer_names=_csv(args.layers) if args.layers else None, top_k=args.top_k,
        overwrite=args.overwrite,
    )
    for file, _ in items:
        print(os.path.join(args.out, file))
    print(f"open {os.path.join(args.out, 'index.html')}")


def cmd_predict(args):
    import json

    from zoo.data import image_files
    from zoo.loading import load_classifier, load_images, read_labels

    paths = image_files(args.images)
    if not paths:
        raise FileNotFoundError(f"No image files in {', '.join(args.images)}.")
    given = read_labels(args.labels) if args.labels else None
    classifier, names = load_classifier(args.model, weights=args.weights)
    images = load_images(paths, classifier.input_shape)
    probabilities = classifier.predict(images)
    if given is not None and len(given) != probabilities.shape[1]:
        raise ValueError(f"{args.labels} names {len(given)} classes, one per line, but the model has {probabilities.shape[1]} outputs.")
    labels = given or names or [str(i) for i in range(probabilities.shape[1])]
    top = min(args.top, probabilities.shape[1])
    report = [
        {"image": str(path), "top": [{"class": labels[i], "probability": float(p[i])} for i in np.argsort(-p)[:top]]}
        for path, p in zip(paths, probabilities)
    ]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for item in report:
        print(item["image"])
        for rank, guess in enumerate(item["top"], start=1):
            print(f"  {rank}. {guess['class']:<16} {guess['probability']:.4f}")


def cmd_bench(args):
    import json

    from zoo import export

    folder = args.folder
    if not os.path.isfile(os.path.join(folder, "export.json")):
        raise FileNotFoundError(f"No export.json in {folder}: point zoo bench at a folder written by zoo export.")
    record = json.loads(pathlib.Path(folder, "export.json").read_text())
    if not record["variants"]:
        raise FileNotFoundError(f"The export in {folder} has no TFLite files to time (it was made with --formats saved_model).")
    first = next(iter(record["variants"].values()))
    shape = first["input"]["shape"][1:]
    if args.data_dir:
        from zoo.data import load_dataset

        images = load_dataset(data_dir=args.data_dir, image_size=tuple(shape[:2]), channels=shape[2], validation_size=0, limit=64).test.images
    else:
        images = np.random.default_rng(0).integers(0, 256, size=(64, *shape), dtype=np.uint8)
    result = export.benchmark(folder, images, num_threads=args.threads, runs=args.runs)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    delegated = {True: "yes", False: "NO", None: "-"}
    rows = [
        (r["variant"], f"{r['bytes'] / 1e6:.2f} MB", f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['images_per_second']:.0f}", delegated[r.get("fully_accelerated")])
        for r in result["results"]
    ]
    print(f"{result['model']}: single-image latency over {args.runs} runs, {args.threads} thread(s)")
    print(_table(rows, ("variant", "size", "median ms", "p90 ms", "images/s", "fully delegated (LiteRT CPU)")))


def _model_title(args):
    return f"{args.model}(weights={args.weights!r})" if args.weights else args.model


def _csv(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def _pct(value):
    return "-" if value is None else f"{value * 100:.2f}%"
