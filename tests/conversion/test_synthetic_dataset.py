"""Tests of dataset_conversion/generate_synthetic_dataset.py (tiny datasets written to tmp_path)."""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SCRIPT = Path(__file__).resolve().parents[2] / "dataset_conversion" / "generate_synthetic_dataset.py"


def _load_generator():
    spec = importlib.util.spec_from_file_location("generate_synthetic_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()

SMALL_3D = dict(num_labeled=3, num_unlabeled=2, num_test=1, shape=(20, 24, 24), dim=3)
SMALL_2D = dict(num_labeled=3, num_unlabeled=2, num_test=1, shape=(32, 32), dim=2)


def _read(path):
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _file_names(folder):
    return sorted(os.listdir(folder))


def _all_arrays(dataset_folder):
    return {os.path.relpath(p, dataset_folder): _read(p)[1] for p in sorted(Path(dataset_folder).rglob("*.nii.gz"))}


@pytest.fixture(scope="module")
def dataset_3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw3d")
    folder = gen.generate_synthetic_dataset(str(root), dataset_id=990, num_foreground_classes=3, num_channels=2,
                                            seed=7, **SMALL_3D)
    return Path(folder)


@pytest.fixture(scope="module")
def dataset_2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw2d")
    folder = gen.generate_synthetic_dataset(str(root), dataset_id=991, name="Synth2D", num_foreground_classes=2,
                                            num_channels=1, seed=3, **SMALL_2D)
    return Path(folder)


def test_layout_and_names_3d(dataset_3d):
    assert dataset_3d.name == "Dataset990_SyntheticSSL"
    assert _file_names(dataset_3d) == ["dataset.json", "imagesTr", "imagesTs", "imagesUnlabeled", "labelsTr",
                                       "labelsTs", "labelsUnlabeled"]
    assert _file_names(dataset_3d / "imagesTr") == [f"case_{i:04d}_{c:04d}.nii.gz" for i in range(3) for c in range(2)]
    assert _file_names(dataset_3d / "labelsTr") == [f"case_{i:04d}.nii.gz" for i in range(3)]
    assert _file_names(dataset_3d / "imagesUnlabeled") == [f"unl_{i:04d}_{c:04d}.nii.gz" for i in range(2)
                                                           for c in range(2)]
    assert _file_names(dataset_3d / "imagesTs") == ["test_0000_0000.nii.gz", "test_0000_0001.nii.gz"]
    assert _file_names(dataset_3d / "labelsTs") == ["test_0000.nii.gz"]
    # no hidden staging folder left behind
    assert os.listdir(dataset_3d.parent) == [dataset_3d.name]


def test_layout_and_names_2d(dataset_2d):
    assert dataset_2d.name == "Dataset991_Synth2D"
    assert _file_names(dataset_2d / "imagesTr") == [f"case_{i:04d}_0000.nii.gz" for i in range(3)]
    assert _file_names(dataset_2d / "imagesUnlabeled") == ["unl_0000_0000.nii.gz", "unl_0001_0000.nii.gz"]
    assert _file_names(dataset_2d / "labelsTs") == ["test_0000.nii.gz"]


def test_unlabeled_case_names_differ_from_labeled(dataset_3d):
    labeled = {f[:-len("_0000.nii.gz")] for f in os.listdir(dataset_3d / "imagesTr")}
    unlabeled = {f[:-len("_0000.nii.gz")] for f in os.listdir(dataset_3d / "imagesUnlabeled")}
    assert labeled.isdisjoint(unlabeled)


def test_zero_unlabeled_and_test_cases_skip_their_folders(tmp_path):
    folder = Path(gen.generate_synthetic_dataset(str(tmp_path), num_labeled=1, num_unlabeled=0, num_test=0,
                                                 shape=(20, 20, 20)))
    assert _file_names(folder) == ["dataset.json", "imagesTr", "labelsTr"]


def test_dataset_json(dataset_3d, dataset_2d):
    dj = json.loads((dataset_3d / "dataset.json").read_text(encoding="utf-8"))
    assert dj["channel_names"] == {"0": "synthetic_contrast_0", "1": "synthetic_contrast_1"}
    assert dj["labels"] == {"background": 0, "class_1": 1, "class_2": 2, "class_3": 3}
    assert dj["numTraining"] == 3
    assert dj["file_ending"] == ".nii.gz"
    dj2 = json.loads((dataset_2d / "dataset.json").read_text(encoding="utf-8"))
    assert dj2["labels"] == {"background": 0, "class_1": 1, "class_2": 2}
    assert dj2["numTraining"] == 3


def test_shapes_spacing_and_dtypes_3d(dataset_3d):
    for path in sorted(dataset_3d.rglob("*.nii.gz")):
        image, array = _read(path)
        assert array.shape == (20, 24, 24), path
        assert image.GetSpacing() == pytest.approx((1.0, 1.0, 1.5)), path  # SimpleITK order (x, y, z)
        is_label = path.parent.name.startswith("labels")
        assert array.dtype == (np.uint8 if is_label else np.float32), path


def test_shapes_and_spacing_2d_are_single_slice(dataset_2d):
    for path in sorted(dataset_2d.rglob("*.nii.gz")):
        image, array = _read(path)
        assert array.shape == (1, 32, 32), path  # (z, y, x): one slice, so nnU-Net plans a 2d configuration
        assert image.GetSpacing() == pytest.approx((1.0, 1.0, 1.0)), path


@pytest.mark.parametrize("fixture_name, num_classes", [("dataset_3d", 3), ("dataset_2d", 2)])
def test_label_values_and_every_class_present(request, fixture_name, num_classes):
    folder = request.getfixturevalue(fixture_name)
    for labels_dir in ("labelsTr", "labelsTs", "labelsUnlabeled"):
        for path in sorted((folder / labels_dir).iterdir()):
            values = set(np.unique(_read(path)[1]).tolist())
            assert values == set(range(num_classes + 1)), path


def test_channels_are_different_contrasts_of_the_same_anatomy(dataset_3d):
    _, label = _read(dataset_3d / "labelsTr" / "case_0000.nii.gz")
    _, channel0 = _read(dataset_3d / "imagesTr" / "case_0000_0000.nii.gz")
    _, channel1 = _read(dataset_3d / "imagesTr" / "case_0000_0001.nii.gz")
    mean0 = [channel0[label == k].mean() for k in range(4)]
    mean1 = [channel1[label == k].mean() for k in range(4)]
    # channel 0 orders the classes by brightness; channel 1 permutes the tissue levels
    assert mean0[1] < mean0[2] < mean0[3]
    assert np.argsort(mean0).tolist() != np.argsort(mean1).tolist()


def test_same_seed_identical_other_seed_different(tmp_path):
    kwargs = dict(num_labeled=2, num_unlabeled=1, num_test=1, shape=(20, 20, 20), num_channels=2)
    first = _all_arrays(gen.generate_synthetic_dataset(str(tmp_path / "a"), seed=5, **kwargs))
    again = _all_arrays(gen.generate_synthetic_dataset(str(tmp_path / "b"), seed=5, **kwargs))
    other = _all_arrays(gen.generate_synthetic_dataset(str(tmp_path / "c"), seed=6, **kwargs))
    assert first.keys() == again.keys() == other.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
        assert not np.array_equal(first[name], other[name]), name


def test_label_budget_splits_one_training_pool_and_keeps_the_test_set(tmp_path):
    """Same seed: 2 labelled + 2 unlabelled cases are the images of 4 labelled cases; test cases are unchanged."""
    kwargs = dict(num_test=1, shape=(20, 20, 20), seed=9)
    few = Path(gen.generate_synthetic_dataset(str(tmp_path / "few"), num_labeled=2, num_unlabeled=2, **kwargs))
    many = Path(gen.generate_synthetic_dataset(str(tmp_path / "many"), num_labeled=4, num_unlabeled=0, **kwargs))
    pairs = [("imagesTr/case_0001_0000", "imagesTr/case_0001_0000"),
             ("imagesUnlabeled/unl_0000_0000", "imagesTr/case_0002_0000"),
             ("labelsUnlabeled/unl_0001", "labelsTr/case_0003"),
             ("imagesTs/test_0000_0000", "imagesTs/test_0000_0000"),
             ("labelsTs/test_0000", "labelsTs/test_0000")]
    for in_few, in_many in pairs:
        np.testing.assert_array_equal(_read(few / f"{in_few}.nii.gz")[1], _read(many / f"{in_many}.nii.gz")[1])
    # the test case is not one of the training pool
    assert not np.array_equal(_read(few / "imagesTs/test_0000_0000.nii.gz")[1],
                              _read(few / "imagesTr/case_0000_0000.nii.gz")[1])


def test_each_case_has_its_own_stream():
    images_a, label_a = gen.generate_case(0, 0, (20, 20, 20), 3, 2, 1)
    images_b, label_b = gen.generate_case(0, 1, (20, 20, 20), 3, 2, 1)
    assert not np.array_equal(label_a, label_b)
    # a case does not depend on how many cases come before it
    images_again, _ = gen.generate_case(0, 1, (20, 20, 20), 3, 2, 1)
    np.testing.assert_array_equal(images_b[0], images_again[0])


def _has_bright_unlabelled_voxels(image, label):
    """At least 4 voxels, 2 voxels or more away from any label, (nearly) as bright as the organ (class 1)."""
    from scipy import ndimage
    far_from_labels = ~ndimage.binary_dilation(label > 0, iterations=2)
    organ_level = np.median(image[label == 1])
    smoothed = ndimage.gaussian_filter(image, sigma=0.7)  # so that single noisy body voxels do not count
    return np.count_nonzero(smoothed[far_from_labels] >= 0.85 * organ_level) >= 4


def test_distractors_are_bright_but_unlabelled(dataset_3d):
    """In most cases the image is bright somewhere outside the labels (the bias field can dim a small distractor)."""
    cases = []
    for labels_dir, images_dir in (("labelsTr", "imagesTr"), ("labelsTs", "imagesTs"),
                                   ("labelsUnlabeled", "imagesUnlabeled")):
        for path in sorted((dataset_3d / labels_dir).iterdir()):
            _, image = _read(dataset_3d / images_dir / path.name.replace(".nii.gz", "_0000.nii.gz"))
            cases.append(_has_bright_unlabelled_voxels(image, _read(path)[1]))
    assert sum(cases) >= len(cases) / 2, cases


@pytest.mark.parametrize("shape, num_classes", [((32, 32, 32), 1), ((20, 24, 24), 3), ((32, 32), 2)])
def test_every_case_has_unlabelled_distractors_with_class_tissue(shape, num_classes):
    """The tissue map holds class-tissue voxels outside the label (distractors) and labels carry their own tissue."""
    spacing = gen.SPACING_3D_ZYX if len(shape) == 3 else gen.SPACING_2D_YX
    for case_index in range(8):
        tissue, label = gen._sample_anatomy(np.random.default_rng([0, case_index]), shape, spacing, num_classes)
        assert np.count_nonzero((tissue >= 2) & (label == 0)) >= gen.MIN_CLASS_VOXELS[len(shape)]
        assert np.array_equal(tissue[label > 0], label[label > 0] + 1)


def test_refuses_to_overwrite_and_changes_nothing(tmp_path):
    folder = Path(gen.generate_synthetic_dataset(str(tmp_path), num_labeled=1, num_unlabeled=0, num_test=0,
                                                 shape=(20, 20, 20), seed=1))
    (folder / "user_note.txt").write_text("keep me")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match=r"Dataset990_SyntheticSSL.*overwrite"):
        gen.generate_synthetic_dataset(str(tmp_path), num_labeled=2, num_unlabeled=0, num_test=0,
                                       shape=(20, 20, 20), seed=2)
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert before == after
    assert os.listdir(tmp_path) == [folder.name]


