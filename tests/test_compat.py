"""Checkpoints written before the package was reorganised (``tests/compat``, made by
``tests/compat/make_checkpoints.py`` at commit 7b9cc7d) still load, with the same parameter names,
and compute the same logits: users' checkpoints keep their function."""

from pathlib import Path

import pytest
import torch

from sew_plugin.checkpoint import load_checkpoint
from sew_plugin.data.checkpoints import load_state

COMPAT = Path(__file__).resolve().parent / "compat"
EXPECTED = torch.load(COMPAT / "expected.pt", weights_only=True)
NAMES = ["sew", "sew_d", "st_sew_221", "sew_cif", "sew_exits_down2", "wav2vec2"]


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_of_the_earlier_layout_loads_and_computes_the_same_logits(name):
    path = COMPAT / f"{name}.pt"
    model, _, _ = load_checkpoint(path, {"data": str(COMPAT)})
    assert set(model.state_dict()) == set(load_state(path)["model"])  # no parameter renamed or added
    with torch.no_grad():
        out = model(source=EXPECTED["source"], padding_mask=EXPECTED["padding_mask"])
    want = EXPECTED[name]
    logits = out["encoder_out"].transpose(0, 1)
    assert logits.shape == want["logits"].shape
    valid = ~want["padding_mask"]
    mask = out["padding_mask"]
    assert torch.equal(mask if mask is not None else torch.zeros_like(valid), want["padding_mask"])
    torch.testing.assert_close(logits[valid], want["logits"][valid], rtol=0, atol=2e-5)
    exits = {k: v for k, v in want.items() if k.startswith("exit")}
    assert len(exits) == (1 if name == "sew_exits_down2" else 0)
    for key, expected in exits.items():
        torch.testing.assert_close(out["exit_logits"][int(key[4:])].transpose(0, 1)[valid], expected[valid],
                                   rtol=0, atol=2e-5)
