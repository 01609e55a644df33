"""The docs' generated tables agree with the records: every ``<!-- BEGIN GENERATED: name -->`` block of README.md and
docs/*.md is what ``benchmarks/render_tables.py`` renders from ``benchmarks/results/*.json`` now (a changed record or
renderer without re-rendering fails here), and the renderer computes its figures right on a tiny synthetic record
set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import render_tables as rt  # noqa: E402

HARDWARE = "Intel(R) Xeon(R) Processor | 2 cpus | torch 2.13.0+cpu | 2 threads | Linux"


def test_committed_pages_match_the_records() -> None:
    stale = rt.check(rt.default_files())
    assert not stale, "pages differ from the records; run python benchmarks/render_tables.py:\n" + "\n".join(stale)


def test_every_block_is_on_a_page() -> None:
    """No renderer is dead: each block name appears in README.md or a docs page."""
    text = "".join(path.read_text() for path in rt.default_files())
    missing = [name for name in rt.BLOCKS if f"<!-- BEGIN GENERATED: {name} -->" not in text]
    assert not missing


def test_check_mode_exit_codes(tmp_path: Path) -> None:
    """``--check`` exits 0 on the committed pages and 1, naming the file and the block, on a stale copy."""
    script = ROOT / "benchmarks" / "render_tables.py"
    ok = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    stale = tmp_path / "page.md"
    stale.write_text("intro\n<!-- BEGIN GENERATED: memory -->\n| a stale table |\n<!-- END GENERATED: memory -->\n")
    bad = subprocess.run([sys.executable, str(script), "--check", str(stale)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1
    assert "page.md: memory" in bad.stdout
    assert "a stale table" in stale.read_text()  # --check writes nothing


def run(test_error: float, **fields: Any) -> dict[str, Any]:
    """A training record of the FashionMNIST paper config (all training images), as benchmarks/training.py writes."""
    record = {"dataset": "fashion_mnist", "method": "ep", "spiking": True, "pooling": "avg", "epochs": 20.0,
              "test_error": test_error, "wall_s": 3000.0, "hardware": HARDWARE, "complete": True,
              "threshold": 0.01, "channels": [32, 64], "hidden": [256], "t1": 30, "t2": 10, "beta": 0.3,
              "loss": "mse", "start": "zeros", "omega": 1.0, "optimizer": "Adam", "weight_decay": 0.0,
              "curvature_bound": 0.9, "curvature_iters": 30, "batch_size": 64, "train_samples": 60000,
              "max_epochs": 20, "command": "python benchmarks/training.py fmnist --config "
              "recipes/configs/fmnist_paper.yaml --data.val_size 0"}
    return {**record, **fields}


def seeds(*errors: float) -> list[dict[str, Any]]:
    """Runs of one setting that differ only by ``--seed_everything`` (the first without the flag: seed 0)."""
    out = []
    for seed, error in enumerate(errors):
        record = run(error)
        if seed:
            record["command"] += f" --seed_everything {seed} --note 'seed {seed}'"
        out.append(record)
    return out


def headline_records(*fmnist_errors: float) -> list[dict[str, Any]]:
    """What the headline block selects: the whole-training-set seeds, the validation-split run, one MNIST run
    older than the curvature fields (its bound in the command, its rounds not recorded)."""
    mnist = run(0.009, dataset="mnist", train_samples=55000, max_epochs=12, epochs=12.0,
                command="python benchmarks/training.py mnist --config recipes/configs/mnist_paper.yaml "
                        "--model.curvature_bound 0.9")
    for key in ("curvature_bound", "curvature_iters", "optimizer", "weight_decay"):
        del mnist[key]
    return [*seeds(*fmnist_errors), run(0.0896, train_samples=55000), mnist]


def results_with(tmp_path: Path, **files: list[dict[str, Any]]) -> rt.Results:
    for name, records in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(records))
    return rt.Results(tmp_path)


def headline_row(text: str, cell: str) -> str:
    return next(line for line in text.splitlines() if cell in line)


def test_mean_and_sample_sd_over_seeds(tmp_path: Path) -> None:
    """Three seeds at 8 / 9 / 13 %: mean 10.00 (the median would say 9.00), sample sd sqrt(7) = 2.65 (the
    population sd would say 2.16, the standard error 1.53); ours − paper from the mean."""
    text = rt.block_headline(results_with(tmp_path, training=headline_records(0.08, 0.09, 0.13)))
    row = headline_row(text, "3 seeds")
    assert "**10.00 ± 2.65 %**" in row
    assert "8.00 / 9.00 / 13.00 %" in row
    assert "+1.11" in row  # 10.00 − 8.89
    assert "2.16" not in text and "1.53" not in text


def test_headline_figures_of_the_recorded_seeds(tmp_path: Path) -> None:
    """The FashionMNIST seeds recorded in training.json (8.53 / 9.09 / 8.92 %): 8.85 ± 0.29 %, not ± 0.23."""
    text = rt.block_headline(results_with(tmp_path, training=headline_records(0.0853, 0.0909, 0.0892)))
    assert "**8.85 ± 0.29 %**" in headline_row(text, "3 seeds")
    assert "| MNIST | 55,000 | curvature bound 0.9 (rounds not recorded) | 0.97 % | **0.90 %** | −0.07 |" in text


def test_a_selection_must_name_one_setting(tmp_path: Path) -> None:
    """A new run of another setting that the headline's selection also matches is an error, not a silent change of
    what the row means; so is a selection that matches nothing."""
    records = headline_records(0.0853, 0.0909)
    other = run(0.0950, command=records[0]["command"] + " --model.phases.omega 1.3", omega=1.3)
    results = results_with(tmp_path, training=[*records, other])
    assert len(rt.select(results, **rt.HEADLINE[0][1], omega=1.0)) == 2  # pinned: the two seeds
    with pytest.raises(rt.RenderError, match="names 2 settings"):  # the headline's selection does not pin omega
        rt.block_headline(results)
    with pytest.raises(rt.RenderError, match="names 0 settings"):
        rt.select(results, dataset="mnist", hidden=(1024,))


def test_settings_of_older_records() -> None:
    """A setting an older record lacks is read from its command's flag of the day, else the unchanged default,
    else 'not recorded'; the commands shown drop the flags that change nothing and use today's flag names."""
    old = {"dataset": "fashion_mnist", "method": "bptt", "complete": True, "hardware": HARDWARE,
           "command": "python benchmarks/training.py fmnist --model.optimizer torch.optim.AdamW "
                      "--model.optimizer.weight_decay 0.05 --model.bptt_truncate 8 --trainer.max_time 00:01:00:00 "
                      "--trainer.enable_progress_bar=false --note 'beside another run' --seed_everything 3"}
    assert rt.setting(old, "optimizer") == "adamw"
    assert rt.setting(old, "weight_decay") == 0.05
    assert rt.setting(old, "bptt_truncate") == 8
    assert rt.setting(old, "bptt_objective") == "free"
    assert rt.setting(old, "curvature_bound") is None and rt.setting(old, "curvature_iters") is None
    assert rt.setting(old, "start") is rt.UNKNOWN
    assert rt.setting(old, "seed") == 3
    assert rt.method_label(old) == "BPTT of the free loss, last 8 of T1 steps"
    assert rt.describe(old, ("optimizer", "start", "omega")) == "AdamW, weight decay 0.05, not recorded: start, ω"
    assert rt.shown_command(old, drop_seed=True) == (
        "python benchmarks/training.py fmnist --model.optim.optimizer torch.optim.AdamW --model.optim.weight_decay "
        "0.05 --model.bptt.truncate 8")  # in today's flag names
    assert rt.todays_flags("x --model.t1=12 --model.curvature_bound null --model.curvature_iters 10 --model.lr 1e-3 "
                           "--model.method bptt --model.num_steps 5") == (
        "x --model.phases.t1=12 --model.curvature null --model.curvature.iters 10 --model.optim.lr 1e-3 "
        "--model.method bptt --model.num_steps 5")
    assert rt.setting({**old, "command": "python benchmarks/training.py fmnist --model.method bptt"},
                      "bptt_objective") is rt.UNKNOWN  # the default objective changed: never assumed
    assert rt.setting({**old, "command": "x --model.curvature null", "method": "ep"}, "curvature_bound") is None
    assert rt.describe(run(0.09), ("curvature",)) == "curvature bound 0.9 (30 rounds)"  # every batch: said by none
    lazy = run(0.09, command="x --model.curvature.every_n_batches 2")
    assert rt.describe(lazy, ("curvature",)) == "curvature bound 0.9 (30 rounds, every 2 batches)"
    recorded = run(0.09, curvature_every=4)
    assert rt.describe(recorded, ("curvature",)) == "curvature bound 0.9 (30 rounds, every 4 batches)"
    assert rt.describe(run(0.09, loss="mse"), ("loss",)) == "mse loss"  # no label smoothing: said by none
    smoothed = run(0.09, loss="mse", command="x --model.network.label_smoothing 0.1")
    assert rt.describe(smoothed, ("loss",)) == "mse loss with label smoothing 0.1"
    assert rt.describe(run(0.09, loss="ce", label_smoothing=0.2), ("loss",)) == "ce loss with label smoothing 0.2"


