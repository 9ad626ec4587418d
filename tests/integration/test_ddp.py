"""Multi-GPU training (``nnUNetv2_train -num_gpus 2``) of every method's default trainer, run with 2 ranks on the
CPU: nnU-Net's ``run_ddp`` per rank, torch.distributed with the gloo backend (``ddp_launcher.py``), the trainers
of ``tests/trainers/nnunet_ssl_ddp_test_trainers.py`` (the default trainers with a 2 x 2-iteration schedule).

Per method, one run cut off after epoch 0 and continued with ``--c`` for epoch 1 (4 optimizer steps). Checked:
every trainable tensor and optimizer buffer is bit-identical on both ranks after the cut-off, right after ``--c``
and at the end; the ranks drew different labelled and unlabelled batches; only rank 0 wrote checkpoints, logs and
plots; the logged epoch diagnostics are the mean over both ranks' steps. A control trainer that leaves one extra
module's gradient out of the all-reduce must fail the identity check.

The ranks start from different seeds, so a module that is neither broadcast nor reduced shows up as a difference.
The dataset is a copy of the session's 32^3 synthetic one (CRLN's DIM needs three decoder stages, which the planner
gives from 32^3 on; its plans have a quarter of the features, 8-64), plus a pseudo-label folder for the
self-training trainer.
"""
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DATASET_ID, DATASET_NAME, make_env, private_copy
from ddp_launcher import run_ddp_jobs

METHODS = ("MeanTeacher", "CRLN", "CDR", "BoCLIS", "UGPL", "SelfTraining")
BROKEN = "nnUNetTrainerBoCLIS_ddpTestBrokenReduction"
RECORD_ENV = "NNUNET_SSL_DDP_TEST_RECORD"
STOP_ENV = "NNUNET_SSL_DDP_TEST_STOP_AFTER_EPOCH"
WORLD = 2
# BatchNorm running statistics (CRLN's DIM): SyncBatchNorm, which makes them identical on GPUs, has no CPU version
CPU_ONLY_PER_RANK = ("running_mean", "running_var")


def trainer_name(method: str) -> str:
    return f"nnUNetTrainer{method}_ddpTest"


def _write_pseudo_labels(pre: Path) -> None:
    """The self-training trainer's input without a first model: a threshold of each unlabelled image as its
    pseudo-label (confidence 0.9), in the layout ``nnunet_ssl.self_training.store`` writes."""
    import json

    from nnunet_ssl.self_training.store import (_link_or_copy, image_file, pseudo_label_folder, read_image,
                                                weighting_settings, write_pseudo_manifest, write_weighted_labels)
    plans = json.loads((pre / "nnUNetPlans.json").read_text(encoding="utf-8"))
    patch_size = plans["configurations"]["3d_fullres"]["patch_size"]
    split = json.loads((pre / "splits_final.json").read_text(encoding="utf-8"))[0]
    cases = {c: str(pre / "nnUNetPlans_3d_fullres") for c in split["unlabeled"]}
    cases.update({f.name[:-len(".b2nd")]: str(pre / "nnUNetPlans_3d_fullres_unlabeled")
                  for f in (pre / "nnUNetPlans_3d_fullres_unlabeled").glob("*.b2nd") if not f.name.endswith("_seg.b2nd")})
    folder = pseudo_label_folder(str(pre), "nnUNetPlans_3d_fullres", 0)
    Path(folder).mkdir()
    weighting = weighting_settings("hard", 0.0)
    for case, source in cases.items():
        image = read_image(source, case)[0]
        labels = (image > np.percentile(image, 70)).astype(np.int16)
        _link_or_copy(image_file(source, case), str(Path(folder) / f"{case}.b2nd"))
        write_weighted_labels(folder, case, labels, np.full(image.shape, 0.9, np.float16), weighting, 3, [1, 2],
                              patch_size)
    write_pseudo_manifest(folder, {"model": {"checkpoint": "threshold", "sha256": "0" * 64}, "weighting": weighting,
                                   "cases": cases, "training": {"stage": "pseudo"}})


