"""Scrap-refining pots, in one place: the three-layer cell model and its Numba kernels
(``model``), prototype configs (``config``), the state observer (``observer``), candidate
controllers behind a safe-command filter (``controller``), the shadow test against recorded
data (``shadow``, pure computation; files through ``recording``) and refining campaigns on
a local pool or a Dask cluster (``campaign``).

Layer: beside ``potctl`` (imports ``twin`` only). Nothing is imported here.
"""
