"""Model registration that refuses silent name collisions.

fairseq's ``register_model`` returns the already registered class when a name is taken, which
would make this plugin silently build someone else's model. Every name registered here is checked.
"""

from fairseq.models import register_model


def register_models(model_cls, dataclass, *names: str) -> None:
    """Register ``model_cls`` with config ``dataclass`` under each of ``names``.

    Several names share one class (e.g. a plugin name and a shorter alias); the original release's
    names are registered with their own config classes in ``sew_plugin.models.original``.
    """
    for name in names:
        registered = register_model(name, dataclass=dataclass)(model_cls)
        if registered is not model_cls:
            raise ImportError(
                f"fairseq model name {name!r} is already registered by {registered.__module__}."
                f"{registered.__name__}; sew_plugin cannot register {model_cls.__name__} under it"
            )
