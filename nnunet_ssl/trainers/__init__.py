"""Every trainer class of the plugin; ``nnunet_ssl/nnunet_trainers`` re-exports them for nnU-Net's lookup.

Each method is a sub-package (``crln/``, ``cdr/``, ``boclis/``, ``ugpl/``: ``losses``, ``network``, ``trainer``,
``variants``) or, without equations or modules of its own, a module (``mean_teacher.py``, ``self_training.py``);
``base.py`` and ``dual_base.py`` are the shared bases. Every nnUNetTrainer subclass defined in one is exported here,
so adding a method needs no edit of this file.
"""
import importlib as _importlib
import pkgutil as _pkgutil

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as _nnUNetTrainer

__all__ = []
for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _module = _importlib.import_module(f"{__name__}.{_info.name}")
    for _name, _obj in vars(_module).items():
        if (isinstance(_obj, type) and issubclass(_obj, _nnUNetTrainer) and _name not in __all__
                and (_obj.__module__ == _module.__name__ or _obj.__module__.startswith(_module.__name__ + "."))):
            globals()[_name] = _obj
            __all__.append(_name)
