"""``ctc_exits``: fairseq's CTC criterion over every exit of an early-exit model (``sew_ctc`` with
``exit_layers``), weighted by the model's ``exit_loss_weights``.

Each exit is scored by fairseq's own ``CtcCriterion.forward`` on that exit's logits, so the loss,
the letter/word error counts and their logging are exactly fairseq's; the total is the weighted sum.
``loss`` is that weighted total; the final exit's own figures are ``final_loss`` and fairseq's ``wer``,
``uer``...; exit ``k`` adds ``exit{k}_loss`` and, in validation, ``exit{k}_wer`` and ``exit{k}_uer``.
"""

import math
import re

from fairseq import metrics, utils
from fairseq.criterions import register_criterion
from fairseq.criterions.ctc import CtcCriterion, CtcCriterionConfig
from fairseq.logging.meters import safe_round

_EXIT_KEY = re.compile(r"^exit(\d+)_loss$")
_COUNTS = ("c_errors", "c_total", "w_errors", "w_total")


class _OneExit:
    """The model as ``CtcCriterion`` sees it, returning one exit's precomputed output."""

    def __init__(self, model, net_output):
        self.model, self.net_output = model, net_output
        self.training = model.training  # the criterion counts word errors only in evaluation

    def __call__(self, **net_input):
        return self.net_output

    def get_normalized_probs(self, net_output, log_probs):
        return self.model.get_normalized_probs(net_output, log_probs=log_probs)


@register_criterion("ctc_exits", dataclass=CtcCriterionConfig)
class CtcExitsCriterion(CtcCriterion):
    def forward(self, model, sample, reduce=True, **kwargs):
        net_output = model(**sample["net_input"])
        if "exit_logits" not in net_output:
            raise ValueError("criterion ctc_exits needs a model with exits (model.exit_layers)")
        weights = model.exit_weights
        loss, sample_size, logging = super().forward(_OneExit(model, net_output), sample, reduce)
        loss = weights[-1] * loss
        for weight, layer in zip(weights, model.exit_layers):
            exit_output = {"encoder_out": net_output["exit_logits"][layer],
                           "padding_mask": net_output["padding_mask"]}
            exit_loss, _, exit_logging = super().forward(_OneExit(model, exit_output), sample, reduce)
            loss = loss + weight * exit_loss
            logging[f"exit{layer}_loss"] = exit_logging["loss"]
            for key in _COUNTS:
                if key in exit_logging:
                    logging[f"exit{layer}_{key}"] = exit_logging[key]
        logging["final_loss"] = logging["loss"]
        logging["loss"] = utils.item(loss.data)
        return loss, sample_size, logging

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        CtcCriterion.reduce_metrics(logging_outputs)
        sample_size = utils.item(sum(log.get("sample_size", 0) for log in logging_outputs))
        final = utils.item(sum(log.get("final_loss", 0) for log in logging_outputs))
        metrics.log_scalar("final_loss", final / sample_size / math.log(2), sample_size, round=3)
        layers = sorted({int(m.group(1)) for log in logging_outputs for k in log for m in [_EXIT_KEY.match(k)] if m})
        for layer in layers:
            total = utils.item(sum(log.get(f"exit{layer}_loss", 0) for log in logging_outputs))
            metrics.log_scalar(f"exit{layer}_loss", total / sample_size / math.log(2), sample_size, round=3)
            for errors, count, name in (("w_errors", "w_total", "wer"), ("c_errors", "c_total", "uer")):
                e = sum(log.get(f"exit{layer}_{errors}", 0) for log in logging_outputs)
                n = sum(log.get(f"exit{layer}_{count}", 0) for log in logging_outputs)
                if n > 0:
                    metrics.log_scalar(f"exit{layer}_{name}", safe_round(100.0 * e / n, 3), n, round=3)
