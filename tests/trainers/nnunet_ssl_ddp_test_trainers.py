"""Trainer variants for the DDP tests (``tests/integration/test_ddp.py``): each method's default trainer, unchanged
but for a short schedule, run on the CPU under ``torch.distributed`` (gloo), with records of what every rank did.

nnU-Net's DDP path puts rank r on ``cuda:r`` in ``nnUNetTrainer.__init__``; ``DDPTestHooks`` moves the rank back to
the CPU (and drops the CUDA GradScaler) right after it. The rest of the CUDA assumptions (NCCL, ``device_ids``,
``torch.cuda.set_device``, SyncBatchNorm) are patched inside the test processes by
``tests/integration/ddp_launcher.py``.

Driven by environment variables (nnU-Net passes trainers no other arguments):
``NNUNET_SSL_DDP_TEST_RECORD=folder``: each rank saves ``<event>_rank<r>.pt`` there (events: ``stopped``,
``resumed``, ``final``) with every trainable tensor and optimizer buffer, the batches it drew and its logger;
``NNUNET_SSL_DDP_TEST_STOP_AFTER_EPOCH=k``: every rank stops (``StopAfterEpoch``) after epoch k's checkpoint.
"""
import hashlib
import os

import torch
import torch.distributed as dist

from nnunet_ssl.trainers.boclis import nnUNetTrainerBoCLIS
from nnunet_ssl.trainers.cdr import nnUNetTrainerCDR
from nnunet_ssl.trainers.crln import nnUNetTrainerCRLN
from nnunet_ssl.trainers.mean_teacher import nnUNetTrainerMeanTeacher
from nnunet_ssl.trainers.self_training import nnUNetTrainerSelfTraining
from nnunet_ssl.trainers.ugpl import nnUNetTrainerUGPL

RECORD_ENV = "NNUNET_SSL_DDP_TEST_RECORD"
STOP_ENV = "NNUNET_SSL_DDP_TEST_STOP_AFTER_EPOCH"
# 2 epochs of 2 iterations; one validation iteration per epoch
DDP_TEST_SCHEDULE = {"num_epochs": 2, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


class StopAfterEpoch(RuntimeError):
    """Raised on every rank after the epoch named by NNUNET_SSL_DDP_TEST_STOP_AFTER_EPOCH (a cut-off run)."""


def digest(x) -> str:
    """Fingerprint of a batch tensor (or deep-supervision list of them)."""
    tensors = x if isinstance(x, (list, tuple)) else [x]
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _host(value):
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value


def trainable_state(trainer) -> dict:
    """{name: tensor or value} of everything training changes and every rank must agree on: the student (all of
    ``self.network``: second networks, DIM, prototypes, CRLN's ``a``), every teacher (with its EMA step), the extra
    modules (heads), and the momentum buffers of the main and the extra optimizers."""
    state = {f"student/{k}": _host(v) for k, v in trainer.student.state_dict().items()}
    for name, teacher in trainer.teachers.items():
        state.update({f"teacher[{name}]/{k}": _host(v) for k, v in teacher.state_dict().items()})
    state.update({f"extra_modules/{k}": _host(v) for k, v in trainer.extra_modules.state_dict().items()})
    optimizers = {"optimizer": trainer.optimizer, **{f"extra_optimizer[{k}]": o
                                                     for k, o in trainer.extra_optimizers.items()}}
    for name, opt in optimizers.items():
        for i, param_state in opt.state_dict()["state"].items():
            state.update({f"{name}/{i}/{k}": _host(v) for k, v in param_state.items()})
    return state


class DDPTestHooks:
    """Rank on the CPU, a short schedule, a checkpoint after every epoch, and per-rank records (module docstring).
    The final validation is skipped: it is nnU-Net's (cases split over ranks, export workers) and costs the most
    CPU time of a tiny run."""
    schedule_overrides = DDP_TEST_SCHEDULE

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.device = torch.device("cpu")  # nnU-Net set cuda:<rank> for DDP
        self.grad_scaler = None
        self.save_every = 1
        self.ddp_steps = []
        self._ddp_step_u = None

    # ------------------------------------------------------------------------------------------ records
    def on_unlabeled_batch(self, batch_u: dict) -> None:
        super().on_unlabeled_batch(batch_u)
        self._ddp_step_u = {"data_u": digest(batch_u["data"]), "keys_u": [str(k) for k in batch_u["keys"]]}

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        self.ddp_steps.append({"epoch": self.current_epoch, "data_l": digest(batch["data"]),
                               "keys_l": [str(k) for k in batch["keys"]], **(self._ddp_step_u or {}),
                               "outputs": dict(out)})
        self._ddp_step_u = None
        return out

    def save_ddp_record(self, event: str) -> None:
        folder = os.environ.get(RECORD_ENV)
        if not folder:
            return
        os.makedirs(folder, exist_ok=True)
        record = {"rank": self.local_rank, "world_size": dist.get_world_size() if self.is_ddp else 1,
                  "is_ddp": self.is_ddp, "event": event, "state": trainable_state(self), "steps": self.ddp_steps,
                  "ssl_step": self.ssl_step, "current_epoch": self.current_epoch,
                  "batch_size": self.batch_size, "unlabeled_batch_size": self.unlabeled_batch_size_per_step(),
                  "ssl_log_keys": list(self.ssl_log_keys),
                  "logging": {k: list(v) for k, v in self.logger.local_logger.my_fantastic_logging.items()
                              if k in self.ssl_log_keys or k == "train_losses"},
                  "output_folder": self.output_folder}
        torch.save(record, os.path.join(folder, f"{event}_rank{self.local_rank}.pt"))

    # ------------------------------------------------------------------------------------------ events
    def on_epoch_end(self):
        epoch = self.current_epoch
        super().on_epoch_end()
        stop = os.environ.get(STOP_ENV)
        if stop is not None and epoch == int(stop):
            self.save_ddp_record("stopped")
            raise StopAfterEpoch(f"stopped after epoch {epoch}")

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self.save_ddp_record("resumed")

    def run_training(self):
        super().run_training()
        self.save_ddp_record("final")

    def perform_actual_validation(self, save_probabilities: bool = False):
        pass


class nnUNetTrainerMeanTeacher_ddpTest(DDPTestHooks, nnUNetTrainerMeanTeacher):
    pass


class nnUNetTrainerCRLN_ddpTest(DDPTestHooks, nnUNetTrainerCRLN):
    pass


class nnUNetTrainerCDR_ddpTest(DDPTestHooks, nnUNetTrainerCDR):
    pass


class nnUNetTrainerBoCLIS_ddpTest(DDPTestHooks, nnUNetTrainerBoCLIS):
    pass


class nnUNetTrainerUGPL_ddpTest(DDPTestHooks, nnUNetTrainerUGPL):
    pass


class nnUNetTrainerSelfTraining_ddpTest(DDPTestHooks, nnUNetTrainerSelfTraining):
    pass


class nnUNetTrainerBoCLIS_ddpTestBrokenReduction(nnUNetTrainerBoCLIS_ddpTest):
    """The control: the projection head's gradient is left out of the all-reduce, so each rank steps it with its
    own gradient. The identity check must fail on exactly that head."""

    def parameters_outside_ddp(self):
        head = {id(p) for p in self.extra_modules["patch_projection"].parameters()}
        return [p for p in super().parameters_outside_ddp() if id(p) not in head]

