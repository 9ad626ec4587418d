"""nnUNetv2_ssl_evaluate end to end on tiny NIfTI files written with SimpleITK."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.evaluation.evaluate import main
from nnunet_ssl.evaluation.metrics import binary_case_metrics, keep_largest_connected_component

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = (12, 16, 16)            # numpy order (z, y, x)
SPACING_XYZ = (1.0, 1.0, 2.5)   # SimpleITK order; numpy-order spacing is (2.5, 1, 1)
SPACING_ZYX = SPACING_XYZ[::-1]


def write_seg(path, array, spacing_xyz=SPACING_XYZ):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path))


def make_cases():
    """Reference/prediction label maps (labels 1 and 2) for three cases."""
    ref = np.zeros(SHAPE, dtype=np.uint8)
    ref[3:8, 3:9, 3:9] = 1
    ref[3:8, 10:14, 10:14] = 2
    # case_a: label 1 shifted by one slice along z, label 2 exact, plus a small label-1 island
    pred_a = np.zeros_like(ref)
    pred_a[4:9, 3:9, 3:9] = 1
    pred_a[3:8, 10:14, 10:14] = 2
    pred_a[10, 14, 1] = 1
    # case_b: perfect
    pred_b = ref.copy()
    # case_c: label 2 missed (empty prediction), label 1 shrunk in-plane
    pred_c = np.zeros_like(ref)
    pred_c[3:8, 4:8, 4:8] = 1
    return {"case_a": (ref, pred_a), "case_b": (ref, pred_b), "case_c": (ref, pred_c)}


@pytest.fixture()
def folders(tmp_path):
    ref_dir, pred_dir = tmp_path / "labelsTs", tmp_path / "predictions"
    ref_dir.mkdir()
    pred_dir.mkdir()
    cases = make_cases()
    for case_id, (ref, pred) in cases.items():
        write_seg(ref_dir / f"{case_id}.nii.gz", ref)
        write_seg(pred_dir / f"{case_id}.nii.gz", pred)
    return ref_dir, pred_dir, cases


def read_outputs(out_dir):
    with open(out_dir / "metrics.json", encoding="utf-8") as f:
        result = json.load(f)
    with open(out_dir / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    markdown = (out_dir / "metrics.md").read_text(encoding="utf-8")
    return result, rows, markdown


def test_cli_end_to_end_outputs_are_consistent(folders, tmp_path):
    ref_dir, pred_dir, cases = folders
    out_dir = tmp_path / "eval"
    completed = subprocess.run(
        [sys.executable, "-m", "nnunet_ssl.evaluation.evaluate", "-ref", str(ref_dir), "-pred", str(pred_dir),
         "-o", str(out_dir), "--bootstrap", "20", "--seed", "7"],
        cwd=REPO_ROOT, capture_output=True, encoding="utf-8", errors="replace")
    assert completed.returncode == 0, completed.stderr
    result, rows, markdown = read_outputs(out_dir)

    assert result["settings"]["labels"] == [1, 2]
    assert result["settings"]["lcc"] is False
    assert result["settings"]["headline_units"] == "voxel"
    assert [c["case"] for c in result["cases"]] == ["case_a", "case_b", "case_c"]

    # per-case values equal the metric functions applied to the arrays with the numpy-order spacing
    for case in result["cases"]:
        ref, pred = cases[case["case"]]
        assert case["spacing"] == pytest.approx(list(SPACING_ZYX))
        for label in (1, 2):
            expected = binary_case_metrics(pred == label, ref == label, SPACING_ZYX, band_width=3)
            stored = case["per_class"][str(label)]
            for key, value in expected.items():
                if isinstance(value, float) and math.isnan(value):
                    assert stored[key] is None, (case["case"], label, key)
                else:
                    assert stored[key] == pytest.approx(value), (case["case"], label, key)

    # the z shift of case_a is 1 voxel = 2.5 mm: mm and voxel distances must differ accordingly
    shifted = result["cases"][0]["per_class"]["1"]
    assert shifted["hd95_mm"] > shifted["hd95_voxel"]

    # CSV: one row per case x class, same numbers as the JSON
    assert len(rows) == 3 * 2
    by_key = {(r["case"], int(r["label"])): r for r in rows}
    for case in result["cases"]:
        for label in (1, 2):
            stored = case["per_class"][str(label)]
            row = by_key[(case["case"], label)]
            for key in ("dice", "jaccard", "hd95_voxel", "asd_mm", "boundary_dice"):
                if stored[key] is None:
                    assert row[key] == "nan"
                else:
                    assert float(row[key]) == pytest.approx(stored[key])
            assert row["lcc"] == "False"

    # summary: label 2 is missed in case_c → Dice counts 0, distances excluded and counted
    label2 = result["summary"]["per_class"]["2"]
    assert label2["dice"]["mean"] == pytest.approx(2 / 3)
    assert label2["hd95_voxel"]["n_undefined"] == 1 and label2["hd95_voxel"]["n_cases"] == 2
    assert label2["n_empty_prediction"] == 1
    assert label2["dice"]["bootstrap"]["n_resamples"] == 20
    # the mean row averages classes within a case, then cases
    case_means = [np.mean([c["per_class"][str(l)]["dice"] for l in (1, 2)]) for c in result["cases"]]
    assert result["summary"]["mean"]["dice"]["mean"] == pytest.approx(np.mean(case_means))

    # Markdown: rows = classes + mean; cells are bootstrap mean ± std in percent
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table_rows) == 1 + 2 + 1  # header, two classes, mean
    assert table_rows[-1].startswith("| Mean |")
    boot = result["summary"]["mean"]["dice"]["bootstrap"]
    assert f"{boot['mean'] * 100:.2f} ± {boot['std'] * 100:.2f}" in table_rows[-1]
    assert "20 bootstrap resamples" in markdown and "Largest connected component per class: no" in markdown
    assert "Class 2: distances undefined in 1 case(s)" in markdown


def test_lcc_labels_and_mm_headline(folders, tmp_path):
    ref_dir, pred_dir, cases = folders
    out_dir = tmp_path / "eval_lcc"
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(out_dir), "--lcc", "--mm", "-l", "1"]) == 0
    result, rows, markdown = read_outputs(out_dir)
    assert result["settings"]["lcc"] is True and result["settings"]["labels"] == [1]
    assert {int(r["label"]) for r in rows} == {1} and all(r["lcc"] == "True" for r in rows)
    ref, pred = cases["case_a"]
    # the island of case_a is removed before scoring
    expected = binary_case_metrics(keep_largest_connected_component(pred == 1), ref == 1, SPACING_ZYX, 3)
    stored = result["cases"][0]["per_class"]["1"]
    assert stored["pred_voxels"] == expected["pred_voxels"] == (pred == 1).sum() - 1
    assert stored["asd_mm"] == pytest.approx(expected["asd_mm"])
    assert result["summary"]["headline"]["hd95"]["mean"] == pytest.approx(result["summary"]["mean"]["hd95_mm"]["mean"])
    assert "95HD (mm)" in markdown and "Largest connected component per class: yes" in markdown


def user_error(argv) -> None:
    """main(argv) ends with a user error: exit code 2 (the message goes to stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


def test_missing_prediction_is_named(folders, tmp_path, capsys):
    ref_dir, pred_dir, _ = folders
    os.remove(pred_dir / "case_b.nii.gz")
    user_error(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(tmp_path / "eval")])
    error = capsys.readouterr().err
    assert "case_b.nii.gz" in error and str(pred_dir) in error
    assert not (tmp_path / "eval").exists()


