"""nnUNetv2_ssl_preprocess_unlabeled: output for good input, clear errors and nothing written for bad input."""
import hashlib
import json
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
    for f in ("nnUNetPlans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy(src / "preprocessed" / DATASET_NAME / f, pre / f)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    return raw, pre


def _expect_error(raw, pre, capsys, *fragments):
    before = _tree_digest(raw)
    pre_before = _tree_digest(pre)
    with pytest.raises(SystemExit) as e:
        main(["-d", "992", "-c", "3d_fullres"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    for f in fragments:
        assert f in err, err
    assert err.startswith("nnUNetv2_ssl_preprocess_unlabeled: error: ") and len(err.strip().splitlines()) == 1, err
    assert _tree_digest(raw) == before                       # raw data untouched
    assert _tree_digest(pre) == pre_before                   # nothing written
    assert not (pre / "nnUNetPlans_3d_fullres_unlabeled").exists()
    assert not (pre / "nnUNetPlans_3d_fullres_unlabeled.partial").exists()
    return err


def test_preprocesses_with_existing_plans(dataset, capsys):
    raw, pre = dataset
    before = _tree_digest(raw)
    out = preprocess_unlabeled(992, ["3d_fullres"], verbose=True)["3d_fullres"]
    assert "Preprocessing unlabelled cases" in capsys.readouterr().err  # nnU-Net-style progress bar (tqdm)
    assert out == str(pre / "nnUNetPlans_3d_fullres_unlabeled")
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in (raw / "imagesUnlabeled").iterdir())
    assert sorted(p.name[:-5] for p in Path(out).glob("*.b2nd") if not p.name.endswith("_seg.b2nd")) == cases
    manifest = json.loads((pre / "nnUNetPlans_3d_fullres_unlabeled.json").read_text(encoding="utf-8"))
    assert manifest["cases"] == cases and manifest["cases_with_reference"] == cases  # labelsUnlabeled present
    # what the folder was made from, checked by the trainers at training start
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_ssl.data.unlabeled_dataset import check_unlabeled_folder, preprocessing_fingerprint
    pm = PlansManager(str(pre / "nnUNetPlans.json"))
    dj = json.loads((pre / "dataset.json").read_text(encoding="utf-8"))
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


# ---------------------------------------------------------------- images that cannot belong to the dataset
def _write_image(path: Path, array, spacing_xyz, is_vector=False):
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(array, isVector=is_vector)
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path))


def test_2d_image_among_3d_images_is_refused(dataset, capsys):
    # the 20x20 image nnU-Net would read as (1, 1, 20, 20) at spacing (999, 1, 1) and resample to hundreds of slices
    import numpy as np
    raw, pre = dataset
    _write_image(raw / "imagesUnlabeled" / "flat_0000.nii.gz", np.zeros((20, 20), np.float32), (1.0, 1.0))
    err = _expect_error(raw, pre, capsys, "flat_0000.nii.gz", "a 2D image", "training images of this dataset are 3D "
                        "images", "case_0000_0000.nii.gz", "remove the file from imagesUnlabeled")


def test_vector_image_among_scalar_images_is_refused(dataset, capsys):
    import numpy as np
    raw, pre = dataset
    _write_image(raw / "imagesUnlabeled" / "rgb_0000.nii.gz", np.zeros((32, 32, 32, 3), np.float32),
                 (1.0, 1.0, 1.5), is_vector=True)
    _expect_error(raw, pre, capsys, "rgb_0000.nii.gz", "a 3D image with 3 components per voxel",
                  "training images of this dataset are 3D images (e.g.")


@pytest.mark.parametrize("fingerprint", [True, False], ids=["fingerprint", "imagesTr_headers"])
def test_spacing_far_outside_the_training_spacings_is_refused(dataset, capsys, fingerprint):
    # the synthetic training images all have spacing (z, y, x) = (1.5, 1, 1); 20x the in-plane spacing is refused
    import numpy as np
    raw, pre = dataset
    if not fingerprint:
        (pre / "dataset_fingerprint.json").unlink()
    _write_image(raw / "imagesUnlabeled" / "coarse_0000.nii.gz", np.zeros((32, 32, 32), np.float32), (20.0, 1.0, 1.5))
    err = _expect_error(raw, pre, capsys, "coarse_0000.nii.gz", "spacing (1.5, 1, 20)", "more than 10x outside",
                        "(1.5, 1, 1) to (1.5, 1, 1) on axis 2")
    assert ("dataset_fingerprint.json" in err) == fingerprint
    assert ("headers of" in err) != fingerprint


def test_spacing_within_a_factor_10_is_accepted(dataset):
    # nnU-Net resamples moderate differences: 9x finer on one axis and 5x coarser on another pass the check
    import numpy as np
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunet_ssl.data.preprocess_unlabeled import collect_unlabeled_cases, dataset_images, labelled_case_names
    raw, pre = dataset
    _write_image(raw / "imagesUnlabeled" / "fine_0000.nii.gz", np.zeros((32, 32, 32), np.float32), (1 / 9, 5.0, 1.5))
    dj = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    reference = dataset_images(str(raw), str(pre), dj, SimpleITKIO)
    assert reference.spacing_min == reference.spacing_max == (1.5, 1.0, 1.0)
    assert reference.channels[0].dimension == 3 and reference.channels[0].components == 1
    cases = collect_unlabeled_cases(str(raw), dj, labelled_case_names(str(raw), dj), SimpleITKIO, reference)
    assert cases["fine"] == [str(raw / "imagesUnlabeled" / "fine_0000.nii.gz")]


def test_misspelled_unlabelled_folder_is_named(dataset, capsys):
    raw, pre = dataset
    (raw / "imagesUnlabeled").rename(raw / "imagesUnlabelled")
    _expect_error(raw, pre, capsys, f"{raw / 'imagesUnlabeled'} does not exist, but {raw / 'imagesUnlabelled'} does: "
                  "did you mean imagesUnlabeled? Rename the folder to imagesUnlabeled.")


def test_misspelled_folder_beside_the_right_one_warns(dataset, capsys):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunet_ssl.data.preprocess_unlabeled import collect_unlabeled_cases
    raw, pre = dataset
    (raw / "labelsUnlabeled").rename(raw / "labelsUnlabelled")
    (raw / "images_unlabeled").mkdir()
    dj = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    cases = collect_unlabeled_cases(str(raw), dj, [], SimpleITKIO)
    assert len(cases) == 3
    assert capsys.readouterr().err.splitlines() == [
        f"nnUNetv2_ssl_preprocess_unlabeled: warning: {raw / 'images_unlabeled'} is ignored: did you mean "
        f"imagesUnlabeled? Only imagesUnlabeled is read for unlabelled images; rename the folder (or move its "
        f"files) to use them.",
        f"nnUNetv2_ssl_preprocess_unlabeled: warning: {raw / 'labelsUnlabelled'} is ignored: did you mean "
        f"labelsUnlabeled? Only labelsUnlabeled is read for the reference masks of unlabelled images; rename the "
        f"folder (or move its files) to use them."]
