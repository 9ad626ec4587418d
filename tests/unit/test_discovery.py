"""Trainer discovery through nnU-Net's own nnUNet_extTrainer lookup, and the constructor contract."""
import os
import pickle
import subprocess
import sys

import nnunet_ssl.trainers as trainers
from nnunet_ssl.cli import SHIM_DIR, ext_trainer_value

LOOKUP = ("import sys; from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
          "c = f(sys.argv[1]); import pickle; pickle.dumps(c); print(c.__module__)")


def _lookup(name, env_value):
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    if env_value is not None:
        env["nnUNet_extTrainer"] = env_value
    return subprocess.run([sys.executable, "-c", LOOKUP, name], env=env, capture_output=True, encoding="utf-8", errors="replace")


def test_found_with_shim_and_pickles():
    proc = _lookup("nnUNetTrainerMeanTeacher", ext_trainer_value(""))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "nnunet_ssl.trainers.mean_teacher"


def test_not_found_without_shim():
    proc = _lookup("nnUNetTrainerMeanTeacher", None)
    assert proc.returncode != 0 and "Could not find requested nnunet trainer" in proc.stderr


def test_ext_trainer_value_keeps_user_folders():
    value = ext_trainer_value(os.pathsep.join(["/a", SHIM_DIR, "/b"]))
    assert value.split(os.pathsep) == [SHIM_DIR, "/a", "/b"]


def test_every_trainer_exported_and_picklable():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    names = trainers.__all__
    assert "nnUNetTrainerMeanTeacher" in names and "nnUNetTrainerSSL" in names
    for n in names:
        cls = getattr(trainers, n)
        assert issubclass(cls, nnUNetTrainer)
        assert cls.__module__.startswith("nnunet_ssl.trainers.")
        pickle.dumps(cls)


def test_no_name_clash_with_builtin_trainers():
    """nnU-Net searches its own trainers first: a plugin class with a builtin's name would never be found."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    folder = os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer")
    for n in trainers.__all__:
        assert recursive_find_python_class(folder, n, "nnunetv2.training.nnUNetTrainer") is None, n


def test_no_test_machinery_in_the_product():
    """Crash/resume-record variants live in tests/trainers; the product keeps variants a user runs."""
    assert not [n for n in trainers.__all__ if "Resume" in n]
    import nnunet_ssl.trainers.tiny as tiny
    assert not hasattr(tiny, "ResumeTestHooks")
