from setuptools import find_packages, setup

setup(
    name="nnunet_ssl",
    version="0.1.0",
    description="Semi-supervised learning trainers (Mean Teacher, CRLN, CDR, BoCLIS, UGPL) as an nnU-Net v2 plugin",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.isfile("README.md") else "",
    long_description_content_type="text/markdown",
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
    ],
    extras_require={
        # only the conversions of the h5 releases (LA, Pancreas h5) need h5py
        "conversion": ["h5py>=3.8,<4"],
        # the tests run the conversions
        "test": ["pytest>=7,<10", "medpy>=0.5,<0.6", "h5py>=3.8,<4"],
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
