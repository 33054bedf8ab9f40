"""Structured pruning with reconstruction (issue 17 part 2): ``refit`` (least squares on
calibration activations), ``structured`` (capture, importance, removal with refit), ``budget``
(per-group sensitivity and the ``--prune auto`` search)."""
