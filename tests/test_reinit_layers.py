"""``model.reinit_layers``: fine-tuning starts the top N transformer layers of the pre-trained
encoder as a freshly built encoder starts them, and keeps every other pre-trained weight."""

from argparse import Namespace

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.models import build_model
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from omegaconf import OmegaConf

from conftest import TINY_W2V2_FRONT_END
from helpers import pretrained_checkpoint, write_release_checkpoint
from sew_plugin.models.sew_ctc import SEWCtc, SEWCtcConfig, reinit_top_layers
from sew_plugin.modules.layerwise import transformer_layers


def wav2vec2_checkpoint(path):
    encoder = Wav2Vec2Config(encoder_layers=3, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                             conv_feature_layers=TINY_W2V2_FRONT_END, conv_pos=16, final_dim=16, latent_vars=16)
    model_cfg = {**OmegaConf.to_container(OmegaConf.structured(encoder), enum_to_str=True), "_name": "wav2vec2"}
    return write_release_checkpoint(path, model_cfg, {"_name": "audio_pretraining", "data": str(path.parent)},
                                    Wav2Vec2Model(encoder).state_dict(), "wav2vec")


# where each encoder's transformer layers sit in its state dict
LAYER_PREFIX = {"sew_d": "encoder.encoder.layer.", "wav2vec2": "encoder.layers."}
CHECKPOINTS = {"sew_d": lambda path: pretrained_checkpoint(path, "sew_d", position_buckets=8, max_position_embeddings=32),
               "wav2vec2": wav2vec2_checkpoint}


def fine_tuned(path, **ctc):
    cfg = OmegaConf.structured(SEWCtcConfig(w2v_path=str(path), data=str(path.parent), normalize=False,
                                            ddp_backend="legacy_ddp", **ctc))
    vocab = Dictionary()
    vocab.add_symbol("A")
    return SEWCtc.build_model(cfg, Namespace(target_dictionary=vocab))


def encoder_weights(model) -> dict:
    return {k: v.clone() for k, v in model.w2v_encoder.w2v_model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_only_the_top_layers_leave_their_pretrained_weights(name, tmp_path):
    path = CHECKPOINTS[name](tmp_path / "pretrained.pt")
    kept, fresh = encoder_weights(fine_tuned(path)), encoder_weights(fine_tuned(path, reinit_layers=2))
    assert kept.keys() == fresh.keys()
    changed = {k for k in kept if not torch.equal(kept[k], fresh[k])}
    layer = LAYER_PREFIX[name]
    top = {k for k in kept if k.startswith((f"{layer}1.", f"{layer}2."))}
    weights = {k for k in top if k.endswith("weight") and "LayerNorm" not in k and "layer_norm" not in k}
    assert weights and weights <= changed <= top  # every top-layer matrix redrawn, nothing below touched


def test_the_fresh_layers_are_the_encoders_own_initialisation(tmp_path):
    path = CHECKPOINTS["sew_d"](tmp_path / "pretrained.pt")
    model = fine_tuned(path)
    encoder_cfg = model.cfg.w2v_args.model
    torch.manual_seed(3)
    reinit_top_layers(model, encoder_cfg, 1)
    torch.manual_seed(3)
    expected = transformer_layers(build_model(encoder_cfg, None, from_checkpoint=True).encoder)[-1].state_dict()
    got = transformer_layers(model.w2v_encoder.w2v_model.encoder)[-1].state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_minus_one_starts_every_layer_afresh_and_keeps_the_front_end(name, tmp_path):
    path = CHECKPOINTS[name](tmp_path / "pretrained.pt")
    kept, fresh = encoder_weights(fine_tuned(path)), encoder_weights(fine_tuned(path, reinit_layers=-1))
    layer = LAYER_PREFIX[name]
    changed = {k for k in kept if not torch.equal(kept[k], fresh[k])}
    assert {k.split(".")[len(layer.split(".")) - 1] for k in changed} == {"0", "1", "2"}  # the 3 layers
    assert all(k.startswith(layer) for k in changed)  # front end, position convolution, norms kept


def test_more_layers_than_the_encoder_has_are_refused_by_key(tmp_path):
    path = CHECKPOINTS["sew_d"](tmp_path / "pretrained.pt")
    with pytest.raises(ValueError, match=r"^model\.reinit_layers must be at most the encoder's 3 layers, got 4$"):
        fine_tuned(path, reinit_layers=4)
