"""Paper-protocol evaluation of a folder of predicted segmentations against a folder of references.

    nnUNetv2_ssl_evaluate -ref labelsTs -pred predictions [-l 1 2] [--bootstrap 100] [--voxel|--mm] [--lcc] [-o OUT]
    nnUNetv2_ssl_evaluate labelsTs predictions [-djfile dataset.json] [-pfile plans.json] [-o OUT] [-np N] [-l 1 2]

The second form is ``nnUNetv2_evaluate_folder``'s (positional folders, ``-djfile``, ``-pfile``, ``-o``, ``-np``,
``--chill``; ``-l`` as in ``nnUNetv2_evaluate_simple``): ``-djfile`` names the labels and gives the file ending,
``-pfile`` the image reader, ``--chill`` scores only the references that have a prediction.

Per case and per class: Dice, Jaccard, 95HD, ASD (medpy semantics, see ``metrics.py``; ASD is medpy's directed
prediction→reference asd, ASSD is stored too) with distances both in voxels (what the SSL tables report: medpy
called without spacing) and in mm (spacing read from the files), and boundary-region Dice. ``--voxel``/``--mm`` only
choose the headline units of the Markdown table and of ``summary.headline``; both are always stored.

Outputs in OUT (default ``<pred>/ssl_evaluation``): ``metrics.json`` (settings, per case, summary), ``metrics.csv``
(one row per case × class) and ``metrics.md`` (rows = classes + mean, columns Dice %, Jaccard %, 95HD, ASD,
boundary Dice %). ``--output_file FILE.json`` writes that file and the ``.csv``/``.md`` beside it with the same
stem (in ``nnUNetv2_evaluate_folder``'s form, a ``-o`` ending in ``.json`` is taken as ``--output_file``, as that
command's ``-o``). Existing outputs are never overwritten unless ``--overwrite``. More than a few cases show a
progress bar (``--disable_progress_bar``).

Summary conventions: "mean ± std" is over cases (population std, ddof=0); with ``--bootstrap N`` it is the mean ±
std of the per-resample means over N seeded resamples of the cases (CRLN protocol). NaN values (distances undefined
because exactly one of prediction/reference is empty) are excluded from means and counted. The "mean" row averages
the classes within each case first (ignoring undefined classes), then the cases.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from nnunet_ssl.cli_flags import deprecated_aliases, nnunet_default_num_processes, warn_deprecated
from nnunet_ssl.errors import UserError, exits_on_user_error, warn
from nnunet_ssl.evaluation.metrics import binary_case_metrics, bootstrap_mean_std, keep_largest_connected_component

PROG = "nnUNetv2_ssl_evaluate"

METRIC_KEYS = ("dice", "jaccard", "hd95_voxel", "asd_voxel", "assd_voxel", "hd95_mm", "asd_mm", "assd_mm",
               "boundary_dice")
DEFAULT_BAND_WIDTH = 3  # voxels; BoCLIS spec §7 recommends r = 3
SPACING_RTOL = 1e-4  # relative tolerance for reference vs prediction spacing (headers store float32)
OUTPUT_NAMES = ("metrics.json", "metrics.csv", "metrics.md")
PROGRESS_MIN_CASES = 5  # the command shows a progress bar for more cases than this


class EvaluationInputError(UserError):
    """Bad input folders/files/settings; the message names the file or setting and how to fix it."""


# ----------------------------------------------------------------------------------------------------------- input
def supported_file_endings() -> List[str]:
    """File endings nnU-Net's readers support, longest first (so .nii.gz wins over .gz-less .nii)."""
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES
    endings = {e.lower() for io_class in LIST_OF_IO_CLASSES for e in io_class.supported_file_endings}
    return sorted(endings, key=len, reverse=True)


def _ending_of(filename: str, endings: Sequence[str]) -> Optional[str]:
    lower = filename.lower()
    return next((e for e in endings if lower.endswith(e)), None)