def _children_cpu_seconds() -> float:
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="module")
def ddp_runs(synthetic_nnunet, tmp_path_factory):
    root = private_copy(synthetic_nnunet, tmp_path_factory.mktemp("ddp"))
    _write_pseudo_labels(root / "preprocessed" / DATASET_NAME)
    records = root / "records"
    jobs = []
    for method in METHODS:
        tr = trainer_name(method)
        jobs.append({"name": f"{method}/cut", "trainer": tr, "record": str(records / method / "cut"),
                     "env": {RECORD_ENV: records / method, STOP_ENV: 0}})
        jobs.append({"name": f"{method}/continue", "trainer": tr, "record": str(records / method / "continue"),
                     "continue_training": True, "env": {RECORD_ENV: records / method}})
    jobs.append({"name": "broken", "trainer": BROKEN, "record": str(records / "broken"),
                 "env": {RECORD_ENV: records / "broken", STOP_ENV: 0}})
    for job in jobs:
        job["env"] = {k: str(v) for k, v in job["env"].items()}
    started, cpu_before = time.time(), _children_cpu_seconds()
    statuses = run_ddp_jobs(jobs, make_env(root, training=True), str(DATASET_ID), world_size=WORLD)
    seconds = time.time() - started
    print(f"DDP runs ({len(jobs)} jobs, {WORLD} CPU ranks): {seconds:.1f} s wall, "
          f"{_children_cpu_seconds() - cpu_before:.1f} s CPU of the ranks; per job (rank 0): " +
          ", ".join(f"{k} {s[0]['seconds']:.1f} s" for k, s in statuses.items() if s[0] and "seconds" in s[0]))
    return {"root": root, "records": records, "statuses": statuses, "seconds": seconds}


def _assert_job_outcome(runs, job: str, expected: str):
    statuses = runs["statuses"][job]
    for rank, status in enumerate(statuses):
        assert status is not None, f"{job}: rank {rank} left no record (killed or hung)"
        assert status["outcome"] == expected, f"{job}, rank {rank}: {status['outcome']}"


def _records(folder: Path, event: str):
    return [torch.load(folder / f"{event}_rank{r}.pt", weights_only=False) for r in range(WORLD)]


def assert_ranks_identical(records):
    """Every tensor and value of the records' ``state`` is bit-identical across ranks (BatchNorm running
    statistics aside, see CPU_ONLY_PER_RANK); the message names every one that is not."""
    names = set(records[0]["state"])
    for r, rec in enumerate(records[1:], 1):
        assert set(rec["state"]) == names, f"rank {r} holds other tensors: {set(rec['state']) ^ names}"
    differ = []
    for name in sorted(n for n in names if not n.endswith(CPU_ONLY_PER_RANK)):
        a = records[0]["state"][name]
        for rec in records[1:]:
            b = rec["state"][name]
            same = torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            if not same:
                differ.append(name)
                break
    assert not differ, f"{len(differ)} of {len(names)} tensors differ between ranks: {differ}"


def _fold(runs, method: str) -> Path:
    return runs["root"] / "results" / DATASET_NAME / f"{trainer_name(method)}__nnUNetPlans__3d_fullres" / "fold_0"


@pytest.mark.parametrize("method", METHODS)
def test_ranks_stay_identical_and_continue_identically(ddp_runs, method):
    _assert_job_outcome(ddp_runs, f"{method}/cut", "stopped")
    _assert_job_outcome(ddp_runs, f"{method}/continue", "ok")
    folder = ddp_runs["records"] / method
    stopped, resumed, final = (_records(folder, e) for e in ("stopped", "resumed", "final"))
    for recs in (stopped, resumed, final):
        assert [r["rank"] for r in recs] == [0, 1] and all(r["is_ddp"] and r["world_size"] == WORLD for r in recs)
    assert [r["ssl_step"] for r in stopped] == [2, 2] and [r["ssl_step"] for r in final] == [4, 4]
    assert_ranks_identical(stopped)
    assert_ranks_identical(resumed)
    assert_ranks_identical(final)
    # --c: both ranks continue from what rank 0 saved after epoch 0, i.e. the state both ranks had then
    assert [r["current_epoch"] for r in resumed] == [1, 1] and [r["ssl_step"] for r in resumed] == [2, 2]
    assert_ranks_identical([stopped[0], resumed[1]])
    # training changed the student between the cut-off and the end
    key = next(k for k, v in final[0]["state"].items() if k.startswith("student/") and v.dtype.is_floating_point
               and v.ndim > 1)
    assert not torch.equal(final[0]["state"][key], stopped[0]["state"][key])


