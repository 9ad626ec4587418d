"""Host-side (numpy/scipy) operations on binary masks, shared by the losses and the evaluation."""
from typing import Optional

import numpy as np
from scipy.ndimage import generate_binary_structure, label


def keep_largest_connected_component(mask: np.ndarray, connectivity: Optional[int] = None) -> np.ndarray:
    """Keep only the largest connected component of a binary mask.

    ``connectivity`` None = full connectivity (26 in 3D), as skimage.measure.label / cc3d default in the SSL code.
    Ties go to the component found first in scan order, so the result is deterministic.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    structure = generate_binary_structure(mask.ndim, mask.ndim if connectivity is None else connectivity)
    components, n_components = label(mask, structure=structure)
    if n_components == 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))
