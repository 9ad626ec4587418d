"""One option vocabulary: every command's and script's ``-h`` parsed, nnU-Net's spellings where nnU-Net has the
option, one spelling per concept, old spellings accepted with one warning line; scripts' --help without side effects.
"""
import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from conftest import REPO, load_script
from nnunet_ssl.cli_flags import deprecated_alias, elapsed

# scripts whose options are not converted yet: listed, so that a new script is checked by default
UNCONVERTED_SCRIPTS = set()
NOT_COMMANDS = {"setup_env.sh"}  # sourced by the other scripts
# nnU-Net's own commands: the reference spellings (nnUNetv2_ssl_train / _predict are these with the plugin visible)
NNUNET_COMMANDS = {
    "nnUNetv2_train": "nnunetv2.run.run_training:run_training_entry",
    "nnUNetv2_predict": "nnunetv2.inference.predict_from_raw_data:predict_entry_point",
    "nnUNetv2_preprocess": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:preprocess_entry",
    "nnUNetv2_evaluate_folder": "nnunetv2.evaluation.evaluate_predictions:evaluate_folder_entry_point",
    "nnUNetv2_evaluate_simple": "nnunetv2.evaluation.evaluate_predictions:evaluate_simple_entry_point",
}
PASS_THROUGH = {"nnUNetv2_ssl_train", "nnUNetv2_ssl_predict"}  # their -h is nnU-Net's own
# words that name the same concept (after dashes are dropped and '-' becomes '_'): a second visible spelling fails.
# Not 'val': nnUNetv2_train's --val (validation only) is another concept than our --num_val (the old --val).
SYNONYMS = {"iters": "iterations", "num_iterations": "iterations", "iters_per_epoch": "iterations_per_epoch",
            "val_iters": "val_iterations_per_epoch", "num_threads": "threads", "record_dir": "record",
            "records": "record", "work_dir": "work", "output": "o", "output_folder": "o", "out": "o", "fold": "f",
            "num_processes": "np", "dataset_json": "djfile", "plans_json": "pfile", "plans_name": "p", "plans": "p",
            "labels": "l", "force": "overwrite", "dataset": "d", "dataset_id": "d", "configuration": "c",
            "trainer": "tr", "n_val": "num_val", "seed_list": "seeds", "gpu": "device",
            "tta": "disable_tta", "no_tta": "disable_tta", "step": "step_size", "continue": "c_continue",
            "continue_prediction": "c_continue", "output_json": "output_file", "out_file": "output_file"}
# (a singular and its plural are two options: --seed / --budget take one value, --seeds / --budgets a list)


def concept(option: str) -> str:
    if option == "--c":  # nnU-Net's "continue"; -c is the configuration
        return "c_continue"
    bare = option.lstrip("-").replace("-", "_").lower()
    return SYNONYMS.get(bare, bare)


def help_entries(text: str):
    """The option strings of each entry of an argparse-style help: lines indented by two spaces and starting with
    '-'; ``-o O, --output O`` gives ['-o', '--output']."""
    entries = []
    for line in text.splitlines():
        if re.match(r"^  -", line):
            invocation = re.split(r"\s{2,}", line.strip())[0]
            entries.append(re.findall(r"(?:^|, )(-{1,2}[A-Za-z][\w-]*)", invocation))
    return entries


