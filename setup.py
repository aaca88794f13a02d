"""xbar_tfmot: crossbar-aware pruning for TensorFlow / Keras models."""

import setuptools

setuptools.setup(
    name="xbar_tfmot",
    version="0.1.0",
    description="Crossbar-aware pruning (LGD-RPP) and crossbar mapping for Keras models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=setuptools.find_packages(include=["xbar_tfmot", "xbar_tfmot.*"]),
    package_data={"xbar_tfmot": ["core/*.json", "core/presets/*.json"]},
    install_requires=[
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "tensorflow-model-optimization==0.8.1",
        "keras>=3.12,<4",
        "numpy>=1.26",
        "absl-py>=1.2,<2",
        "ml-collections>=1.0",
        "jsonschema>=4.0",
        "tensorboard==2.21.*",
        "ai-edge-litert==2.3.*",
    ],
    extras_require={
        # cosmic-ray: mutation testing, tools/mutation.sh (docs/contributing.md); not run in CI
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "scikit-learn>=1.4",
                 "matplotlib>=3.8", "cosmic-ray==8.7.0"],
        "report": ["matplotlib>=3.8"],
    },
    entry_points={
        "console_scripts": [
            "xbar-report=xbar_tfmot.app.cli:report_main",
            "xbar-verify=xbar_tfmot.app.cli:verify_main",
            "xbar-prune=xbar_tfmot.app.pipeline:main",
            "xbar-eval=xbar_tfmot.app.eval_cli:main",
        ],
    },
)
