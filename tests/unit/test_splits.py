import json

import pytest

from nnunet_ssl.data.splits import SplitError, make_label_budget_splits, write_splits

IDS = [f"case_{i:02d}" for i in range(10)]


def test_split_contents():
    splits = make_label_budget_splits(IDS, num_labeled=3, num_val=2, seed=7)
    assert len(splits) == 5
    vals = [set(s["val"]) for s in splits]
    assert set().union(*vals) == set(IDS)                  # disjoint validation blocks cover all cases
    assert sum(len(v) for v in vals) == 10
    for s in splits:
        tr, val, unl = set(s["train"]), set(s["val"]), set(s["unlabeled"])
        assert len(tr) == 3 and len(val) == 2 and len(unl) == 5
        assert not (tr & val) and not (tr & unl) and not (val & unl)
        assert tr | val | unl == set(IDS)


def test_split_is_seeded():
    assert make_label_budget_splits(IDS, 3, 2, seed=1) == make_label_budget_splits(IDS, 3, 2, seed=1)
    assert make_label_budget_splits(IDS, 3, 2, seed=1) != make_label_budget_splits(IDS, 3, 2, seed=2)


def test_split_defaults_and_folds():
    splits = make_label_budget_splits(IDS, 2)
    assert len(splits) == 5 and all(len(s["val"]) == 2 for s in splits)
    assert len(make_label_budget_splits(IDS, 2, 3, num_folds=1)) == 1


@pytest.mark.parametrize("kwargs,msg", [({"num_labeled": 0}, "at least 1"),
                                        ({"num_labeled": 9, "num_val": 2}, "exceeds"),
                                        ({"num_labeled": 2, "num_val": 0}, "--num_val"),
                                        ({"num_labeled": 2, "num_val": 4, "num_folds": 3}, "at most 2 folds")])
def test_split_argument_errors(kwargs, msg):
    with pytest.raises(SplitError, match=msg):
        make_label_budget_splits(IDS, **kwargs)


def test_refuses_to_overwrite_and_keeps_backup(tmp_path):
    old = [{"train": ["a"], "val": ["b"]}]
    target = tmp_path / "splits_final.json"
    target.write_text(json.dumps(old))
    new = make_label_budget_splits(IDS, 2, 2)
    with pytest.raises(SplitError, match="--overwrite"):
        write_splits(new, str(tmp_path))
    assert json.loads(target.read_text(encoding="utf-8")) == old            # untouched
    write_splits(new, str(tmp_path), force=True, backup=True)
    assert json.loads(target.read_text(encoding="utf-8")) == new
    backups = list(tmp_path.glob("splits_final.json.*.bak"))
    assert len(backups) == 1 and json.loads(backups[0].read_text(encoding="utf-8")) == old


# ------------------------------------------------------------------------------ the label-leak guard
from nnunet_ssl.data.splits import check_fold_keeps_labels_hidden, fold_unlabeled_cases, main  # noqa: E402

HIDING = [{"train": ["a"], "val": ["b"], "unlabeled": ["c", "d"]},
          {"train": ["b"], "val": ["a"], "unlabeled": ["c", "d"]}]


def _folder_with(tmp_path, splits):
    (tmp_path / "splits_final.json").write_text(json.dumps(splits))
    return str(tmp_path)


@pytest.mark.parametrize("fold", ["all", 2, 7, -1])
def test_folds_that_would_train_on_hidden_labels_are_refused(tmp_path, fold):
    folder = _folder_with(tmp_path, HIDING)
    with pytest.raises(SplitError) as e:
        check_fold_keeps_labels_hidden(folder, fold, dataset="Dataset990_X")
    message = str(e.value)
    assert "splits_final.json" in message and "hides the labels of 2" in message
    assert "folds 0..1" in message  # what to use instead
    assert ("move" in message) if fold == "all" else ("nnUNetv2_ssl_split -d Dataset990_X" in message)


@pytest.mark.parametrize("splits,fold", [(HIDING, 0), (HIDING, 1), (HIDING, "1"),
                                         ([{"train": ["a"], "val": ["b"], "unlabeled": []}], "all"),
                                         ([{"train": ["a"], "val": ["b"]}], 3), (None, "all")])
def test_folds_that_keep_labels_hidden_pass(tmp_path, splits, fold):
    folder = _folder_with(tmp_path, splits) if splits is not None else str(tmp_path)
    check_fold_keeps_labels_hidden(folder, fold)


def test_fold_unlabeled_cases_and_overlap(tmp_path):
    folder = _folder_with(tmp_path, HIDING)
    assert fold_unlabeled_cases(folder, 0, ["a", "b"]) == ["c", "d"]
    assert fold_unlabeled_cases(folder, "all", ["a", "b"]) == []
    with pytest.raises(SplitError, match=r"\['c'\] are listed as 'unlabeled' and also in 'train' or 'val'"):
        fold_unlabeled_cases(folder, 1, ["a", "b", "c"])


def test_unreadable_split_file_is_a_user_error(tmp_path):
    (tmp_path / "splits_final.json").write_text("{not json")
    with pytest.raises(SplitError, match="not valid JSON"):
        check_fold_keeps_labels_hidden(str(tmp_path), 0)


# ------------------------------------------------------------------------------ the command
@pytest.fixture
def preprocessed(tmp_path, monkeypatch):
    """A preprocessed dataset folder as training_identifiers reads it (dataset.json + gt_segmentations)."""
    pre = tmp_path / "Dataset990_X"
    (pre / "gt_segmentations").mkdir(parents=True)
    (pre / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    for i in IDS:
        (pre / "gt_segmentations" / f"{i}.nii.gz").write_bytes(b"")
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    return pre


def test_num_val(preprocessed, capsys):
    main(["-d", "Dataset990_X", "--labeled", "2", "--num_val", "3", "--folds", "1"])
    assert len(json.loads((preprocessed / "splits_final.json").read_text(encoding="utf-8"))[0]["val"]) == 3
    assert "warning" not in capsys.readouterr().err


def test_deprecated_spellings_still_work_and_warn_once(preprocessed, capsys):
    main(["-d", "Dataset990_X", "--labeled", "2", "--val", "4", "--folds", "1"])
    assert len(json.loads((preprocessed / "splits_final.json").read_text(encoding="utf-8"))[0]["val"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nnUNetv2_ssl_split: warning: --val is deprecated, use --num_val (a number of validation cases, "
                   "unlike nnUNetv2_train's --val)"]
    main(["-d", "Dataset990_X", "--labeled", "2", "--num-val", "3", "--folds", "1", "--force"])
    assert len(json.loads((preprocessed / "splits_final.json").read_text(encoding="utf-8"))[0]["val"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nnUNetv2_ssl_split: warning: --num-val is deprecated, use --num_val",
                   "nnUNetv2_ssl_split: warning: --force is deprecated, use --overwrite"]


def test_user_errors_exit_2_with_one_line(preprocessed, capsys):
    with pytest.raises(SystemExit) as e:
        main(["-d", "Dataset990_X", "--labeled", "9", "--num_val", "2"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "nnUNetv2_ssl_split: error: --labeled 9 + --num_val 2 exceeds the 10 training cases"]
    with pytest.raises(SystemExit) as e:
        main(["-d", "991", "--labeled", "2"])  # unknown dataset id: nnU-Net's RuntimeError, reported as ours
    assert e.value.code == 2 and "nnUNetv2_ssl_split: error: -d 991" in capsys.readouterr().err
