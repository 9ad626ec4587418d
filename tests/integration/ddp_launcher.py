"""Run nnU-Net's own multi-GPU entry point (``nnunetv2.run.run_training.run_ddp``, what ``nnUNetv2_train
-num_gpus N`` starts per rank) with N ranks on the CPU, for the DDP tests.

One pool of N processes (``torch.multiprocessing``, spawn) joins one gloo process group on a free port and runs a
list of jobs one after the other (a job: a trainer, with or without ``--c``), so the imports and the group are paid
for once. Where nnU-Net's DDP path assumes CUDA, the test processes get (and only they get):

* ``setup_ddp``: ``init_process_group("gloo")`` instead of NCCL (once; ``cleanup_ddp`` is a barrier, and the group
  is destroyed after the last job);
* ``torch.cuda.set_device``: a no-op;
* ``DistributedDataParallel(module, device_ids=[rank])``: without ``device_ids`` (a CPU module takes none);
* ``SyncBatchNorm.convert_sync_batchnorm``: leaves the module as it is (SyncBatchNorm has no CPU implementation;
  BatchNorm layers, i.e. CRLN's DIM, then normalise with each rank's own batch and keep their own running
  statistics, which only a multi-GPU run can check);
* the trainer's device: the test trainers (``tests/trainers/nnunet_ssl_ddp_test_trainers.py``) set the CPU.

Each rank starts from its own torch/numpy/random seeds, so anything the trainers do not broadcast or reduce
differs between ranks. An audit hook and a wrapper of ``torch.save`` (whose zip writer opens files in C++) record
every file a rank writes; a job's record folder gets ``rank<r>.json`` with the job's outcome (``ok``, ``stopped``
or the traceback) and those files.

This module is imported by the spawned processes before nnU-Net: keep nnunetv2 imports inside functions (nnU-Net
reads its paths from the environment at import).
"""
import datetime
import json
import os
import socket
import sys
import time
import traceback
from typing import Dict, List

STATUS_FILE = "rank{rank}.json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record_writes(written: List[str]):
    """Audit hook: every path opened for writing (builtins.open and os.open) is appended to ``written``."""
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT

    def hook(event, args):
        if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path, mode, flags = (list(args) + [None, None])[:3]
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & write_flags)
        if writes:
            written.append(os.path.abspath(os.fsdecode(path)))
    return hook


def _record_torch_save(written: List[str]):
    import torch
    save = torch.save

    def recording_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            written.append(os.path.abspath(os.fsdecode(f)))
        return save(obj, f, *args, **kwargs)
    torch.save = recording_save


def _patch_for_cpu(timeout_s: float):
    """What nnU-Net's DDP path assumes about CUDA, replaced inside this (test) process only."""
    import torch
    import torch.distributed as dist
    import nnunetv2.run.run_training as run_training
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

    def setup_ddp(rank, world_size):
        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(seconds=timeout_s))

    ddp_class = trainer_module.DDP

    def cpu_ddp(module, device_ids=None, **kwargs):
        return ddp_class(module, **kwargs)

    run_training.setup_ddp = setup_ddp
    run_training.cleanup_ddp = dist.barrier  # the group stays for the next job
    torch.cuda.set_device = lambda device: None
    trainer_module.DDP = cpu_ddp
    torch.nn.SyncBatchNorm.convert_sync_batchnorm = classmethod(lambda cls, module, process_group=None: module)
    return setup_ddp


def _rank_main(rank: int, world_size: int, port: int, env: Dict[str, str], jobs: List[dict], dataset: str,
               configuration: str, collective_timeout_s: float):
    os.environ.update(env)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import random

    import numpy as np
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(1000 + rank)
    np.random.seed(1000 + rank)
    random.seed(1000 + rank)
    written: List[str] = []
    sys.addaudithook(_record_writes(written))
    _record_torch_save(written)
    import torch.distributed as dist
    setup_ddp = _patch_for_cpu(collective_timeout_s)
    import nnunetv2.run.run_training as run_training
    setup_ddp(rank, world_size)
    failed = None
    for job in jobs:
        folder = job["record"]
        os.makedirs(folder, exist_ok=True)
        status = {"job": job["name"], "rank": rank}
        if failed is not None:  # a failed job may leave the group out of step: do not run more
            status["outcome"] = f"not run: job {failed} failed"
        else:
            for k, v in job.get("env", {}).items():
                os.environ[k] = str(v)
            written.clear()
            started = time.time()
            try:
                run_training.run_ddp(rank, dataset, configuration, 0, job["trainer"], "nnUNetPlans", False,
                                     job.get("continue_training", False), False, None, False, False, world_size)
                status["outcome"] = "ok"
            except Exception as e:  # noqa: BLE001 (recorded for the test to report)
                if type(e).__name__ == "StopAfterEpoch":
                    status["outcome"] = "stopped"
                else:
                    status["outcome"] = "error: " + traceback.format_exc()
                    failed = job["name"]
            status["seconds"] = time.time() - started
            status["written"] = sorted(set(written))
            for k in job.get("env", {}):
                os.environ.pop(k, None)
        with open(os.path.join(folder, STATUS_FILE.format(rank=rank)), "w") as f:
            json.dump(status, f)
    if dist.is_initialized():
        dist.destroy_process_group()


def run_ddp_jobs(jobs: List[dict], env: Dict[str, str], dataset: str, configuration: str = "3d_fullres",
                 world_size: int = 2, timeout_s: float = 900, collective_timeout_s: float = 120) -> Dict[str, list]:
    """Run ``jobs`` ({'name', 'trainer', 'record': folder, 'continue_training', 'env'}) in order on ``world_size``
    CPU ranks. Returns {job name: [status of rank 0, status of rank 1, ...]} (None for a rank that wrote none)."""
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(rank, world_size, port, env, jobs, dataset, configuration,
                                                  collective_timeout_s), daemon=False)
             for rank in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.time() + timeout_s
    for p in procs:
        p.join(max(1.0, deadline - time.time()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    statuses = {}
    for job in jobs:
        per_rank = []
        for rank in range(world_size):
            f = os.path.join(job["record"], STATUS_FILE.format(rank=rank))
            per_rank.append(json.load(open(f)) if os.path.isfile(f) else None)
        statuses[job["name"]] = per_rank
    return statuses
