"""Span masks that follow ``common.seed``: the plugin's models and, once the plugin's tasks have built
it, fairseq's own wav2vec 2.0 (fairseq 0.12.3 drew them from OS entropy)."""

import numpy as np
import torch
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

from sew_plugin.models.sew import SEWModel
from sew_plugin.modules.masking import SeededMasks, SeededWav2Vec2Model, class_name, seed_masks


def tiny_wav2vec2() -> Wav2Vec2Model:
    cfg = Wav2Vec2Config(encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                         conv_feature_layers="[(32,10,5)]", final_dim=16, latent_vars=8, conv_pos=4, conv_pos_groups=2,
                         mask_prob=0.5, mask_length=3, mask_channel_prob=0.3, mask_channel_length=2)
    return Wav2Vec2Model(cfg)


def masks_after_seed(model, seed: int):
    """The (B, T) time and (B, T, C) channel masks of one ``apply_mask`` after ``np.random.seed(seed)``."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    x = torch.randn(3, 60, 32)
    masked, time_mask = model.apply_mask(x, None)
    return time_mask, masked == 0  # channel masks write zeros


def test_fairseqs_wav2vec2_masks_follow_the_seed_once_seeded():
    torch.manual_seed(0)
    model = tiny_wav2vec2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unseeded = [masks_after_seed(model, 7) for _ in range(2)]
    assert not torch.equal(unseeded[0][0], unseeded[1][0])  # fairseq's: OS entropy, whatever the seed

    container = torch.nn.ModuleDict({"w2v_model": model})  # as a CTC model holds it
    assert seed_masks(container) == 1 and type(model) is SeededWav2Vec2Model
    assert seed_masks(container) == 0  # already seeded
    assert isinstance(model, Wav2Vec2Model) and class_name(model) == "Wav2Vec2Model"  # as reports name it
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)

    first, again, other = masks_after_seed(model, 7), masks_after_seed(model, 7), masks_after_seed(model, 8)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    time_mask, channel_mask = first
    assert 0 < time_mask.float().mean() < 1 and channel_mask.any()  # both kinds of masks were drawn


def test_the_plugins_models_mask_the_seeded_way():
    assert issubclass(SEWModel, SeededMasks) and SEWModel.__mro__.index(SeededMasks) < SEWModel.__mro__.index(Wav2Vec2Model)
