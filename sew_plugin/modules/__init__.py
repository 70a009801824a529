"""Building blocks that the models in ``sew_plugin.models`` compose."""
