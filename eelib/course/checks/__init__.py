"""Checks for the exercises: compare a student's answer with eelib's reference.

Each ``check_*`` function runs the student's function on a few cases, compares the result with
eelib's own implementation, and raises an ``AssertionError`` whose message says what differs
and what to look at. On success it prints a short confirmation. A ``NotImplementedError`` from
an unfinished exercise is let through unchanged: it already says what to do. A right answer is
accepted in any float dtype (half precision within its rounding) and on any device; a wrong one
always ends in an ``AssertionError`` with a hint, never in a crash inside the check; a function
that returns nothing is told "your function returned None". The checks use their own random
numbers; the caller's random state is left as it was.

The checks live in one module per chapter, the chapter whose solution notebook calls them, and
are all imported here, so ``checks.check_entropy(f)`` works whichever module holds the check.

* ``_common``: helpers the checks of more than one chapter use (``student_check``, ``_call``,
  ``_tensor``, ``_close``, ``_tiny_exit_net``);
* ``ch01_residual_networks``: ``check_residual_forward``, ``check_gradient_norms``;
* ``ch02_exit_heads``: ``check_accuracy_per_exit``, ``check_joint_loss``;
* ``ch03_cost_per_head``: ``check_conv_flops``, ``check_cumulative_costs``;
* ``ch04_exit_policies``: ``check_entropy``, ``check_route_batch``;
* ``ch05_rejection``: ``check_risk_coverage``, ``check_guaranteed_threshold``, ``check_exit_or_reject``;
* ``ch06_llm_early_exit``: ``check_layer_predictions``, ``check_oracle_exit``;
* ``ch07_token_difficulty``: ``check_threshold_for_agreement``;
* ``ch08_self_speculative``: ``check_accepted_tokens``, ``check_tokens_per_round``, ``check_round_speed``;
* ``ch09_llm_rejection``: ``check_consistency_threshold``.
"""

from eelib.course.checks.ch01_residual_networks import check_gradient_norms, check_residual_forward
from eelib.course.checks.ch02_exit_heads import check_accuracy_per_exit, check_joint_loss
from eelib.course.checks.ch03_cost_per_head import check_conv_flops, check_cumulative_costs
from eelib.course.checks.ch04_exit_policies import check_entropy, check_route_batch
from eelib.course.checks.ch05_rejection import check_exit_or_reject, check_guaranteed_threshold, check_risk_coverage
from eelib.course.checks.ch06_llm_early_exit import check_layer_predictions, check_oracle_exit
from eelib.course.checks.ch07_token_difficulty import check_threshold_for_agreement
from eelib.course.checks.ch08_self_speculative import check_accepted_tokens, check_round_speed, check_tokens_per_round
from eelib.course.checks.ch09_llm_rejection import check_consistency_threshold

__all__ = [
    # chapter 1
    "check_residual_forward", "check_gradient_norms",
    # chapter 2
    "check_accuracy_per_exit", "check_joint_loss",
    # chapter 3
    "check_conv_flops", "check_cumulative_costs",
    # chapter 4
    "check_entropy", "check_route_batch",
    # chapter 5
    "check_risk_coverage", "check_guaranteed_threshold", "check_exit_or_reject",
    # chapter 6
    "check_layer_predictions", "check_oracle_exit",
    # chapter 7
    "check_threshold_for_agreement",
    # chapter 8
    "check_accepted_tokens", "check_round_speed", "check_tokens_per_round",
    # chapter 9
    "check_consistency_threshold",
]
