"""St-SEW: stochastic compression of wav2vec 2.0 (Vyas et al., Interspeech 2022).

One model, many operating points (S_f, S_k, S_q): the squeeze factor S_f of SEW's squeezed
context network and, in every transformer layer, the key-value and query mean-pooling factors
(``sew_plugin.modules.pooled_attention``). Training samples them (S_f once per step, S_k and S_q
per layer, uniformly from their sets); an ``operating_point`` fixes them for inference or for
deterministic fine-tuning. Each forward's configuration is in its result (and reported as
``st_sew_config`` to a ``sew_plugin.modules.side_outputs.collecting()`` scope).

Upsampler: SEW's ``Linear(D, s * D)`` only fits one factor, so every factor s > 1 of the set has
its own (``encoder.upsamplers.{s}``, SEW's parameterisation, trained on the steps that sample s),
and S_f = 1 has none. With S_f fixed this makes (S_f, 1, 1) exactly SEW's computation and (1, 1, 1)
exactly wav2vec 2.0's; a shared projection after repetition would match neither.
"""

import ast
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from ..modules.layerwise import LayerState
from ..modules.pooled_attention import PooledTransformerLayer
from ..modules.side_outputs import collecting, report
from ..modules.squeezed_encoder import SqueezedTransformerEncoder
from .registry import register_models
from .sew import SEWConfig, SEWModel


@dataclass
class StSEWConfig(SEWConfig):
    squeeze_factor: int = field(default=1, metadata={"help": "unused by st_sew (see squeeze_factors, operating_point)"})
    squeeze_factors: str = field(default="1,2", metadata={"help": "set S_f is sampled from (comma list)"})
    kv_pool_factors: str = field(default="1,2", metadata={"help": "set S_k is sampled from, per layer"})
    query_pool_factors: str = field(default="1,2", metadata={"help": "set S_q is sampled from, per layer"})
    pool_layers: str = field(default="all", metadata={"help": "layers that may pool: 'all' or a comma list of indices"})
    operating_point: Optional[str] = field(
        default=None,
        metadata={"help": "fixed 'S_f,S_k,S_q' (S_k / S_q may be per-layer lists, e.g. '2,[1,2,...],1'); "
                  "unset: sample in training and in evaluation"},
    )


def _factor_set(text: str, key: str) -> List[int]:
    try:
        values = sorted({int(v) for v in str(text).split(",")})
    except ValueError:
        raise ValueError(f"model.{key}={text!r} must be a comma list of integers") from None
    if not values or values[0] < 1:
        raise ValueError(f"model.{key}={text!r} must hold integers >= 1")
    return values


def parse_operating_point(text: str, layers: int) -> Tuple[int, List[int], List[int]]:
    """'S_f,S_k,S_q' -> (S_f, [S_k per layer], [S_q per layer]); S_k and S_q may be lists."""
    try:
        s_f, s_k, s_q = ast.literal_eval(f"({text})")
    except (ValueError, SyntaxError, TypeError):
        raise ValueError(f"model.operating_point={text!r} must be 'S_f,S_k,S_q', e.g. '2,2,1'") from None
    per_layer = []
    for name, value in (("S_k", s_k), ("S_q", s_q)):
        value = [value] * layers if isinstance(value, int) else list(value)
        if len(value) != layers or not all(isinstance(v, int) and v >= 1 for v in value):
            raise ValueError(f"model.operating_point={text!r}: {name} must be an integer >= 1 or a list of {layers}")
        per_layer.append(value)
    if not isinstance(s_f, int) or s_f < 1:
        raise ValueError(f"model.operating_point={text!r}: S_f must be an integer >= 1")
    return s_f, per_layer[0], per_layer[1]


def fixed_operating_point(point: Optional[str], layers: int, squeeze_set: List[int]):
    """``parse_operating_point``, refusing an S_f outside the sampled set; None when unset."""
    fixed = parse_operating_point(point, layers) if point else None
    if fixed and fixed[0] not in squeeze_set:
        raise ValueError(f"model.operating_point={point!r}: S_f={fixed[0]} is not one of model.squeeze_factors {squeeze_set}")
    return fixed


def check_st_sew_config(cfg: StSEWConfig) -> None:
    """St-SEW's own keys, before anything is built (SEW's are checked by ``resolve_config``)."""
    if cfg.squeeze_factor != 1:
        raise ValueError(
            f"model.squeeze_factor={cfg.squeeze_factor} is SEW's fixed factor; st_sew samples from "
            "model.squeeze_factors or uses model.operating_point"
        )
    if cfg.compressor != "squeeze":
        raise ValueError(f"model.compressor={cfg.compressor!r}: st_sew compresses with its own sampled squeeze")
    _factor_set(cfg.squeeze_factors, "squeeze_factors")
    _factor_set(cfg.kv_pool_factors, "kv_pool_factors")
    _factor_set(cfg.query_pool_factors, "query_pool_factors")


