"""Named model sizes: the model section of ``configs/pretraining/<name>.yaml`` as a config object.

The YAML files are what ``fairseq-hydra-train`` runs; this module reads the same files (following
their ``defaults:`` list in order) so that tests and benchmarks build exactly the configured models.
"""

from importlib.resources import files
from typing import List

from omegaconf import DictConfig, OmegaConf

# The repository's configs/, installed as the package sew_plugin.configs (setup.py): found through the
# import system, the same in a checkout's editable install and in a wheel.
try:
    CONFIG_DIR = files("sew_plugin.configs")
except ModuleNotFoundError:  # an editable install made before setup.py mapped configs/ there
    raise ModuleNotFoundError("sew_plugin.configs (the configs/ folder) is not installed: reinstall the package "
                              "(pip install -e . in the checkout, or make install)") from None


def available(group: str = "pretraining") -> List[str]:
    """Names of the configs in ``configs/<group>`` (files starting with ``_`` are shared parts)."""
    names = (p.name for p in (CONFIG_DIR / group).iterdir())
    return sorted(n[: -len(".yaml")] for n in names if n.endswith(".yaml") and not n.startswith("_"))


def load_config(name: str, group: str = "pretraining") -> DictConfig:
    """The full config ``configs/<group>/<name>.yaml`` with its ``defaults:`` merged in order."""
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config {path}; available: {', '.join(available(group))}")
    own = OmegaConf.create(path.read_text(encoding="utf-8"))
    parts = []
    for entry in own.pop("defaults", ["_self_"]):
        parts.append(own if entry == "_self_" else load_config(entry, group))
    return OmegaConf.merge(*parts)


def model_config(name: str, group: str = "pretraining", **overrides) -> DictConfig:
    """The model section of a named config, completed with its registered dataclass's defaults."""
    import sew_plugin.models  # noqa: F401  (registers this plugin's models)
    from fairseq.models import MODEL_DATACLASS_REGISTRY

    model = load_config(name, group).model
    schema = OmegaConf.structured(MODEL_DATACLASS_REGISTRY[model._name])
    return OmegaConf.merge(schema, model, overrides)


def build_model(name: str, group: str = "pretraining", **overrides):
    """Build the model of a named config (random weights), e.g. ``build_model("sew_tiny")``."""
    from fairseq.models import MODEL_REGISTRY

    cfg = model_config(name, group, **overrides)
    return MODEL_REGISTRY[cfg._name].build_model(cfg)
