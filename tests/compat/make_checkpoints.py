"""Writes the checkpoints of ``tests/test_compat.py``: tiny fine-tuned CTC models of every family,
as the code of the commit that added them wrote them, and their logits on one padded batch.

Run once (from the repository root: ``.venv/bin/python tests/compat/make_checkpoints.py``); the
files are committed and must keep loading and computing the same logits whatever the code becomes.
"""

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import waveform_batch  # noqa: E402
from helpers import LETTERS, ctc_model, write_checkpoint  # noqa: E402

# name -> (encoder kind, front end, sew_ctc keys)
MODELS = {
    "sew": ("sew", "default", {}),
    "sew_d": ("sew_d", "layer_norm", {}),
    "st_sew_221": ("st_sew", "layer_norm", {"operating_point": "2,2,1"}),
    "sew_cif": ("sew_cif", "layer_norm", {"cif_lambda": 1.0}),
    "sew_exits_down2": ("sew", "layer_norm", {"exit_layers": "1", "input_downsample": "conv",
                                               "input_downsample_factor": 2}),
    "wav2vec2": ("wav2vec2", "default", {}),
}
LENGTHS = [16000, 9000, 4321]


def main() -> None:
    (HERE / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))
    source, padding = waveform_batch(LENGTHS, seed=5)
    expected = {"source": source, "padding_mask": padding}
    for i, (name, (kind, mode, ctc)) in enumerate(MODELS.items()):
        torch.manual_seed(100 + i)
        model = ctc_model(kind, mode, **ctc)
        write_checkpoint(model, HERE / f"{name}.pt", "unused")
        with torch.no_grad():
            out = model(source=source, padding_mask=padding)
        mask = out["padding_mask"]
        expected[name] = {"logits": out["encoder_out"].transpose(0, 1).contiguous(),
                          "padding_mask": mask if mask is not None else torch.zeros(out["encoder_out"].shape[:2][::-1],
                                                                                   dtype=torch.bool)}
        for layer, logits in out.get("exit_logits", {}).items():
            expected[name][f"exit{layer}"] = logits.transpose(0, 1).contiguous()
    torch.save(expected, HERE / "expected.pt")


if __name__ == "__main__":
    main()