def check_st_sew_layers(cfg: StSEWConfig) -> None:
    """The keys that depend on the layer count (checked after model.encoder_layers)."""
    StochasticSqueezedEncoder._pooling_layers(cfg.pool_layers, cfg.encoder_layers)
    fixed_operating_point(cfg.operating_point, cfg.encoder_layers, _factor_set(cfg.squeeze_factors, "squeeze_factors"))


class StochasticSqueezedEncoder(SqueezedTransformerEncoder):
    """SEW's squeezed encoder with a per-forward squeeze factor and pooled-attention layers.

    A forward runs at the fixed operating point, or at a fresh draw (training, or evaluation with
    none fixed), which it reports as ``st_sew_config`` (``sew_plugin.modules.side_outputs``) for
    logging; no forward changes an attribute. The configuration travels in the layer state: (S_f) as
    its squeeze factor, (S_q, S_k) per layer in ``context["pooling"]``.
    """

    def __init__(self, cfg: StSEWConfig):
        self.kv_set = _factor_set(cfg.kv_pool_factors, "kv_pool_factors")
        self.query_set = _factor_set(cfg.query_pool_factors, "query_pool_factors")
        squeeze_set = _factor_set(cfg.squeeze_factors, "squeeze_factors")
        super().__init__(cfg, 1, sampled_factors=squeeze_set)  # an upsampler per factor of the set
        self.squeeze_set = squeeze_set
        self.pooling_layers = self._pooling_layers(cfg.pool_layers, len(self.layers))
        self.set_operating_point(cfg.operating_point)

    def build_encoder_layer(self, args, **kwargs):
        """fairseq's wav2vec 2.0 layer, made a ``PooledTransformerLayer`` (same parameters)."""
        return PooledTransformerLayer.from_layer(super().build_encoder_layer(args, **kwargs))

    @staticmethod
    def _pooling_layers(text: str, layers: int) -> List[int]:
        if str(text).strip() == "all":
            return list(range(layers))
        try:
            chosen = sorted({int(v) for v in str(text).split(",")})
        except ValueError:
            raise ValueError(f"model.pool_layers={text!r} must be 'all' or a comma list of layer indices") from None
        if chosen and not 0 <= chosen[0] <= chosen[-1] < layers:
            raise ValueError(f"model.pool_layers={text!r}: indices must be in [0, {layers})")
        return chosen

    def sample_config(self) -> Tuple[int, List[int], List[int]]:
        """Uniform draws: S_f once, and S_k, S_q for each layer allowed to pool (others: 1)."""
        layers = len(self.layers)
        s_k, s_q = [1] * layers, [1] * layers
        for i in self.pooling_layers:
            s_k[i] = int(np.random.choice(self.kv_set))
            s_q[i] = int(np.random.choice(self.query_set))
        return int(np.random.choice(self.squeeze_set)), s_k, s_q

    def set_operating_point(self, point: Optional[str]) -> None:
        """Fix (S_f, S_k, S_q) from now on ('2,2,1'), or go back to sampling (None)."""
        self.fixed = fixed_operating_point(point, len(self.layers), self.squeeze_set)

    def begin(self, x, padding_mask, factor=None) -> LayerState:
        """(B, T, D) at 20 ms -> the state under the fixed or a freshly drawn configuration."""
        config = self.fixed or self.sample_config()
        report("st_sew_config", config)
        s_f, s_k, s_q = config
        state = super().begin(x, padding_mask, s_f)
        state.context["pooling"] = list(zip(s_q, s_k))
        return state

    def run_layer(self, i: int, state: LayerState):
        state.x, (attn, ffn_out) = self.layers[i](state.x, self_attn_padding_mask=state.padding_mask,
                                                  pooling=state.context["pooling"][i])
        return attn, ffn_out


class StSEWModel(SEWModel):
    """SEW whose squeeze and per-layer attention pooling are sampled (training) or fixed."""

    @classmethod
    def check_config(cls, cfg: StSEWConfig) -> StSEWConfig:
        check_st_sew_config(cfg)
        cfg = super().check_config(cfg)
        check_st_sew_layers(cfg)
        return cfg

    @staticmethod
    def build_encoder(cfg: StSEWConfig) -> StochasticSqueezedEncoder:
        return StochasticSqueezedEncoder(cfg)

    def context_period_ms(self) -> Optional[float]:
        """The feature period times the fixed S_f; None while the model samples its operating point."""
        return None if self.encoder.fixed is None else self.feature_period_ms() * self.encoder.fixed[0]

    def forward(self, *args, **kwargs):
        """fairseq's wav2vec 2.0 forward; the result also carries this step's configuration
        (``squeeze_factor``, ``kv_pool``, ``query_pool``: the mean over layers), which fairseq's
        ``wav2vec`` criterion logs when named in ``criterion.log_keys``."""
        with collecting() as reported:
            result = super().forward(*args, **kwargs)
        s_f, s_k, s_q = reported["st_sew_config"]
        result.update(squeeze_factor=float(s_f), kv_pool=float(np.mean(s_k)), query_pool=float(np.mean(s_q)))
        return result


register_models(StSEWModel, StSEWConfig, "st_sew")
