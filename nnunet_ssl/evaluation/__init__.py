"""Paper-protocol evaluation: medpy-style metrics, boundary-region Dice, bootstrap, and the evaluate CLI."""

from nnunet_ssl.evaluation.metrics import (asd, binary_case_metrics, bootstrap_mean_std, boundary_region_dice, dice,
                                           hd95, jaccard, keep_largest_connected_component,
                                           surface_distance_metrics)

__all__ = ["asd", "binary_case_metrics", "bootstrap_mean_std", "boundary_region_dice", "dice", "hd95", "jaccard",
           "keep_largest_connected_component", "surface_distance_metrics"]