def _image_files(folder: str, file_ending: str) -> List[str]:
    return sorted(f for f in os.listdir(folder) if not f.startswith(".") and os.path.isfile(os.path.join(folder, f))
                  and f.lower().endswith(file_ending.lower()))


def detect_file_ending(ref_dir: str) -> str:
    endings = supported_file_endings()
    found = {}
    for f in os.listdir(ref_dir):
        ending = _ending_of(f, endings)
        if ending is not None and os.path.isfile(os.path.join(ref_dir, f)):
            found.setdefault(ending, []).append(f)
    if not found:
        raise EvaluationInputError(f"no segmentation files with a supported ending ({', '.join(endings)}) in the "
                                   f"reference folder {ref_dir}")
    if len(found) > 1:
        raise EvaluationInputError(f"the reference folder {ref_dir} holds files with several endings "
                                   f"({', '.join(sorted(found))}); choose one with --file_ending")
    return next(iter(found))


def pair_cases(ref_dir: str, pred_dir: str, file_ending: str, chill: bool = False) -> List[Tuple[str, str, str]]:
    """(case id, reference path, prediction path) for every reference file; errors on missing predictions unless
    ``chill`` (``nnUNetv2_evaluate_folder --chill``: only references with a prediction are scored)."""
    for name, folder in (("reference", ref_dir), ("prediction", pred_dir)):
        if not os.path.isdir(folder):
            raise EvaluationInputError(f"{name} folder {folder} does not exist or is not a folder")
    ref_files = _image_files(ref_dir, file_ending)
    if not ref_files:
        raise EvaluationInputError(f"no '{file_ending}' files in the reference folder {ref_dir}; check -ref and "
                                   f"--file_ending")
    pred_files = set(_image_files(pred_dir, file_ending))
    missing = [f for f in ref_files if f not in pred_files]
    if missing:
        shown = ", ".join(missing[:20]) + (f" ... ({len(missing)} in total)" if len(missing) > 20 else "")
        if not chill or len(missing) == len(ref_files):
            raise EvaluationInputError(f"{len(missing)} reference case(s) have no prediction in {pred_dir}: {shown}. "
                                       f"Predictions must have the same file names as the references"
                                       + (_ending_hint(ref_files, pred_dir, file_ending) + "."
                                          if len(missing) == len(ref_files) else
                                          "." if chill else " (--chill scores only the cases that have one)."))
        warn(PROG, f"--chill: {len(missing)} reference case(s) without prediction are not scored: {shown}")
        ref_files = [f for f in ref_files if f in pred_files]
    extra = sorted(pred_files - set(ref_files))
    if extra:
        warn(PROG, f"{len(extra)} prediction file(s) without a reference are ignored: {', '.join(extra[:10])}")
    return [(f[: -len(file_ending)], os.path.join(ref_dir, f), os.path.join(pred_dir, f)) for f in ref_files]


def _ending_hint(ref_files: Sequence[str], pred_dir: str, file_ending: str) -> str:
    """When no prediction matches: the files of the prediction folder named like the references but with another
    ending (``.nii`` for ``.nii.gz``, say), as a hint; empty if there are none."""
    stems = {f[:-len(file_ending)] for f in ref_files}
    endings = supported_file_endings()
    found: Dict[str, List[str]] = {}
    for f in sorted(os.listdir(pred_dir)):
        ending = _ending_of(f, endings)
        if ending and ending != file_ending.lower() and f[:-len(ending)] in stems:
            found.setdefault(ending, []).append(f)
    if not found:
        return ""
    ending, files = max(found.items(), key=lambda item: len(item[1]))
    return (f", but {pred_dir} holds {len(files)} file(s) named like them ending in {ending} instead of "
            f"{file_ending} (e.g. {files[0]}): write the predictions with the references' file ending (nnU-Net "
            f"writes dataset.json's file_ending) or convert them")


