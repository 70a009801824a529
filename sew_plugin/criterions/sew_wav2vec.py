"""``sew_wav2vec``: fairseq's wav2vec 2.0 contrastive criterion, made exact across data-parallel layouts.

Same loss, same logged figures as fairseq's ``wav2vec`` criterion, with two changes:

- **Summable logging outputs.** fairseq's criterion gathers every worker's logging dicts with
  ``all_gather_list``, which allocates a CUDA buffer: CPU (gloo) training with several processes
  fails there. Here the dicts are summed with one all-reduce on the training device (also what
  fairseq recommends for speed); averaged figures (``log_keys`` such as ``temp``) are divided by a
  summed count of reports, so they read the same on 1 or 64 workers.
- **Seed per batch** (``seed_per_batch: true``). Masks (NumPy), negatives, Gumbel noise and dropout
  (torch) are drawn from a seed of the step seed and the batch's utterance ids. (fairseq's trainer
  reseeds torch with ``common.seed`` + the update number before every step, for resumable runs;
  ``torch.initial_seed()`` is that step seed.) A batch then gets the same draws whichever worker or
  accumulation step runs it, and after a restart: 2 workers with ``update_freq`` 1 reach the same parameters as 1 worker with ``update_freq``
  2, and a resumed run the same as an uninterrupted one (tests/test_reliability_e2e.py).
"""

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion, Wav2VecCriterionConfig
from fairseq.data.data_utils import numpy_seed
from fairseq.utils import set_torch_seed

# Keys fairseq's reduce_metrics sums itself; "loss*" keys are weighted by sample size.
_SUMMED = {"loss", "ntokens", "nsentences", "sample_size", "correct", "count"}
_REPORTS = "reports"
_ARRAY_KEYS = {"logits", "target"}


@dataclass
class SewWav2vecCriterionConfig(Wav2VecCriterionConfig):
    seed_per_batch: bool = field(
        default=False,
        metadata={"help": "draw each training batch's masks, negatives, Gumbel noise and dropout from a seed of "
                          "the step's seed (common.seed + update number) and the batch's utterance ids, so that results do not "
                          "depend on how batches are split over workers and accumulation steps, or on a restart"},
    )


def batch_seed(step_seed: int, ids) -> int:
    """A 32-bit seed of the step's seed and the utterance ids of one batch."""
    return zlib.crc32(np.asarray([step_seed, *ids], dtype=np.int64).tobytes())


@register_criterion("sew_wav2vec", dataclass=SewWav2vecCriterionConfig)
class SewWav2vecCriterion(Wav2vecCriterion):
    def __init__(self, task, infonce=False, loss_weights=None, log_keys=None, seed_per_batch=False):
        super().__init__(task, infonce, loss_weights, log_keys)
        refused = _ARRAY_KEYS.intersection(self.log_keys)
        if refused:
            raise ValueError(f"criterion.log_keys: {sorted(refused)} are arrays, which sew_wav2vec cannot sum "
                             f"across workers; use fairseq's 'wav2vec' criterion to log them")
        self.seed_per_batch = seed_per_batch

    def forward(self, model, sample, reduce=True):
        if self.seed_per_batch and model.training:
            seed = batch_seed(torch.initial_seed(), sample["id"].tolist())
            with numpy_seed(seed), set_torch_seed(seed):
                loss, sample_size, logging_output = super().forward(model, sample, reduce)
        else:
            loss, sample_size, logging_output = super().forward(model, sample, reduce)
        logging_output[_REPORTS] = 1
        return loss, sample_size, logging_output

    def logging_outputs_can_be_summed(self) -> bool:
        return True

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        averaged = [k for k in logging_outputs[0] if k not in _SUMMED and not k.startswith("loss")]
        Wav2vecCriterion.reduce_metrics([{k: v for k, v in log.items() if k not in averaged}
                                         for log in logging_outputs])
        reports = sum(log.get(_REPORTS, 0) for log in logging_outputs)
        for k in averaged:
            if k != _REPORTS:
                metrics.log_scalar(k, sum(log.get(k, 0) for log in logging_outputs) / (reports or 1), round=3)
