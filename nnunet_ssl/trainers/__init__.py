"""Every trainer class of the plugin; ``nnunet_ssl/nnunet_trainers`` re-exports them for nnU-Net's lookup.

Each module of this package holds one method (and its ablation/tiny variants); every nnUNetTrainer subclass
defined in one is exported here, so adding a method needs no edit of this file.
"""
import importlib as _importlib
import pkgutil as _pkgutil

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as _nnUNetTrainer

__all__ = []
for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _module = _importlib.import_module(f"{__name__}.{_info.name}")
    for _name, _obj in vars(_module).items():
        if isinstance(_obj, type) and issubclass(_obj, _nnUNetTrainer) and _obj.__module__ == _module.__name__:
            globals()[_name] = _obj
            __all__.append(_name)
