# The folder that nnUNet_extTrainer points at. It only re-exports: classes defined here would get a top-level
# module name that nnU-Net removes from sys.modules after its lookup, which breaks pickling them.
from nnunet_ssl.trainers import *  # noqa: F401,F403