def test_shape_mismatch_is_named(folders, tmp_path, capsys):
    ref_dir, pred_dir, _ = folders
    write_seg(pred_dir / "case_c.nii.gz", np.zeros((12, 16, 15), dtype=np.uint8))
    user_error(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(tmp_path / "eval")])
    error = capsys.readouterr().err
    assert "shape mismatch" in error and "case_c.nii.gz" in error


def test_spacing_mismatch_is_named(folders, tmp_path, capsys):
    ref_dir, pred_dir, cases = folders
    write_seg(pred_dir / "case_a.nii.gz", cases["case_a"][1], spacing_xyz=(1.0, 1.0, 3.0))
    user_error(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(tmp_path / "eval")])
    error = capsys.readouterr().err
    assert "spacing mismatch" in error and "case_a.nii.gz" in error


def test_existing_outputs_are_not_overwritten(folders, tmp_path, capsys):
    ref_dir, pred_dir, _ = folders
    out_dir = tmp_path / "eval"
    out_dir.mkdir()
    (out_dir / "metrics.json").write_text("keep me")
    user_error(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(out_dir)])
    assert "--overwrite" in capsys.readouterr().err
    assert (out_dir / "metrics.json").read_text(encoding="utf-8") == "keep me"
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(out_dir), "--overwrite"]) == 0
    assert json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))["settings"]["labels"] == [1, 2]


