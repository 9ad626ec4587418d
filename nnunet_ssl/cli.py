"""Entry points that put the plugin's trainers in reach of nnU-Net's own commands.

nnU-Net (>= 2.8) finds trainers outside its package only through the ``nnUNet_extTrainer`` environment variable,
read lazily at lookup time; these wrappers prepend the plugin's shim folder and call nnU-Net's entry points.
"""
import os

import nnunet_ssl
from nnunet_ssl.errors import UserError, fail

SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(nnunet_ssl.__file__)), "nnunet_trainers")
ENV_VAR = "nnUNet_extTrainer"


def ext_trainer_value(current: str = None) -> str:
    """``nnUNet_extTrainer`` with the shim folder first and any other folders the user set kept."""
    current = os.environ.get(ENV_VAR) if current is None else current
    parts = [p for p in (current or "").split(os.pathsep) if p and os.path.abspath(p) != SHIM_DIR]
    return os.pathsep.join([SHIM_DIR] + parts)


def set_ext_trainer_env() -> None:
    os.environ[ENV_VAR] = ext_trainer_value()


def env_entry():
    """``nnUNetv2_ssl_env``: print ``export nnUNet_extTrainer=...`` (use as ``eval "$(nnUNetv2_ssl_env)"``)."""
    import argparse
    p = argparse.ArgumentParser(prog="nnUNetv2_ssl_env",
                                description="Print the nnUNet_extTrainer setting that lets nnUNetv2_train and "
                                            "nnUNetv2_predict find the nnunet_ssl trainers. "
                                            "Use: eval \"$(nnUNetv2_ssl_env)\"")
    p.add_argument("--value", action="store_true", help="print only the value")
    args = p.parse_args()
    value = ext_trainer_value()
    print(value if args.value else f"export {ENV_VAR}={value}")


def _run_with_hint(prog: str, entry):
    """Run nnU-Net's entry point; our user errors (e.g. a trainer refusing a fold that would use hidden labels) and
    an unknown trainer name end in one message and exit code 2 (``nnunet_ssl.errors``)."""
    set_ext_trainer_env()
    try:
        entry()
    except UserError as e:
        fail(prog, e)
    except RuntimeError as e:
        if "Could not find requested nnunet trainer" not in str(e):
            raise
        fail(prog, f"{str(e).strip()}\nTrainers of nnunet_ssl are found through {ENV_VAR}={os.environ[ENV_VAR]}. "
                   f"Check the trainer name (-tr, e.g. nnUNetTrainerMeanTeacher) and that nnunet_ssl is installed in "
                   f"this environment.")


def train_entry():
    """``nnUNetv2_ssl_train``: ``nnUNetv2_train`` with the plugin's trainers visible."""
    from nnunetv2.run.run_training import run_training_entry
    _run_with_hint("nnUNetv2_ssl_train", run_training_entry)


def predict_entry():
    """``nnUNetv2_ssl_predict``: ``nnUNetv2_predict`` with the plugin's trainers visible."""
    from nnunetv2.inference.predict_from_raw_data import predict_entry_point
    _run_with_hint("nnUNetv2_ssl_predict", predict_entry_point)