def read_segmentation(path: str, reader_writer_class) -> Tuple[np.ndarray, Tuple[float, ...]]:
    """Integer label map and spacing (in array axis order) read with nnU-Net's reader."""
    seg, properties = reader_writer_class().read_seg(path)
    seg = np.asarray(seg)[0]  # nnU-Net readers return (channel, *spatial)
    spacing = tuple(float(s) for s in properties["spacing"])
    if len(spacing) != seg.ndim:
        raise EvaluationInputError(f"{path}: spacing {spacing} does not match the image dimensions {seg.shape}")
    rounded = np.rint(seg)
    if not np.array_equal(rounded, seg):
        raise EvaluationInputError(f"{path} is not a label map (non-integer values); pass segmentations, not "
                                   f"probabilities or images")
    return rounded.astype(np.int32), spacing


def _drop_singleton_axes(seg: np.ndarray, spacing: Sequence[float]):
    """2D images come back from nnU-Net's readers as (1, x, y) with a dummy spacing; a size-1 axis would make every
    voxel a surface voxel (erosion sees background beyond it), so such axes are removed before scoring."""
    keep = [axis for axis, size in enumerate(seg.shape) if size > 1] or [0]
    return seg.reshape([seg.shape[a] for a in keep]), tuple(spacing[a] for a in keep)


def evaluate_case(case_id: str, ref_path: str, pred_path: str, labels: Sequence[int], reader_writer_class,
                  lcc: bool, band_width: float, band_around: str) -> dict:
    ref, ref_spacing = read_segmentation(ref_path, reader_writer_class)
    pred, pred_spacing = read_segmentation(pred_path, reader_writer_class)
    if ref.shape != pred.shape:
        raise EvaluationInputError(f"shape mismatch for case {case_id}: reference {ref_path} has shape {ref.shape}, "
                                   f"prediction {pred_path} has shape {pred.shape}")
    if not np.allclose(ref_spacing, pred_spacing, rtol=SPACING_RTOL, atol=0):
        raise EvaluationInputError(f"spacing mismatch for case {case_id}: reference {ref_path} has spacing "
                                   f"{ref_spacing}, prediction {pred_path} has {pred_spacing}; the prediction must be "
                                   f"in the reference's geometry (resample it or fix its header)")
    ref, spacing = _drop_singleton_axes(ref, ref_spacing)
    pred, _ = _drop_singleton_axes(pred, pred_spacing)
    per_class = {}
    for label_value in labels:
        pred_mask = pred == label_value
        if lcc:
            pred_mask = keep_largest_connected_component(pred_mask)
        per_class[str(label_value)] = binary_case_metrics(pred_mask, ref == label_value, spacing, band_width,
                                                          band_around)
    return {"case": case_id, "reference_file": ref_path, "prediction_file": pred_path,
            "shape": list(ref.shape), "spacing": list(spacing), "per_class": per_class,
            "mean": {key: _nanmean([per_class[str(l)][key] for l in labels]) for key in METRIC_KEYS},
            "labels_in_reference": _label_values(ref), "labels_in_prediction": _label_values(pred)}


def _label_values(seg: np.ndarray) -> List[int]:
    """The label values present in an integer label map (bincount: one pass, no sort, for non-negative maps)."""
    if seg.size and seg.min() >= 0:
        return [int(v) for v in np.flatnonzero(np.bincount(seg.ravel()))]
    return [int(v) for v in np.unique(seg)]


def declared_labels(path: str) -> List[int]:
    """Every label value a dataset.json declares (background, classes, region members, the ignore label)."""
    values = set()
    for value in _read_json_key(path, "labels", "-djfile").values():
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, (int, float)) and float(v).is_integer():
                values.add(int(v))
    return sorted(values)


