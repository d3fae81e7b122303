"""The Hugging Face Hub layout for vggnet models, as ``PyTorchModelHubMixin`` writes it: a
folder with ``config.json`` (the model description, :class:`vggnet.weights.ModelSpec`),
``model.safetensors`` (the state dict) and ``README.md`` (a model card stating the
configuration, the data, the recipe and the measured accuracy).

Saving and loading a folder needs nothing beyond vggnet; a repo id (``user/vgg16-cifar10``)
and ``vggnet push`` need the ``hub`` extra (huggingface_hub).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from .configs import model_name
from .errors import VggnetError
from .extras import require
from .files import write_safetensors_atomic, write_text_atomic
from .model import count_parameters
from .weights import HUB_CONFIG, HUB_WEIGHTS, ModelSpec, WeightsError, load_weights, resolve_weights_path

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def save_pretrained(weights: str | Path, directory: str | Path) -> Path:
    """Write ``weights`` (a weights file, a run folder or a Hub folder) into ``directory``
    in the Hub layout, with a model card from the run's run.json and results.json if any."""
    model, spec = load_weights(weights)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    run = run_folder(weights)
    write_text_atomic(directory / HUB_CONFIG, json.dumps(spec.to_dict(), indent=2))
    write_safetensors_atomic(directory / HUB_WEIGHTS, model.state_dict(), {"format": "pt"})
    write_text_atomic(directory / "README.md", model_card(spec, model, run))
    return directory


def from_pretrained(source: str | Path) -> tuple:
    """(model in eval mode, ModelSpec) from a Hub-layout folder, or from a Hub repo id
    (downloaded through huggingface_hub; a clear one-line error without network)."""
    if Path(source).exists():
        return load_weights(source)
    if not REPO_ID.fullmatch(str(source)):
        raise WeightsError(f"{source}: no such folder or file, and not a Hugging Face Hub repo id (user/name)")
    require("hub")
    from huggingface_hub import snapshot_download
    try:
        folder = snapshot_download(str(source), allow_patterns=[HUB_CONFIG, HUB_WEIGHTS, "README.md"], etag_timeout=10)
    except Exception as exc:   # offline, unknown repo, no access: huggingface_hub raises many types
        raise WeightsError(f"{source}: cannot fetch from the Hugging Face Hub: {first_line(exc)}") from None
    return load_weights(folder)


def push(weights: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload ``weights`` (a run folder, typically) to the Hub as ``repo_id`` in the Hub
    layout; returns the repo's URL."""
    require("hub")
    if not REPO_ID.fullmatch(repo_id):
        raise VggnetError(f"--repo {repo_id!r} is not a Hub repo id (user/name)")
    from huggingface_hub import HfApi
    with tempfile.TemporaryDirectory(prefix="vggnet-push-") as tmp:
        folder = save_pretrained(weights, tmp)
        api = HfApi(token=token)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="vggnet push")
        except Exception as exc:
            raise VggnetError(f"cannot push to the Hugging Face Hub as {repo_id}: {first_line(exc)}") from None
    return str(url)


def run_folder(weights: str | Path) -> dict:
    """run.json and results.json of the run a weights file belongs to ({} for converted weights)."""
    folder = resolve_weights_path(weights).parent
    found = {}
    for name in ("run.json", "results.json"):
        if (folder / name).is_file():
            found[name[:-5]] = json.loads((folder / name).read_text())
    return found


def model_card(spec: ModelSpec, model: object, run: dict) -> str:
    """A README.md for the Hub: what the net is, what it was trained on and how, what it scored."""
    name = model_name(spec.config, spec.batch_norm)
    settings, results = run.get("run", {}).get("settings", {}), run.get("results", {})
    recipe = settings.get("recipe") or spec.recipe or {}
    data = Path(settings["data"]).name if settings.get("data") else (spec.source or "not recorded")
    lines = ["---", "library_name: vggnet", "pipeline_tag: image-classification",
             "tags: [vgg, image-classification, pytorch, vggnet]", "---", "",
             f"# {name}: VGG configuration {spec.config}{' with BatchNorm' if spec.batch_norm else ''}", "",
             "A VGG network (Simonyan & Zisserman, *Very Deep Convolutional Networks for Large-Scale Image "
             "Recognition*, 2014) saved by vggnet in the Hugging Face Hub layout.", "",
             "| | |", "|---|---|",
             f"| configuration | {spec.config} (Table 1), {'BN' if spec.batch_norm else 'no BN'}, head `{spec.head}`, "
             f"width {spec.width:g}, {count_parameters(model):,} parameters |",
             f"| classes | {spec.num_classes}: {', '.join(spec.class_names[:10])}"
             f"{' ...' if spec.num_classes > 10 else ''} |",
             f"| input | {spec.input_size} px, {spec.channel_order}, mean {spec.mean}, std {spec.std}; rescale the "
             f"smaller side to {spec.preprocessing.resize}, centre crop |",
             f"| data | {data} |",
             f"| recipe | {recipe.get('name', 'not recorded')}"
             + (f": {recipe.get('epochs')} epochs, lr {recipe.get('lr')}, batch {recipe.get('batch_size')}"
                if recipe else "") + " |"]
    if results:
        lines.append(f"| test accuracy | {100 * results['final_test_acc']:.2f} % (final weights)"
                     + (f", {100 * results['best_val_test_acc']:.2f} % (best validation)"
                        if "best_val_test_acc" in results else "") + " |")
    lines += ["", "```python", "import vggnet", "model, spec = vggnet.from_pretrained(\"THIS_REPO_OR_FOLDER\")",
              "x = spec.preprocessing(images_uint8)   # (N, 3, H, W) uint8 RGB of any size", "logits = model(x)",
              "```", ""]
    return "\n".join(lines)


def first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
