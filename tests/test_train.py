import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_image_folder
from vggnet.configs import get_recipe
from vggnet.schedule import budget_epochs
from vggnet.settings import RunSettings
from vggnet.training import Trainer, train
from vggnet.weights import read_checkpoint, write_checkpoint


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data") / "bands", classes=3, per_class=48, size=32)


def tiny(dataset: Path, out: Path, epochs: int = 2, **kw) -> RunSettings:
    recipe = get_recipe(kw.pop("recipe", "fast")).replace(epochs=epochs, batch_size=16, lr=0.05, warmup_epochs=0.5,
                                                          init="glorot")
    return RunSettings(config="A", batch_norm=True, recipe=recipe, data=str(dataset), out=str(out),
                       val_size=24, width=1 / 16, **kw)


def test_learns_a_learnable_task(dataset, tmp_path):
    result = train(tiny(dataset, tmp_path / "run", epochs=4))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert result["final_test_acc"] > 0.8          # chance is 1/3
    for name in ("run.json", "last.safetensors", "best.safetensors", "curves.png", "confusion.png", "results.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert set(result["per_class_acc"]) == {"class0", "class1", "class2"}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["settings"]["recipe"]["name"] == "fast"


def test_bf16_without_cpu_support_trains_fp32_and_says_so(dataset, tmp_path, monkeypatch, capsys):
    """On a CPU without native bf16 (an AVX2-only EPYC, say) the bf16 recipe runs, and equals, fp32."""
    monkeypatch.setattr("vggnet.runtime.bf16_supported", lambda: False)
    runs = {}
    for precision in ("bf16", "fp32"):
        settings = tiny(dataset, tmp_path / precision, epochs=1)
        settings.recipe = settings.recipe.replace(precision=precision)
        train(settings)
        runs[precision] = weights(tmp_path / precision / "last.safetensors")
    assert all(torch.equal(runs["bf16"][k], runs["fp32"][k]) for k in runs["fp32"])
    assert capsys.readouterr().out.count("training in fp32") == 1
    machine = json.loads((tmp_path / "bf16" / "run.json").read_text())["machine"]
    assert machine["bf16_native"] is False and machine["threads"] == torch.get_num_threads()
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_paper_recipe_cuts_lr_on_plateau(dataset, tmp_path):
    schedule = Trainer(tiny(dataset, tmp_path / "p", epochs=10, recipe="paper")).schedule
    assert schedule.after_epoch(0.5) is True and schedule.best_val == 0.5
    assert schedule.after_epoch(0.4) is False
    assert schedule.lr == pytest.approx(0.05)
    schedule.after_epoch(0.5)
    assert schedule.lr == pytest.approx(0.005) and schedule.lr_cuts == 1


def test_paper_recipe_stops_when_validation_stalls_after_the_third_cut():
    """3.1: "the learning rate was decreased 3 times": a stall after the third cut ends the
    run (it cut on forever before, down to lr 1e-38 in 74 epochs)."""
    from vggnet.schedule import Schedule
    schedule = Schedule(get_recipe("paper"), steps_per_epoch=1)
    epochs = 0
    while not schedule.finished(epochs) and epochs < 100:
        schedule.after_epoch(0.5 if epochs == 0 else 0.4)    # never better than epoch 1
        epochs += 1
    assert (schedule.lr_cuts, epochs) == (3, 1 + 4 * 2)      # cuts after epochs 3, 5, 7; stalled at 9
    assert schedule.lr == pytest.approx(0.01 * 1e-3)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)[0]["model"]


def test_same_seed_same_result_and_exact_resume(dataset, tmp_path):
    train(tiny(dataset, tmp_path / "full", epochs=2))
    stopped = train(tiny(dataset, tmp_path / "cut", epochs=2, stop_after_steps=11))   # mid-epoch 2 of 7 steps each
    assert stopped == {"stopped": True, "epoch": 1, "step": 11, "batch_in_epoch": 4}
    before_stop = read_checkpoint(tmp_path / "cut" / "last.safetensors")[1]["state"]["partial"]
    assert before_stop["seen"] == 4 * 16 and before_stop["time_s"] > 0      # steps 8-11: 4 of epoch 2
    train(tiny(dataset, tmp_path / "cut", epochs=2), resume=True)
    train(tiny(dataset, tmp_path / "again", epochs=2))
    full, cut = weights(tmp_path / "full" / "last.safetensors"), weights(tmp_path / "cut" / "last.safetensors")
    for key in full:
        assert torch.equal(full[key], cut[key]), key
        assert torch.equal(full[key], weights(tmp_path / "again" / "last.safetensors")[key])
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    # the interrupted epoch reports the whole epoch: loss and accuracy as uninterrupted, its time before the stop too
    full_rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["train_loss"] == pytest.approx(full_rows[1]["train_loss"], rel=1e-6)
    assert rows[1]["train_acc"] == full_rows[1]["train_acc"]
    assert rows[1]["train_time_s"] > before_stop["time_s"]
    assert rows[1]["images_per_s"] == pytest.approx(7 * 16 / rows[1]["train_time_s"])   # 120 train images, 7 full batches


