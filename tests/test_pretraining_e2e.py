"""SEW pre-training through the real ``fairseq-hydra-train`` entry point, on real WAV files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, write_manifest, write_wav_corpus

FAIRSEQ_HYDRA_TRAIN = str(Path(sys.executable).with_name("fairseq-hydra-train"))

# Tiny sizes and a short schedule on top of the real configs/pretraining/sew_tiny.yaml.
TINY_RUN = [
    "common.cpu=true",
    "common.fp16=false",
    "common.log_interval=1",
    "common.seed=3",
    "distributed_training.distributed_world_size=1",
    "optimization.update_freq=[1]",
    "optimization.max_update=32",
    "optimization.lr=[0.001]",
    "lr_scheduler.warmup_updates=4",
    "lr_scheduler.total_num_update=32",
    "dataset.num_workers=0",
    "dataset.max_tokens=120000",
    "task.min_sample_size=16000",
    "task.max_sample_size=40000",
    "model.encoder_layers=2",
    "model.encoder_embed_dim=64",
    "model.encoder_ffn_embed_dim=128",
    "model.encoder_attention_heads=2",
    "model.encoder_layerdrop=0",
    "model.wfe_c_channels=8",
    "model.mlp_hidden_size=64",
    "model.final_dim=32",
    "model.latent_vars=16",
    "model.num_negatives=10",
]


def hydra_train(tmp_path: Path, config: str, overrides):
    cmd = [
        FAIRSEQ_HYDRA_TRAIN,
        "--config-dir", str(REPO / "configs" / "pretraining"),
        "--config-name", config,
        f"common.user_dir={REPO / 'sew_plugin'}",
        f"checkpoint.save_dir={tmp_path / 'ckpt'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rows = write_wav_corpus(root / "wav", [16000 + 2500 * i for i in range(10)])
    rows = [(f"wav/{p}", n) for p, n in rows]
    write_manifest(root / "train.tsv", root, rows[:8])
    write_manifest(root / "valid.tsv", root, rows[8:])
    return root


def train_losses(log: str):
    losses = []
    for line in log.splitlines():
        if "[train_inner]" in line:
            losses.append(float(json.loads(line[line.index("{"):])["loss"]))
    return losses


def test_pretrains_saves_and_reloads(tmp_path, corpus):
    run = hydra_train(tmp_path, "sew_tiny", [f"task.data={corpus}", *TINY_RUN])
    assert run.returncode == 0, run.stderr[-4000:]
    log = run.stdout + run.stderr

    losses = train_losses(log)
    assert len(losses) == 32
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < first - 0.2, losses

    ckpt_path = tmp_path / "ckpt" / "checkpoint_last.pt"
    assert ckpt_path.is_file()

    from fairseq import checkpoint_utils

    from sew_plugin.models.sew import SEWModel

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(ckpt_path)])
    model = models[0].eval()
    assert isinstance(model, SEWModel)
    assert cfg.model._name == "sew" and cfg.model.squeeze_factor == 2
    assert cfg.model.wfe_c_channels == 8
    assert model.cfg.conv_feature_layers.startswith("[(8,10,5)]")  # WFE-C expanded when built
    assert len(model.feature_extractor.conv_layers) == 13

    saved = torch.load(ckpt_path, map_location="cpu", weights_only=False)["model"]
    reloaded = model.state_dict()
    assert saved.keys() == reloaded.keys()
    for key, value in saved.items():
        assert torch.equal(value, reloaded[key]), key

    source = torch.randn(2, 20000)
    with torch.no_grad():
        x1 = model(source, mask=False, features_only=True)["x"]
        again = checkpoint_utils.load_model_ensemble_and_task([str(ckpt_path)])[0][0].eval()
        x2 = again(source, mask=False, features_only=True)["x"]
    assert torch.equal(x1, x2)


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.squeeze_factor=0", "model.squeeze_factor"),
        ("model.conv_feature_layers='[(64,10,5),(64,3)]'", "model.conv_feature_layers"),
    ],
)
def test_invalid_config_fails_naming_the_key(tmp_path, corpus, override, key):
    overrides = [f"task.data={corpus}", *TINY_RUN, "optimization.max_update=1"]
    if "conv_feature_layers" in override:
        overrides.remove("model.wfe_c_channels=8")
        overrides.append("model.wfe_c_channels=0")
    run = hydra_train(tmp_path, "sew_tiny", [*overrides, override])
    assert run.returncode != 0
    assert key in run.stderr + run.stdout
    assert not (tmp_path / "ckpt" / "checkpoint_last.pt").exists()
