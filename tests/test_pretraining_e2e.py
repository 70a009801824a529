"""SEW pre-training through the real ``fairseq-hydra-train`` entry point, on real WAV files."""

import json
import math

import pytest
import torch

from conftest import TINY_PRETRAINING, hydra_train, pretraining_corpus
from helpers import half_precision_record

pytestmark = pytest.mark.slow  # every test runs fairseq-hydra-train in a subprocess


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return pretraining_corpus(tmp_path_factory.mktemp("corpus"))


def train_losses(log: str):
    losses = []
    for line in log.splitlines():
        if "[train_inner]" in line:
            losses.append(float(json.loads(line[line.index("{"):])["loss"]))
    return losses


def test_pretrains_saves_and_reloads(tmp_path, corpus):
    run = hydra_train(tmp_path, "pretraining", "sew_tiny", [f"task.data={corpus}", *TINY_PRETRAINING])
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
    overrides = [f"task.data={corpus}", *TINY_PRETRAINING, "optimization.max_update=1"]
    if "conv_feature_layers" in override:
        overrides.remove("model.wfe_c_channels=8")
        overrides.append("model.wfe_c_channels=0")
    run = hydra_train(tmp_path, "pretraining", "sew_tiny", [*overrides, override])
    assert run.returncode != 0
    assert key in run.stderr + run.stdout
    assert not (tmp_path / "ckpt" / "checkpoint_last.pt").exists()


@pytest.mark.parametrize("config", ["sew_d_tiny", "st_sew_base", "w2v2_base_cif"])
def test_half_precision_training_through_fairseqs_fp16_optimizer(tmp_path, corpus, config):
    """The GPU recipes train with ``common.fp16`` (fairseq halves the model and keeps fp32 master
    weights in its FP16Optimizer). ``common.bf16`` takes the same path on the CPU: every model family
    trains in half precision with finite losses (the checkpoint names FP16Optimizer, and every model
    tensor in it is a bf16 value: fairseq saves the halved model as fp32)."""
    from conftest import TINY_W2V2_PRETRAINING

    sizes = TINY_W2V2_PRETRAINING if config.startswith("w2v2") else [o for o in TINY_PRETRAINING if "mlp_hidden" not in o]
    extra = ["model.position_buckets=8", "model.max_position_embeddings=32"] if config.startswith("sew_d") else []
    run = hydra_train(tmp_path, "pretraining", config, [f"task.data={corpus}", *sizes, *extra,
                                                        "optimization.max_update=3", "common.bf16=true"], threads=1)
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "'bf16': True" in log  # the config fairseq ran with (its trainer then calls model.bfloat16())
    losses = train_losses(log)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    optimizer, tensors, not_bf16 = half_precision_record(tmp_path / "ckpt" / "checkpoint_last.pt")
    assert optimizer == "FP16Optimizer" and tensors > 0 and not_bf16 == [], (optimizer, not_bf16[:5])
