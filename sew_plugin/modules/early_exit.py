"""Early exit (Zaiem et al., ICASSP 2023; Wright et al., 2023): CTC heads after intermediate encoder
layers, and per-utterance policies that stop an utterance's forward at the first head confident enough.

The heads read 20 ms frames: an intermediate layer's output goes through the encoder's own
``finish`` and ``final_norm`` (for squeezed encoders, the encoder's upsampler, shared with the
final exit) before the head. ``ExitRunner`` is installed as the encoder's ``layer_hook``
(``sew_plugin.modules.layerwise``): in training it collects every exit's logits; in inference with a
policy it removes exited utterances from the batch, so later layers run only for the others.
"""

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config_rules import choose
from .side_outputs import report

if TYPE_CHECKING:  # importing layerwise pulls in fairseq, which the `sew` command line avoids at start-up
    from .layerwise import LayerState

POLICIES = ("layer", "entropy", "similarity", "nbest")


def parse_exit_layers(text: str, num_layers: int) -> List[int]:
    """``"2,4"`` -> [2, 4]: exits after those layers (1-based); the last layer is always the final exit."""
    if not str(text or "").strip():
        return []
    try:
        layers = sorted({int(v) for v in str(text).split(",")})
    except ValueError:
        raise ValueError(f"model.exit_layers={text!r} must be a comma list of layer numbers") from None
    if not 1 <= layers[0] <= layers[-1] < num_layers:
        raise ValueError(f"model.exit_layers={text!r}: layer numbers must be in [1, {num_layers - 1}] "
                         f"(the encoder has {num_layers} layers; the last one feeds the final head)")
    return layers


def parse_exit_weights(text: str, count: int) -> List[float]:
    """Loss weights of the exits, the final one last; equal (1.0 each) when ``text`` is empty."""
    if not str(text or "").strip():
        return [1.0] * count
    try:
        weights = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"model.exit_loss_weights={text!r} must be a comma list of numbers") from None
    if len(weights) != count or any(w < 0 for w in weights):
        raise ValueError(f"model.exit_loss_weights={text!r}: need {count} non-negative weights "
                         "(one per exit layer, then the final exit)")
    return weights


HEADS = {
    "linear": lambda dim, vocab: nn.Linear(dim, vocab),
    "mlp": lambda dim, vocab: nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(), nn.Linear(dim, vocab)),
}


def exit_head(dim: int, vocab: int, kind: str) -> nn.Module:
    """A CTC head of ``HEADS``: ``linear``, or ``mlp`` (Linear-LeakyReLU-Linear, as in Zaiem et al.)."""
    head = choose(HEADS, kind, "exit_head")(dim, vocab)
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return head


