"""The library of inference: loading a checkpoint to run, batching and transcribing a manifest,
decoding, the run-time settings (St-SEW operating point, CIF lambda, exit policy), measurement
(bench, sweep) and result files. All of it is usable from Python; ``sew_plugin.cli`` holds the commands."""
