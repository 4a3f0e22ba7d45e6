"""pi-Tuning (TencentARC/pi-Tuning): Fisher task embeddings, task similarity, helper-task selection, and expert
interpolation.

Step 2: :func:`compute_fisher` -> :class:`FisherEmbedding` per trained expert; :func:`task_similarity` /
:func:`similarity_matrix` / :func:`select_helper_tasks` / :func:`fisher_report`.
Step 3: :func:`interpolate_experts` (learnable softmax weights over N experts per layer and position),
:func:`collapse_interpolation` (one ordinary adapter checkpoint), :func:`interpolation_weights`.
"""

from .fisher import FisherEmbedding, compute_fisher
from .interpolation import (
    INTERPOLABLE,
    InterpolatedBottleneckLayer,
    InterpolatedLoraLayer,
    InterpolatedPrefixLayer,
    PiInterpolationConfig,
    PiInterpolationTuner,
    collapse_interpolation,
    interpolate_experts,
    interpolation_weights,
)
from .similarity import fisher_report, select_helper_tasks, similarity_matrix, task_similarity

__all__ = [
    "INTERPOLABLE",
    "FisherEmbedding",
    "InterpolatedBottleneckLayer",
    "InterpolatedLoraLayer",
    "InterpolatedPrefixLayer",
    "PiInterpolationConfig",
    "PiInterpolationTuner",
    "collapse_interpolation",
    "compute_fisher",
    "fisher_report",
    "interpolate_experts",
    "interpolation_weights",
    "select_helper_tasks",
    "similarity_matrix",
    "task_similarity",
]