def in_process_help(target: str, prog: str) -> str:
    module, function = target.split(":")
    entry = getattr(__import__(module, fromlist=[function]), function)
    out, argv = io.StringIO(), sys.argv
    sys.argv = [prog, "-h"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
            entry()
    finally:
        sys.argv = argv
    assert e.value.code in (0, None), f"{prog} -h exited with {e.value.code}"
    return out.getvalue()


def our_commands():
    return sorted((ep.name, ep.value) for ep in entry_points(group="console_scripts")
                  if ep.name.startswith("nnUNetv2_ssl_"))


def our_scripts():
    return sorted(p.name for p in (REPO / "scripts").iterdir() if p.suffix in (".py", ".sh")
                  and p.name not in UNCONVERTED_SCRIPTS | NOT_COMMANDS)


def conversion_scripts():
    """The dataset conversions and the synthetic generator (``python dataset_conversion/<name> ...``)."""
    return sorted("dataset_conversion/" + p.name for p in (REPO / "dataset_conversion").glob("*.py")
                  if not p.name.startswith("_"))


def script_help(name: str, env: dict) -> subprocess.CompletedProcess:
    command = ["bash"] if name.endswith(".sh") else [sys.executable]
    path = REPO / name if "/" in name else REPO / "scripts" / name
    return subprocess.run(command + [str(path), "--help"], env=env, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=300)


@pytest.fixture(scope="module")
def helps(tmp_path_factory):
    """{command or script: help text} of every nnunet_ssl command and script, and of nnU-Net's commands."""
    env = dict(os.environ, VENV=str(tmp_path_factory.mktemp("h") / "no_venv"), PYTHONUTF8="1")
    ours = {name: in_process_help(target, name) for name, target in our_commands()}
    for name in our_scripts() + conversion_scripts():
        proc = script_help(name, env)
        assert proc.returncode == 0 and proc.stdout.startswith("usage:"), (name, proc.stdout[-500:], proc.stderr)
        ours[name] = proc.stdout
    nnunet = {name: in_process_help(target, name) for name, target in NNUNET_COMMANDS.items()}
    return ours, nnunet


def test_every_command_and_script_is_checked(helps):
    ours, _ = helps
    assert {"nnUNetv2_ssl_split", "nnUNetv2_ssl_evaluate", "nnUNetv2_ssl_self_train",
            "nnUNetv2_ssl_preprocess_unlabeled", "benchmark_ssl.py", "benchmark_la.sh", "demo.sh",
            "sync_audit.py", "dataset_conversion/Dataset101_LA.py",
            "dataset_conversion/generate_synthetic_dataset.py"} <= set(ours)
    assert all(help_entries(text) for text in ours.values())


def test_one_spelling_per_option_and_underscores(helps):
    ours, _ = helps
    for name, text in ours.items():
        if name in PASS_THROUGH:
            continue
        for options in help_entries(text):
            if options == ["-h", "--help"]:
                continue
            assert len(options) == 1, f"{name}: {options} are two spellings of one option (keep one, deprecate " \
                                      f"the other with nnunet_ssl.cli_flags.deprecated_alias)"
            assert re.fullmatch(r"--?[a-z0-9]+(_[a-z0-9]+)*", options[0]), \
                f"{name}: {options[0]}: multi-word options are written with underscores, as nnU-Net writes them"


def test_one_spelling_per_concept_across_commands(helps):
    ours, nnunet = helps
    spellings = {}
    for name, text in ours.items():
        for options in help_entries(text):
            for option in options:
                if option not in ("-h", "--help"):
                    spellings.setdefault(concept(option), {}).setdefault(option, []).append(name)
    reference = {}
    for text in nnunet.values():
        for options in help_entries(text):
            for option in options:
                reference.setdefault(concept(option), set()).add(option)
    for key, used in spellings.items():
        mine = {o: names for o, names in used.items() if not set(names) <= PASS_THROUGH}
        assert len(mine) <= 1, f"{key}: several spellings {mine}"
        if key in reference:
            assert set(mine) <= reference[key], f"{key}: {mine} where nnU-Net writes {reference[key]}"
    # the spellings the issue names
    for option in ("-d", "-c", "-p", "-f", "-tr", "-device", "-np", "--c", "--disable_tta", "-step_size"):
        assert option in spellings.get(concept(option), {}), option


def test_np_defaults_are_nnunets(monkeypatch):
    from nnunetv2.configuration import default_num_processes
    from nnunet_ssl.data import preprocess_unlabeled as pu
    from nnunet_ssl.evaluation.evaluate import build_parser
    assert build_parser().parse_args(["a", "b"]).num_processes == default_num_processes
    calls = []
    monkeypatch.setattr(pu, "preprocess_unlabeled", lambda d, c, p, n: calls.append((list(c), n)))
    pu.main(["-d", "1", "-c", "2d", "3d_fullres"])  # nnUNetv2_preprocess: 8 for 2d, 4 for 3d_fullres
    pu.main(["-d", "1", "-c", "3d_fullres"])
    pu.main(["-d", "1", "-c", "2d", "3d_lowres", "-np", "2"])
    pu.main(["-d", "1", "-c", "2d", "-plans_name", "P"])  # nnUNetv2_preprocess's spelling of -p
    assert calls == [(["2d"], 8), (["3d_fullres"], 4), (["3d_fullres"], 4), (["2d", "3d_lowres"], 2), (["2d"], 8)]
    with pytest.raises(SystemExit):
        pu.main(["-d", "1", "-c", "2d", "3d_fullres", "-np", "1", "2", "3"])


# ---------------------------------------------------------------------------------------- deprecated spellings
def parser_with_aliases():
    p = argparse.ArgumentParser(prog="cmd")
    p.add_argument("-o", dest="output", required=True)
    p.add_argument("--iterations_per_epoch", type=int, default=250)
    p.add_argument("--disable_tta", action="store_true")
    for old, new in (("--output", "-o"), ("--iters-per-epoch", "--iterations_per_epoch"),
                     ("--iterations-per-epoch", "--iterations_per_epoch"), ("--disable-tta", "--disable_tta")):
        deprecated_alias(p, old, new)
    return p


def test_deprecated_alias_sets_the_value_and_warns_once(capsys):
    args = parser_with_aliases().parse_args(["--output", "x", "--iters-per-epoch", "5", "--iters-per-epoch", "6",
                                             "--disable-tta"])
    assert (args.output, args.iterations_per_epoch, args.disable_tta) == ("x", 6, True)
    assert capsys.readouterr().err.splitlines() == ["cmd: warning: --output is deprecated, use -o",
                                                    "cmd: warning: --iters-per-epoch is deprecated, use "
                                                    "--iterations_per_epoch",
                                                    "cmd: warning: --disable-tta is deprecated, use --disable_tta"]
    args = parser_with_aliases().parse_args(["-o", "y"])
    assert (args.output, args.iterations_per_epoch, args.disable_tta) == ("y", 250, False)
    assert capsys.readouterr().err == ""


def test_deprecated_alias_is_hidden_and_type_checked(capsys):
    p = parser_with_aliases()
    text = p.format_help()
    assert "--iters-per-epoch" not in text and "--output" not in text and "--iterations_per_epoch" in text
    with pytest.raises(SystemExit) as e:
        p.parse_args(["-o", "x", "--iters-per-epoch", "many"])
    assert e.value.code == 2 and "invalid int value: 'many'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # the required option is still required when neither spelling is given
        parser_with_aliases().parse_args([])
    assert e.value.code == 2 and "the following arguments are required: -o" in capsys.readouterr().err


@pytest.mark.parametrize("argv, attribute, value", [
    (["--num-threads", "2"], "num_threads", 2), (["--iterations-per-epoch", "3"], "iterations_per_epoch", 3),
    (["--step-size", "0.25"], "step_size", 0.25), (["--disable-tta"], "disable_tta", True),
    (["--labeled-model", "m"], "labeled_model", "m"), (["--save-every", "4"], "save_every", 4)])
def test_self_train_old_spellings(argv, attribute, value, capsys):
    from nnunet_ssl.self_training.cli import build_parser
    args = build_parser().parse_args(["-d", "1", "-c", "2d", "-f", "0", *argv])
    assert getattr(args, attribute) == value
    assert capsys.readouterr().err.startswith(f"nnUNetv2_ssl_self_train: warning: {argv[0]} is deprecated, use ")


def test_benchmark_scripts_old_spellings(capsys):
    ssl = load_script("scripts/benchmark_ssl.py")
    old = ssl.build_parser().parse_args(["-d", "1", "--budgets", "4", "--epochs", "2", "--iters-per-epoch", "5",
                                         "--val-iters", "2", "--val", "3", "--fold", "1", "--record-dir", "r",
                                         "--device", "cpu", "--num-threads", "1", "--disable-tta", "--output", "o",
                                         "--test-set", "val", "--no-full", "--no-baseline"])
    new = ssl.build_parser().parse_args(["-d", "1", "--budgets", "4", "--epochs", "2", "--iterations_per_epoch", "5",
                                         "--val_iterations_per_epoch", "2", "--num_val", "3", "-f", "1", "--record",
                                         "r", "-device", "cpu", "--threads", "1", "--disable_tta", "-o", "o",
                                         "--test_set", "val", "--no_full", "--no_baseline"])
    assert vars(old) == vars(new)
    assert len(capsys.readouterr().err.splitlines()) == 12
    speed = load_script("scripts/benchmark_speed.py")
    args = speed.build_parser().parse_args(["-d", "1", "--iters", "3", "-o", "s.json"])
    assert (args.iters, args.output) == (3, "s.json")
    assert "-o is deprecated, use --output_file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------ scripts
@pytest.mark.parametrize("script", ["benchmark_la.sh", "demo.sh", "run_tests.sh", "gpu_check.sh"])
def test_shell_scripts_help_has_no_side_effects(script, tmp_path):
    """--help prints help and exits: no virtual environment created, nothing installed, no work folder."""
    env = dict(os.environ, VENV=str(tmp_path / "venv"), WORK=str(tmp_path / "work"), PATH=os.environ["PATH"])
    for flag in ("--help", "-h"):
        proc = subprocess.run(["bash", str(REPO / "scripts" / script), flag], env=env, capture_output=True,
                              encoding="utf-8", timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith("usage:") and proc.stderr == "", proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_benchmark_la_requires_h5_and_names_the_release(tmp_path):
    env = dict(os.environ, VENV=str(tmp_path / "venv"), WORK=str(tmp_path / "work"))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "benchmark_la.sh"), "--budgets", "4"], env=env,
                          capture_output=True, encoding="utf-8", timeout=60)
    assert proc.returncode == 2 and "benchmark_la.sh: error: --h5 DIR is required" in proc.stderr
    assert "github.com/yulequan/UA-MT" in proc.stderr
    help_text = subprocess.run(["bash", str(REPO / "scripts" / "benchmark_la.sh"), "--help"], env=env,
                               capture_output=True, encoding="utf-8", timeout=60).stdout
    assert "github.com/yulequan/UA-MT" in help_text and "2018 Atrial" in help_text.replace("\n", " ")
    assert "(default: <work>/records_" in help_text  # records go into the work folder unless --record DIR
    for bad in (["--h5", str(tmp_path / "missing")], ["--bogus"], ["--h5", str(tmp_path), "--iterations", "300"]):
        proc = subprocess.run(["bash", str(REPO / "scripts" / "benchmark_la.sh"), *bad], env=env,
                              capture_output=True, encoding="utf-8", timeout=60)
        assert proc.returncode == 2 and proc.stderr.startswith("benchmark_la.sh: error: "), (bad, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------- progress
def test_benchmark_ssl_progress_line_and_estimate():
    ssl = load_script("scripts/benchmark_ssl.py")
    now, lines = [0.0], []
    progress = ssl.Progress([True, False, False, False], clock=lambda: now[0], out=lines.append)
    for seconds, (trainer, tag, seed) in zip((5, 600, 1200, 900), [("nnUNetTrainer", "4", 0),
                                                                    ("nnUNetTrainerCRLN", "4", 0),
                                                                    ("nnUNetTrainerCRLN", "4", 1),
                                                                    ("nnUNetTrainer", "all", 0)]):
        progress.start(trainer, tag, 2, seed)
        now[0] += seconds
        progress.finish()
    progress.done()
    assert lines == [
        "[benchmark_ssl] run 1/4: nnUNetTrainer, budget 4, fold 2, seed 0 (elapsed 0s; finished earlier)",
        "[benchmark_ssl] run 2/4: nnUNetTrainerCRLN, budget 4, fold 2, seed 0 (elapsed 5s; no estimate until a run "
        "has finished)",
        # one finished run of 10 min, three to do (this one included)
        "[benchmark_ssl] run 3/4: nnUNetTrainerCRLN, budget 4, fold 2, seed 1 (elapsed 10m05s; about 20m00s left "
        "for 2 run(s), from the 1 finished)",
        # mean of 10 and 20 min for the last run
        "[benchmark_ssl] run 4/4: nnUNetTrainer, budget all, fold 2, seed 0 (elapsed 30m05s; about 15m00s left for "
        "1 run(s), from the 2 finished)",
        "[benchmark_ssl] 4 run(s) done in 45m05s"]


def test_elapsed():
    assert [elapsed(s) for s in (0, 59.6, 61, 3600, 3725, None)] == ["0s", "1m00s", "1m01s", "1h00m", "1h02m", "?"]
