"""Config checks as data: each rule names a model key, a test and the requirement, so that an absurd
value is refused by key (``model.mask_prob must be in [0, 1], got 1.5``) before anything is built,
not by an error from deep inside fairseq or torch."""

import math
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

# A rule: (key, ok(value, cfg), requirement). The requirement reads after "model.<key> must be";
# a string is formatted with the config as ``c``, a callable gets the config. Rules run in order,
# so a rule may rely on the fields checked before it (e.g. a divisor already known to be >= 1).
Rule = Tuple[str, Callable[[Any, Any], bool], Union[str, Callable[[Any], str]]]


def at_least(bound) -> Callable[[Any, Any], bool]:
    return lambda value, cfg: value >= bound


def in_unit_interval(value, cfg) -> bool:  # probabilities: [0, 1]
    return 0 <= value <= 1


def is_rate(value, cfg) -> bool:  # dropout rates: [0, 1) (1 would drop everything)
    return 0 <= value < 1


T = TypeVar("T")


def choose(choices: Mapping[str, T], value, key: str, prefix: str = "model.") -> T:
    """``choices[value]`` for a closed choice read from a config, or a ``ValueError`` naming the
    key, the value and the choices: each variant lives in one registry, parsed in one place."""
    try:
        return choices[str(value)]
    except KeyError:
        raise ValueError(f"{prefix}{key}={value!r} must be one of {', '.join(choices)}") from None


def check_rules(cfg, rules: Sequence[Rule], prefix: str = "model.") -> None:
    """Refuse the first field that breaks its rule: ``model.<key> must be <requirement>, got <value>``."""
    for key, ok, requirement in rules:
        value = getattr(cfg, key)
        try:
            passed = bool(ok(value, cfg))
        except (TypeError, ValueError):  # None, a string where a number belongs, ...
            passed = False
        if not passed:
            text = requirement(cfg) if callable(requirement) else requirement.format(c=cfg)
            raise ValueError(f"{prefix}{key} must be {text}, got {value!r}")


def masking_rules(width: Callable[[Any], Optional[int]]) -> List[Rule]:
    """Time and channel masking, under the same keys in pre-training and fine-tuning configs.

    ``width(cfg)`` is the number of channels the channel masks are drawn over (None while unknown):
    fairseq's ``Wav2Vec2Model.apply_mask`` masks channels of the encoder's input, after
    ``post_extract_proj``, so ``encoder_embed_dim`` of the (pre-trained) encoder. Time masks need
    no such bound here: fairseq draws at least two spans (``min_masks=2``) whatever ``mask_length``.
    """
    def channel_spans_fit(length, cfg) -> bool:
        channels = width(cfg)
        if cfg.mask_channel_prob <= 0 or channels is None:
            return True
        if cfg.mask_channel_selection != "static":
            return length < channels
        # fairseq's compute_mask_indices draws int(prob * channels / length + U[0, 1)) spans per utterance
        # and raises on none ("this should never happens") and on every channel masked, which is
        # possible only when no more channels than spans are left beside one span
        spans = cfg.mask_channel_prob * channels / length
        return spans >= 1 and channels - length > math.ceil(spans)

    # fairseq 0.12.3's compute_mask_indices draws 'uniform' span lengths and non-overlapping spans with
    # rng.randint, which numpy's Generator it uses has not (and np.int, gone from numpy): both crash
    # at the first step, so they are refused here
    broken_in_fairseq = "(fairseq 0.12.3's compute_mask_indices crashes on the alternative)"
    selections = [(key, lambda v, c: v != "uniform", f"static, normal or poisson {broken_in_fairseq}")
                  for key in ("mask_selection", "mask_channel_selection")]
    overlaps = [(key, lambda v, c: not v, f"false {broken_in_fairseq}")
                for key in ("no_mask_overlap", "no_mask_channel_overlap")]
    return [
        *selections,
        *overlaps,
        ("mask_prob", in_unit_interval, "in [0, 1]"),
        ("mask_length", lambda v, c: c.mask_prob <= 0 or v >= 1, ">= 1 when model.mask_prob > 0"),
        ("mask_channel_prob", in_unit_interval, "in [0, 1]"),
        ("mask_channel_length", lambda v, c: c.mask_channel_prob <= 0 or v >= 1,
         ">= 1 when model.mask_channel_prob > 0"),
        ("mask_channel_length", channel_spans_fit,
         lambda c: f"below the {width(c)} channels it masks (model.encoder_embed_dim) and, with static "
                   f"model.mask_channel_selection, at most model.mask_channel_prob x {width(c)} = "
                   f"{c.mask_channel_prob * width(c):g} with room beside its spans: fairseq draws "
                   f"int(mask_channel_prob * channels / mask_channel_length + U[0, 1)) spans per utterance and "
                   f"fails at the first step on none or on every channel masked"),
    ]
