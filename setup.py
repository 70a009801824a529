"""Install sew_plugin. fairseq itself is installed separately (see README.md and the Makefile):
every fairseq distribution for Python 3.11 requires torchaudio, which is not needed here and would
pull a second, multi-GB torch, so fairseq goes in with ``--no-deps`` and its real needs are listed
below."""

from setuptools import find_packages, setup

FAIRSEQ_RUNTIME_DEPS = [
    "cffi",
    "cython",
    "hydra-core>=1.3,<1.4",
    "omegaconf>=2.3,<2.4",
    "numpy",
    "regex",
    "sacrebleu>=1.4.12",
    "tqdm",
    "bitarray",
    "scikit-learn",
    "packaging",
]

setup(
    name="sew_plugin",
    version="0.1.0",
    description="SEW, SEW-D and St-SEW: efficient speech self-supervised models as a fairseq plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # ve-fairseq==0.12.3 (the Makefile's fairseq) is a cp311 wheel only
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["sew_plugin", "sew_plugin.*"]) + ["sew_plugin.configs"],
    # the top-level configs/ (what `fairseq-hydra-train --config-dir configs/...` reads in a checkout)
    # travel as the package sew_plugin.configs, where sew_plugin.presets finds them in any install
    package_dir={"sew_plugin.configs": "configs"},
    package_data={"sew_plugin.configs": ["**/*.yaml"], "sew_plugin.modules": ["*.c"]},
    install_requires=["torch>=2.1", "soundfile>=0.12", "soxr>=0.3", "editdistance", "flashlight-text>=0.0.7", "matplotlib"]
    + FAIRSEQ_RUNTIME_DEPS,
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "hypothesis>=6", "import-linter>=2.1", "transformers>=4.40", "safetensors", "onnx>=1.15", "onnxruntime>=1.17"],
        # sew export-onnx, and the NAME:onnx rows of sew bench
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
        # examples/demo: espeak-ng's 22.05 kHz speech is resampled to 16 kHz with scipy
        "demo": ["scipy"],
    },
    entry_points={"console_scripts": ["sew=sew_plugin.cli:main"]},
)
