import json
import subprocess
import sys

import pytest

from optuna_quicktune.cli import main


def test_meta_train_and_inspect(family, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'runs.db'}"
    family.metadataset(6, seed=0, tasks=[0, 1, 2]).to_storage(storage)
    out = tmp_path / "s"
    assert main(["meta-train", "--storage", storage, "--out", str(out), "--steps", "20"]) == 0
    assert (out / "weights.safetensors").exists()
    assert main(["inspect", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.split("\n", 0)[0].split("Saved to")[-1].split("\n", 1)[1])
    assert record["space"]["name"] == "lora-v1" and len(record["tasks"]) == 3
    from optuna_quicktune.surrogate import load

    new = load(str(out))
    assert new.performance.hparams["noise"] == "prefix"  # the default model
    assert new.info["hyperparameters"]["residual"] is True and "residual" in new.info["validation"]
    assert new.info["hyperparameters"]["calibration"] == "global" and new.performance.std_scales == ()
    old = tmp_path / "old"
    assert main(["meta-train", "--storage", storage, "--out", str(old), "--steps", "5", "--noise", "constant",
                 "--mean", "constant", "--residual", "off"]) == 0
    back = load(str(old))
    assert (back.performance.hparams["noise"], back.performance.hparams["mean"]) == ("constant", "constant")
    assert back.performance.gp.resid_share == 0.0 and "residual" not in back.info["validation"]
    binned = tmp_path / "binned"
    assert main(["meta-train", "--storage", storage, "--out", str(binned), "--steps", "5", "--calibration", "prefix"]) == 0
    assert len(load(str(binned)).performance.std_scales) == 5


def test_errors_are_one_line_and_help_is_useful(tmp_path, capsys):
    import optuna

    optuna.storages.get_storage(f"sqlite:///{tmp_path / 'empty.db'}")  # an existing database without studies
    assert main(["meta-train", "--storage", f"sqlite:///{tmp_path / 'empty.db'}", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "describe_task" in err and "Traceback" not in err
    out = subprocess.run([sys.executable, "-m", "optuna_quicktune.cli", "--help"], capture_output=True, text=True).stdout
    for cmd in ("meta-train", "inspect", "bench", "perf"):
        assert cmd in out


def test_perf_command_exits_cleanly():
    # It once printed its figures and then aborted (status 134): a lease thread of its last trial
    # was still alive when the interpreter exited.
    out = subprocess.run(
        [sys.executable, "-m", "optuna_quicktune.cli", "perf", "--runs", "90", "--fidelity", "6", "--candidates", "50",
         "--observed-points", "120", "--steps", "5"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["prune_ms"]["p50"] > 0


@pytest.mark.parametrize("command, module, extra", [
    ("bench", "optuna_quicktune.benchmark.cli", "bench"),
    ("collect", "trl_objectives.collect", "trl"),
    ("demo", "trl_objectives.demo", "trl"),
])
def test_a_command_whose_extra_is_missing_names_the_extra(command, module, extra):
    # sys.modules[name] = None makes that import fail as it does when the extra is not installed.
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            f"from optuna_quicktune.cli import main; sys.exit(main([{command!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert f"optuna-quicktune[{extra}]" in out.stderr
