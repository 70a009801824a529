"""The training configs, shipped in the package as ``sew_plugin.configs`` (setup.py maps this folder
there) so that ``sew_plugin.presets`` finds them in a wheel install as in a checkout."""