def test_blocks_are_replaced_in_place(tmp_path: Path) -> None:
    """Only the text between a block's markers changes; a second pass changes nothing; unknown names and unpaired
    markers are errors."""
    page = ("# Title\n\nprose\n<!-- BEGIN GENERATED: headline -->\nold\n<!-- END GENERATED: headline -->\nmore prose\n"
            "<!-- BEGIN GENERATED: demo -->\n<!-- END GENERATED: demo -->\n")
    demo = run(0.1364, epochs=2.0, max_epochs=2, t1=12, t2=8, beta=0.2, start="feedforward", omega=1.3,
               curvature_bound=None, curvature_iters=None, train_samples=55000,
               command="python benchmarks/training.py fmnist")
    results = results_with(tmp_path, training=[*headline_records(0.0853, 0.0909, 0.0892), demo])
    new, changed = rt.render_text(page, results)
    assert changed == ["headline", "demo"]
    assert new.startswith("# Title\n\nprose\n<!-- BEGIN GENERATED: headline -->\n| dataset |")
    assert "-->\nmore prose\n" in new and "old" not in new
    assert "86.36 % test accuracy" in new
    assert rt.render_text(new, results) == (new, [])
    with pytest.raises(rt.RenderError, match="unknown block 'nope'"):
        rt.render_text("<!-- BEGIN GENERATED: nope -->\n<!-- END GENERATED: nope -->\n", results)
    with pytest.raises(rt.RenderError, match="unpaired"):
        rt.render_text("<!-- BEGIN GENERATED: demo -->\n", results)


