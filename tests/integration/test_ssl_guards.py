"""Guards against silently wrong semi-supervised experiments, at training start (no training is run).

A semi-supervised trainer is constructed on a copy of the session's planned synthetic dataset (split: 2 labelled,
2 hidden-label, 2 validation cases, one fold; 3 preprocessed imagesUnlabeled cases) and asked for its split and its
unlabelled sources, as ``on_train_start`` does.
"""
import json
import os
import shutil

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

from conftest import DATASET_NAME
from nnunet_ssl.data.splits import SplitError
from nnunet_ssl.data.unlabeled_dataset import UnlabeledDataError
from nnunet_ssl.trainers import nnUNetTrainerMeanTeacher

UNLABELED = "nnUNetPlans_3d_fullres_unlabeled"
FIX = f"nnUNetv2_ssl_preprocess_unlabeled -d {DATASET_NAME} -c 3d_fullres -p nnUNetPlans"


@pytest.fixture
def preprocessed(synthetic_nnunet, tmp_path, monkeypatch):
    """The planned dataset in a private nnUNet_preprocessed: data folders linked, small files copied (editable)."""
    src = synthetic_nnunet["root"] / "preprocessed" / DATASET_NAME
    dst = tmp_path / "preprocessed" / DATASET_NAME
    dst.mkdir(parents=True)
    for entry in os.listdir(src):
        if os.path.isdir(src / entry):
            os.symlink(src / entry, dst / entry)
        else:
            shutil.copy(src / entry, dst / entry)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return dst


def make_trainer(folder, fold, edit_plans=None):
    plans = load_json(str(folder / "nnUNetPlans.json"))
    plans["continue_training"] = False
    if edit_plans is not None:
        edit_plans(plans)
    return nnUNetTrainerMeanTeacher(plans, "3d_fullres", fold, load_json(str(folder / "dataset.json")),
                                    device=torch.device("cpu"))


def edit_manifest(folder, edit):
    path = folder / (UNLABELED + ".json")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_unchanged_set_up_gives_split_and_imagesUnlabeled_cases(preprocessed):
    sources = make_trainer(preprocessed, 0).get_unlabeled_sources()
    split = json.loads((preprocessed / "splits_final.json").read_text(encoding="utf-8"))[0]
    assert sorted(sources.values()) == sorted([split["unlabeled"], ["unl_0000", "unl_0001", "unl_0002"]])


@pytest.mark.parametrize("fold", ["all", 1, 4])
def test_folds_that_would_use_hidden_labels_are_refused(preprocessed, fold):
    trainer = make_trainer(preprocessed, fold)
    with pytest.raises(SplitError, match="hides the labels of 2 training case"):
        trainer.do_split()  # what nnU-Net's get_tr_and_val_datasets and final validation call


def test_replanned_dataset_refuses_stale_unlabelled_folder(preprocessed):
    def replan(plans):
        plans["configurations"]["3d_fullres"]["spacing"] = [2.0, 2.0, 2.0]
        plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["CTNormalization"]

    with pytest.raises(UnlabeledDataError) as e:
        make_trainer(preprocessed, 0, replan).get_unlabeled_sources()
    message = str(e.value)
    assert "stale" in message and "spacing was [" in message and "is [2.0, 2.0, 2.0]" in message
    assert "normalization_schemes" in message and FIX in message


def test_manifest_without_fingerprint_is_refused(preprocessed):
    edit_manifest(preprocessed, lambda m: m.pop("fingerprint"))
    with pytest.raises(UnlabeledDataError, match="older nnunet_ssl") as e:
        make_trainer(preprocessed, 0).get_unlabeled_sources()
    assert FIX in str(e.value)


def test_unlabelled_case_named_like_a_labelled_case_is_refused(preprocessed):
    # as after converting the dataset again with that case labelled
    edit_manifest(preprocessed, lambda m: m["cases"].append("case_0003"))
    with pytest.raises(UnlabeledDataError, match=r"\['case_0003'\] have the name of labelled case"):
        make_trainer(preprocessed, 0).get_unlabeled_sources()


def test_ssl_train_wrapper_reports_user_errors_in_one_line(capsys):
    from nnunet_ssl.cli import _run_with_hint

    def entry():
        raise SplitError("splits_final.json hides labels; use fold 0")

    with pytest.raises(SystemExit) as e:
        _run_with_hint("nnUNetv2_ssl_train", entry)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "nnUNetv2_ssl_train: error: splits_final.json hides labels; use fold 0"


def test_no_unlabelled_cases_is_a_user_error(preprocessed):
    os.unlink(preprocessed / UNLABELED)
    (preprocessed / "splits_final.json").write_text(json.dumps([{"train": ["case_0000"], "val": ["case_0001"]}]))
    with pytest.raises(UnlabeledDataError, match="found no unlabelled cases"):
        make_trainer(preprocessed, 0).get_unlabeled_sources()
