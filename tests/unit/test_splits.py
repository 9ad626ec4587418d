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
                                        ({"num_labeled": 2, "num_val": 0}, "--val"),
                                        ({"num_labeled": 2, "num_val": 4, "num_folds": 3}, "at most 2 folds")])
def test_split_argument_errors(kwargs, msg):
    with pytest.raises(SplitError, match=msg):
        make_label_budget_splits(IDS, **kwargs)


def test_refuses_to_overwrite_and_keeps_backup(tmp_path):
    old = [{"train": ["a"], "val": ["b"]}]
    target = tmp_path / "splits_final.json"
    target.write_text(json.dumps(old))
    new = make_label_budget_splits(IDS, 2, 2)
    with pytest.raises(SplitError, match="--force"):
        write_splits(new, str(tmp_path))
    assert json.loads(target.read_text()) == old            # untouched
    write_splits(new, str(tmp_path), force=True, backup=True)
    assert json.loads(target.read_text()) == new
    backups = list(tmp_path.glob("splits_final.json.*.bak"))
    assert len(backups) == 1 and json.loads(backups[0].read_text()) == old
