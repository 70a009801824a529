"""The fine-tuning recipes validate and save on fairseq's schedule for their labelled-data size
(fairseq's ``examples/wav2vec/config/finetuning/base_<size>.yaml``): composed as
``fairseq-hydra-train --config-dir configs/finetuning --config-name <recipe>`` composes them, with
fairseq's schema under the recipe's name and hydra's defaults lists, not by reading one file."""

import warnings

import pytest
import yaml

from conftest import REPO, hydra_train_command

FINETUNING = REPO / "configs" / "finetuning"
RECIPES = sorted(p.stem for p in FINETUNING.glob("*.yaml") if not p.stem.startswith("_"))

# fairseq's validation and save schedule per labelled-data size, from fairseq's
# examples/wav2vec/config/finetuning/base_{10m,1h,10h,100h}.yaml (keys a file does not set: fairseq's
# defaults, fairseq/dataclass/configs.py: save_interval 1, save_interval_updates 0,
# keep_interval_updates -1, validate_interval 1, validate_interval_updates 0, validate_after_updates 0).
# 1h: base_1h.yaml as wav2vec 2.0 and the SEW release ran it (fairseq 6d2cf0dd, 2020-11, to
# 75051ecf; asappresearch/sew config/finetuning/base_1h.yaml is the same), equal to base_10m's;
# fairseq c71870f3 (data2vec, 2022-01) later swapped its save keys to save_interval 50,
# save_interval_updates 1000 (see configs/finetuning/1h.yaml).
KEYS = ("checkpoint.save_interval", "checkpoint.save_interval_updates", "checkpoint.keep_interval_updates",
        "checkpoint.no_epoch_checkpoints", "checkpoint.best_checkpoint_metric",
        "dataset.validate_after_updates", "dataset.validate_interval", "dataset.validate_interval_updates")
FAIRSEQ = {
    #       save_interval, save_interval_updates, keep_interval_updates, no_epoch_checkpoints, best metric,
    #       validate_after_updates, validate_interval, validate_interval_updates
    "10m": (1000, 50, 1, True, "wer", 10000, 1000, 0),
    "1h": (1000, 50, 1, True, "wer", 10000, 1000, 0),
    "10h": (50, 10000, 1, True, "wer", 10000, 50, 0),
    "100h": (1, 0, -1, True, "wer", 0, 1, 0),
}
# the size each recipe fine-tunes on: the St-SEW recipes are the 10h recipe with an operating point
SIZE = {"10m": "10m", "1h": "1h", "10h": "10h", "100h": "100h",
        "10h_st_sew_deterministic": "10h", "10h_st_sew_stochastic": "10h"}
REQUIRED = ["task.data=/data", "model.w2v_path=/pretrain/checkpoint_best.pt"]


def compose_recipe(name, overrides=()):
    """The config fairseq-hydra-train builds for ``configs/finetuning/<name>.yaml`` (before its job runs):
    fairseq_cli.hydra_train.cli_main stores FairseqConfig under the config's name (hydra validates the
    file against it) and its ``hydra.main`` gives no version_base (hydra 1.1's behaviour)."""
    from fairseq.dataclass.initialize import hydra_init
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    hydra_init(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # hydra's notes on 1.1 behaviour and schema matching
            with initialize_config_dir(config_dir=str(FINETUNING), version_base="1.1"):
                return compose(config_name=name, overrides=[*REQUIRED, *overrides])
    finally:
        ConfigStore.instance().repo.pop(f"{name}.yaml", None)  # leave no schema named like a recipe


def schedule(cfg):
    return tuple(cfg[section][key] for section, key in (k.split(".") for k in KEYS))


def test_every_fine_tuning_recipe_has_a_size():
    assert set(RECIPES) == set(SIZE)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_and_saves_on_fairseqs_schedule_for_its_size(name):
    got = dict(zip(KEYS, schedule(compose_recipe(name))))
    assert got == dict(zip(KEYS, FAIRSEQ[SIZE[name]])), name


@pytest.mark.parametrize("name", ["10m", "10h_st_sew_stochastic"])
def test_command_line_overrides_of_the_schedule_win(name):
    """Short runs (the tests' tiny fine-tunings) move the schedule from the command line."""
    cfg = compose_recipe(name, ["dataset.validate_after_updates=0", "checkpoint.save_interval=1",
                                "dataset.validate_interval=1"])
    assert (cfg.dataset.validate_after_updates, cfg.checkpoint.save_interval, cfg.dataset.validate_interval) == (0, 1, 1)


@pytest.mark.slow
def test_the_real_entry_point_composes_the_same_schedule(tmp_path):
    """``fairseq-hydra-train --cfg job`` (compose, print, train nothing) on the deepest composition
    (10h_st_sew_stochastic -> 10h -> _recipe) prints the schedule compose_recipe finds."""
    import subprocess

    name = "10h_st_sew_stochastic"
    cmd = hydra_train_command(tmp_path, "finetuning", name, REQUIRED)
    run = subprocess.run([cmd[0], "--cfg", "job", *cmd[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    printed = yaml.safe_load(run.stdout)
    assert schedule(printed) == schedule(compose_recipe(name)) == FAIRSEQ["10h"]
