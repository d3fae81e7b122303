"""``vggnet study``: the paper's comparisons re-run in miniature (Tables 3-5, section 4.1).

Every listed configuration is trained with one recipe and one budget, each as an
ordinary run folder (an interrupted study resumes its run and skips finished ones),
then tested with every protocol of section 3.2. The report puts our errors beside the
paper's ImageNet errors and says, claim by claim, what holds at this scale.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from .configs import PROTOCOLS, STUDY_CONFIGS, Recipe, get_recipe, resolve_config, weight_layers
from .errors import VggnetError
from .evaluation import evaluate
from .files import write_text_atomic

# The paper's ILSVRC-2012 validation errors (top-1 %, top-5 %). Its Tables 3 and 4 use
# dense evaluation (3.2): Table 3 at one test scale, Table 4 at three; Table 5 compares
# dense, multi-crop and both, for jittered training. Fixed training: S = 256.
PAPER_ERRORS: dict[tuple[str, str, str], tuple[float, float]] = {
    ("A", "fixed", "dense"): (29.6, 10.4), ("A-LRN", "fixed", "dense"): (29.7, 10.5),
    ("B", "fixed", "dense"): (28.7, 9.9), ("C", "fixed", "dense"): (28.1, 9.4),
    ("D", "fixed", "dense"): (27.0, 8.8), ("E", "fixed", "dense"): (27.3, 9.0),
    ("C", "jittered", "dense"): (27.3, 8.8), ("D", "jittered", "dense"): (25.6, 8.1),
    ("E", "jittered", "dense"): (25.5, 8.0),
    ("B", "fixed", "multi-scale"): (28.2, 9.6), ("C", "fixed", "multi-scale"): (27.7, 9.2),
    ("D", "fixed", "multi-scale"): (26.6, 8.6), ("E", "fixed", "multi-scale"): (26.9, 8.7),
    ("C", "jittered", "multi-scale"): (26.3, 8.2), ("D", "jittered", "multi-scale"): (24.8, 7.5),
    ("E", "jittered", "multi-scale"): (24.8, 7.5),
    ("D", "jittered", "multi-crop"): (24.6, 7.5), ("E", "jittered", "multi-crop"): (24.6, 7.4),
    ("D", "jittered", "dense+multi-crop"): (24.4, 7.2), ("E", "jittered", "dense+multi-crop"): (24.4, 7.1),
}
PAPER_NOTES = {("B-5x5", "fixed", "single"): "B + 7 top-1 (4.1, centre crop)"}


@dataclass(frozen=True)
class StudyRun:
    """One training run of the study: a configuration, a training scale and a seed."""

    config: str
    seed: int
    train_scale: tuple[int, int] | None = None   # None: fixed scale (the images' own size)

    @property
    def scale_kind(self) -> str:
        return "jittered" if self.train_scale else "fixed"

    @property
    def name(self) -> str:
        scale = f"S{self.train_scale[0]}-{self.train_scale[1]}" if self.train_scale else "fixed"
        return f"{self.config}-{scale}-seed{self.seed}"


def plan_runs(configs: list[str], seeds: int, jitter: tuple[int, int] | None, jitter_config: str) -> list[StudyRun]:
    """Every configuration at the fixed scale, and ``jitter_config`` again with scale jittering
    (Table 3's fixed against jittered comparison), each for ``seeds`` seeds."""
    runs = [StudyRun(c, s) for c in configs for s in range(seeds)]
    if jitter:
        runs += [StudyRun(jitter_config, s, tuple(jitter)) for s in range(seeds)]
    return runs


def canonical_config(name: str) -> str:
    """A Table 1 letter (or B-5x5) from what the user typed; ValueError if unknown."""
    return resolve_config(name)[0]


def train_run(run: StudyRun, out: Path, recipe: Recipe, data: str, batch_norm: bool,
              **settings: object) -> tuple[Path, bool]:
    """Train one run (resuming it when a checkpoint is there, skipping it when finished);
    (its folder, whether it was stopped before its end)."""
    from .settings import RunSettings
    from .training import train
    folder = out / run.name
    if (folder / "results.json").is_file():
        print(f"study: {run.name} is done (skipped)", flush=True)
        return folder, False
    resume = (folder / "last.safetensors").is_file()
    print(f"study: {'resuming' if resume else 'training'} {run.name}: configuration {run.config}, "
          f"{'scale jittering ' + str(list(run.train_scale)) if run.train_scale else 'fixed scale'}, seed {run.seed}",
          flush=True)
    result = train(RunSettings(config=run.config, batch_norm=batch_norm, recipe=recipe.replace(
        train_scale=run.train_scale), data=data, out=str(folder), seed=run.seed, **settings), resume=resume)
    return folder, bool(result.get("stopped"))


def evaluate_run(folder: Path, data: str, limit: int) -> list[dict]:
    """Every protocol of 3.2 on the run's final weights; kept in protocols.json."""
    cached = folder / "protocols.json"
    if cached.is_file():
        return json.loads(cached.read_text())["rows"]
    report = evaluate([folder / "last.safetensors"], data, protocols=list(PROTOCOLS), limit=limit)
    write_text_atomic(cached, json.dumps(report, indent=2))
    return report["rows"]


def study(data: str, configs: list[str] | None = None, *, epochs: int = 15, seeds: int = 1,
          out: str | Path = "runs/study", recipe: str | Recipe = "fast", batch_norm: bool = True,
          jitter: tuple[int, int] | None = (32, 48), jitter_config: str = "D", eval_images: int = 1000,
          **settings: object) -> dict:
    """Train, test and compare (the Python API behind ``vggnet study``); writes study.md,
    study.json and study.png into ``out``."""
    if epochs < 1 or seeds < 1 or eval_images < 0:
        raise VggnetError(f"--epochs and --seeds must be >= 1 and --eval-images >= 0 (0: every test image); got "
                          f"{epochs}, {seeds}, {eval_images}")
    configs = [canonical_config(c) for c in (configs or list(STUDY_CONFIGS))]
    if not Path(data, "test").is_dir():
        raise VggnetError(f"{data}: the study needs an image folder with train/ and test/ (its protocols read test images)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = (get_recipe(recipe) if isinstance(recipe, str) else recipe).replace(epochs=epochs)
    results: list[dict] = []
    model_meta: dict = {}
    for run in plan_runs(configs, seeds, jitter, canonical_config(jitter_config)):
        folder, stopped = train_run(run, out, base, data, batch_norm, **settings)
        if stopped:     # Ctrl-C or SIGTERM: the whole study stops; the same command continues it
            print(f"study stopped in {run.name}; the same command continues it (finished runs are skipped)")
            return {"stopped": True, "run": run.name}
        model_meta = model_meta or json.loads((folder / "run.json").read_text())["model"]
        for row in evaluate_run(folder, data, eval_images):
            results.append({"config": run.config, "scale": run.scale_kind, "train_scale": row_scale(run),
                            "seed": run.seed, **row})
    summary = {"epochs": epochs, "seeds": seeds, "recipe": base.name, "batch_norm": batch_norm,
               "width": settings.get("width", 1.0), "input_size": model_meta["input_size"], "head": model_meta["head"],
               "num_classes": model_meta["num_classes"], "rows": aggregate(results)}
    summary["claims"] = claims(summary["rows"])
    write_text_atomic(out / "study.json", json.dumps(summary, indent=2))
    write_text_atomic(out / "study.md", format_study(summary))
    plot_study(summary, configs, out / "study.png")
    return summary


def row_scale(run: StudyRun) -> str:
    return f"[{run.train_scale[0]};{run.train_scale[1]}]" if run.train_scale else "image size"


# ---- aggregation and claims ---------------------------------------------------------------
def aggregate(results: list[dict]) -> list[dict]:
    """Mean and spread (sample std; 0 for one seed) over seeds, per (config, scale, protocol)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["config"], r["scale"], r["protocol"]), []).append(r)
    rows = []
    for (config, scale, protocol), rs in groups.items():
        top1, top5 = [100 * r["top1_error"] for r in rs], [100 * r["top5_error"] for r in rs]
        rows.append({"config": config, "scale": scale, "train_scale": rs[0]["train_scale"], "protocol": protocol,
                     "test_scales": rs[0]["scales"], "seeds": len(rs), "images": rs[0]["images"],
                     "top1": statistics.fmean(top1), "top1_std": statistics.stdev(top1) if len(rs) > 1 else 0.0,
                     "top5": statistics.fmean(top5), "top5_std": statistics.stdev(top5) if len(rs) > 1 else 0.0,
                     "paper": PAPER_ERRORS.get((config, scale, protocol)),
                     "paper_note": PAPER_NOTES.get((config, scale, protocol))})
    return rows


def _err(rows: list[dict], config: str, scale: str = "fixed", protocol: str = "dense") -> dict | None:
    return next((r for r in rows if (r["config"], r["scale"], r["protocol"]) == (config, scale, protocol)), None)


def _verdict(name: str, source: str, order: list[dict], holds: bool) -> dict:
    """One judged claim; "tie" when every compared error is the same (nothing to judge)."""
    ours = ", ".join(f"{r['config']}{'' if r['scale'] == 'fixed' else ' jittered'} {r['top1']:.2f}" for r in order)
    tie = len({round(r["top1"], 6) for r in order}) == 1
    return {"claim": name, "paper": source, "holds": None if tie else holds, "ours": ours}


def claims(rows: list[dict]) -> list[dict]:
    """The paper's comparisons, each judged on our top-1 errors (dense, one test scale, as
    Table 3; combined protocols as Table 5). Only claims whose runs are present."""
    out = []
    depth = [r for c in ("A", "B", "C", "D") if (r := _err(rows, c))]
    if len(depth) >= 2:
        out.append(_verdict("deeper nets err less (A > B > C > D)", "Table 3, 4.1", depth,
                            all(a["top1"] > b["top1"] for a, b in zip(depth, depth[1:]))))
    pairs = [("LRN does not help (A-LRN not better than A)", "Table 3, 4.1", "A-LRN", "A", False),
             ("1x1 convs help less than 3x3 at the same depth (C worse than D)", "Table 3, 4.1", "C", "D", True),
             ("two 3x3 convs beat one 5x5 (B-5x5 worse than B)", "4.1: +7 top-1", "B-5x5", "B", True),
             ("E does not beat D by much (depth saturates at 16-19)", "Table 3: 27.3 vs 27.0", "E", "D", False)]
    for name, source, worse, better, strict in pairs:
        a, b = _err(rows, worse), _err(rows, better)
        if a and b:
            holds = a["top1"] > b["top1"] if strict else a["top1"] >= b["top1"] - max(a["top1_std"], b["top1_std"], 0.5)
            out.append(_verdict(name, source, [a, b], holds))
    for config in sorted({r["config"] for r in rows if r["scale"] == "jittered"}):
        fixed, jit = _err(rows, config), _err(rows, config, "jittered")
        if fixed and jit:
            out.append(_verdict(f"scale jittering helps ({config})", "Table 3", [fixed, jit], jit["top1"] < fixed["top1"]))
    for r in rows:
        if r["protocol"] == "dense+multi-crop":
            parts = [_err(rows, r["config"], r["scale"], p) for p in ("multi-scale", "multi-crop")]
            if all(parts):
                name = f"dense and multi-crop are complementary ({r['config']}, {r['scale']})"
                both = [dict(p, config=f"{p['config']} {p['protocol']}") for p in parts + [r]]
                out.append(_verdict(name, "Table 5", both, r["top1"] < min(p["top1"] for p in parts)))
    return out


# ---- report -------------------------------------------------------------------------------------
def _pm(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.2f}" if seeds == 1 else f"{mean:.2f} ± {std:.2f}"


def format_study(summary: dict) -> str:
    """Markdown: the Tables 3-5 layout with the paper's errors beside ours, then the claims."""
    head = (f"# vggnet study: {summary['recipe']} recipe, {summary['epochs']} epochs, "
            f"{'with' if summary['batch_norm'] else 'without'} BatchNorm, width {summary['width']}, "
            f"{summary['seeds']} seed(s)\n\n"
            f"Ours: top-1 and top-5 test error (%) on {summary['rows'][0]['images'] if summary['rows'] else 0} test "
            "images, mean (± std over seeds). Paper: ILSVRC-2012 validation error of the same configuration, "
            "trained at S = 256 (fixed) or S in [256; 512] (jittered); Tables 3-4 use dense evaluation, Table 5 "
            "compares the protocols.\n\n"
            "| ConvNet config | train scale S | test scale Q | protocol | top-1 err (%) | top-5 err (%) "
            "| paper top-1 / top-5 (ImageNet) |\n|---|---|---|---|---|---|---|\n")
    lines = []
    for r in summary["rows"]:
        paper = f"{r['paper'][0]} / {r['paper'][1]}" if r["paper"] else (r["paper_note"] or "")
        lines.append(f"| {r['config']} | {r['train_scale']} | {r['test_scales']} | {r['protocol']} | "
                     f"{_pm(r['top1'], r['top1_std'], r['seeds'])} | {_pm(r['top5'], r['top5_std'], r['seeds'])} | {paper} |")
    word = {True: "holds", False: "does not hold", None: "tie, cannot tell"}
    verdicts = [f"- {c['claim']} ({c['paper']}): **{word[c['holds']]}** here (top-1 err: {c['ours']})"
                for c in summary["claims"]]
    return head + "\n".join(lines) + "\n\n## The paper's claims at this scale\n\n" + "\n".join(verdicts) + "\n"


def plot_study(summary: dict, configs: list[str], path: Path) -> None:
    """Top-1 error (dense, one scale) against weight layers, parameters and MACs, one point per config."""
    from .plots import plot_study_points
    from .summary import summarize, totals
    points = []
    for config in configs:
        r = _err(summary["rows"], config)
        if r is None:
            continue
        size = summary["input_size"]
        rows = summarize(config, batch_norm=summary["batch_norm"], input_size=(size, size),
                         head=summary["head"], num_classes=summary["num_classes"],
                         width=summary["width"])
        t = totals(rows)
        points.append({"config": config, "layers": weight_layers(config), "params_m": t["params"] / 1e6, "macs_m": t["macs"] / 1e6,
                       "top1": r["top1"], "top1_std": r["top1_std"]})
    plot_study_points(points, path)
