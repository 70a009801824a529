"""Shared helpers: tiny model configs and real WAV corpora written with soundfile."""

import os
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


def write_manifest(path: Path, root: Path, rows):
    """fairseq's manifest: the root directory, then ``relative_path<TAB>num_samples`` lines."""
    path.write_text(os.fspath(root) + "\n" + "".join(f"{p}\t{n}\n" for p, n in rows))