def test_default_output_folder_and_parallel_workers(folders):
    ref_dir, pred_dir, _ = folders
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-np", "2"]) == 0
    result, rows, _ = read_outputs(pred_dir / "ssl_evaluation")
    assert len(rows) == 6 and [c["case"] for c in result["cases"]] == ["case_a", "case_b", "case_c"]


def warning_lines(err: str):
    return [line for line in err.splitlines() if "warning" in line]


def test_label_absent_from_references_warns(folders, tmp_path, capsys):
    ref_dir, pred_dir, _ = folders
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(tmp_path / "eval"), "-l", "1", "3"]) == 0
    assert warning_lines(capsys.readouterr().err) == [
        f"nnUNetv2_ssl_evaluate: warning: label 3 is absent from every reference in {ref_dir}; its scores only reflect "
        f"false positives (both-empty cases count as Dice 1)"]
    result, _, _ = read_outputs(tmp_path / "eval")
    assert result["summary"]["per_class"]["3"]["n_both_empty"] == 3


def test_2d_png_cases_are_scored_in_2d(tmp_path):
    # nnU-Net's 2D reader returns (1, y, x) with a dummy spacing; scoring must treat the image as 2D, otherwise the
    # size-1 axis would turn every voxel into a surface voxel
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    ref = np.zeros((20, 20), dtype=np.uint8)
    ref[4:14, 4:14] = 1
    pred = np.zeros_like(ref)
    pred[6:16, 5:15] = 1
    sitk.WriteImage(sitk.GetImageFromArray(ref), str(ref_dir / "slice.png"))
    sitk.WriteImage(sitk.GetImageFromArray(pred), str(pred_dir / "slice.png"))
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(tmp_path / "eval")]) == 0
    result, _, _ = read_outputs(tmp_path / "eval")
    assert result["settings"]["file_ending"] == ".png"
    stored = result["cases"][0]["per_class"]["1"]
    expected = binary_case_metrics(pred == 1, ref == 1, (1.0, 1.0), 3)
    for key in ("hd95_voxel", "asd_voxel", "boundary_dice"):
        assert stored[key] == pytest.approx(expected[key])