def test_time_to_accuracy_protocol_label(tmp_path: Path) -> None:
    """A record of the older time-to-accuracy protocol is labelled as such; ratios to ours are lower bounds where a
    setting did not reach the target."""
    old = [{"setting": "ours", "seconds": 133.8, "reached": True, "samples": 28160, "dataset": "fashion_mnist",
            "target_accuracy": 0.8, "threshold": 0.0, "hardware": HARDWARE, "command": "x --threads 1"},
           {"setting": "reference", "seconds": 650.8, "reached": True, "samples": 24320, "dataset": "fashion_mnist",
            "target_accuracy": 0.8, "threshold": 0.0, "hardware": HARDWARE, "command": "x --threads 1"}]
    current = [{"setting": name, "seconds": seconds, "reached": seconds is not None, "samples": 1000,
                "test_accuracy": 0.881 if seconds else None, "last_accuracy_2000": 0.7, "dataset": "fashion_mnist",
                "target_accuracy": 0.88, "budget_s": 3600.0, "test_samples": 10000, "threshold": 0.01, "t1": 12,
                "t2": 8, "update": "async", "dynamics": "explicit", "start": "feedforward", "omega": 1.3,
                "curvature_bound": 0.9, "hardware": HARDWARE, "command": "x --part main"}
               for name, seconds in (("ours", 1200.0), ("reference", None))]
    results = results_with(tmp_path, time_to_accuracy=old, time_to_accuracy_main=current)
    text = rt.block_time_to_accuracy_all(results)
    assert "An older protocol" in text and "80 % accuracy" in text and "non-spiking" in text
    assert "| 4.9× |" in text  # 650.8 / 133.8
    text = rt.block_time_to_accuracy_main(results)
    assert "older protocol" not in text
    assert "> 3.0×" in text  # the budget over ours: a lower bound


