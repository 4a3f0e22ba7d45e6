"""pi-Tuning (TencentARC/pi-Tuning): Fisher task embeddings, task similarity, helper-task selection.

Step 2 (this package so far): :func:`compute_fisher` -> :class:`FisherEmbedding` per trained expert;
:func:`task_similarity` / :func:`similarity_matrix` / :func:`select_helper_tasks` / :func:`fisher_report`.
Step 3 (expert interpolation) lives in ``interpolation.py``.
"""

from .fisher import FisherEmbedding, compute_fisher
from .similarity import fisher_report, select_helper_tasks, similarity_matrix, task_similarity

__all__ = [
    "FisherEmbedding",
    "compute_fisher",
    "fisher_report",
    "select_helper_tasks",
    "similarity_matrix",
    "task_similarity",
]