def test_overwrite_replaces_only_that_dataset_folder(tmp_path):
    small = dict(num_unlabeled=0, num_test=0, shape=(20, 20, 20))
    folder = Path(gen.generate_synthetic_dataset(str(tmp_path), num_labeled=2, **small))
    neighbour = Path(gen.generate_synthetic_dataset(str(tmp_path), dataset_id=991, num_labeled=1, **small))
    (folder / "stale.txt").write_text("old")
    neighbour_before = {p: p.read_bytes() for p in neighbour.rglob("*") if p.is_file()}
    gen.generate_synthetic_dataset(str(tmp_path), num_labeled=1, overwrite=True, **small)
    assert not (folder / "stale.txt").exists()
    assert _file_names(folder / "labelsTr") == ["case_0000.nii.gz"]
    assert json.loads((folder / "dataset.json").read_text(encoding="utf-8"))["numTraining"] == 1
    assert {p: p.read_bytes() for p in neighbour.rglob("*") if p.is_file()} == neighbour_before
    assert sorted(os.listdir(tmp_path)) == ["Dataset990_SyntheticSSL", "Dataset991_SyntheticSSL"]


def test_refuses_second_folder_with_same_id(tmp_path):
    (tmp_path / "Dataset990_Other").mkdir()
    with pytest.raises(FileExistsError, match=r"Dataset990_Other.*unique"):
        gen.generate_synthetic_dataset(str(tmp_path), num_labeled=1, shape=(20, 20, 20))
    assert os.listdir(tmp_path) == ["Dataset990_Other"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(shape=(32, 32), dim=3), r"shape \(--shape\) must have 3 values for dim=3"),
    (dict(shape=(32, 32, 32), dim=2), r"shape \(--shape\) must have 2 values for dim=2"),
    (dict(dim=4), r"dim \(--dim\) must be 2 or 3"),
    (dict(shape=(19, 32, 32)), r"shape \(--shape\) value must be an integer >= 20"),
    (dict(num_labeled=0), r"num_labeled \(--labeled\) must be an integer >= 1"),
    (dict(num_unlabeled=-1), r"num_unlabeled \(--unlabeled\) must be an integer >= 0"),
    (dict(num_test=-2), r"num_test \(--test\) must be an integer >= 0"),
    (dict(num_foreground_classes=0), r"num_foreground_classes \(--classes\) must be an integer >= 1"),
    (dict(num_channels=0), r"num_channels \(--channels\) must be an integer >= 1"),
    (dict(seed=-1), r"seed \(--seed\) must be an integer >= 0"),
    (dict(dataset_id=1000), r"dataset_id \(-d\) must be an integer between 1 and 999"),
    (dict(name="bad name/x"), r"name \(--name\) must be non-empty"),
])
def test_argument_validation(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        gen.generate_synthetic_dataset(str(tmp_path), **kwargs)
    assert os.listdir(tmp_path) == []


def test_too_many_classes_for_the_shape_fails_cleanly(tmp_path):
    with pytest.raises(RuntimeError, match=r"use a larger --shape or fewer --classes"):
        gen.generate_synthetic_dataset(str(tmp_path), num_labeled=1, num_unlabeled=0, num_test=0, shape=(20, 20),
                                       dim=2, num_foreground_classes=12)
    assert os.listdir(tmp_path) == []  # the partial (staging) folder was removed


def test_main_cli_2d(tmp_path, capsys):
    folder = gen.main(["-o", str(tmp_path), "-d", "5", "--name", "Cli", "--labeled", "2", "--unlabeled", "1",
                       "--test", "0", "--dim", "2", "--shape", "24", "28", "--classes", "1", "--channels", "2",
                       "--seed", "4"])
    assert folder == str(tmp_path / "Dataset005_Cli")
    assert "wrote" in capsys.readouterr().out
    assert _file_names(tmp_path / "Dataset005_Cli" / "imagesTr") == [
        "case_0000_0000.nii.gz", "case_0000_0001.nii.gz", "case_0001_0000.nii.gz", "case_0001_0001.nii.gz"]
    assert _read(tmp_path / "Dataset005_Cli" / "labelsTr" / "case_0000.nii.gz")[1].shape == (1, 24, 28)


def test_main_defaults_to_nnunet_raw_and_reports_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    args = ["--labeled", "1", "--unlabeled", "0", "--test", "0", "--shape", "20", "20", "20"]
    assert gen.main(args) == str(tmp_path / "Dataset990_SyntheticSSL")
    with pytest.raises(SystemExit):
        gen.main(args)  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    gen.main(args + ["--overwrite"])
    with pytest.raises(SystemExit):
        gen.main(["--dim", "2", "--shape", "20", "20", "20"])
    assert "must have 2 values for dim=2" in capsys.readouterr().err


def test_main_without_output_folder(monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(SystemExit):
        gen.main([])
    assert "nnUNet_raw" in capsys.readouterr().err
