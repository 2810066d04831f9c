"""GRPO rewards for legal work, composable with weights (``spec.grpo.rewards``: name, weight, params).

Built in: ``exact_match`` and ``balanced_accuracy`` (the eval gate's own metrics, the same functions of
:mod:`lexforge.evaluate.scoring`), ``format``, ``citation_accuracy``, ``llm_judge`` (the gate's judge),
``reference_overlap`` and ``rubric``. ``build_rewards(spec.grpo.rewards)`` gives a :class:`RewardSet`; calling it
on a step's completions gives a :class:`RewardBatch`. Add rewards with ``register_reward`` (per item) or
``register_batch_reward`` (whole step, with params). See docs/training.md, "GRPO rewards"."""

from lexforge.train.rewards.core import (SKIP, BatchFn, Fail, RewardBatch, RewardFailed, RewardFn, RewardSet,
                                         build_rewards, check_reward_specs, get_reward, known_rewards,
                                         register_batch_reward, register_reward)
from lexforge.train.rewards import citations as _citations  # noqa: F401  (registers citation_accuracy)
from lexforge.train.rewards import judge as _judge  # noqa: F401  (registers llm_judge)
from lexforge.train.rewards import text as _text  # noqa: F401  (registers the text rewards)
from lexforge.train.rewards.citations import Citation, find_citations, load_index
from lexforge.train.rewards.text import exact_match, reference_overlap, rubric_reward

_REGISTERED = (_citations, _judge, _text)  # importing them registers their rewards

__all__ = ["SKIP", "BatchFn", "Citation", "Fail", "RewardBatch", "RewardFailed", "RewardFn", "RewardSet",
           "build_rewards", "check_reward_specs", "exact_match", "find_citations", "get_reward", "known_rewards",
           "load_index", "reference_overlap", "register_batch_reward", "register_reward", "rubric_reward"]
