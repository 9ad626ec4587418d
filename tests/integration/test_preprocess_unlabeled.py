"""nnUNetv2_ssl_preprocess_unlabeled: output for good input, clear errors and nothing written for bad input."""
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from conftest import DATASET_NAME, run_cli
from nnunet_ssl.data.preprocess_unlabeled import main, preprocess_unlabeled

NAME = "Dataset992_BadInput"


def _tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def dataset(synthetic_nnunet, tmp_path, monkeypatch):
    """A copy of the planned synthetic dataset (raw + plans) as Dataset992 in its own nnUNet folders."""
    src = synthetic_nnunet["root"]
    raw = tmp_path / "raw" / NAME
    shutil.copytree(src / "raw" / DATASET_NAME, raw)
    pre = tmp_path / "preprocessed" / NAME
    pre.mkdir(parents=True)
    for f in ("nnUNetPlans.json", "dataset.json"):
        shutil.copy(src / "preprocessed" / DATASET_NAME / f, pre / f)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    return raw, pre


def _expect_error(raw, pre, capsys, *fragments):
    before = _tree_digest(raw)
    with pytest.raises(SystemExit) as e:
        main(["-d", "992", "-c", "3d_fullres"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    for f in fragments:
        assert f in err, err
    assert _tree_digest(raw) == before                       # raw data untouched
    assert not (pre / "nnUNetPlans_3d_fullres_unlabeled").exists()
    assert not (pre / "nnUNetPlans_3d_fullres_unlabeled.partial").exists()


def test_preprocesses_with_existing_plans(dataset, capsys):
    raw, pre = dataset
    before = _tree_digest(raw)
    out = preprocess_unlabeled(992, ["3d_fullres"], verbose=True)["3d_fullres"]
    assert "Preprocessing unlabelled cases" in capsys.readouterr().err  # nnU-Net-style progress bar (tqdm)
    assert out == str(pre / "nnUNetPlans_3d_fullres_unlabeled")
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in (raw / "imagesUnlabeled").iterdir())
    assert sorted(p.name[:-5] for p in Path(out).glob("*.b2nd") if not p.name.endswith("_seg.b2nd")) == cases
    import json
    manifest = json.loads((pre / "nnUNetPlans_3d_fullres_unlabeled.json").read_text())
    assert manifest["cases"] == cases and manifest["cases_with_reference"] == cases  # labelsUnlabeled present
    # what the folder was made from, checked by the trainers at training start
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_ssl.data.unlabeled_dataset import check_unlabeled_folder, preprocessing_fingerprint
    pm = PlansManager(str(pre / "nnUNetPlans.json"))
    dj = json.loads((pre / "dataset.json").read_text())
    assert manifest["plans"] == "nnUNetPlans" and manifest["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert manifest["fingerprint"] == preprocessing_fingerprint(pm, pm.get_configuration("3d_fullres"), dj)
    assert manifest["fingerprint"]["spacing"] == pm.get_configuration("3d_fullres").spacing
    assert check_unlabeled_folder(out, pm, pm.get_configuration("3d_fullres"), "3d_fullres", dj, ["case_0000"]) \
        == manifest
    assert _tree_digest(raw) == before
    # the unlabelled dataset serves them without class_locations and nnU-Net's loader accepts it
    from nnunet_ssl.data.unlabeled_dataset import UnlabeledDataset
    ds = UnlabeledDataset({out: cases})
    data, seg, _, props = ds.load_case(cases[0])
    assert props["class_locations"] == {} and data.shape[0] == 1


def test_wrong_channel_count(dataset, capsys):
    raw, pre = dataset
    src = sorted((raw / "imagesUnlabeled").glob("*_0000.nii.gz"))[0]
    case = src.name[:-len("_0000.nii.gz")]
    shutil.copy(src, raw / "imagesUnlabeled" / f"{case}_0001.nii.gz")
    _expect_error(raw, pre, capsys, case, "channel", "unexpected", f"{case}_0001.nii.gz")


def test_wrong_file_ending(dataset, capsys):
    raw, pre = dataset
    src = sorted((raw / "imagesUnlabeled").glob("*_0000.nii.gz"))[0]
    shutil.copy(src, raw / "imagesUnlabeled" / "extra_0000.nrrd")
    _expect_error(raw, pre, capsys, "extra_0000.nrrd", "file ending", ".nii.gz")


def test_unreadable_file(dataset, capsys):
    raw, pre = dataset
    (raw / "imagesUnlabeled" / "broken_0000.nii.gz").write_bytes(b"not an image")
    _expect_error(raw, pre, capsys, "broken_0000.nii.gz", "cannot be read")


def test_name_clash_with_labelled_case(dataset, capsys):
    raw, pre = dataset
    shutil.copy(raw / "imagesTr" / "case_0000_0000.nii.gz", raw / "imagesUnlabeled" / "case_0000_0000.nii.gz")
    _expect_error(raw, pre, capsys, "case_0000", "labelled case")


def test_name_clash_with_a_labelsTr_case(dataset, capsys):
    raw, pre = dataset
    case = sorted((raw / "imagesUnlabeled").glob("*_0000.nii.gz"))[0].name[:-len("_0000.nii.gz")]
    shutil.copy(raw / "labelsTr" / "case_0000.nii.gz", raw / "labelsTr" / f"{case}.nii.gz")
    _expect_error(raw, pre, capsys, case, "labelled case")


def test_missing_plans(dataset, capsys):
    raw, pre = dataset
    (pre / "nnUNetPlans.json").unlink()
    _expect_error(raw, pre, capsys, "nnUNetPlans.json", "nnUNetv2_plan_and_preprocess")


def test_cli_entry_point_reports_error(dataset):
    raw, pre = dataset
    (raw / "imagesUnlabeled" / "broken_0000.nii.gz").write_bytes(b"garbage")
    env = dict(os.environ)
    proc = run_cli(["nnUNetv2_ssl_preprocess_unlabeled", "-d", "992", "-c", "3d_fullres"], env, expect_ok=False)
    assert proc.returncode == 2 and "broken_0000.nii.gz" in proc.stderr and "Traceback" not in proc.stderr