def test_streamed_run_with_dropout_resumes_exactly(dataset, tmp_path):
    """The streamed path, whose DataLoader is built again on resume, keeps dropout's random
    stream: the loader draws its workers' seed from its own generator, not the global one."""
    def run(out: str, **kw) -> RunSettings:
        s = tiny(dataset, tmp_path / out, stream=True, workers=2, **kw)
        return RunSettings(**{**s.__dict__, "recipe": s.recipe.replace(dropout=0.5)})
    train(run("full"))
    assert train(run("cut", stop_after_steps=3))["stopped"]
    train(run("cut"), resume=True)
    full, cut = weights(tmp_path / "full" / "last.safetensors"), weights(tmp_path / "cut" / "last.safetensors")
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_resume_reads_checkpoint_without_epoch_time(dataset, tmp_path):
    """A checkpoint written before the epoch's time was kept (no time_s/data_s) resumes to the same weights."""
    train(tiny(dataset, tmp_path / "full", epochs=2))
    train(tiny(dataset, tmp_path / "old", epochs=2, stop_after_steps=11))
    path = tmp_path / "old" / "last.safetensors"
    groups, meta = read_checkpoint(path)
    for key in ("time_s", "data_s"):
        del meta["state"]["partial"][key]
    write_checkpoint(path, {f"{g}.{k}": v for g, d in groups.items() for k, v in d.items()}, meta)
    train(tiny(dataset, tmp_path / "old", epochs=2), resume=True)
    full, old = weights(tmp_path / "full" / "last.safetensors"), weights(path)
    assert all(torch.equal(full[k], old[k]) for k in full)
    rows = [json.loads(x) for x in (tmp_path / "old" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["train_time_s"] > 0 and rows[1]["images_per_s"] == pytest.approx(7 * 16 / rows[1]["train_time_s"])


def budgeted(dataset: Path, out: Path, **kw) -> RunSettings:
    """A tiny onecycle run whose warm-up covers epoch 1, so the budget changes nothing already done."""
    settings = tiny(dataset, out, epochs=kw.pop("epochs", 50), **kw)
    settings.recipe = settings.recipe.replace(warmup_epochs=1.0)
    return settings


def test_budget_sets_the_epochs_that_fit_and_equals_that_many_epochs(dataset, tmp_path):
    result = train(budgeted(dataset, tmp_path / "budget", budget_min=0.03))
    rows = [json.loads(x) for x in (tmp_path / "budget" / "metrics.jsonl").read_text().splitlines()]
    epochs = budget_epochs(0.03, rows[0]["train_time_s"] + rows[0]["eval_time_s"])
    assert result["epochs"] == epochs == len(rows)
    assert json.loads((tmp_path / "budget" / "run.json").read_text())["settings"]["recipe"]["epochs"] == epochs
    assert read_checkpoint(tmp_path / "budget" / "last.safetensors")[1]["model"]["recipe"]["epochs"] == epochs
    train(budgeted(dataset, tmp_path / "fixed", epochs=epochs))
    fixed, budget = weights(tmp_path / "fixed" / "last.safetensors"), weights(tmp_path / "budget" / "last.safetensors")
    assert all(torch.equal(fixed[k], budget[k]) for k in fixed)


def test_budget_run_resumes_with_the_epochs_it_chose(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr("vggnet.schedule.budget_epochs", lambda budget_min, epoch_s: 3)   # whatever the pace
    stopped = train(budgeted(dataset, tmp_path / "b", budget_min=0.03, stop_after_steps=10))   # mid-epoch 2
    assert stopped == {"stopped": True, "epoch": 1, "step": 10, "batch_in_epoch": 3}
    assert read_checkpoint(tmp_path / "b" / "last.safetensors")[1]["model"]["recipe"]["epochs"] == 3
    result = train(budgeted(dataset, tmp_path / "b"), resume=True)       # --resume alone: the budget is kept
    assert result["epochs"] == 3
    train(budgeted(dataset, tmp_path / "fixed", epochs=3))
    fixed, resumed = weights(tmp_path / "fixed" / "last.safetensors"), weights(tmp_path / "b" / "last.safetensors")
    assert all(torch.equal(fixed[k], resumed[k]) for k in fixed)


def test_budget_refused_where_it_cannot_apply(dataset, tmp_path):
    assert budget_epochs(90, 150.0) == 36 and budget_epochs(1, 150.0) == 1
    with pytest.raises(ValueError, match=r"budget \(--budget\) .* recipe 'paper' has schedule 'plateau': use --time-limit"):
        Trainer(tiny(dataset, tmp_path / "p", recipe="paper", budget_min=10))
    with pytest.raises(ValueError, match=r"budget \(--budget\) must be minutes > 0"):
        Trainer(tiny(dataset, tmp_path / "n", budget_min=-1))
    train(tiny(dataset, tmp_path / "plain", epochs=3, stop_after_steps=9))
    with pytest.raises(ValueError, match="started without --budget and is past epoch 1"):
        Trainer(tiny(dataset, tmp_path / "plain", epochs=3, budget_min=5), resume=True)


def test_resume_refuses_other_model(dataset, tmp_path):
    train(tiny(dataset, tmp_path / "r", epochs=1))
    settings = tiny(dataset, tmp_path / "r", epochs=1)
    settings.batch_norm = False
    with pytest.raises(ValueError, match="checkpoint is config A bn=True"):
        Trainer(settings, resume=True)
    with pytest.raises(ValueError, match="no checkpoint"):
        Trainer(tiny(dataset, tmp_path / "empty"), resume=True)
    with pytest.raises(ValueError, match=r"another recipe \(lr 0.05 -> 0.2\); resume it with"):
        settings = tiny(dataset, tmp_path / "r", epochs=5)
        settings.recipe = settings.recipe.replace(lr=0.2)
        Trainer(settings, resume=True)
    train(tiny(dataset, tmp_path / "three", epochs=3, stop_after_steps=2))
    with pytest.raises(ValueError, match=r"another recipe \(epochs 3 -> 2\)"):   # a forgotten --epochs
        Trainer(tiny(dataset, tmp_path / "three", epochs=2), resume=True)


def test_unwritable_output_fails_before_training(dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="output folder .* is not writable"):
        Trainer(tiny(dataset, blocker / "run"))


def test_nan_loss_stops_with_message_and_keeps_checkpoint(dataset, tmp_path):
    trainer = Trainer(tiny(dataset, tmp_path / "nan", epochs=3))
    trainer.r = trainer.r.replace(epochs=1)
    trainer.fit()
    before = weights(tmp_path / "nan" / "last.safetensors")
    trainer.r = trainer.r.replace(epochs=3, lr=float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, step \d+, lr nan"):
        trainer.fit()
    after = weights(tmp_path / "nan" / "last.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_atomic_checkpoint_survives_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    write_checkpoint(path, {"model.w": torch.ones(3)}, {"epoch": 1})
    import safetensors
    import safetensors.torch

    def crash(tensors, filename, metadata=None):      # what safetensors raises on a full disk
        Path(filename).write_bytes(b"partial")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match=f"No space left on device: '{path}'"):
        write_checkpoint(path, {"model.w": torch.zeros(3)}, {"epoch": 2})
    groups, meta = read_checkpoint(path)
    assert meta == {"epoch": 1} and torch.equal(groups["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]   # the partial file is cleaned up


def test_accumulated_micro_batches_equal_one_large_batch():
    from vggnet import build_model
    from vggnet.training import forward_backward
    torch.manual_seed(0)
    model = build_model("A", num_classes=4, head="cifar", width=TINY_WIDTH, dropout=0.0, init="glorot").double()
    x, y = torch.randn(16, 3, 32, 32, dtype=torch.float64), torch.randint(0, 4, (16,))
    loss_full, _ = forward_backward(model, x, y, 0, 0.1, "fp32")
    full = [p.grad.clone() for p in model.parameters()]
    loss_acc, logits = forward_backward(model, x, y, 4, 0.1, "fp32")
    assert logits.shape == (16, 4)
    torch.testing.assert_close(loss_acc, loss_full)
    for a, b in zip(full, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


TINY_WIDTH = 1 / 16


def single_scale_accuracy(weights: Path, data: Path) -> float:
    """Top-1 accuracy by `vggnet eval --protocol single` (fp32): the same preprocessing as training's test path."""
    from vggnet.evaluation import evaluate
    return 1 - evaluate([weights], data, ["single"])["rows"][0]["top1_error"]


def test_scale_jitter_lighting_run_records_its_statistics(dataset, tmp_path):
    settings = tiny(dataset, tmp_path / "jit", epochs=1)
    settings.recipe = settings.recipe.replace(train_scale=(32, 48), lighting=0.1, micro_batch=8, precision="fp32",
                                              tta_flip=False)
    result = train(settings)
    meta = read_checkpoint(tmp_path / "jit" / "last.safetensors")[1]["model"]
    assert meta["train_scale"] == [32, 48] and len(meta["lighting"]["eigval"]) == 3 and meta["input_size"] == 32
    # the trainer tests at Q = 40, centre crop 32, as eval does from the weights' metadata (3.2); 144 test images
    assert result["final_test_acc"] == pytest.approx(single_scale_accuracy(tmp_path / "jit" / "last.safetensors",
                                                                           dataset), abs=1.5 / 144)


def test_streaming_path_trains_on_photos_of_any_size(tmp_path):
    from PIL import Image
    root = tmp_path / "photos"
    for split, n in (("train", 12), ("test", 4)):
        for k, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
            d = root / split / f"class{k}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + 7 * i, 64 + 3 * i), colour).save(d / f"{i}.jpg")
    settings = RunSettings(config="A", batch_norm=True, data=str(root), out=str(tmp_path / "run"), val_size=4,
                           width=TINY_WIDTH, workers=0,
                           recipe=get_recipe("fast").replace(epochs=1, batch_size=4, init="glorot", crop_size=32,
                                                             train_scale=(36, 48)))
    result = train(settings)
    assert result["epochs"] == 1
    assert read_checkpoint(tmp_path / "run" / "best.safetensors")[1]["model"]["input_size"] == 32


def test_warm_start_setting_copies_from_a(dataset, tmp_path):
    train(tiny(dataset, tmp_path / "a", epochs=1))
    settings = tiny(dataset, tmp_path / "d", epochs=1, init_from=str(tmp_path / "a" / "last.safetensors"))
    settings.config = "B"
    trainer = Trainer(settings)
    a = read_checkpoint(tmp_path / "a" / "last.safetensors")[0]["model"]
    conv3_1 = trainer.model.named_layers()["conv3_1"][0]
    assert torch.equal(conv3_1.weight.float(), a[f"features.{8}.weight"])   # A: conv3_1 is features.8 with BN


def test_fresh_run_refuses_to_overwrite_a_checkpoint(dataset, tmp_path):
    train(tiny(dataset, tmp_path / "run", epochs=1))
    before = (tmp_path / "run" / "last.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds a run .*--resume"):
        Trainer(tiny(dataset, tmp_path / "run", epochs=2))
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == before
    assert train(tiny(dataset, tmp_path / "run", epochs=2), resume=True)["epochs"] == 2



def ema_run(dataset: Path, out: Path, decay: float = 0.8, epochs: int = 2, **kw) -> RunSettings:
    settings = tiny(dataset, out, epochs=epochs, **kw)
    settings.recipe = settings.recipe.replace(ema=decay)
    return settings


def test_moving_average_follows_its_formula(dataset, tmp_path):
    for steps in (1, 2):
        train(ema_run(dataset, tmp_path / f"s{steps}", decay=0.9, epochs=1, stop_after_steps=steps))
    one, _ = read_checkpoint(tmp_path / "s1" / "last.safetensors")
    two, _ = read_checkpoint(tmp_path / "s2" / "last.safetensors")
    assert one["ema"]["n_averaged"].item() == 1 and two["ema"]["n_averaged"].item() == 2
    key = "features.0.weight"
    assert torch.equal(one["model"][key], one["train"][key])   # the first update copies the weights
    torch.testing.assert_close(two["model"][key], 0.9 * one["train"][key] + 0.1 * two["train"][key])
    assert not torch.equal(two["model"][key], two["train"][key])


def build_model_from(header: dict):
    from vggnet.weights import ModelSpec
    return ModelSpec.from_dict(header["model"]).build()


def save_weights(path: Path, model, spec: dict, state: dict) -> Path:
    from vggnet.weights import save_weights as save
    model.load_state_dict(state)
    return save(path, model, spec)


def test_moving_average_run_resumes_exactly_and_reports_both(dataset, tmp_path):
    settings = ema_run(dataset, tmp_path / "full")
    settings.recipe = settings.recipe.replace(precision="fp32", tta_flip=False)
    result = train(settings)
    groups, header = read_checkpoint(tmp_path / "full" / "last.safetensors")
    save_weights(tmp_path / "trained.safetensors", build_model_from(header), header["model"], groups["train"])
    assert result["final_test_acc_without_ema"] == pytest.approx(
        single_scale_accuracy(tmp_path / "trained.safetensors", dataset), abs=1.5 / 144)
    assert result["final_test_acc"] == pytest.approx(
        single_scale_accuracy(tmp_path / "full" / "last.safetensors", dataset), abs=1.5 / 144)
    stopping = ema_run(dataset, tmp_path / "cut", stop_after_steps=11)
    stopping.recipe = stopping.recipe.replace(precision="fp32", tta_flip=False)
    assert train(stopping)["stopped"]
    cut = ema_run(dataset, tmp_path / "cut")
    cut.recipe = cut.recipe.replace(precision="fp32", tta_flip=False)
    train(cut, resume=True)
    full, _ = read_checkpoint(tmp_path / "full" / "last.safetensors")
    cut, _ = read_checkpoint(tmp_path / "cut" / "last.safetensors")
    for group in ("model", "train", "ema"):
        for key in full[group]:
            assert torch.equal(full[group][key], cut[group][key]), (group, key)
    with pytest.raises(ValueError, match="with a moving average .*resume it with the recipe"):
        Trainer(tiny(dataset, tmp_path / "full", epochs=3), resume=True)
    with pytest.raises(ValueError, match=r"ema \(--ema\) must be a decay in \[0, 1\)"):
        Trainer(ema_run(dataset, tmp_path / "bad", decay=1.5))


PAGE_FAULTS = """
import resource, sys, torch
from vggnet.runtime import reuse_freed_memory
tuned = reuse_freed_memory() if sys.argv[1] == "tuned" else False
def step():  # an activation-like pattern: eight 4 MiB buffers written, then all freed
    bufs = [torch.ones(1 << 20) for _ in range(8)]
    del bufs
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_reused_without_page_faults():
    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", PAGE_FAULTS, mode], capture_output=True, text=True, check=True)
        tuned, n = out.stdout.split()
        return tuned, int(n)
    # glibc's default returns the 32 MiB to the OS: ~8,192 4-KiB pages again per step. Where the
    # heap lands varies per process: in 24 runs of this tree, 9 showed it (7,961-8,160), the others
    # ~200 or ~1,700 (something above the buffers pins part of the heap top). Any of 15: 5 missed
    # it about one CI run in ten.
    assert any(faults("default")[1] > 4000 for _ in range(15))
    tuned, n = faults("tuned")
    assert tuned == "True" and n < 1000      # 0 in most runs, ~200 in some: never a step's 8,192 pages


def test_compiled_training_step_follows_the_eager_one(dataset, tmp_path):
    """--compile: the same run through TorchInductor; the checkpoint keeps the plain names."""
    runs = {}
    for name, compile in (("eager", False), ("compiled", True)):
        settings = tiny(dataset, tmp_path / name, epochs=1, threads=2, compile=compile)
        settings.recipe = settings.recipe.replace(precision="fp32")      # bf16 kernels round differently
        runs[name] = train(settings)
    eager, compiled = runs["eager"], runs["compiled"]
    rows = [json.loads((tmp_path / name / "metrics.jsonl").read_text()) for name in ("eager", "compiled")]
    assert rows[1]["train_loss"] == pytest.approx(rows[0]["train_loss"], rel=5e-3)   # fused kernels: 0.15 % apart
    assert set(weights(tmp_path / "compiled" / "last.safetensors")) == set(weights(tmp_path / "eager" / "last.safetensors"))
    assert compiled["epochs"] == eager["epochs"] == 1