def warn_undeclared_labels(cases: Sequence[dict], dataset_json: str) -> None:
    """Warn about label values in the predictions (and references) that ``dataset_json`` does not declare: a model
    of another dataset, or the wrong dataset.json."""
    declared = set(declared_labels(dataset_json))
    for which, key, question in (
            ("prediction", "labels_in_prediction", "are they predictions of another dataset's model, or is -djfile "
                                                   "the wrong dataset.json?"),
            ("reference", "labels_in_reference", "is -djfile the dataset.json of these references?")):
        undeclared = sorted({v for c in cases for v in c[key]} - declared)
        if undeclared:
            where = [c["case"] for c in cases if set(c[key]) - declared]
            warn(PROG, f"{which}s contain label(s) {undeclared} that {dataset_json} does not declare (it declares "
                       f"{sorted(declared)}), in {len(where)} case(s): {', '.join(where[:10])}"
                       f"{' ...' if len(where) > 10 else ''}; {question}")


def labels_in_references(ref_paths: Sequence[str], reader_writer_class) -> List[int]:
    found = set()
    for path in ref_paths:
        seg, _ = read_segmentation(path, reader_writer_class)
        found.update(int(v) for v in np.unique(seg))
    return sorted(v for v in found if v != 0)


def _read_json_key(path: str, key: str, flag: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)[key]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvaluationInputError(f"cannot read the '{key}' entry of {flag} {path} ({type(e).__name__}: {e}); "
                                   f"pass nnU-Net's dataset.json / plans file") from None


def label_names_from_dataset_json(path: Optional[str]) -> Dict[int, str]:
    if path is None:
        return {}
    labels = _read_json_key(path, "labels", "-djfile")
    # nnU-Net maps name -> int (or a list/tuple for regions, which have no single label value)
    return {int(v): name for name, v in labels.items() if isinstance(v, int)}


