"""Command line: ``vggnet train|finetune|summary|eval|convert|predict|export|study``, a thin
layer over the Python API (``vggnet.train``, ``vggnet.finetune``, ``vggnet.evaluate`` ...).

Every command maps to one function; a bad argument gets one clear line on stderr
and exit code 2, not a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from .configs import INITS, PRECISIONS, PROTOCOLS, RECIPES, STUDY_CONFIGS
from .errors import VggnetError, os_error

EXIT_STOPPED = 75   # EX_TEMPFAIL of sysexits.h: stopped before the end, continue it with --resume
STOPPED_EPILOG = (f"exit status: 0 finished, 2 a one-line error, {EXIT_STOPPED} stopped early by --time-limit, "
                  "Ctrl-C or SIGTERM with a checkpoint to continue from (0 under torchrun)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a VGG (default: VGG-16-BN on CIFAR-10, fast recipe)", epilog=STOPPED_EPILOG)
    p.add_argument("--config", help="Table 1 configuration: A, A-LRN, B, C, D, E (the paper's nets, without BN) "
                                    "or a name: vgg16, vgg16_bn ... (default: vgg16_bn)")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm after every conv (default: as the name says: vgg16_bn with, D and vgg16 without)")
    p.add_argument("--recipe", help=f"hyper-parameter set: {', '.join(RECIPES)} "
                   "(default: fast with BatchNorm, fast-plain without)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    p.add_argument("--lr", type=float, help="override the recipe's (peak) learning rate")
    p.add_argument("--weight-decay", type=float, help="override the recipe's weight decay")
    p.add_argument("--init", choices=list(INITS), help="override the recipe's initialisation")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="bf16 autocast where the device runs it (a GPU without bf16: fp16 with loss scaling; a CPU "
                        "without: fp32), or fp32 (default: the recipe's, bf16)")
    p.add_argument("--train-scale", type=int, nargs="+", metavar="S",
                   help="section 3.1: rescale the smaller side to S (one value) or to S drawn from [SMIN, SMAX]")
    p.add_argument("--crop-size", type=int, help="training crop (default: the image size, 224 when streamed)")
    p.add_argument("--lighting", type=float, help="std of the PCA colour shift (3.1, AlexNet: 0.1; 0: off)")
    p.add_argument("--label-smoothing", type=float, help="override the recipe's label smoothing (0: off)")
    p.add_argument("--dropout", type=float, help="override the recipe's dropout of the first two FC layers")
    p.add_argument("--cutout", type=int, metavar="PX",
                   help="override the recipe's Cutout: a PX x PX square set to the mean colour (0: off)")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="evaluate and save a moving average of the weights, updated each step with this decay "
                        "(e.g. 0.999; 0: off)")
    p.add_argument("--micro-batch", type=int, help="accumulate gradients over micro-batches of this size")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="warm start (3.1): from a net A checkpoint (first four convs, three FC) or the same net")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="read images from disk each epoch (default: only when they do not fit in memory)")
    p.add_argument("--workers", type=int, help="DataLoader workers of the streaming path (default: 2)")
    p.add_argument("--checkpoint-activations", action="store_true", default=None,
                   help="recompute conv activations in backward: less memory for about a third more compute")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="under torchrun: BatchNorm over the global batch")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="leave unreadable images out (listed in RUN_DIR/skipped.txt) instead of stopping")
    p.add_argument("--budget", type=float, metavar="MIN",
                   help="fit the schedule to MIN minutes of training: epoch 1 is timed and the epochs set to what "
                        "fits (onecycle recipes; instead of --epochs)")
    p.add_argument("--time-limit", type=float, metavar="MIN",
                   help="checkpoint and stop after MIN minutes; --resume continues")
    p.add_argument("--data", help="data set root (train/<class>/*, test/<class>/*) or cifar-10-python.tar.gz; "
                                  "default: $VGGNET_DATA, else data/cifar10, data/cifar10-jpeg, "
                                  "../shared/data/cifar10-jpeg")
    p.add_argument("--download", metavar="DIR", help="download the official CIFAR-10 archive into DIR (MD5-checked)")
    p.add_argument("--out", help="run folder (default: runs/<model>-<data set>, e.g. runs/vgg16_bn-cifar10-jpeg)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue RUN_DIR (or --out) from its last checkpoint with the settings it was started "
                        "with; only --epochs, --time-limit and --budget may change")
    p.add_argument("--seed", type=int, help="seed of the initialisation, split, order and augmentation (default: 0)")
    p.add_argument("--val-size", type=float, metavar="N",
                   help="training images held out for validation: a count, a fraction such as 0.05, or 0 for "
                        "none (default: 10 %%, 5,000 of CIFAR-10)")
    p.add_argument("--width", type=float, help="channel multiplier (default: 1.0, the paper's widths)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    p.add_argument("--limit-train", type=int, help="train on a seeded random subset of N images")
    p.add_argument("--limit-test", type=int, help="test on a seeded random subset of N images")
    p.add_argument("--log-every", type=int, metavar="N",
                   help="a progress line every N steps when the output is not a terminal (default: 20)")
    p.add_argument("--device", help="auto (a CUDA GPU, else Apple MPS, else the CPU), cpu, cuda, cuda:N or mps "
                                    "(default: auto)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the training step (a compilation per batch shape at start; BENCHMARKS 20 "
                        "has the GPU command that measures whether it pays)")
    p.set_defaults(func=_run_train)


# CLI flag -> RunSettings or Recipe field, where the names differ
_TRAIN_FIELDS = {"time_limit": "time_limit_min", "budget": "budget_min"}


def _run_train(args: argparse.Namespace) -> int:
    from .training import train
    if args.train_scale is not None and len(args.train_scale) not in (1, 2):
        raise VggnetError("--train-scale takes S or SMIN SMAX")
    if args.budget is not None and args.epochs is not None:
        raise VggnetError("give --epochs or --budget, not both (--budget sets the epochs)")
    options = {_TRAIN_FIELDS.get(k, k): v for k, v in vars(args).items() if k not in ("command", "func", "resume")}
    options["train_scale"] = (args.train_scale[0], args.train_scale[-1]) if args.train_scale else None
    if isinstance(args.resume, str):
        if args.out is not None and args.out != args.resume:
            raise VggnetError(f"--resume {args.resume} and --out {args.out} name two run folders; give one")
        options["out"] = args.resume
    return exit_status(train(resume=bool(args.resume), **options))   # it prints its header, progress and summary


def exit_status(result: dict) -> int:
    """0 for a run that reached its end, EXIT_STOPPED for one stopped early (--time-limit,
    Ctrl-C, SIGTERM) so that scripts and schedulers can tell them apart. Under torchrun a
    stopped run exits 0: torchrun restarts workers that exit non-zero."""
    return EXIT_STOPPED if result.get("stopped") and "TORCHELASTIC_RUN_ID" not in os.environ else 0


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fit pretrained weights (torchvision, Keras, a vggnet run) to your image folder",
                       epilog=STOPPED_EPILOG)
    p.add_argument("--weights", required=True, help="pretrained weights (.safetensors, `vggnet convert` output) "
                                                    "or a run folder")
    p.add_argument("--data", required=True, help="image folder with train/<class>/* and test/<class>/*")
    p.add_argument("--mode", choices=["full", "linear"], default="full",
                   help="full: train every layer, the pretrained ones at a smaller lr; linear: a new head on "
                        "cached features of the frozen net (default: full)")
    p.add_argument("--features", choices=["fc7", "pool5"], default="fc7",
                   help="--mode linear: the frozen net ends at fc7 (train fc8) or pool5 (train fc6-fc8) "
                        "(default: fc7)")
    p.add_argument("--freeze-until", metavar="LAYER",
                   help="--mode full: keep the layers up to LAYER fixed (conv4_3, pool5, fc7 ...)")
    p.add_argument("--epochs", type=int, help="default: 20 (full), 100 (linear), more where a small folder would "
                                             "make fewer than 200 steps")
    p.add_argument("--lr", type=float, help="the new head's peak learning rate (default: 0.01)")
    p.add_argument("--backbone-lr-scale", type=float, metavar="F",
                   help="--mode full: the pretrained layers' lr as a share of the head's (default: 0.1)")
    p.add_argument("--batch-size", type=int, help="default: 32")
    p.add_argument("--out", help="run folder (default: runs/<model>-<data set>-finetune, or -linear)")
    p.add_argument("--resume", action="store_true", default=None, help="--mode full: continue the run in --out")
    p.add_argument("--seed", type=int, help="default: 0")
    p.add_argument("--val-size", type=float, metavar="N", help="held out for validation: a count, a fraction, or 0 "
                                                                "(default: 10 %%)")
    p.add_argument("--limit-train", type=int, help="train on a seeded random subset of N images")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.set_defaults(func=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from .transfer import finetune
    options = {k: v for k, v in vars(args).items() if k not in ("command", "func", "weights", "data", "mode",
                                                                 "features") and v is not None}
    return exit_status(finetune(args.weights, args.data, mode=args.mode, features=args.features, **options))


def _add_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="per-layer table: shapes, memory, parameters, MACs, receptive field")
    p.add_argument("--config", default="D", help="Table 1 configuration or a name (vgg16_bn ...)")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm after every conv (default: as the name says)")
    p.add_argument("--input", type=int, nargs="+", default=[224], metavar="SIZE",
                   help="input side (or height width), default 224")
    p.add_argument("--head", default=None, help="paper, dense or cifar (default: cifar below 224 px, else paper)")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of fc8")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    p.set_defaults(func=_run_summary)


def _run_summary(args: argparse.Namespace) -> int:
    from .summary import format_summary, summarize
    if len(args.input) > 2:
        raise VggnetError("--input takes one size or a height and a width")
    h, w = args.input[0], args.input[-1]
    head = args.head or ("paper" if min(h, w) >= 224 else "cifar")
    rows = summarize(args.config, batch_norm=args.batch_norm, input_size=(h, w), head=head,
                     num_classes=args.num_classes)
    print(format_summary(rows, args.format))
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 error with the paper's test protocols (section 3.2)")
    p.add_argument("--weights", action="append", required=True,
                   help="weights (.safetensors) or a run folder; give several times for an ensemble")
    p.add_argument("--data", required=True, help="image folder: <class>/* , a root with test/, or <wnid>_*.JPEG files")
    p.add_argument("--protocol", default="single",
                   help=f"comma-separated, or 'all': {', '.join(PROTOCOLS)} (default: single)")
    p.add_argument("--scales", type=int, nargs="+", help="test scales Q (default: from the training scale)")
    p.add_argument("--limit", type=int, default=0, help="evaluate a seeded random subset of N images")
    p.add_argument("--batch-size", type=int, default=50, help="images scored together")
    p.add_argument("--precision", choices=[*PRECISIONS, "int8"],
                   help="scoring numerics, BN folded: fp32, bf16, fp16 (GPUs), or int8 (CPUs) calibrated on 256 "
                        "images of DATA/train (else of DATA) (default: bf16 where the device runs it, fp16 on "
                        "older GPUs, else fp32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the scoring nets (fp32/bf16): a compilation per input shape, "
                        "so it pays only for many batches of one shape")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format")
    add_device(p)
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, format_report
    say_device("eval", args.device)
    protocols = list(PROTOCOLS) if args.protocol == "all" else [p.strip() for p in args.protocol.split(",")]
    report = evaluate(args.weights, args.data, protocols, args.scales, args.limit, args.batch_size, args.precision,
                      args.compile, args.device)
    print(format_report(report, args.format))
    return 0


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU, else Apple MPS, else the CPU), cpu, cuda, cuda:N or mps")


def say_device(command: str, name: str) -> None:
    """The first line, on stderr (stdout may be JSON): where the command computes."""
    from .runtime import device_model, resolve_device
    device = resolve_device(name)
    print(f"vggnet {command} on {device} ({device_model(device)})", file=sys.stderr)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="torchvision (or Keras) VGG weights to vggnet's safetensors format")
    p.add_argument("--from", dest="source", choices=["torchvision", "keras"],
                   help="the file's origin (default: from its extension: .pth/.pt torchvision, .h5 keras)")
    p.add_argument("file", help="torchvision vgg*.pth state dict, or Keras VGG16/VGG19 .h5")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .convert import convert_keras, convert_torchvision
    from .weights import read_metadata
    source = args.source or SOURCE_BY_SUFFIX.get("".join(Path(args.file).suffixes[-2:]).lower()) \
        or SOURCE_BY_SUFFIX.get(Path(args.file).suffix.lower())
    if source is None:
        raise VggnetError(f"{args.file}: cannot tell torchvision from Keras by the extension; give --from")
    out = (convert_torchvision if source == "torchvision" else convert_keras)(args.file, args.out)
    spec = read_metadata(out)
    print(f"wrote {out}: config {spec.config}{' BN' if spec.batch_norm else ''}, "
          f"{spec.num_classes} classes, {spec.channel_order} input")
    return 0


SOURCE_BY_SUFFIX = {".pth": "torchvision", ".pt": "torchvision", ".h5": "keras", ".weights.h5": "keras"}


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="class names and probabilities for an image or a folder of images")
    p.add_argument("target", help="an image file or a folder (searched recursively)")
    p.add_argument("--weights", required=True, help="weights (.safetensors) or a run folder")
    p.add_argument("--topk", type=int, default=5, help="classes listed per image")
    p.add_argument("--batch-size", type=int, default=32, help="images scored together")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="scoring numerics, BN folded (default: bf16 where the device runs it, fp16 on older GPUs, "
                        "else fp32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the scoring net: a compilation per batch size, for large folders")
    p.add_argument("--cam", metavar="OUT", help="Grad-CAM heat map PNG (a folder of PNGs for a folder of images)")
    p.add_argument("--cam-layer", help="conv layer for Grad-CAM (default: the last conv)")
    add_device(p)
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:

    from .evaluation import EvalModel
    from .prediction import format_predictions, list_images, predict, save_cam
    from .weights import load_weights
    say_device("predict", args.device)
    results = predict(args.target, args.weights, args.topk, args.batch_size, args.precision, args.compile,
                      args.device)
    print(format_predictions(results, args.format))
    if args.cam:
        model = EvalModel(*load_weights(args.weights))      # loaded once for every heat map
        files = list_images(args.target)
        for f in files:
            out = Path(args.cam) if len(files) == 1 and Path(args.target).is_file() else Path(args.cam) / f"{f.stem}-cam.png"
            save_cam(f, model, out, args.cam_layer)
    return 1 if any("error" in r for r in results) else 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export weights to ONNX")
    p.add_argument("--weights", required=True, help="weights (.safetensors) or a run folder")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--dense", action="store_true", help="export the fully convolutional form (any input size)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .export import export_onnx
    out = export_onnx(args.weights, args.onnx, args.dense, args.opset)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, weights inside; class names and preprocessing in "
          "its metadata_props)")
    return 0


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="the paper's comparisons (Tables 3-5, 4.1) re-run on a data set",
                       epilog=f"exit status: 0 finished, 2 a one-line error, {EXIT_STOPPED} stopped early by Ctrl-C "
                              "or SIGTERM (the same command continues it)")
    p.add_argument("data", help="image folder with train/ and test/ (e.g. ../shared/data/cifar10-jpeg)")
    p.add_argument("--configs", default=",".join(STUDY_CONFIGS), help="comma-separated configurations")
    p.add_argument("--epochs", type=int, default=15, help="epochs per run (one budget for all)")
    p.add_argument("--seeds", type=int, default=1, help="runs per configuration (mean and spread reported)")
    p.add_argument("--out", default="runs/study", help="study folder: one run folder per run, study.md/.png")
    p.add_argument("--recipe", default="fast", help=f"one recipe for every run: {', '.join(RECIPES)}")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=True,
                   help="BatchNorm after every conv (default: on, so that every depth trains from scratch)")
    p.add_argument("--jitter", type=int, nargs=2, default=[32, 48], metavar=("SMIN", "SMAX"),
                   help="train --jitter-config again with scale jittering S in [SMIN, SMAX] (Table 3)")
    p.add_argument("--no-jitter", action="store_true", help="skip the fixed-against-jittered comparison")
    p.add_argument("--jitter-config", default="D", help="configuration trained with and without jittering")
    p.add_argument("--eval-images", type=int, default=1000, help="seeded test subset for the protocols (0: all)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier for every configuration")
    p.add_argument("--limit-train", type=int, default=0, help="train on a random subset of N images")
    p.add_argument("--val-size", type=float, default=None, metavar="N",
                   help="training images held out for validation: a count, a fraction, or 0 (default: 10 %%)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    add_device(p)
    p.set_defaults(func=_run_study)


def _run_study(args: argparse.Namespace) -> int:
    from .study import format_study, study
    summary = study(args.data, [c for c in args.configs.split(",") if c.strip()], epochs=args.epochs,
                    seeds=args.seeds, out=args.out, recipe=args.recipe, batch_norm=args.batch_norm,
                    jitter=None if args.no_jitter else tuple(args.jitter), jitter_config=args.jitter_config,
                    eval_images=args.eval_images, width=args.width, limit_train=args.limit_train,
                    val_size=args.val_size, threads=args.threads, device=args.device)
    if summary.get("stopped"):
        return exit_status(summary)
    print(format_study(summary))
    return 0


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="upload a run's weights to the Hugging Face Hub (config.json, model.safetensors, "
                                    "a model card); needs the hub extra")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder (its best weights) or a weights file")
    p.add_argument("--repo", help="the Hub repo id, user/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--save-only", metavar="DIR", help="write the Hub folder to DIR instead of uploading it")
    p.set_defaults(func=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    from .hub import push, save_pretrained
    if args.save_only:
        print(f"wrote {save_pretrained(args.run, args.save_only)} (config.json, model.safetensors, README.md)")
        return 0
    if not args.repo:
        raise VggnetError("give --repo USER/NAME (or --save-only DIR to write the Hub folder here)")
    print(f"pushed {args.run} to {push(args.run, args.repo, args.private)}")
    return 0


def _add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="list (or --clear) the decoded data sets and features kept between runs")
    p.add_argument("--clear", action="store_true", help="delete them; they are rebuilt when next needed")
    p.set_defaults(func=_run_cache)


def _run_cache(args: argparse.Namespace) -> int:
    from .data import cache_dir, cache_entries, clear_cache
    if args.clear:
        n, size = clear_cache()
        print(f"removed {n} file(s), {size / 2**20:.1f} MiB, from {cache_dir()}")
        return 0
    entries = cache_entries()
    for path, size in entries:
        print(f"{size / 2**20:9.1f} MiB  {path.name}")
    print(f"{sum(s for _, s in entries) / 2**20:.1f} MiB in {len(entries)} file(s) in {cache_dir()} "
          "(set VGGNET_CACHE to move it; vggnet cache --clear to empty it)")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train, _add_finetune, _add_summary, _add_eval, _add_convert, _add_predict, _add_export, _add_study,
    _add_push, _add_cache]


class _HelpWithDefaults(argparse.HelpFormatter):
    """--help states each option's default, unless it is None/off or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _HelpWithDefaults)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = _Parser(prog="vggnet", description="VGGNet (Simonyan & Zisserman, 2014) on PyTorch")
    parser.add_argument("--version", action="version", version=f"vggnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 2 a one-line error (bad argument or file, a
    failed write), 75 a training run stopped before its end and resumable (--time-limit, Ctrl-C,
    SIGTERM), 1 an internal error (VGGNET_DEBUG=1 shows its traceback), 130 interrupted."""
    args = build_parser().parse_args(argv)
    from .runtime import reuse_freed_memory
    reuse_freed_memory()    # every command: reused buffers instead of fresh page faults (BENCHMARKS 16)
    if hasattr(sys.stdout, "reconfigure"):   # epoch lines reach a log file as they happen
        sys.stdout.reconfigure(line_buffering=True)
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except (ValueError, OSError) as exc:     # VggnetError, and what the file system says
        message = os_error(exc) if isinstance(exc, OSError) else exc
        print(f"vggnet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vggnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("VGGNET_DEBUG"):
            raise
        first = (str(exc).splitlines() or [""])[0][:300]
        print(f"vggnet {args.command}: internal error: {type(exc).__name__}: {first} "
              "(VGGNET_DEBUG=1 shows the traceback; please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
