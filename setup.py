import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    """``__version__`` of nnunet_ssl/__init__.py, read as text (importing the package would import torch)."""
    with open(os.path.join(HERE, "nnunet_ssl", "__init__.py"), encoding="utf-8") as f:
        match = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError("nnunet_ssl/__init__.py has no __version__ = \"...\" line")
    return match.group(1)


def read_long_description() -> str:
    """The README's introduction (up to its first ``## `` section), not the whole user guide."""
    readme = os.path.join(HERE, "README.md")
    if not os.path.isfile(readme):
        return ""
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    intro = re.split(r"^## ", text, maxsplit=1, flags=re.MULTILINE)[0].rstrip()
    return intro + ("\n\nDocumentation, methods and benchmarks: see README.md in the source repository.\n")


setup(
    name="nnunet_ssl",
    version=read_version(),
    description="Semi-supervised learning trainers (Mean Teacher, CRLN, CDR, BoCLIS, UGPL) as an nnU-Net v2 plugin",
    long_description=read_long_description(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    # dataset_conversion/ stays at the top of the repository (README commands run its scripts from there) and is
    # installed as nnunet_ssl.dataset_conversion, the package its scripts import their shared helpers from
    packages=find_packages(include=["nnunet_ssl", "nnunet_ssl.*"]) + ["nnunet_ssl.dataset_conversion"],
    package_dir={"nnunet_ssl.dataset_conversion": "dataset_conversion"},
    install_requires=[
        # nnUNet_extTrainer (external trainer discovery) exists from 2.8.0; the plugin is developed against 2.8.1.
        "nnunetv2>=2.8.1,<2.9",
        "torch>=2.3,<2.15",
        "numpy>=1.24,<3",
        "scipy>=1.10,<2",
        "SimpleITK>=2.2,<3",
        "matplotlib>=3.6,<4",
        # imported directly by nnunet_ssl too (nnU-Net 2.8.1 requires them as well; ranges within its own)
        "tqdm>=4.60,<5",
        "blosc2>=3.3.2,<5",
        "batchgenerators>=0.25.1,<0.26",
        "batchgeneratorsv2>=0.3.2,<0.4",
        "dynamic-network-architectures>=0.4.4,<0.5",
    ],
    extras_require={
        # only the conversions of the h5 releases (LA, Pancreas h5) need h5py
        "conversion": ["h5py>=3.8,<4"],
        # the tests run the conversions; pytest-xdist runs test files on every core (scripts/run_tests.sh)
        "test": ["pytest>=7,<10", "pytest-xdist>=3.3,<4", "medpy>=0.5,<0.6", "h5py>=3.8,<4"],
    },
    entry_points={
        "console_scripts": [
            "nnUNetv2_ssl_env = nnunet_ssl.cli:env_entry",
            "nnUNetv2_ssl_train = nnunet_ssl.cli:train_entry",
            "nnUNetv2_ssl_predict = nnunet_ssl.cli:predict_entry",
            "nnUNetv2_ssl_preprocess_unlabeled = nnunet_ssl.data.preprocess_unlabeled:main",
            "nnUNetv2_ssl_split = nnunet_ssl.data.splits:main",
            "nnUNetv2_ssl_evaluate = nnunet_ssl.evaluation.evaluate:main",
            "nnUNetv2_ssl_self_train = nnunet_ssl.self_training.cli:main",
        ],
    },
)
