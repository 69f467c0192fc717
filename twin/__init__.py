"""Physics of the pot line: cells, refining pots, circuit, rectifier, observer (Numba kernels).

Knows nothing of protocols; imports only numpy and numba (plus pydantic for config).
"""
