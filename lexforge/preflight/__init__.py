"""``lexforge preflight SPEC``: check every node a job will use before it takes GPUs.

- :mod:`lexforge.preflight.probe` runs ON each node (a Ray task pinned to it) and reports what it sees.
- :mod:`lexforge.preflight.checks` turns the node reports into checks with a fix each (pure: tested on
  synthetic node descriptions for GPU / InfiniBand nodes).
- :mod:`lexforge.preflight.run` fans the probe out over the cluster's alive nodes from inside the cluster (a Ray
  job, like training) and collects the result.
"""

from lexforge.preflight.checks import Check, PreflightReport, check_nodes

__all__ = ["Check", "PreflightReport", "check_nodes"]
