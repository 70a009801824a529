"""What a forward computes besides its return value, collected without writing to any module.

fairseq's ``Wav2Vec2Model.forward`` and ``Wav2VecEncoder.forward`` pass on only ``x``,
``padding_mask`` and ``layer_results``, so what this plugin's modules compute on the way (CIF's
compression and durations, the early-exit decisions) cannot travel up to ``SEWCtc`` in return
values. A caller opens a ``collecting()`` scope around the forward, the modules ``report`` into it,
and the scope hands back what they reported (every open scope does: a caller around ``SEWCtc``
sees what the encoder reported to ``SEWCtc``'s own). The scopes live in a ``contextvars.ContextVar``:
no module attribute is written during the forward, and forwards in other threads or asyncio tasks
never see each other's reports. Outside any scope a report goes nowhere.

    with collecting() as reported:
        net_output = model(source=source, padding_mask=padding_mask)
    compression = reported.get("cif")
"""

import contextlib
from contextvars import ContextVar
from typing import Any, Dict, Iterator, Tuple

_SCOPES: ContextVar[Tuple[Dict[str, Any], ...]] = ContextVar("sew_plugin_side_outputs", default=())


@contextlib.contextmanager
def collecting() -> Iterator[Dict[str, Any]]:
    """A dict that receives every ``report(key, value)`` made inside."""
    reported: Dict[str, Any] = {}
    token = _SCOPES.set(_SCOPES.get() + (reported,))
    try:
        yield reported
    finally:
        _SCOPES.reset(token)


def report(key: str, value: Any) -> None:
    """Hand ``value`` to every open ``collecting()`` scope under ``key`` (dropped without one)."""
    for reported in _SCOPES.get():
        reported[key] = value