def beyond_records() -> list[dict[str, Any]]:
    """The chosen beyond-paper FashionMNIST config (its recipe with flags) at three seeds, the recipe as it is, one
    full-length lever on the recipe, the chosen config's BPTT and CSNN baselines, and the paper-config run with the
    same validation split that its curves compare with."""
    recipe = "python benchmarks/training.py fmnist --config recipes/configs/fmnist_best.yaml"
    chosen = f"{recipe} --data.shift 0 --model.curvature.every_n_batches 2 --trainer.max_epochs 40"
    first = {"t1": 12, "t2": 8, "beta": 0.2, "start": "feedforward", "omega": 1.3, "optimizer": "AdamW",
             "weight_decay": 0.05, "shift": 2, "hflip": True, "train_samples": 55000, "max_epochs": 22,
             "epochs": 22.0, "seed": 0, "command": recipe}
    best = {**first, "shift": 0, "max_epochs": 40, "epochs": 40.0, "curvature_every": 2, "command": chosen}
    seeds = [run(error, **{**best, "seed": seed, "command": chosen + (f" --seed_everything {seed}" if seed else "")})
             for seed, error in enumerate((0.074, 0.071, 0.077))]
    lever = run(0.079, **{**first, "shift": 1, "command": recipe + " --data.shift 1 --note 'lever'"})
    bptt = run(0.081, **{**best, "method": "bptt", "bptt_objective": "nudged",
                         "command": chosen + " --model.method bptt"})
    csnn = {"dataset": "fashion_mnist", "method": "csnn", "spiking": True, "pooling": "avg", "channels": [32, 64],
            "hidden": [256], "num_steps": 25, "test_error": 0.102, "wall_s": 4000.0, "hardware": HARDWARE,
            "complete": True, "epochs": 40.0, "max_epochs": 40, "train_samples": 55000, "shift": 0, "hflip": True,
            "command": "python benchmarks/training.py fmnist-csnn --config recipes/configs/fmnist_csnn_best.yaml "
                       "--data.shift 0 --trainer.max_epochs 40"}
    return [*seeds, run(0.1056, **first), lever, bptt, csnn, run(0.0896, train_samples=55000)]


