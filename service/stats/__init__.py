"""The statistics, as pure functions over arrays and dicts: calibrated thresholds, in-batch collisions
and support, memorization against strangers, copy baselines, C_T, identity concentration,
distribution distances, omissions, the verdict and the index's own training side.

Nothing here runs a model, reads a request or writes a report: the HTTP service and the audit both
call these functions on the same arrays, so both report the same numbers. It imports only
``indexer`` and numpy/scipy.
"""
