"""Figures for the course (matplotlib): every one has a title, labelled axes and units.

Each function draws a new figure (``draw_residual_block`` can also draw into a given ``ax``) and
returns it, so a notebook shows it and ``eelib.course.cli run`` saves it.

The figures live in one module per chapter, the chapter whose notebook first draws them, and are
all imported here: ``plots.plot_tradeoff(...)`` and ``from eelib.course.plots import plot_tradeoff``
work whichever module holds the function.

* ``_style``: ``PALETTE`` (Okabe & Ito's colour-blind-safe colours) and ``_styled``, the decorator
  every figure draws under;
* ``ch01_residual_networks``: ``plot_training_curves``, ``plot_gradient_norms``,
  ``draw_residual_block``, ``plot_image_grid``, ``plot_feature_maps``;
* ``ch02_exit_heads``: ``plot_exit_architecture``, ``plot_accuracy_per_exit``,
  ``plot_exit_histogram``, ``plot_easy_and_hard``;
* ``ch03_cost_per_head``: ``plot_cost_per_head``, ``plot_energy``, ``plot_latency``;
* ``ch04_exit_policies``: ``plot_tradeoff``, ``plot_overthinking``, ``plot_confidence``;
* ``ch05_rejection``: ``plot_risk_coverage``, ``plot_reject_regions``, ``plot_reject_tradeoff``;
* ``ch06_llm_early_exit``: ``draw_transformer_stack``, ``plot_logit_lens``,
  ``plot_agreement_per_layer``, ``plot_token_costs``;
* ``ch07_token_difficulty``: ``plot_difficulty_by_kind``, ``plot_token_energy``;
* ``ch08_self_speculative``: ``plot_block_time``, ``plot_speculative_grid``, ``plot_measured_vs_predicted``,
  ``plot_projection``;
* ``ch09_llm_rejection``: ``plot_split_violations``.
"""

from eelib.course.plots._style import PALETTE
from eelib.course.plots.ch01_residual_networks import (draw_residual_block, plot_feature_maps, plot_gradient_norms,
                                                       plot_image_grid, plot_training_curves)
from eelib.course.plots.ch02_exit_heads import (plot_accuracy_per_exit, plot_easy_and_hard, plot_exit_architecture,
                                                plot_exit_histogram)
from eelib.course.plots.ch03_cost_per_head import plot_cost_per_head, plot_energy, plot_latency
from eelib.course.plots.ch04_exit_policies import plot_confidence, plot_overthinking, plot_tradeoff
from eelib.course.plots.ch05_rejection import plot_reject_regions, plot_reject_tradeoff, plot_risk_coverage
from eelib.course.plots.ch06_llm_early_exit import (draw_transformer_stack, plot_agreement_per_layer, plot_logit_lens,
                                                    plot_token_costs)
from eelib.course.plots.ch07_token_difficulty import plot_difficulty_by_kind, plot_token_energy
from eelib.course.plots.ch08_self_speculative import (plot_block_time, plot_measured_vs_predicted, plot_projection,
                                                      plot_speculative_grid)
from eelib.course.plots.ch09_llm_rejection import plot_split_violations

__all__ = [
    "PALETTE",
    # chapter 1
    "plot_training_curves", "plot_gradient_norms", "draw_residual_block", "plot_image_grid", "plot_feature_maps",
    # chapter 2
    "plot_exit_architecture", "plot_accuracy_per_exit", "plot_exit_histogram", "plot_easy_and_hard",
    # chapter 3
    "plot_cost_per_head", "plot_energy", "plot_latency",
    # chapter 4
    "plot_tradeoff", "plot_overthinking", "plot_confidence",
    # chapter 5
    "plot_risk_coverage", "plot_reject_regions", "plot_reject_tradeoff",
    # chapter 6
    "draw_transformer_stack", "plot_logit_lens", "plot_agreement_per_layer", "plot_token_costs",
    # chapter 7
    "plot_difficulty_by_kind", "plot_token_energy",
    # chapter 8
    "plot_block_time", "plot_measured_vs_predicted", "plot_projection", "plot_speculative_grid",
    # chapter 9
    "plot_split_violations",
]
