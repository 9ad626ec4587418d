"""Dataset conversion scripts on tiny fake inputs in each source format, plus the LA orientation on real cases."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

h5py = pytest.importorskip("h5py")

CONVERSION_DIR = Path(__file__).resolve().parents[2] / "dataset_conversion"
# the public LA h5 release (UA-MT), if the machine has it: NNUNET_SSL_LA_H5=/path/to/LA_h5 (the folder of train.list)
REAL_LA = Path(os.environ.get("NNUNET_SSL_LA_H5", "/nonexistent"))


# setup.py installs dataset_conversion/ as nnunet_ssl.dataset_conversion
from nnunet_ssl.dataset_conversion import Dataset101_LA as LA  # noqa: E402
from nnunet_ssl.dataset_conversion import Dataset102_PancreasCT as PANCREAS  # noqa: E402
from nnunet_ssl.dataset_conversion import Dataset103_BraTS19 as BRATS  # noqa: E402
from nnunet_ssl.dataset_conversion import Dataset104_Hippocampus as HIPPO  # noqa: E402
from nnunet_ssl.dataset_conversion import Dataset105_ACDC as ACDC  # noqa: E402

C = LA.C
ConversionError = C.ConversionError


def read_array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def ids_in(folder, channel=True):
    suffix = "_0000.nii.gz" if channel else ".nii.gz"
    return sorted(f.name[: -len(suffix)] for f in Path(folder).glob(f"*{suffix}"))


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------- LA
def write_la_case(folder, case, shape=(6, 5, 4), seed=0, label=None):
    rng = np.random.default_rng(seed)
    (folder / case).mkdir(parents=True)
    image = rng.normal(size=shape).astype(np.float32)
    if label is None:
        label = (rng.random(shape) > 0.5).astype(np.uint8)
    with h5py.File(folder / case / "mri_norm2.h5", "w") as f:
        f.create_dataset("image", data=image, compression="gzip")
        f.create_dataset("label", data=label)
    return image, label


@pytest.fixture
def fake_la(tmp_path):
    src = tmp_path / "LA"
    cases = [f"CASE{i:02d}" for i in range(5)]
    arrays = {c: write_la_case(src, c, seed=i) for i, c in enumerate(cases)}
    (src / "train.list").write_text("\n".join(cases[:4]) + "\n")
    (src / "test.list").write_text(cases[4] + "\n")
    return src, cases, arrays


def test_la_split_level_layout_orientation_and_split(fake_la, tmp_path):
    src, cases, arrays = fake_la
    before = snapshot(src)
    out = LA.convert(str(src), output=str(tmp_path / "raw"), labeled=2)
    assert ids_in(out / "imagesTr") == sorted(cases[:4])
    assert ids_in(out / "imagesTs") == [cases[4]] and ids_in(out / "labelsTs", channel=False) == [cases[4]]
    assert not (out / "imagesUnlabeled").exists()
    for c in cases[:4]:
        image = sitk.ReadImage(str(out / "imagesTr" / f"{c}_0000.nii.gz"))
        assert image.GetSpacing() == (0.625, 0.625, 0.625)
        assert image.GetSize() == (6, 5, 4)  # SimpleITK size is (x, y, z) = the h5 array shape
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), arrays[c][0])
        np.testing.assert_array_equal(read_array(out / "labelsTr" / f"{c}.nii.gz").transpose(2, 1, 0),
                                      arrays[c][1])
    split = json.loads((out / "splits_ssl.json").read_text(encoding="utf-8"))
    assert split == [{"train": cases[:2], "val": cases[:2], "unlabeled": cases[2:4]}]
    ds = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert ds["numTraining"] == 4 and ds["labels"] == {"background": 0, "left atrium": 1}
    assert ds["ssl_protocol"]["mode"] == "split-level" and ds["ssl_protocol"]["n_labeled"] == 2
    assert json.loads((out / "ssl_protocol.json").read_text(encoding="utf-8"))["unlabeled"] == cases[2:4]
    assert snapshot(src) == before  # source untouched


def test_la_strict_mode_and_missing_test_list(fake_la, tmp_path):
    src, cases, _ = fake_la
    (src / "test.list").unlink()
    assert LA.main(["-i", str(src), "-o", str(tmp_path / "raw"), "--raw_unlabeled", "1"]) == 0
    out = tmp_path / "raw" / "Dataset101_LA"
    assert ids_in(out / "imagesTr") == [cases[0]]
    assert ids_in(out / "imagesUnlabeled") == sorted(cases[1:4])
    assert ids_in(out / "labelsUnlabeled", channel=False) == sorted(cases[1:4])
    assert not (out / "imagesTs").exists()
    assert json.loads((out / "splits_ssl.json").read_text(encoding="utf-8")) == [
        {"train": [cases[0]], "val": [cases[0]], "unlabeled": []}]
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["numTraining"] == 1
    assert json.loads((out / "ssl_protocol.json").read_text(encoding="utf-8"))["mode"] == "raw-unlabeled"


def test_la_refuses_overwrite_and_install_split(fake_la, tmp_path, monkeypatch):
    src, cases, _ = fake_la
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    assert LA.main(["-i", str(src), "--labeled", "2", "--install_split"]) == 0
    installed = pre / "Dataset101_LA" / "splits_final.json"
    assert json.loads(installed.read_text(encoding="utf-8"))[0]["train"] == cases[:2]
    with pytest.raises(SystemExit) as exit_info:  # output exists, no --overwrite
        LA.main(["-i", str(src), "--labeled", "2"])
    assert exit_info.value.code == 2
    with pytest.raises(ConversionError, match="already exists"):
        LA.convert(str(src), labeled=3, overwrite=True, install_split=True)  # split file exists
    assert json.loads((raw / "Dataset101_LA" / "splits_ssl.json").read_text(encoding="utf-8"))[0]["train"] == cases[:2]
    assert json.loads(installed.read_text(encoding="utf-8"))[0]["train"] == cases[:2]  # not overwritten
    with pytest.raises(ConversionError, match="overlaps the source"):
        LA.convert(str(src), output=str(src), labeled=2, overwrite=True)


def test_la_bad_inputs_name_the_file(fake_la, tmp_path):
    src, cases, _ = fake_la
    write_la_case(src, "BADLABEL", label=np.full((6, 5, 4), 2, np.uint8))
    (src / "train.list").write_text("\n".join(cases[:2] + ["BADLABEL"]) + "\n")
    with pytest.raises(ConversionError, match=r"BADLABEL.*\[2\]"):
        LA.convert(str(src), output=str(tmp_path / "raw"), labeled=1)
    (src / "train.list").write_text("\n".join(cases[:2] + ["NOPE"]) + "\n")
    with pytest.raises(ConversionError, match="NOPE"):
        LA.convert(str(src), output=str(tmp_path / "raw2"), labeled=1)
    (src / "train.list").write_text("\n".join(cases[:2]) + "\n")
    with pytest.raises(ConversionError, match="exceeds"):
        LA.convert(str(src), output=str(tmp_path / "raw3"), labeled=3)
    (src / "train.list").unlink()
    with pytest.raises(ConversionError, match="train.list"):
        LA.convert(str(src), output=str(tmp_path / "raw4"))


@pytest.mark.skipif(not (REAL_LA / "train.list").is_file(), reason="real LA h5 data not available")
def test_la_real_cases_orientation(tmp_path):
    cases = C.read_case_list(REAL_LA / "train.list")[:2]
    src = tmp_path / "LA_h5"
    for c in cases:
        shutil.copytree(REAL_LA / c, src / c)
    (src / "train.list").write_text("\n".join(cases) + "\n")
    out = LA.convert(str(src), output=str(tmp_path / "raw"), labeled=1)
    for c in cases:
        with h5py.File(src / c / "mri_norm2.h5", "r") as f:
            image, label = f["image"][()], f["label"][()]
        nifti = sitk.ReadImage(str(out / "imagesTr" / f"{c}_0000.nii.gz"))
        assert nifti.GetSpacing() == (0.625, 0.625, 0.625)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(nifti).transpose(2, 1, 0), image)
        seg = read_array(out / "labelsTr" / f"{c}.nii.gz").transpose(2, 1, 0)
        np.testing.assert_array_equal(seg, label)
        assert set(np.unique(seg)) == {0, 1}


# -------------------------------------------------------------------------------------------- Pancreas
def write_pancreas_h5(folder, numbers, pattern="image{:04d}_norm.h5"):
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        with h5py.File(folder / pattern.format(n), "w") as f:
            f.create_dataset("image", data=np.full((3, 3, 2), n, np.float32))
            f.create_dataset("label", data=(np.arange(18).reshape(3, 3, 2) % 2).astype(np.uint8))


def test_pancreas_h5_coranet_and_mcf(tmp_path):
    src = tmp_path / "h5"
    write_pancreas_h5(src, range(1, 83), "PANCREAS_{:04d}.h5")
    out = PANCREAS.convert(str(src), output=str(tmp_path / "raw"), source_format="h5", convention="coranet")
    tr, ts = ids_in(out / "imagesTr"), ids_in(out / "imagesTs")
    assert len(tr) == 62 and len(ts) == 18
    assert "pancreas_0025" not in tr and "pancreas_0070" not in ts
    split = json.loads((out / "splits_ssl.json").read_text(encoding="utf-8"))[0]
    assert split["train"] == [f"pancreas_{n:04d}" for n in range(1, 13)]
    assert len(split["unlabeled"]) == 50 and "pancreas_0013" in split["unlabeled"]
    image = sitk.ReadImage(str(out / "imagesTr" / "pancreas_0007_0000.nii.gz"))
    assert image.GetSpacing() == (1.0, 1.0, 1.0) and np.all(sitk.GetArrayFromImage(image) == 7)
    out = PANCREAS.convert(str(src), output=str(tmp_path / "raw"), dataset_id=112, source_format="h5",
                           convention="mcf", labeled=6, strict=True)
    assert ids_in(out / "imagesTr") == [f"pancreas_{n:04d}" for n in range(1, 7)]
    assert len(ids_in(out / "imagesUnlabeled")) == 56 and len(ids_in(out / "imagesTs")) == 20
    assert json.loads((out / "ssl_protocol.json").read_text(encoding="utf-8"))["convention"] == "mcf"


def test_pancreas_mcnet_lists_and_errors(tmp_path):
    src = tmp_path / "h5"
    write_pancreas_h5(src, [3, 5, 9, 11])
    (tmp_path / "train.list").write_text("image0009\nimage0003\nimage0011\n")
    (tmp_path / "test.list").write_text("image0005\n")
    out = PANCREAS.convert(str(src), output=str(tmp_path / "raw"), source_format="h5", convention="mcnet",
                           labeled=1, train_list=str(tmp_path / "train.list"), test_list=str(tmp_path / "test.list"))
    assert json.loads((out / "splits_ssl.json").read_text(encoding="utf-8"))[0]["train"] == ["pancreas_0009"]
    with pytest.raises(ConversionError, match="train_list"):
        PANCREAS.convert(str(src), output=str(tmp_path / "r2"), source_format="h5", convention="mcnet")
    with pytest.raises(ConversionError, match="not found"):
        PANCREAS.convert(str(src), output=str(tmp_path / "r3"), source_format="h5", convention="mcf")
    with pytest.raises(ConversionError, match="hu_window"):
        PANCREAS.convert(str(src), output=str(tmp_path / "r4"), source_format="h5", convention="mcnet",
                         hu_window=True, train_list=str(tmp_path / "train.list"),
                         test_list=str(tmp_path / "test.list"))


def write_dicom_series(folder, hu, spacing=(0.8, 0.8, 2.5)):
    """Write a (z, y, x) HU array as one DICOM file per slice (CT, int16 with rescale)."""
    folder.mkdir(parents=True)
    volume = sitk.GetImageFromArray(hu.astype(np.int16))
    volume.SetSpacing(spacing)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    for z in range(volume.GetDepth()):
        s = volume[:, :, z]
        for tag, value in (("0008|0060", "CT"), ("0020|000e", series_uid), ("0020|000d", series_uid + ".1"),
                           ("0020|0032", f"0\\0\\{z * spacing[2]}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0020|0013", str(z + 1)), ("0028|0030", f"{spacing[1]}\\{spacing[0]}"),
                           ("0018|0050", str(spacing[2])), ("0008|0018", f"{series_uid}.{z + 2}")):
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{z:03d}.dcm"))
        writer.Execute(s)
    return volume


def test_pancreas_dicom_with_hu_window(tmp_path):
    src, labels = tmp_path / "Pancreas-CT", tmp_path / "labels"
    labels.mkdir()
    hu = np.arange(4 * 5 * 6).reshape(4, 5, 6) * 40 - 400  # spans -400..556 HU
    for n in (1, 2):
        volume = write_dicom_series(src / f"PANCREAS_{n:04d}" / "study" / "series", hu)
        seg = sitk.GetImageFromArray((hu > 200).astype(np.uint8))
        seg.CopyInformation(volume)
        sitk.WriteImage(seg, str(labels / f"label{n:04d}.nii.gz"))
    (tmp_path / "train.list").write_text("PANCREAS_0001\n")
    (tmp_path / "test.list").write_text("PANCREAS_0002\n")
    out = PANCREAS.convert(str(src), output=str(tmp_path / "raw"), labels_folder=str(labels), convention="mcnet",
                           labeled=1, hu_window=True, train_list=str(tmp_path / "train.list"),
                           test_list=str(tmp_path / "test.list"))
    image = sitk.ReadImage(str(out / "imagesTr" / "pancreas_0001_0000.nii.gz"))
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 0.8, 2.5))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), np.clip(hu, -125, 275))
    np.testing.assert_array_equal(read_array(out / "labelsTs" / "pancreas_0002.nii.gz"), hu > 200)
    # a label whose header disagrees with the DICOM geometry is refused unless explicitly overridden
    bad = sitk.GetImageFromArray((hu > 200).astype(np.uint8))
    sitk.WriteImage(bad, str(labels / "label0002.nii.gz"))
    with pytest.raises(ConversionError, match="label0002"):
        PANCREAS.convert(str(src), output=str(tmp_path / "raw2"), labels_folder=str(labels),
                         convention="mcnet", labeled=1, train_list=str(tmp_path / "train.list"),
                         test_list=str(tmp_path / "test.list"))
    PANCREAS.convert(str(src), output=str(tmp_path / "raw3"), labels_folder=str(labels), convention="mcnet",
                     labeled=1, train_list=str(tmp_path / "train.list"), test_list=str(tmp_path / "test.list"),
                     label_geometry_from_image=True)


# ----------------------------------------------------------------------------------------------- BraTS
def write_nifti(path, array, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def fake_brats(tmp_path):
    src = tmp_path / "MICCAI_BraTS_2019_Data_Training"
    names = {"train": ["BraTS19_A_1", "BraTS19_A_2", "BraTS19_B_3"], "val": ["BraTS19_B_4"], "test": ["BraTS19_A_5"]}
    seg = np.zeros((3, 4, 5), np.uint8)
    seg[0, 0, :4] = [1, 2, 4, 0]
    for i, case in enumerate(sum(names.values(), [])):
        grade = "HGG" if "_A_" in case else "LGG"
        for c, m in enumerate(("t1", "t1ce", "t2", "flair")):
            write_nifti(src / grade / case / f"{case}_{m}.nii.gz", np.full((3, 4, 5), 10 * i + c, np.float32))
        write_nifti(src / grade / case / f"{case}_seg.nii.gz", seg)
    lists = {}
    for k, v in names.items():
        lists[k] = tmp_path / f"{k}.txt"
        lists[k].write_text("\n".join(v) + "\n")
    return src, names, lists, seg


def test_brats_flair_whole_tumour(fake_brats, tmp_path):
    src, names, lists, seg = fake_brats
    out = BRATS.convert(str(src), str(lists["train"]), str(lists["val"]), str(lists["test"]),
                        output=str(tmp_path / "raw"), labeled=1)
    assert ids_in(out / "imagesTr") == sorted(names["train"] + names["val"])
    assert not (out / "imagesTr" / f"{names['train'][0]}_0001.nii.gz").exists()
    assert np.all(read_array(out / "imagesTr" / f"{names['train'][1]}_0000.nii.gz") == 13)  # case 1, flair
    np.testing.assert_array_equal(read_array(out / "labelsTr" / f"{names['val'][0]}.nii.gz"), seg > 0)
    assert ids_in(out / "labelsTs", channel=False) == names["test"]
    assert json.loads((out / "splits_ssl.json").read_text(encoding="utf-8")) == [
        {"train": names["train"][:1], "val": names["val"], "unlabeled": names["train"][1:]}]


def test_brats_all_modalities_regions_and_bad_label(fake_brats, tmp_path):
    src, names, lists, seg = fake_brats
    out = BRATS.convert(str(src), str(lists["train"]), str(lists["val"]), str(lists["test"]),
                        output=str(tmp_path / "raw"), labeled=2, strict=True, all_modalities=True)
    case = names["train"][0]
    for c in range(4):
        assert np.all(read_array(out / "imagesTr" / f"{case}_{c:04d}.nii.gz") == c)
    expected = np.zeros_like(seg)
    expected[0, 0, :3] = [2, 1, 3]  # BraTS 1 (necrosis) -> 2, 2 (oedema) -> 1, 4 (enhancing) -> 3
    np.testing.assert_array_equal(read_array(out / "labelsTr" / f"{case}.nii.gz"), expected)
    assert ids_in(out / "imagesUnlabeled") == [names["train"][2]]
    ds = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert ds["regions_class_order"] == [1, 2, 3] and ds["numTraining"] == 3
    bad = seg.copy()
    bad[1, 1, 1] = 3
    write_nifti(src / "HGG" / names["test"][0] / f"{names['test'][0]}_seg.nii.gz", bad)
    with pytest.raises(ConversionError, match=r"BraTS19_A_5_seg.*\[3\]"):
        BRATS.convert(str(src), str(lists["train"]), str(lists["val"]), str(lists["test"]),
                      output=str(tmp_path / "raw"), overwrite=True, labeled=1)


# ----------------------------------------------------------------------------------------- Hippocampus
@pytest.fixture
def fake_msd(tmp_path):
    src = tmp_path / "Task04_Hippocampus"
    train, test = [f"hippocampus_{i:03d}" for i in (1, 3, 4, 6)], ["hippocampus_002", "hippocampus_005"]
    for i, c in enumerate(train):
        write_nifti(src / "imagesTr" / f"{c}.nii.gz", np.full((4, 5, 3), i, np.float32))
        write_nifti(src / "labelsTr" / f"{c}.nii.gz", (np.arange(60).reshape(4, 5, 3) % 3).astype(np.uint8))
    for c in test:
        write_nifti(src / "imagesTs" / f"{c}.nii.gz", np.ones((4, 5, 3), np.float32))
    (src / "imagesTr" / "._hippocampus_001.nii.gz").write_bytes(b"mac junk")
    (src / "dataset.json").write_text(json.dumps({
        "name": "Hippocampus", "licence": "CC-BY-SA 4.0", "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}, "training": [], "test": []}))
    return src, train, test


def test_hippocampus_imagesTs_become_unlabeled(fake_msd, tmp_path):
    src, train, test = fake_msd
    before = snapshot(src)
    out = HIPPO.convert(str(src), output=str(tmp_path / "raw"))
    assert ids_in(out / "imagesTr") == train and ids_in(out / "imagesUnlabeled") == test
    assert not (out / "imagesTs").exists() and not (out / "splits_ssl.json").exists()
    ds = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert ds["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert ds["channel_names"] == {"0": "MRI"} and ds["numTraining"] == 4
    assert snapshot(src) == before


def test_hippocampus_budget_and_bad_label(fake_msd, tmp_path):
    src, train, test = fake_msd
    out = HIPPO.convert(str(src), output=str(tmp_path / "raw"), labeled=2, seed=1)
    split = json.loads((out / "splits_ssl.json").read_text(encoding="utf-8"))[0]
    assert len(split["train"]) == 2 and sorted(split["train"] + split["unlabeled"]) == train
    assert split["train"] == [str(c) for c in np.random.RandomState(1).permutation(train)[:2]]
    write_nifti(src / "labelsTr" / "hippocampus_004.nii.gz", np.full((4, 5, 3), 5, np.uint8))
    with pytest.raises(ConversionError, match=r"hippocampus_004.*\[5\]"):
        HIPPO.convert(str(src), output=str(tmp_path / "raw"), overwrite=True)
    (src / "labelsTr" / "hippocampus_004.nii.gz").unlink()
    with pytest.raises(ConversionError, match="hippocampus_004"):
        HIPPO.convert(str(src), output=str(tmp_path / "raw"), overwrite=True)


# ------------------------------------------------------------------------------------------------ ACDC
@pytest.fixture
def fake_acdc(tmp_path):
    src = tmp_path / "ACDC"
    seg = (np.arange(3 * 4 * 5).reshape(3, 4, 5) % 4).astype(np.uint8)
    for p in range(1, 7):
        folder = src / "training" / f"patient{p:03d}"
        for frame in (1, 10 + p):
            name = f"patient{p:03d}_frame{frame:02d}"
            write_nifti(folder / f"{name}.nii.gz", np.full((3, 4, 5), p, np.float32), (1.5, 1.5, 10))
            write_nifti(folder / f"{name}_gt.nii.gz", seg, (1.5, 1.5, 10))
        write_nifti(folder / f"patient{p:03d}_4d.nii.gz", np.zeros((2, 3, 4, 5), np.float32))
    write_nifti(src / "testing" / "patient101" / "patient101_frame01.nii.gz", np.zeros((3, 4, 5), np.float32))
    return src, seg


def patients(ids):
    return sorted({i[:10] for i in ids})


def test_acdc_patient_budget_keeps_frames_together(fake_acdc, tmp_path):
    src, seg = fake_acdc
    out = ACDC.convert(str(src), output=str(tmp_path / "raw"), labeled=2, seed=3, strict=True)
    split = json.loads((out / "splits_ssl.json").read_text(encoding="utf-8"))[0]
    labeled = sorted(np.random.RandomState(3).permutation([f"patient{p:03d}" for p in range(1, 7)])[:2])
    assert patients(split["train"]) == labeled and len(split["train"]) == 4
    assert patients(ids_in(out / "imagesUnlabeled")) == sorted(set(f"patient{p:03d}" for p in range(1, 7))
                                                              - set(labeled))
    assert ids_in(out / "imagesTs") == ["patient101_frame01"] and not (out / "labelsTs").exists()
    case = split["train"][0]
    image = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0000.nii.gz"))
    assert image.GetSpacing() == (1.5, 1.5, 10.0)
    np.testing.assert_array_equal(read_array(out / "labelsTr" / f"{case}.nii.gz"), seg)


def test_acdc_ssl4mis_lists(fake_acdc, tmp_path):
    src, _ = fake_acdc
    (tmp_path / "train.list").write_text("patient004_frame01\npatient004_frame02\npatient002_frame01\n"
                                         "patient001_frame01\npatient006_frame01\n")
    (tmp_path / "val.list").write_text("patient003_frame01\n")
    (tmp_path / "test.list").write_text("patient005_frame01\npatient005_frame02\n")
    out = ACDC.convert(str(src), output=str(tmp_path / "raw"), labeled=2, train_list=str(tmp_path / "train.list"),
                       val_list=str(tmp_path / "val.list"), test_list=str(tmp_path / "test.list"))
    split = json.loads((out / "splits_ssl.json").read_text(encoding="utf-8"))[0]
    assert patients(split["train"]) == ["patient002", "patient004"]
    assert patients(split["unlabeled"]) == ["patient001", "patient006"]
    assert patients(split["val"]) == ["patient003"] and len(split["val"]) == 2
    assert patients(ids_in(out / "imagesTs")) == ["patient005"] and len(ids_in(out / "labelsTs", False)) == 2
    (tmp_path / "val.list").write_text("patient002_frame01\n")
    with pytest.raises(ConversionError, match="train and the val"):
        ACDC.convert(str(src), output=str(tmp_path / "raw"), overwrite=True, train_list=str(tmp_path / "train.list"),
                     val_list=str(tmp_path / "val.list"), test_list=str(tmp_path / "test.list"))


def test_acdc_missing_gt_is_named(fake_acdc, tmp_path):
    src, _ = fake_acdc
    (src / "training" / "patient003" / "patient003_frame13_gt.nii.gz").unlink()
    with pytest.raises(ConversionError, match="patient003_frame13"):
        ACDC.convert(str(src), output=str(tmp_path / "raw"))


# ------------------------------------------------------------------------------------- packaging and errors
SCRIPTS = sorted(p.name for p in CONVERSION_DIR.glob("*.py") if p.name != "__init__.py")


def test_scripts_reach_helpers_through_the_package_not_sys_path():
    for name in SCRIPTS:
        assert "sys.path" not in (CONVERSION_DIR / name).read_text(encoding="utf-8"), name


def test_script_run_from_elsewhere_reports_user_error_in_one_line(tmp_path):
    # as the README runs it (a script path), from a folder that is not the repository
    proc = subprocess.run([sys.executable, str(CONVERSION_DIR / "Dataset101_LA.py"), "-i", str(tmp_path / "missing"),
                           "-o", str(tmp_path / "raw")], cwd=tmp_path, capture_output=True, encoding="utf-8",
                          errors="replace", env={**os.environ, "PYTHONUTF8": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"Dataset101_LA.py: error: missing LA input folder: "
                                                f"{tmp_path / 'missing'}"]
    assert not (tmp_path / "raw").exists()


def test_h5_reading_names_the_conversion_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    with pytest.raises(ConversionError, match=r"nnunet_ssl\[conversion\]"):
        C.read_h5_image_label(tmp_path / "case.h5")