# -------------------------------------------------------------------------------------------------------- summary
def _nanmean(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else math.nan


def summarize(values: Sequence[float], bootstrap: int, seed: int) -> dict:
    values = np.asarray(values, dtype=float)
    defined = values[~np.isnan(values)]
    stats = {"mean": float(defined.mean()) if defined.size else math.nan,
             "std": float(defined.std()) if defined.size else math.nan,
             "n_cases": int(defined.size), "n_undefined": int(values.size - defined.size)}
    if bootstrap:
        stats["bootstrap"] = bootstrap_mean_std(values, bootstrap, seed)
    return stats


def build_summary(cases: List[dict], labels: Sequence[int], bootstrap: int, seed: int, headline_units: str) -> dict:
    per_class = {}
    for label_value in labels:
        rows = [c["per_class"][str(label_value)] for c in cases]
        entry = {key: summarize([r[key] for r in rows], bootstrap, seed) for key in METRIC_KEYS}
        entry["n_empty_prediction"] = sum(r["pred_voxels"] == 0 and r["ref_voxels"] > 0 for r in rows)
        entry["n_empty_reference"] = sum(r["ref_voxels"] == 0 and r["pred_voxels"] > 0 for r in rows)
        entry["n_both_empty"] = sum(r["ref_voxels"] == 0 and r["pred_voxels"] == 0 for r in rows)
        per_class[str(label_value)] = entry
    mean = {key: summarize([c["mean"][key] for c in cases], bootstrap, seed) for key in METRIC_KEYS}
    statistic = "bootstrap" if bootstrap else None
    headline = {}
    for name, key in (("dice", "dice"), ("jaccard", "jaccard"), ("hd95", f"hd95_{headline_units}"),
                      ("asd", f"asd_{headline_units}"), ("boundary_dice", "boundary_dice")):
        source = mean[key][statistic] if statistic else mean[key]
        headline[name] = {"mean": source["mean"], "std": source["std"]}
    return {"n_cases": len(cases), "per_class": per_class, "mean": mean, "headline": headline}


# -------------------------------------------------------------------------------------------------------- outputs
def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_csv(path: str, cases: List[dict], labels: Sequence[int], names: Dict[int, str], lcc: bool) -> None:
    columns = ["case", "label", "label_name", *METRIC_KEYS, "pred_voxels", "ref_voxels", "lcc"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for case in cases:
            for label_value in labels:
                row = case["per_class"][str(label_value)]
                writer.writerow([case["case"], label_value, names.get(label_value, ""),
                                 *[repr(float(row[k])) for k in METRIC_KEYS], row["pred_voxels"],
                                 row["ref_voxels"], lcc])


def _cell(stats: dict, bootstrap: int, scale: float) -> str:
    source = stats["bootstrap"] if bootstrap else stats
    if math.isnan(source["mean"]):
        return "n/a"
    return f"{source['mean'] * scale:.2f} ± {source['std'] * scale:.2f}"


def markdown_table(summary: dict, labels: Sequence[int], names: Dict[int, str], settings: dict) -> str:
    units = settings["headline_units"]
    bootstrap = settings["bootstrap"]
    header = ["Class", "Dice (%)", "Jaccard (%)", f"95HD ({units})", f"ASD ({units})",
              f"Boundary Dice (%, band {settings['band_width']} vox)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(title, stats):
        return "| " + " | ".join([title, _cell(stats["dice"], bootstrap, 100), _cell(stats["jaccard"], bootstrap, 100),
                                  _cell(stats[f"hd95_{units}"], bootstrap, 1), _cell(stats[f"asd_{units}"], bootstrap, 1),
                                  _cell(stats["boundary_dice"], bootstrap, 100)]) + " |"

    for label_value in labels:
        title = f"{label_value} ({names[label_value]})" if label_value in names else str(label_value)
        lines.append(row(title, summary["per_class"][str(label_value)]))
    lines.append(row("Mean", summary["mean"]))
    spread = (f"mean ± std of the case means over {bootstrap} bootstrap resamples of the {summary['n_cases']} cases "
              f"(seed {settings['seed']})" if bootstrap else
              f"mean ± std (ddof=0) over {summary['n_cases']} cases")
    notes = [f"Values: {spread}.",
             f"Distances in {'voxels (medpy without spacing, as the SSL papers)' if units == 'voxel' else 'mm'}; "
             f"ASD = medpy asd (prediction → reference surface, directed); 95HD = medpy hd95.",
             f"Boundary Dice: Dice within {settings['band_width']} voxels of the "
             f"{'reference or prediction' if settings['band_around'] == 'both' else 'reference'} surface.",
             f"Largest connected component per class: {'yes' if settings['lcc'] else 'no'}."]
    for label_value in labels:
        entry = summary["per_class"][str(label_value)]
        undefined = entry[f"hd95_{units}"]["n_undefined"]
        if undefined:
            notes.append(f"Class {label_value}: distances undefined in {undefined} case(s) (empty prediction: "
                         f"{entry['n_empty_prediction']}, empty reference: {entry['n_empty_reference']}), excluded "
                         f"from 95HD/ASD; Dice/Jaccard count them as 0.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


# ------------------------------------------------------------------------------------------------------------ api
def evaluate_folders(ref_dir: str, pred_dir: str, labels: Optional[Sequence[int]] = None, bootstrap: int = 0,
                     seed: int = 0, headline_units: str = "voxel", lcc: bool = False,
                     band_width: float = DEFAULT_BAND_WIDTH, band_around: str = "both",
                     file_ending: Optional[str] = None, dataset_json: Optional[str] = None,
                     num_processes: int = 1, plans_json: Optional[str] = None, chill: bool = False,
                     progress: bool = False) -> dict:
    """Evaluate all reference cases and return the JSON-ready result (settings, cases, summary).

    ``dataset_json`` names the labels and, without ``file_ending``, gives the file ending; ``plans_json`` gives the
    image reader (nnU-Net's ``-djfile``/``-pfile``); otherwise both come from the reference files. ``progress``
    shows a progress bar (as nnU-Net's) when there are more than ``PROGRESS_MIN_CASES`` cases."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    if headline_units not in ("voxel", "mm"):
        raise EvaluationInputError(f"headline units must be 'voxel' or 'mm', got {headline_units!r}")
    if bootstrap < 0:
        raise EvaluationInputError(f"--bootstrap must be >= 0, got {bootstrap}")
    if band_width < 0:
        raise EvaluationInputError(f"--band must be >= 0, got {band_width}")
    if file_ending is None and dataset_json is not None:
        file_ending = _read_json_key(dataset_json, "file_ending", "-djfile")
    if os.path.isdir(ref_dir) and file_ending is None:
        file_ending = detect_file_ending(ref_dir)
    pairs = pair_cases(ref_dir, pred_dir, file_ending, chill)
    if plans_json is not None:
        from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name
        name = _read_json_key(plans_json, "image_reader_writer", "-pfile")
        try:
            reader_writer_class = recursive_find_reader_writer_by_name(name)
        except RuntimeError as e:
            raise EvaluationInputError(f"-pfile {plans_json}: {e}") from None
    else:
        reader_writer_class = determine_reader_writer_from_file_ending(file_ending, pairs[0][1], verbose=False)
    labels = sorted(set(int(l) for l in labels)) if labels else labels_in_references([p[1] for p in pairs],
                                                                                     reader_writer_class)
    if not labels:
        raise EvaluationInputError(f"the references in {ref_dir} contain no non-zero label; pass the labels to "
                                   f"score with -l")
    if 0 in labels:
        raise EvaluationInputError("label 0 is background and cannot be scored; remove it from -l")
    names = label_names_from_dataset_json(dataset_json)

    args = [(case_id, ref, pred, labels, reader_writer_class, lcc, band_width, band_around)
            for case_id, ref, pred in pairs]
    num_processes = max(1, min(num_processes, len(args)))
    with tqdm(desc="Evaluating", total=len(args), unit="case",
              disable=not progress or len(args) <= PROGRESS_MIN_CASES) as bar:
        if num_processes > 1:
            with ProcessPoolExecutor(num_processes) as pool:
                cases = []
                for case in pool.map(evaluate_case, *zip(*args)):
                    cases.append(case)
                    bar.update()
        else:
            cases = []
            for a in args:
                cases.append(evaluate_case(*a))
                bar.update()
    for label_value in labels:
        if all(c["per_class"][str(label_value)]["ref_voxels"] == 0 for c in cases):
            warn(PROG, f"label {label_value} is absent from every reference in {ref_dir}; its scores only reflect "
                       f"false positives (both-empty cases count as Dice 1)")
    if dataset_json is not None:
        warn_undeclared_labels(cases, dataset_json)

    settings = {"reference_folder": os.path.abspath(ref_dir), "prediction_folder": os.path.abspath(pred_dir),
                "file_ending": file_ending, "reader_writer": reader_writer_class.__name__, "labels": labels,
                "label_names": {str(k): v for k, v in names.items() if k in labels},
                "headline_units": headline_units, "lcc": lcc,
                "lcc_definition": "largest 26-connected (full connectivity) component of each class's prediction",
                "band_width": band_width, "band_around": band_around, "bootstrap": bootstrap, "seed": seed,
                "definitions": {
                    "dice": "2|P∩G|/(|P|+|G|) (medpy dc)", "jaccard": "|P∩G|/|P∪G| (medpy jc)",
                    "surface": "mask XOR erosion with face connectivity (medpy default connectivity=1)",
                    "hd95": "95th percentile of both directed surface distance sets together (medpy hd95)",
                    "asd": "mean surface distance prediction → reference, directed (medpy asd)",
                    "assd": "mean of both directed surface distance sets together (medpy assd)",
                    "units": "*_voxel: no spacing (SSL papers); *_mm: spacing from the image files",
                    "boundary_dice": "2|P∩G∩B|/(|P∩B|+|G∩B|), B = voxels within band_width voxels of the reference "
                                     "surface (band_around=reference) or of either surface (band_around=both)",
                    "empty": "both empty: Dice/Jaccard/boundary Dice 1, distances 0; exactly one empty: "
                             "Dice/Jaccard/boundary Dice 0, distances undefined (null) and excluded from means "
                             "(counted in n_undefined)",
                    "summary": "mean/std (ddof=0) over cases; bootstrap = mean/std of resample means; 'mean' row "
                               "averages classes within a case (ignoring undefined), then cases"}}
    return {"settings": settings, "cases": cases,
            "summary": build_summary(cases, labels, bootstrap, seed, headline_units)}


def output_paths(output: str) -> List[str]:
    """The .json, .csv and .md outputs: ``metrics.*`` in a folder, or ``<stem>.*`` for ``--output_file <stem>.json``
    (or ``-o <stem>.json`` in nnUNetv2_evaluate_folder's form)."""
    if output.lower().endswith(".json"):
        stem = output[:-len(".json")]
        return [stem + ".json", stem + ".csv", stem + ".md"]
    return [os.path.join(output, name) for name in OUTPUT_NAMES]


def _refuse_existing(paths: Sequence[str], overwrite: bool) -> None:
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not overwrite:
        raise EvaluationInputError(f"output file(s) already exist: {', '.join(existing)}; choose another -o (or "
                                   f"--output_file) or pass --overwrite")


def write_outputs(result: dict, output_dir: str, overwrite: bool = False) -> List[str]:
    """Write metrics.json/.csv/.md into the folder ``output_dir`` (or beside ``output_dir`` if it names a .json)."""
    paths = output_paths(output_dir)
    _refuse_existing(paths, overwrite)
    os.makedirs(os.path.dirname(os.path.abspath(paths[0])), exist_ok=True)
    settings = result["settings"]
    labels = settings["labels"]
    names = {int(k): v for k, v in settings["label_names"].items()}
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump(_json_safe(result), f, indent=2, allow_nan=False)
    write_csv(paths[1], result["cases"], labels, names, settings["lcc"])
    with open(paths[2], "w", encoding="utf-8") as f:
        f.write(markdown_table(result["summary"], labels, names, settings))
    return paths


# ------------------------------------------------------------------------------------------------------------ cli
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} -ref REF -pred PRED [options]\n       {PROG} REF PRED [-djfile DJ] [-pfile PLANS] [options]",
        description="Evaluate predicted segmentations like the SSL papers: per case and class Dice, Jaccard, 95HD, "
                    "ASD (medpy semantics; distances in voxels and mm) and boundary-region Dice, optional largest "
                    "connected component and bootstrap over cases. Writes metrics.json, metrics.csv, metrics.md. "
                    "Also takes nnUNetv2_evaluate_folder's form: gt_folder pred_folder -djfile -pfile -o -np --chill.")
    parser.add_argument("gt_folder", nargs="?", default=None,
                        help="folder with the reference segmentations (nnUNetv2_evaluate_folder's form; or -ref)")
    parser.add_argument("pred_folder", nargs="?", default=None,
                        help="folder with the predictions (nnUNetv2_evaluate_folder's form; or -pred)")
    parser.add_argument("-ref", default=None, help="folder with the reference segmentations")
    parser.add_argument("-pred", default=None, help="folder with the predictions (same file names as -ref)")
    parser.add_argument("-l", type=int, nargs="+", default=None, dest="labels",
                        help="labels to score (default: all non-zero labels found in the references)")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="report mean ± std over N bootstrap resamples of the cases (CRLN uses 100); 0 = off")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    units = parser.add_mutually_exclusive_group()
    units.add_argument("--voxel", dest="units", action="store_const", const="voxel",
                       help="headline distances in voxels, as the SSL papers (default)")
    units.add_argument("--mm", dest="units", action="store_const", const="mm", help="headline distances in mm")
    parser.set_defaults(units="voxel")
    parser.add_argument("--lcc", action="store_true",
                        help="keep only the largest connected component of each predicted class before scoring")
    parser.add_argument("--band", type=float, default=DEFAULT_BAND_WIDTH,
                        help=f"boundary-region Dice band width in voxels (default {DEFAULT_BAND_WIDTH})")
    parser.add_argument("--band_around", choices=("both", "reference"), default="both",
                        help="band around both the reference and predicted surfaces (default) or the reference only")
    parser.add_argument("--file_ending", default=None,
                        help="segmentation file ending, e.g. .nii.gz (default: from -djfile, else detected)")
    parser.add_argument("-djfile", dest="dataset_json", default=None,
                        help="nnU-Net's dataset.json: names the labels in the outputs and gives the file ending")
    parser.add_argument("-pfile", dest="plans_json", default=None,
                        help="nnU-Net's plans file: its image reader reads the files (default: chosen by ending)")
    parser.add_argument("-o", dest="output", default=None,
                        help="output folder for metrics.json/.csv/.md (default: <pred>/ssl_evaluation); in "
                             "nnUNetv2_evaluate_folder's form a -o ending in .json is taken as --output_file")
    parser.add_argument("--output_file", default=None, metavar="FILE.json",
                        help="write FILE.json, with FILE.csv and FILE.md beside it, instead of an output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("-np", type=int, default=nnunet_default_num_processes(), dest="num_processes",
                        help=f"worker processes (default as nnU-Net's: {nnunet_default_num_processes()}, or "
                             f"nnUNet_def_n_proc)")
    parser.add_argument("--chill", action="store_true",
                        help="score only the references that have a prediction (as nnUNetv2_evaluate_folder)")
    parser.add_argument("--disable_progress_bar", action="store_true",
                        help=f"no progress bar (shown for more than {PROGRESS_MIN_CASES} cases)")
    deprecated_aliases(parser, {"--labels": "-l", "--band-around": "--band_around", "--file-ending": "--file_ending",
                                "--dataset-json": "-djfile", "--plans-json": "-pfile", "--output": "-o",
                                "--num-processes": "-np"})
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Both forms into ``args.ref``/``args.pred``."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # folders may come after options, as argparse allows elsewhere
    positional = [f for f in (args.gt_folder, args.pred_folder) if f is not None]
    if positional and (args.ref is not None or args.pred is not None):
        parser.error("give the folders either as gt_folder pred_folder (nnUNetv2_evaluate_folder's form) or with "
                     "-ref/-pred, not both")
    if positional:
        if len(positional) != 2:
            parser.error("nnUNetv2_evaluate_folder's form needs both folders: gt_folder pred_folder")
        args.ref, args.pred = args.gt_folder, args.pred_folder
    elif args.ref is None or args.pred is None:
        parser.error("the reference and prediction folders are required: -ref REF -pred PRED, or REF PRED")
    if args.output is not None and args.output.lower().endswith(".json"):
        if not positional:  # nnUNetv2_evaluate_folder's -o is a .json file; elsewhere -o names a folder
            warn_deprecated(PROG, "-o FILE.json", "--output_file FILE.json")
        if args.output_file is not None:
            parser.error("give the output either as -o FOLDER or as --output_file FILE.json, not both")
        args.output_file, args.output = args.output, None
    if args.output_file is not None:
        if args.output is not None:
            parser.error("give the output either as -o FOLDER or as --output_file FILE.json, not both")
        if not args.output_file.lower().endswith(".json"):
            parser.error(f"--output_file {args.output_file}: name a .json file (its .csv and .md go beside it), or "
                         f"pass an output folder with -o")
    return args


@exits_on_user_error(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    output = args.output_file or args.output or os.path.join(args.pred, "ssl_evaluation")
    _refuse_existing(output_paths(output), args.overwrite)  # before the (possibly long) evaluation
    result = evaluate_folders(args.ref, args.pred, args.labels, args.bootstrap, args.seed, args.units, args.lcc,
                              args.band, args.band_around, args.file_ending, args.dataset_json,
                              args.num_processes, args.plans_json, args.chill,
                              progress=not args.disable_progress_bar)
    paths = write_outputs(result, output, args.overwrite)
    with open(paths[2], encoding="utf-8") as f:
        print(f.read())
    print("Wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