def valid_mean(values: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """(B, T) per-frame values -> (B,) mean over each utterance's first ``frames`` frames."""
    valid = torch.arange(values.size(1), device=values.device)[None, :] < frames[:, None]
    return (values * valid).sum(1) / frames.clamp(min=1)


class ExitPolicy:
    """When an utterance leaves. ``decide(layer, lprobs (B, T, V), frames (B,), similarity (B,) or
    None)`` returns (B,) bool: True for the utterances that leave at this exit."""

    name = ""

    def __init__(self, threshold: float = math.inf, layer: Optional[int] = None, nbest: int = 0, decoder=None):
        self.threshold, self.layer, self.nbest, self.decoder = threshold, layer, nbest, decoder

    def decide(self, layer: int, lprobs: torch.Tensor, frames: torch.Tensor, similarity) -> torch.Tensor:
        raise NotImplementedError

    def __str__(self) -> str:
        extra = f", N-best {self.nbest}" if self.name == "nbest" else ""
        return f"{self.name} threshold {self.threshold:g}{extra}"


class FixedExit(ExitPolicy):
    """Everyone leaves at ``layer``."""

    name = "layer"

    def decide(self, layer, lprobs, frames, similarity):
        return torch.full((lprobs.size(0),), layer == self.layer, dtype=torch.bool)

    def __str__(self) -> str:
        return f"layer {self.layer}"


class EntropyExit(ExitPolicy):
    """Leave when the mean per-frame entropy of the exit's posteriors is below the threshold."""

    name = "entropy"

    def decide(self, layer, lprobs, frames, similarity):
        entropy = -(lprobs.exp() * lprobs).sum(-1)  # (B, T)
        return valid_mean(entropy, frames) < self.threshold


class SimilarityExit(ExitPolicy):
    """Leave when the mean cosine similarity of this layer's and the previous layer's outputs is
    above the threshold (the representation stopped changing)."""

    name = "similarity"

    def decide(self, layer, lprobs, frames, similarity):
        return similarity > self.threshold


class NBestExit(ExitPolicy):
    """Leave when the beam search's best hypothesis holds at least ``threshold`` of the posterior
    mass of its N-best list: exp(S_1) / sum_k exp(S_k) (Wright et al.)."""

    name = "nbest"

    def decide(self, layer, lprobs, frames, similarity):
        confident = []
        for row in range(lprobs.size(0)):
            hypotheses = self.decoder.decode_nbest(lprobs[row, : frames[row]])[: self.nbest]
            scores = torch.tensor([h.score for h in hypotheses], dtype=torch.float64)
            confident.append(bool(scores.numel()) and float(torch.softmax(scores, 0)[0]) >= self.threshold)
        return torch.tensor(confident, dtype=torch.bool)


NBEST = 300  # the N-best policy's hypotheses, by default


def make_policy(name: str, threshold: float = math.inf, layer: Optional[int] = None, nbest: int = NBEST,
                decoder=None):
    kinds = {c.name: c for c in (FixedExit, EntropyExit, SimilarityExit, NBestExit)}
    if name not in kinds:
        raise ValueError(f"exit policy {name!r} must be one of {POLICIES}")
    if name == "nbest" and decoder is None:
        raise ValueError("the nbest exit policy needs the beam decoder (--decoder kenlm)")
    return kinds[name](threshold, layer, nbest, decoder)


@dataclass
class ExitRecord:
    """What the exits of one forward gave: ``logits`` {layer: (T, B', V) for the rows ``rows[layer]``}
    (every row at every exit without a policy), ``remaining_rows`` (those that reached the last
    layer) and ``exit_layer`` (B,) (the last layer's number for those that never left)."""

    remaining_rows: torch.Tensor
    exit_layer: torch.Tensor
    logits: Dict[int, torch.Tensor] = field(default_factory=dict)
    rows: Dict[int, torch.Tensor] = field(default_factory=dict)
    previous: Optional[torch.Tensor] = None  # the similarity policy: the rows' states after the last layer


class ExitRunner:
    """The encoder's ``layer_hook``: at each exit layer, the head's log-probabilities for the
    utterances still running; with a policy, exited utterances leave the batch.

    Each forward keeps its ``ExitRecord`` in the layer state and reports it as ``exits``
    (``sew_plugin.modules.side_outputs``); the runner itself holds only the heads, the exit layers
    and the policy, which ``sew_plugin.inference.settings.set_exit_policy`` sets between forwards.
    """

    def __init__(self, encoder, heads: Dict[str, nn.Module], layers: List[int], dropout: nn.Module):
        self.encoder, self.heads, self.layers, self.dropout = encoder, heads, layers, dropout
        self.policy: Optional[ExitPolicy] = None

    def head_logits(self, layer: int, state: "LayerState") -> torch.Tensor:
        """(T, B', V) logits of the head after ``layer`` for the rows in ``state``.

        In training the heads learn even while fairseq runs a frozen backbone under no_grad
        (``freeze_finetune_updates``), like the final head does.
        """
        head = self.heads[str(layer)]
        hidden = self.encoder.final_norm(self.encoder.finish(state))  # (B', T, D) at 20 ms
        with torch.set_grad_enabled(torch.is_grad_enabled() or head.training):
            return head(self.dropout(hidden)).transpose(0, 1)

    def __call__(self, index: int, state: "LayerState") -> None:
        layer = index + 1
        if index == 0:
            batch = state.rows.numel()
            state.context["exits"] = ExitRecord(torch.arange(batch), torch.full((batch,), self.encoder.num_layers))
            report("exits", state.context["exits"])
        record = state.context["exits"]
        if layer in self.layers:
            self.exit(layer, state, record)
        record.remaining_rows = state.rows
        if self.policy is not None and self.policy.name == "similarity" and layer + 1 in self.layers:
            record.previous = state.batch_first()  # after this layer's exits: the rows still running

    def exit(self, layer: int, state: "LayerState", record: ExitRecord) -> None:
        logits = self.head_logits(layer, state)
        if self.policy is None:  # training, or every exit wanted
            record.logits[layer], record.rows[layer] = logits, state.rows
            return
        similarity = None
        if self.policy.name == "similarity" and record.previous is None:  # an exit after layer 1
            similarity = torch.full((state.rows.numel(),), -1.0)
        elif self.policy.name == "similarity":
            current = state.batch_first()
            # in fp32: near 1, bf16's spacing (0.004) would merge the thresholds a sweep compares
            per_frame = F.cosine_similarity(current.float(), record.previous.float(), dim=-1)  # (B', L)
            similarity = valid_mean(per_frame, state.lengths)
        lprobs = F.log_softmax(logits.float(), -1).transpose(0, 1)  # (B', T, V)
        leave = self.policy.decide(layer, lprobs, state.frames, similarity).to(state.rows.device)
        if leave.any():
            record.logits[layer], record.rows[layer] = logits[:, leave], state.rows[leave]
            record.exit_layer[state.rows[leave].cpu()] = layer
            state.keep(~leave)
