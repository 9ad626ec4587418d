"""Conversion of public datasets (and a synthetic one) into nnU-Net raw datasets with label-budget splits.

This folder stays at the top of the repository, where the README's commands run its scripts
(``python dataset_conversion/Dataset101_LA.py ...``); ``setup.py`` installs it as the package
``nnunet_ssl.dataset_conversion``, through which the scripts import their shared helpers (``_common``), so they run
as scripts, with ``python -m nnunet_ssl.dataset_conversion.<script>`` and as imported modules alike. The h5
releases (LA, Pancreas h5) need the ``conversion`` extra: ``pip install -e ".[conversion]"``.
"""