@pytest.mark.parametrize("method", METHODS)
def test_ranks_drew_different_batches(ddp_runs, method):
    _assert_job_outcome(ddp_runs, f"{method}/continue", "ok")
    folder = ddp_runs["records"] / method
    for event in ("stopped", "final"):
        recs = _records(folder, event)
        # nnU-Net's DDP batch split: the global batch of 2 is 1 per rank; the unlabelled stream follows it
        assert [r["batch_size"] for r in recs] == [1, 1] and [r["unlabeled_batch_size"] for r in recs] == [1, 1]
        steps = [r["steps"] for r in recs]
        assert len(steps[0]) == len(steps[1]) == 2
        for s0, s1 in zip(*steps):
            assert s0["data_l"] != s1["data_l"], "both ranks trained on the same labelled batch"
            assert "data_u" in s0 and s0["data_u"] != s1["data_u"], "both ranks drew the same unlabelled batch"


@pytest.mark.parametrize("method", METHODS)
def test_only_rank_0_writes(ddp_runs, method):
    fold = _fold(ddp_runs, method)
    for job in (f"{method}/cut", f"{method}/continue"):
        _assert_job_outcome(ddp_runs, job, "stopped" if job.endswith("cut") else "ok")
        rank0, rank1 = ddp_runs["statuses"][job]
        in_fold = [[Path(p) for p in s["written"] if Path(p).parent == fold] for s in (rank0, rank1)]
        assert in_fold[1] == [], f"{job}: rank 1 wrote {in_fold[1]}"
        names = {p.name for p in in_fold[0]}
        assert {"progress.png", "progress_ssl.png"} <= names, names
        assert any(n.startswith("training_log_") for n in names), names
        # epoch 0 is always a new best; the continued run writes the final checkpoint
        assert ({"checkpoint_latest.pth", "checkpoint_best.pth"} if job.endswith("cut") else
                {"checkpoint_final.pth"}) <= names, names
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "progress_ssl.png").is_file()


@pytest.mark.parametrize("method", METHODS)
def test_logged_diagnostics_are_the_mean_over_ranks(ddp_runs, method):
    _assert_job_outcome(ddp_runs, f"{method}/continue", "ok")
    folder = ddp_runs["records"] / method
    stopped, final = _records(folder, "stopped"), _records(folder, "final")
    steps = {0: [s for r in stopped for s in r["steps"]], 1: [s for r in final for s in r["steps"]]}
    logged = final[0]["logging"]
    assert final[1]["logging"] == logged  # every rank logs the same gathered means
    checked = 0
    for key in final[0]["ssl_log_keys"]:
        for epoch in (0, 1):
            values = [float(s["outputs"][key]) for s in steps[epoch] if key in s["outputs"]]
            if not values:
                continue
            expected = float(np.nanmean(values)) if not all(math.isnan(v) for v in values) else math.nan
            got = logged[key][epoch]
            assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, rel=1e-6, abs=1e-9), \
                (key, epoch, got, values)
            checked += 1
    assert checked >= 2
    # nnU-Net's train loss is the mean over ranks too (its own all_gather)
    for epoch in (0, 1):
        assert logged["train_losses"][epoch] == pytest.approx(np.mean([s["outputs"]["loss"] for s in steps[epoch]]))


def test_broken_reduction_fails_the_identity_check(ddp_runs):
    """The control: without the projection head's all-reduce, the identity check fails, naming that head only."""
    _assert_job_outcome(ddp_runs, "broken", "stopped")
    stopped = _records(ddp_runs["records"] / "broken", "stopped")
    with pytest.raises(AssertionError, match="differ between ranks") as failure:
        assert_ranks_identical(stopped)
    differ = [n for n in stopped[0]["state"]
              if isinstance(stopped[0]["state"][n], torch.Tensor)
              and not torch.equal(stopped[0]["state"][n], stopped[1]["state"][n])]
    assert differ and all("patch_projection" in n or n.startswith("optimizer/") for n in differ), differ
    assert any(n.startswith("extra_modules/patch_projection") for n in differ)
    assert "patch_projection" in str(failure.value)
