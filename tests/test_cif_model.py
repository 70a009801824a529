"""CIF compression inside the models (``compressor: cif``): pre-training at the compressed rate with
compressed targets, lambda sampling / fixing / learning, padding exactness, and CTC fine-tuning."""

import pytest
import torch

import sew_plugin.models  # noqa: F401
from sew_plugin.modules.side_outputs import collecting
from sew_plugin.models.sew import SEWConfig, SEWModel
from sew_plugin.models.sew_d import SEWDConfig, SEWDModel
from sew_plugin.models.st_sew import StSEWConfig, StSEWModel

from conftest import waveform_batch as batch
from helpers import tiny_cif


@pytest.mark.parametrize("model, config", [(SEWModel, SEWConfig), (SEWDModel, SEWDConfig)])
def test_pretraining_runs_at_the_compressed_rate_with_compressed_targets(model, config):
    m = tiny_cif(model, config, cif_lambda=1.0).train()
    # long enough that no compressed utterance is short enough for fairseq's span masking to cover it
    # whole (its compute_mask_indices raises then: with random alpha weights 9000 samples gave 3 frames)
    source, padding = batch([32000, 24000, 18000])
    with collecting() as reported:
        out = m(source, padding)
    compressed = reported["cif"]
    frames = (compressed.alpha.double().sum(1)).floor().long().clamp(min=2)  # tail dropped in training
    assert torch.equal(compressed.lengths, frames)
    assert out["padding_mask"].shape == (3, int(frames.max()))
    # logits: (1 + negatives, B, masked frames), the masked frames being compressed ones
    assert out["x"].shape[:2] == (6, 3) and out["x"].size(2) <= int(frames.min())
    losses = m.get_extra_losses(out)
    assert len(losses) == 3 and losses[2] is out["cif_loss"]
    (out["x"].sum() + losses[2]).backward()
    assert m.cif.alpha.proj.weight.grad.abs().sum() > 0  # alpha learns through CIF and the rate loss


def test_lambda_zero_keeps_every_frame_and_larger_lambda_compresses_more():
    m = tiny_cif(extractor_mode="layer_norm").eval()
    source, padding = batch([16000, 12000])
    frames = m._get_feat_extract_output_lengths(torch.tensor([16000, 12000]))
    lengths = []
    for lam in (0.0, 0.5, 1.0, 1.5, 1.99):
        m.cif.set_lambda(lam)
        with collecting() as reported:
            m(source, padding, mask=False, features_only=True)
        lengths.append(reported["cif"].lengths)
    assert torch.equal(lengths[0], frames)
    assert all((a >= b).all() for a, b in zip(lengths, lengths[1:]))
    assert lengths[-1].tolist() == [1, 1]


def test_padded_batch_equals_each_utterance_alone():
    m = tiny_cif(extractor_mode="layer_norm", cif_lambda=1.0).eval()
    lengths = [16000, 12000, 9000]
    source, padding = batch(lengths)
    with torch.no_grad():
        out = m(source, padding, mask=False, features_only=True)
        for i, n in enumerate(lengths):
            alone = m(source[i : i + 1, :n], None, mask=False, features_only=True)["x"][0]
            assert int((~out["padding_mask"][i]).sum()) == alone.size(0)
            torch.testing.assert_close(out["x"][i, : alone.size(0)], alone, atol=1e-5, rtol=1e-5)


def test_unset_lambda_is_sampled_per_batch_within_the_range():
    m = tiny_cif(cif_lambda_max=1.5).train()
    source, padding = batch([16000, 12000])
    seen = set()
    for _ in range(6):
        seen.add(m(source, padding)["cif_lambda"])
    assert len(seen) == 6 and all(0 <= lam < 1.5 for lam in seen)


def test_learnable_lambda_stays_in_range_and_gets_a_gradient():
    m = tiny_cif(cif_lambda_max=1.5).train()
    m.cif.set_lambda(0.75, learnable=True)
    assert m.cif.current_lambda().item() == pytest.approx(0.75)
    source, padding = batch([16000, 12000])
    m(source, padding, mask=False, features_only=True)["x"].pow(2).mean().backward()
    assert m.cif.lambda_logit.grad is not None and m.cif.lambda_logit.grad.abs() > 0
    with pytest.raises(ValueError, match="cif_lambda_max"):
        m.cif.set_lambda(1.6, learnable=True)


def test_segment_boundaries_switch_the_loss_to_guidance():
    m = tiny_cif(cif_lambda=1.0).train()
    source, padding = batch([16000, 16000])
    boundaries = torch.tensor([[5, 12, 20, 31], [8, 16, 40, -1]])
    rate = m(source, padding)["cif_loss"]
    with collecting() as reported:
        guided = m(source, padding, cif_boundaries=boundaries)["cif_loss"]
    from sew_plugin.modules.cif import guidance_loss

    assert guided.item() == pytest.approx(guidance_loss(reported["cif"].alpha, boundaries).item())
    assert guided.item() != pytest.approx(rate.item())


@pytest.mark.parametrize(
    "model, config, overrides, key",
    [
        (SEWModel, SEWConfig, dict(compressor="pool"), "model.compressor"),
        (SEWModel, SEWConfig, dict(squeeze_factor=2), "model.squeeze_factor"),
        (SEWModel, SEWConfig, dict(negatives_from_everywhere=True), "model.negatives_from_everywhere"),
        (SEWModel, SEWConfig, dict(cif_lambda_max=2.5), "model.cif_lambda_max"),
        (SEWModel, SEWConfig, dict(cif_lambda=2.5), "model.cif_lambda"),
        (StSEWModel, StSEWConfig, dict(), "model.compressor"),
    ],
)
def test_bad_cif_settings_name_the_key(model, config, overrides, key):
    with pytest.raises(ValueError, match=key):
        tiny_cif(model, config, **overrides)