def test_beyond_blocks(tmp_path: Path) -> None:
    """The beyond-paper table: the chosen config's mean ± sd over its seeds against the bar, its baselines by their
    commands, the paper config of the same split; the lever table: each lever's flags against the recipe as it is,
    the chosen config among them; and an honest sentence when no run is recorded yet."""
    results = results_with(tmp_path, training=beyond_records())
    text = rt.block_beyond(results)
    assert "| FashionMNIST | EP, beyond-paper config | **7.40 ± 0.30 %** | 3 seeds (0, 1, 2) | 7.40 / 7.10 / 7.70 %" \
        " | 7.50 % |" in text
    assert "| BPTT of EP's objective | 8.10 % | 1 run, seed 0 |" in text
    rows = text.split("\n\n")[0].splitlines()[2:]
    assert len(rows) == 4 and all("| Intel Xeon, 2 threads | `python" in row for row in rows)  # where each ran
    assert "| snnTorch CSNN (BPTT, surrogate gradient) | 10.20 % |" in text
    assert "| EP, paper config (same validation split) | 8.96 % |" in text
    assert "10.56 %" not in text  # the recipe as it is: a lever's base, not the config
    assert "every 2 batches), AdamW, weight decay 0.05, left-right flips, mse loss, batch 64, 40 epochs" in text
    assert "MNIST |" not in text.replace("FashionMNIST |", "")
    assert "55,000 training images. Test error" in text  # the machine is in the rows, not the caption
    moved = [*beyond_records()]
    moved[1] = moved[1] | {"hardware": HARDWARE.replace("Intel(R) Xeon(R) Processor", "AMD EPYC 7B13")}
    (tmp_path / "moved").mkdir()
    text = rt.block_beyond(results_with(tmp_path / "moved", training=moved))
    assert "AMD EPYC 7B13, 2 threads (seed 1) and Intel Xeon, 2 threads (seeds 0, 2)" in text  # each machine's seeds
    levers = rt.block_beyond_levers(results)
    assert "| FashionMNIST | `--data.shift 1` | 7.90 % | 1 run, seed 0 | 10.56 % | −2.66 |" in levers
    assert ("| FashionMNIST | `--data.shift 0 --model.curvature.every_n_batches 2 --trainer.max_epochs 40` (the "
            "beyond-paper config) | 7.40 ± 0.30 % | 3 seeds (0, 1, 2) | 10.56 % | −3.16 |") in levers
    assert levers.splitlines()[2].endswith("| Intel Xeon, 2 threads |")  # wall times say where they ran
    assert "--model.method" not in levers  # a baseline is not a lever
    summary = rt.block_beyond_summary(results)
    assert "| FashionMNIST | 7.50 % | 7.40 ± 0.30 %; 3 seeds (0, 1, 2) | 7.40 ± 0.30 %; 3 seeds (0, 1, 2) | 8.96 % " \
        "| **met** |" in summary
    seed_0, *others = [beyond_records()[0], *beyond_records()[3:]]
    for name in ("one", "lever"):
        (tmp_path / name).mkdir()
    summary = rt.block_beyond_summary(results_with(tmp_path / "one", training=[seed_0, *others]))
    assert "| 7.40 %; 1 run, seed 0 | 7.40 %; 1 run, seed 0 |" in summary  # the config beats its lever (7.90 %)
    assert "| not yet |" in summary  # one seed below the bar is not the bar met
    worse = seed_0 | {"test_error": 0.085}
    summary = rt.block_beyond_summary(results_with(tmp_path / "lever", training=[worse, *others]))
    assert "| 8.50 %; 1 run, seed 0 | 7.90 %; 1 run, seed 0, with `--data.shift 1` |" in summary
    (tmp_path / "none").mkdir()
    empty = results_with(tmp_path / "none", training=[run(0.0896, train_samples=55000)])
    assert rt.block_beyond_summary(empty).startswith("No complete run")
    assert rt.block_beyond(empty).startswith("No complete run")
    assert rt.block_beyond_levers(empty).startswith("No full-length lever run")


def test_a_run_resumed_on_another_machine_names_each_part() -> None:
    epyc = HARDWARE.replace("Intel(R) Xeon(R) Processor", "AMD EPYC")
    assert rt.machine({"hardware": HARDWARE}) == "Intel Xeon, 2 threads"  # records before hardware_parts
    assert rt.machine({"hardware": epyc, "hardware_parts": [epyc, epyc]}) == "AMD EPYC, 2 threads"
    assert rt.machine({"hardware": HARDWARE, "hardware_parts": [epyc, epyc, HARDWARE]}) == \
        "AMD EPYC, 2 threads then Intel Xeon, 2 threads"
    assert rt.machine({"hardware": HARDWARE, "hardware_parts": [None, HARDWARE]}) == \
        "not recorded then Intel Xeon, 2 threads"


