"""Shared helpers: tiny model configs and real WAV corpora written with soundfile."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parent.parent


# Tiny sizes for every test that does not check full-size parameter counts.
TINY_SEW = dict(
    encoder_layers=2,
    encoder_embed_dim=32,
    encoder_ffn_embed_dim=64,
    encoder_attention_heads=2,
    wfe_c_channels=8,
    conv_pos=7,
    conv_pos_groups=4,
    mlp_hidden_size=64,
    latent_vars=16,
    final_dim=16,
    encoder_layerdrop=0.0,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session", autouse=True)
def _kernel_cache(tmp_path_factory):
    """The compiled kernels (modules/kernels.py) are built in the session's temporary folder, not the user's
    ~/.cache/sew_plugin (the commands the tests run inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEW_PLUGIN_CACHE", str(tmp_path_factory.mktemp("kernels")))
        yield


def write_wav_corpus(root: Path, lengths, sample_rate: int = 16000, seed: int = 0):
    """Write one mono 16 kHz WAV per length (samples): voiced-like tones with noise.

    Returns the fairseq manifest rows ``(relative_path, num_samples)``.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, n in enumerate(lengths):
        t = np.arange(n) / sample_rate
        f0 = 90 + 25 * i
        wav = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t)))
        wav += 0.05 * rng.standard_normal(n)
        name = f"utt{i:03d}.wav"
        sf.write(root / name, wav.astype(np.float32), sample_rate)
        rows.append((name, n))
    return rows


def waveform_batch(lengths, seed=0):
    """Zero-padded (B, S) random waveforms of the given lengths and their (B, S) padding mask."""
    g = torch.Generator().manual_seed(seed)
    source = torch.zeros(len(lengths), max(lengths))
    padding = torch.ones(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        source[i, :n] = torch.randn(n, generator=g)
        padding[i, :n] = False
    return source, padding


def max_diff_to_transformers(model, hf, frames):
    """Run a padded batch of utterances with ``frames`` 20 ms frames each through this plugin's
    model and its transformers twin; return the largest difference over valid frames."""
    lengths = [320 * f + 80 for f in frames]
    source = torch.zeros(len(lengths), max(lengths))
    attention = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        source[i, :n] = torch.randn(n)
        attention[i, :n] = 1
    with torch.no_grad():
        ours = model(source, padding_mask=attention == 0, mask=False, features_only=True)
        theirs = hf(source, attention_mask=attention).last_hidden_state
    assert ours["x"].shape == theirs.shape
    valid = ~ours["padding_mask"]
    assert valid.sum(1).tolist() == list(frames)
    return (ours["x"] - theirs).abs()[valid].max()


def write_manifest(path: Path, root: Path, rows):
    """fairseq's manifest: the root directory, then ``relative_path<TAB>num_samples`` lines."""
    path.write_text(os.fspath(root) + "\n" + "".join(f"{p}\t{n}\n" for p, n in rows))


def pretraining_corpus(root: Path) -> Path:
    """Ten tones of 1-2.4 s in ``root/wav``, with ``train.tsv`` (8) and ``valid.tsv`` (2)."""
    rows = write_wav_corpus(root / "wav", [16000 + 2500 * i for i in range(10)])
    rows = [(f"wav/{p}", n) for p, n in rows]
    write_manifest(root / "train.tsv", root, rows[:8])
    write_manifest(root / "valid.tsv", root, rows[8:])
    return root


FAIRSEQ_HYDRA_TRAIN = str(Path(sys.executable).with_name("fairseq-hydra-train"))

# Tiny sizes and a short schedule on top of the real configs/pretraining/*.yaml.
TINY_PRETRAINING_COMMON = [
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
    "model.final_dim=32",
    "model.latent_vars=16",
    "model.num_negatives=10",
]
TINY_PRETRAINING = TINY_PRETRAINING_COMMON + ["model.wfe_c_channels=8", "model.mlp_hidden_size=64"]
TINY_W2V2_FRONT_END = "[(32,10,5)] + [(32,3,2)]*4 + [(32,2,2)]*2"
TINY_W2V2_PRETRAINING = TINY_PRETRAINING_COMMON + [f"model.conv_feature_layers='{TINY_W2V2_FRONT_END}'", "model.conv_pos=16"]

# A short CTC fine-tuning schedule on top of the real configs/finetuning/*.yaml (tiny pre-trained encoders).
TINY_FINETUNING = [
    "common.cpu=true",
    "common.fp16=false",
    "common.log_interval=1",
    "distributed_training.distributed_world_size=1",
    "dataset.num_workers=0",
    "dataset.max_tokens=120000",
    "optimization.max_update=6",
    "dataset.validate_after_updates=0",  # the recipes validate from update 10000 (fairseq's schedule)
    "optimization.lr=[0.0005]",
    "model.freeze_finetune_updates=2",
    "model.mask_length=2",
    "model.mask_prob=0.2",
    "model.mask_channel_length=4",
    "model.mask_channel_prob=0.1",
    "model.layerdrop=0.05",
]


def hydra_train_command(tmp_path: Path, group: str, config: str, overrides, run_dir: str = "hydra"):
    """The real ``fairseq-hydra-train`` command line for ``configs/<group>/<config>.yaml``,
    checkpoints in ``tmp_path/ckpt``, hydra's output in ``tmp_path/<run_dir>``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    return [
        FAIRSEQ_HYDRA_TRAIN,
        "--config-dir", str(REPO / "configs" / group),
        "--config-name", config,
        f"common.user_dir={REPO / 'sew_plugin'}",
        f"checkpoint.save_dir={tmp_path / 'ckpt'}",
        f"hydra.run.dir={tmp_path / run_dir}",
        *overrides,
    ]


def log_records(log: str, name: str = "train_inner"):
    """The records fairseq's json log format prints under ``[name]`` (``train_inner``: one per
    ``common.log_interval`` updates; ``valid``: one per validation; ``train``: one per epoch), in order."""
    return [json.loads(line[line.index("{"):]) for line in log.splitlines() if f"[{name}]" in line]


def hydra_train(tmp_path: Path, group: str, config: str, overrides, threads: int = 2):
    """Run the real ``fairseq-hydra-train`` on ``configs/<group>/<config>.yaml`` in a subprocess."""
    cmd = hydra_train_command(tmp_path, group, config, overrides)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)



@pytest.fixture
def tiny_presets(monkeypatch):
    """``sew bench`` rows at tiny size: every named config built with the tiny dimensions (wav2vec 2.0's
    with a 32-channel conv front end instead of WFE-C)."""
    from sew_plugin import presets

    build_model = presets.build_model
    tiny = {k: v for k, v in TINY_SEW.items() if k not in ("latent_vars", "final_dim", "mlp_hidden_size")}

    def tiny_build(name, group="pretraining", **overrides):
        if name.startswith("w2v2"):
            extra = {"wfe_c_channels": None, "conv_feature_layers": TINY_W2V2_FRONT_END}
        elif name.startswith("sew_d"):
            extra = {"position_buckets": 8, "max_position_embeddings": 32}
        else:
            extra = {}
        sizes = {k: v for k, v in {**tiny, **extra}.items() if v is not None}
        return build_model(name, group, **{**sizes, **overrides})

    monkeypatch.setattr(presets, "build_model", tiny_build)
