"""Conversions between this plugin's checkpoints and other implementations."""
