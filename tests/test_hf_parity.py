"""SEW against HuggingFace transformers' independent SEWModel, same weights mapped by name."""

import pytest
import torch
import transformers  # a test-only dependency, declared in setup.py
from omegaconf import OmegaConf

import sew_plugin.models  # noqa: F401
from sew_plugin.interop.hf import sew_hf_config_kwargs, sew_state_dict_to_hf
from sew_plugin.models.sew import SEWConfig, SEWModel

from conftest import TINY_SEW, max_diff_to_transformers



def to_hf(model: SEWModel):
    hf = transformers.SEWModel(transformers.SEWConfig(**sew_hf_config_kwargs(model.cfg))).eval()
    missing, unexpected = hf.load_state_dict(sew_state_dict_to_hf(model.state_dict()), strict=True)
    assert not missing and not unexpected
    return hf


@pytest.mark.parametrize("squeeze_factor", [2, 3])
@pytest.mark.parametrize("extractor_mode", ["default", "layer_norm"])
def test_matches_transformers_sew_on_a_padded_batch(squeeze_factor, extractor_mode):
    cfg = OmegaConf.structured(
        SEWConfig(**{**TINY_SEW, "encoder_layers": 3}, squeeze_factor=squeeze_factor, extractor_mode=extractor_mode, quantize_targets=True, use_mlp=True)
    )
    model = SEWModel.build_model(cfg).eval()
    hf = to_hf(model)

    # Frame counts of the shorter utterances are multiples of s: transformers >= 5 pools the
    # attention mask with ceil(T / s), while the original SEW (and this plugin, matching an
    # utterance run alone) keeps floor(T / s) squeezed frames. Frames 20 ms = 320 samples.
    diff = max_diff_to_transformers(model, hf, [60, 12 * squeeze_factor, 8 * squeeze_factor])
    assert diff < 1e-4, diff


def test_unknown_parameters_are_refused():
    with pytest.raises(KeyError, match="encoder.extra.weight"):
        sew_state_dict_to_hf({"encoder.extra.weight": torch.zeros(1)})


def test_squeeze_factor_one_is_refused_for_transformers():
    cfg = OmegaConf.structured(SEWConfig(**TINY_SEW, squeeze_factor=1))
    with pytest.raises(ValueError, match="squeeze_factor=1"):
        sew_hf_config_kwargs(cfg)