def test_nnunet_evaluate_folder_form(folders, tmp_path, capsys):
    """nnUNetv2_evaluate_folder's form: positional folders, -djfile (label names, file ending), -pfile (reader),
    -o naming a .json file, -np, --chill."""
    ref_dir, pred_dir, _ = folders
    dj, plans = tmp_path / "dataset.json", tmp_path / "nnUNetPlans.json"
    dj.write_text(json.dumps({"labels": {"background": 0, "organ": 1, "vessel": 2}, "file_ending": ".nii.gz"}))
    plans.write_text(json.dumps({"image_reader_writer": "SimpleITKIO"}))
    (ref_dir / "notes.txt").write_text("not a segmentation")  # the ending comes from -djfile, no detection needed
    os.remove(pred_dir / "case_b.nii.gz")
    out = tmp_path / "out" / "summary.json"
    assert main([str(ref_dir), str(pred_dir), "-djfile", str(dj), "-pfile", str(plans), "-o", str(out),
                 "-np", "1", "--chill", "-l", "1", "2"]) == 0
    assert warning_lines(capsys.readouterr().err) == [
        "nnUNetv2_ssl_evaluate: warning: --chill: 1 reference case(s) without prediction are not scored: "
        "case_b.nii.gz"]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert [c["case"] for c in result["cases"]] == ["case_a", "case_c"]
    assert result["settings"]["label_names"] == {"1": "organ", "2": "vessel"}
    assert result["settings"]["reader_writer"] == "SimpleITKIO"
    assert (tmp_path / "out" / "summary.csv").is_file() and (tmp_path / "out" / "summary.md").is_file()
    # the same folders through the -ref/-pred form give the same numbers
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(tmp_path / "eval"), "--chill",
                 "--file_ending", ".nii.gz"]) == 0
    assert "case_b.nii.gz" in capsys.readouterr().err
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))["summary"] == result["summary"]


def test_output_file_and_the_old_spellings(folders, tmp_path, capsys):
    """--output_file FILE.json names the outputs; -o FILE.json outside nnUNetv2_evaluate_folder's form and the old
    long spellings still work, each with one warning line."""
    ref_dir, pred_dir, _ = folders
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "--output_file", str(tmp_path / "a" / "s.json"),
                 "--disable_progress_bar"]) == 0
    assert sorted(os.listdir(tmp_path / "a")) == ["s.csv", "s.json", "s.md"]
    assert "warning" not in capsys.readouterr().err
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(tmp_path / "b" / "s.json"),
                 "--file-ending", ".nii.gz", "--labels", "1"]) == 0
    assert sorted(os.listdir(tmp_path / "b")) == ["s.csv", "s.json", "s.md"]
    assert json.loads((tmp_path / "b" / "s.json").read_text(encoding="utf-8"))["settings"]["labels"] == [1]
    warnings_ = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings_ == ["nnUNetv2_ssl_evaluate: warning: --file-ending is deprecated, use --file_ending",
                         "nnUNetv2_ssl_evaluate: warning: --labels is deprecated, use -l",
                         "nnUNetv2_ssl_evaluate: warning: -o FILE.json is deprecated, use --output_file FILE.json"]
    user_error(["-ref", str(ref_dir), "-pred", str(pred_dir), "--output_file", str(tmp_path / "c")])
    assert "name a .json file" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_progress_bar_for_more_than_a_few_cases(folders, tmp_path, capsys, monkeypatch):
    from nnunet_ssl.evaluation import evaluate
    ref_dir, pred_dir, _ = folders
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(tmp_path / "a")]) == 0
    assert "Evaluating" not in capsys.readouterr().err  # 3 cases: no bar
    monkeypatch.setattr(evaluate, "PROGRESS_MIN_CASES", 2)
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "Evaluating: 100%" in err and "3/3" in err
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(tmp_path / "c"),
                 "--disable_progress_bar"]) == 0
    assert "Evaluating" not in capsys.readouterr().err


def test_mixed_or_incomplete_forms_are_usage_errors(folders, capsys):
    ref_dir, pred_dir, _ = folders
    user_error([str(ref_dir), str(pred_dir), "-ref", str(ref_dir)])
    assert "not both" in capsys.readouterr().err
    user_error([str(ref_dir)])
    assert "gt_folder pred_folder" in capsys.readouterr().err


