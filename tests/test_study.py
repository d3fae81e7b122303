import pytest

from conftest import write_image_folder
from vggnet.cli import main
from vggnet.configs import CONFIGS, get_recipe
from vggnet.configs import PROTOCOLS
from vggnet.study import aggregate, claims, format_study, plan_runs, study
from vggnet.summary import summarize


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data") / "bands", classes=3, per_class=40, size=32)


def tiny_recipe():
    return get_recipe("fast").replace(batch_size=16, lr=0.05, warmup_epochs=0.5, init="glorot")


def test_tiny_study_writes_table_plot_and_resumes(dataset, tmp_path, capsys):
    out = tmp_path / "study"
    kw = dict(epochs=1, out=out, recipe=tiny_recipe(), jitter=(32, 40), jitter_config="A", eval_images=9,
              width=1 / 16, val_size=12)
    summary = study(str(dataset), ["A", "B-5x5"], **kw)
    said = capsys.readouterr().out
    assert "study: training A-fixed-seed0: configuration A, fixed scale, seed 0" in said
    assert "study: training A-S32-40-seed0: configuration A, scale jittering [32, 40], seed 0" in said
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["A-S32-40-seed0", "A-fixed-seed0", "B-5x5-fixed-seed0"]
    assert len(summary["rows"]) == 3 * len(PROTOCOLS)
    table = (out / "study.md").read_text()
    assert table.count("\n| A |") == 2 * len(PROTOCOLS) and table.count("\n| B-5x5 |") == len(PROTOCOLS)
    assert "| A | image size | 32 | dense | " in table and "29.6 / 10.4 |" in table    # paper's Table 3 beside ours
    assert "| A | [32;40] | 32,36,40 | multi-crop |" in table
    names = [c["claim"] for c in summary["claims"]]
    assert "two 3x3 convs beat one 5x5 (B-5x5 worse than B)" not in names        # B was not trained
    assert "scale jittering helps (A)" in names
    assert sum("complementary" in n for n in names) == 3      # one per trained (config, scale)
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second call trains nothing: finished runs are skipped, their protocol results reused
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/last.safetensors")}
    (out / "A-fixed-seed0" / "results.json").unlink()    # as if stopped after its last checkpoint
    again = study(str(dataset), ["A", "B-5x5"], **kw)
    said = capsys.readouterr().out
    assert "study: resuming A-fixed-seed0" in said and "study: B-5x5-fixed-seed0 is done (skipped)" in said
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/last.safetensors")} == stamps
    assert len((out / "A-fixed-seed0" / "metrics.jsonl").read_text().splitlines()) == 1   # resumed, not retrained
    assert again["rows"] == summary["rows"]


def test_plan_covers_configs_seeds_and_the_jittered_run():
    runs = plan_runs(["A", "D"], 2, (32, 48), "D")
    assert [r.name for r in runs] == ["A-fixed-seed0", "A-fixed-seed1", "D-fixed-seed0", "D-fixed-seed1",
                                      "D-S32-48-seed0", "D-S32-48-seed1"]


def _row(config, top1, scale="fixed", protocol="dense", std=0.0):
    return {"config": config, "scale": scale, "train_scale": "image size", "seed": 0, "protocol": protocol,
            "scales": "32", "top1_error": top1 / 100, "top5_error": 0.01, "images": 100}


def test_claims_judge_the_papers_comparisons():
    results = [_row("A", 20.0), _row("A-LRN", 20.3), _row("B", 18.0), _row("C", 17.5), _row("D", 17.0),
               _row("B-5x5", 17.9), _row("D", 15.0, "jittered"),
               _row("D", 16.0, "jittered", "multi-scale"), _row("D", 15.5, "jittered", "multi-crop"),
               _row("D", 15.1, "jittered", "dense+multi-crop")]
    rows = aggregate(results + [dict(_row("A", 22.0), seed=1)])
    a = next(r for r in rows if r["config"] == "A")
    assert a["seeds"] == 2 and a["top1"] == pytest.approx(21.0) and a["top1_std"] == pytest.approx(2 ** 0.5)
    verdicts = {c["claim"]: c["holds"] for c in claims(rows)}
    assert verdicts == {"deeper nets err less (A > B > C > D)": True,
                        "LRN does not help (A-LRN not better than A)": True,
                        "1x1 convs help less than 3x3 at the same depth (C worse than D)": True,
                        "two 3x3 convs beat one 5x5 (B-5x5 worse than B)": False,
                        "scale jittering helps (D)": True,
                        "dense and multi-crop are complementary (D, jittered)": True}
    assert "**does not hold** here" in format_study({"recipe": "fast", "epochs": 1, "batch_norm": True, "width": 1,
                                                     "seeds": 2, "rows": rows, "claims": claims(rows)})


def test_b5x5_sees_what_b_sees_with_half_the_convs():
    b, b5 = summarize("B-5x5"), summarize("B")
    pools = lambda rows: [(r.name, r.receptive_field) for r in rows if r.name.startswith("pool")]  # noqa: E731
    assert pools(b) == pools(b5)
    convs = lambda c: sum(t.startswith("conv") for t in CONFIGS[c])  # noqa: E731
    assert (convs("B-5x5"), convs("B")) == (5, 10)


def test_cli_study_needs_an_image_folder(tmp_path, capsys):
    assert main(["study", str(tmp_path), "--configs", "A"]) == 2
    assert "needs an image folder with train/ and test/" in capsys.readouterr().err


def test_cli_study_rejects_unknown_config(dataset, tmp_path, capsys):
    assert main(["study", str(dataset), "--configs", "A,F", "--out", str(tmp_path / "s")]) == 2
    assert "unknown VGG configuration 'F'" in capsys.readouterr().err


def test_a_stopped_study_stops_whole_and_exits_75(dataset, tmp_path, capsys, monkeypatch):
    """SIGTERM (or Ctrl-C) in a study's run stops the study, not only that run: the next
    runs do not start, and the same command continues it."""
    monkeypatch.setattr("vggnet.training.Trainer._should_stop", lambda self: True)   # at the first step
    argv = ["study", str(dataset), "--configs", "A", "--epochs", "1", "--width", "0.0625", "--val-size", "12",
            "--eval-images", "9", "--out", str(tmp_path / "s")]
    assert main(argv) == 75
    assert "study stopped in A-fixed-seed0; the same command continues it" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["A-fixed-seed0"]
    assert not (tmp_path / "s" / "A-fixed-seed0" / "results.json").exists()