def test_plot_beyond_draws_the_selected_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import plot_beyond

    records = beyond_records()
    for i, record in enumerate(records):
        record["curve"] = [{"epoch": float(e), "val_acc": 0.8 + 0.01 * e + 0.001 * i, "train_acc": 0.78 + 0.012 * e,
                            "alignment_cos_all": 0.95} for e in range(1, 4)]
    drawn = []
    save = plot_beyond.save
    monkeypatch.setattr(plot_beyond, "save", lambda fig, out: drawn.append(fig) or save(fig, out))
    out = plot_beyond.plot_beyond(results_with(tmp_path, training=records), tmp_path / "beyond.png")
    assert out is not None and out.stat().st_size > 10_000
    error_panel = drawn[0].axes[0]
    names = [line.get_label() for line in error_panel.get_lines()]
    assert names[:8] == ["beyond-paper config, seed 0: test 7.40 %", "beyond-paper config, seed 1: test 7.10 %",
                         "beyond-paper config, seed 2: test 7.70 %", "recipe as it is, seed 0: test 10.56 %",
                         "recipe + --data.shift 1, seed 0: test 7.90 %",
                         "baseline: BPTT of EP's objective, seed 0: test 8.10 %",
                         "baseline: snnTorch CSNN (BPTT, surrogate gradient), seed 0: test 10.20 %",
                         "paper config, seed 0: test 8.96 %"]
    styles = {line.get_label(): line.get_linestyle() for line in error_panel.get_lines()}
    assert styles["baseline: BPTT of EP's objective, seed 0: test 8.10 %"] == "-."  # baselines apart from EP's runs
    assert plot_beyond.plot_beyond(results_with(tmp_path, training=records[-1:]), tmp_path / "none.png") is None


def test_step_cost_block(tmp_path: Path) -> None:
    """Each lever's batch time, its epoch and the epochs a budget buys, the configuration named and first."""
    common = {"dataset": "fmnist", "config": "recipes/configs/fmnist_best.yaml", "train_samples": 55000,
              "budget_min": 120.0, "timed_batches": 20, "repeats": 5, "threads": 2, "hardware": HARDWARE,
              "command": "python benchmarks/step_cost.py", "load_average": "2.0 2.0 2.0"}
    records = [{**common, "variant": "", "batch_size": 64, "ms_per_batch": 246.2, "ms_min": 240.0,
                "batches_per_epoch": 860, "train_s_per_epoch": 211.7, "epochs_in_budget": 34.0,
                "relative_epoch_cost": 1.0},
               {**common, "variant": "--model.curvature null", "batch_size": 64, "ms_per_batch": 155.0,
                "ms_min": 150.0, "batches_per_epoch": 860, "train_s_per_epoch": 133.3, "epochs_in_budget": 54.0,
                "relative_epoch_cost": 0.63}]
    text = rt.block_step_cost(results_with(tmp_path, step_cost=records))
    assert "A training batch of `recipes/configs/fmnist_best.yaml`" in text
    assert "the median of 5 rounds, each the mean over 20 batches" in text and "55,000 training images" in text
    assert "| none (the configuration) | 64 | 246 ms | 212 s | 1.00× | 34 |" in text
    assert "| `--model.curvature null` | 64 | 155 ms | 133 s | 0.63× | 54 |" in text
    assert "epochs in 120 min (at most)" in text