def test_user_error_is_one_line(folders, tmp_path, capsys):
    ref_dir, _, _ = folders
    user_error([str(ref_dir), str(tmp_path / "missing")])
    assert capsys.readouterr().err.strip().splitlines() == [
        f"nnUNetv2_ssl_evaluate: error: prediction folder {tmp_path / 'missing'} does not exist or is not a folder"]


def test_labels_missing_from_dataset_json_warn(folders, tmp_path, capsys):
    # dataset.json declares 0 and 1 only: the references and predictions hold 2 as well, case_a's prediction also 5
    ref_dir, pred_dir, cases = folders
    pred_a = cases["case_a"][1].copy()
    pred_a[0, 0, 0] = 5
    write_seg(pred_dir / "case_a.nii.gz", pred_a)
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"}))
    assert main([str(ref_dir), str(pred_dir), "-djfile", str(dj), "-o", str(tmp_path / "eval"), "-l", "1"]) == 0
    assert warning_lines(capsys.readouterr().err) == [
        f"nnUNetv2_ssl_evaluate: warning: predictions contain label(s) [2, 5] that {dj} does not declare (it "
        f"declares [0, 1]), in 2 case(s): case_a, case_b; are they predictions of another dataset's model, or is "
        f"-djfile the wrong dataset.json?",
        f"nnUNetv2_ssl_evaluate: warning: references contain label(s) [2] that {dj} does not declare (it declares "
        f"[0, 1]), in 3 case(s): case_a, case_b, case_c; is -djfile the dataset.json of these references?"]
    result, _, _ = read_outputs(tmp_path / "eval")  # a warning: the evaluation still runs
    assert result["cases"][0]["labels_in_prediction"] == [0, 1, 2, 5]
    assert result["cases"][2]["labels_in_prediction"] == [0, 1]      # case_c missed label 2
    assert result["cases"][2]["labels_in_reference"] == [0, 1, 2]
    # a dataset.json that declares every label (regions count with their members) gives no warning
    dj.write_text(json.dumps({"labels": {"background": 0, "organ": [1, 2], "vessel": 2, "other": 5},
                              "file_ending": ".nii.gz"}))
    assert main([str(ref_dir), str(pred_dir), "-djfile", str(dj), "-o", str(tmp_path / "eval2"), "-l", "1"]) == 0
    assert warning_lines(capsys.readouterr().err) == []


def test_no_prediction_matches_hints_at_the_file_ending(folders, tmp_path, capsys):
    # predictions written as .nii while the references are .nii.gz: nothing matches, the error says why
    ref_dir, pred_dir, cases = folders
    for case_id, (_, pred) in cases.items():
        os.remove(pred_dir / f"{case_id}.nii.gz")
        write_seg(pred_dir / f"{case_id}.nii", pred)
    before = sorted(os.listdir(pred_dir))
    user_error(["-ref", str(ref_dir), "-pred", str(pred_dir)])
    assert capsys.readouterr().err.strip().splitlines() == [
        f"nnUNetv2_ssl_evaluate: error: 3 reference case(s) have no prediction in {pred_dir}: case_a.nii.gz, "
        f"case_b.nii.gz, case_c.nii.gz. Predictions must have the same file names as the references, but {pred_dir} "
        f"holds 3 file(s) named like them ending in .nii instead of .nii.gz (e.g. case_a.nii): write the predictions "
        f"with the references' file ending (nnU-Net writes dataset.json's file_ending) or convert them."]
    assert sorted(os.listdir(pred_dir)) == before  # nothing written (no ssl_evaluation folder)
    # the hint only names files of the references' cases: other files give the plain message
    for case_id in cases:
        os.rename(pred_dir / f"{case_id}.nii", pred_dir / f"other_{case_id}.nii")
    user_error(["-ref", str(ref_dir), "-pred", str(pred_dir)])
    assert "instead of" not in capsys.readouterr().err
