"""Checkpoints written before the package was reorganised (``tests/compat``, made by
``tests/compat/make_checkpoints.py`` at commit 448ccfb's parent, 7b9cc7d) still load, with the same
parameter names, and compute the same logits: alone (``expected_alone.pt``, computed by that code)
and in a padded batch (``expected.pt``). In a padded batch the GroupNorm front ends (``sew``,
``wav2vec2``: ``extractor_mode: default``) now normalise each utterance over its own frames, so their
padded rows give what they give alone, where that code's batch statistics made them differ."""

from pathlib import Path

import pytest
import torch

from sew_plugin.checkpoint import load_checkpoint
from sew_plugin.data.checkpoints import load_state
from sew_plugin.modules.feature_extractor import GroupedConvFeatureExtractor

COMPAT = Path(__file__).resolve().parent / "compat"
EXPECTED = torch.load(COMPAT / "expected.pt", weights_only=True)
ALONE = torch.load(COMPAT / "expected_alone.pt", weights_only=True)
NAMES = ["sew", "sew_d", "st_sew_221", "sew_cif", "sew_exits_down2", "wav2vec2"]
GROUP_NORM = {"sew", "wav2vec2"}
ATOL = 2e-5


def load(name):
    return load_checkpoint(COMPAT / f"{name}.pt", {"data": str(COMPAT)})[0]


@pytest.mark.parametrize("name", NAMES)
def test_each_utterance_alone_computes_the_logits_it_computed_before(name):
    model = load(name)
    for i, expected in enumerate(ALONE[name]):
        n = int((~EXPECTED["padding_mask"][i]).sum())
        with torch.no_grad():
            logits = model(source=EXPECTED["source"][i : i + 1, :n], padding_mask=None)["encoder_out"][:, 0]
        assert logits.shape == expected.shape
        torch.testing.assert_close(logits, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_of_the_earlier_layout_loads_and_computes_the_same_logits(name):
    path = COMPAT / f"{name}.pt"
    model = load(name)
    # every feature extractor runs the plugin's way, wav2vec 2.0's (fairseq's class) too
    assert isinstance(model.w2v_encoder.w2v_model.feature_extractor, GroupedConvFeatureExtractor)
    assert set(model.state_dict()) == set(load_state(path)["model"])  # no parameter renamed or added
    with torch.no_grad():
        out = model(source=EXPECTED["source"], padding_mask=EXPECTED["padding_mask"])
    want = EXPECTED[name]
    logits = out["encoder_out"].transpose(0, 1)
    assert logits.shape == want["logits"].shape
    valid = ~want["padding_mask"]
    mask = out["padding_mask"]
    assert torch.equal(mask if mask is not None else torch.zeros_like(valid), want["padding_mask"])
    rows = [0] if name in GROUP_NORM else range(logits.size(0))  # row 0 is unpadded: alone
    for i in rows:
        torch.testing.assert_close(logits[i][valid[i]], want["logits"][i][valid[i]], rtol=0, atol=ATOL)
    for i in range(logits.size(0)):  # every row gives what it gives alone
        torch.testing.assert_close(logits[i][valid[i]], ALONE[name][i], rtol=0, atol=ATOL)
    exits = {k: v for k, v in want.items() if k.startswith("exit")}
    assert len(exits) == (1 if name == "sew_exits_down2" else 0)
    for key, expected in exits.items():
        torch.testing.assert_close(out["exit_logits"][int(key[4:])].transpose(0, 1)[valid], expected[valid],
                                   rtol=0, atol=ATOL)