def test_a_lever_study_compares_each_lever_with_the_run_without_one(tmp_path: Path) -> None:
    """The run whose flags all runs share is the base; each other row shows its own flags and its difference."""
    study = "python benchmarks/training.py fmnist --config recipes/configs/fmnist_best.yaml --data.shift 0 " \
        "--trainer.max_epochs 6 --record benchmarks/results/levers_capacity.json"
    records = [run(0.20, command=study + " --model.network.hidden '[512]'"), run(0.22, command=study),
               run(0.25, command=study + " --model.optim.weight_decay 0.01")]
    text = rt.lever_study(results_with(tmp_path, levers_capacity=records), "levers_capacity", "the flips-only config")
    assert "| none (the flips-only config) | 22.00 % | – |" in text
    assert "| --model.network.hidden '[512]' | 20.00 % | −2.00 |" in text  # quoted as a shell needs it
    assert rt.shell_flags([("--a", "[1, 2]"), ("--b", "x"), ("--c", "")]) == "--a '[1, 2]' --b x --c"
    assert "| --model.optim.weight_decay 0.01 | 25.00 % | +3.00 |" in text
    assert "`python benchmarks/training.py fmnist --config recipes/configs/fmnist_best.yaml --data.shift 0 " \
        "--trainer.max_epochs 6 --record benchmarks/results/levers_capacity.json [lever flags]`" in text


def test_a_lever_study_names_the_recipe_its_runs_ran(tmp_path: Path) -> None:
    """A study of the CSNN baseline gives its own recipe (``fmnist-csnn``) and flags in the command, not EP's."""
    study = "python benchmarks/training.py fmnist-csnn --config recipes/configs/fmnist_csnn_best.yaml " \
        "--trainer.max_epochs 6 --record benchmarks/results/levers_csnn.json"
    records = [run(0.20, command=study, method="csnn"), run(0.18, command=study + " --model.optim.lr 0.003",
                                                              method="csnn"),
               run(0.15, command=study + " --model.loss mse_count", method="csnn")]
    text = rt.lever_study(results_with(tmp_path, levers_csnn=records), "levers_csnn", "the CSNN config")
    assert "| --model.loss mse_count | 15.00 % | −5.00 |" in text  # the CSNN's flag, not EP's --model.network.loss
    assert "`python benchmarks/training.py fmnist-csnn --config recipes/configs/fmnist_csnn_best.yaml " \
        "--trainer.max_epochs 6 --record benchmarks/results/levers_csnn.json [lever flags]`" in text
    assert "| --model.optim.lr 0.003 | 18.00 % | −2.00 |" in text


def test_eval_hflip_block(tmp_path: Path) -> None:
    """Each checkpoint's test error alone and with mirror averaging, named by the command that trained it."""
    common = {"dataset": "fashion_mnist", "test_images": 10000, "threads": 2, "hardware": HARDWARE,
              "command": "python benchmarks/eval_hflip.py fmnist a.ckpt b.ckpt"}
    trained = ("python benchmarks/training.py fmnist --config recipes/configs/fmnist_best.yaml --data.shift 0 "
               "--trainer.max_time 00:01:58:00 --note 'a note'")
    records = [{**common, "checkpoint": "a.ckpt", "global_step": 34400, "test_error": 0.0921,
                "test_error_eval_hflip": 0.0895, "difference": -0.0026, "test_s": 9.6, "test_s_eval_hflip": 18.2,
                "trained_by": trained},
               {**common, "checkpoint": "b.ckpt", "global_step": 5, "test_error": 0.5,
                "test_error_eval_hflip": 0.51, "difference": 0.01, "test_s": 9.0, "test_s_eval_hflip": 17.0,
                "trained_by": None}]
    text = rt.block_eval_hflip(results_with(tmp_path, eval_hflip=records, training=[run(0.0921, command=trained)]))
    # the training command less what changes nothing (its note, a finished run's time limit)
    assert ("| `python benchmarks/training.py fmnist --config recipes/configs/fmnist_best.yaml --data.shift 0` "
            "| 34,400 | 9.21 % | 8.95 % | −0.26 | 10 s / 18 s |") in text
    assert "| `b.ckpt` | 5 | 50.00 % | 51.00 % | +1.00 | 9 s / 17 s |" in text  # no record: the checkpoint
    assert "on the 10,000 test images twice" in text and "`benchmarks/results/eval_hflip.json`" in text
