"""``OptimizeConfig``: everything that describes one optimization run, in one place.

:func:`taskapp.optimize.run`, ``taskapp optimize``, the ``[prompt_learning]`` TOML reader
(:mod:`taskapp.optimize.prompt_learning`), the job backend (:mod:`taskapp.jobs`) and
:class:`taskapp.PromptLearningJob` all build this one dataclass instead of passing the
same two dozen parameters along; :func:`taskapp.optimize.runner.run_config` runs it.

>>> config = OptimizeConfig(train_seeds="0-9", val_seeds="10-14", budget=50)
>>> config.budget, config.minibatch_size
(50, 3)
>>> OptimizeConfig.from_dict(config.to_dict()) == config
True

What is not part of a run's description stays outside: the target (URL or app), its
key, the progress callback and the stop event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskapp.core.errors import ConfigurationError
from taskapp.core.options import setting
from taskapp.core.seeds import SeedsLike

if TYPE_CHECKING:
    from taskapp.optimize.resolved import ResolvedRun

#: gepa's candidate selection strategies (``selection``)
SELECTIONS = ("pareto", "current_best", "epsilon_greedy", "top_k_pareto")

# the option groups of ``taskapp optimize --help``
PROMPT, SEEDS, REFLECTION, TASK_APP, OUTPUT = (
    "prompt",
    "seeds and budget",
    "reflection model",
    "task app",
    "output",
)

__all__ = ["OptimizeConfig"]


@dataclasses.dataclass
class OptimizeConfig:
    """The description of one GEPA run (validated when the run starts).

    Field meanings are those of :func:`taskapp.optimize.run`'s parameters of the same
    names; each field also declares its ``taskapp optimize`` option (help text, flag and
    group: :func:`~taskapp.core.options.setting`), from which that command's options are
    built. ``reflection_lm`` may be a callable, ``"stand-in"`` (the offline stand-in) or a
    mapping ``{"model": ..., "base_url": ..., "api_key_env": ..., "temperature": ...,
    "max_tokens": ...}`` describing an OpenAI-compatible model (JSON-able, so a job backend
    can store it).
    """

    seed_prompt: str | dict[str, str] | None = setting(
        None, "", flag="--prompt", group=PROMPT, custom=True
    )
    train_seeds: SeedsLike = setting(
        (),
        "e.g. 0-29: reflection minibatches (required unless --config or --resume)",
        group=SEEDS,
        metavar="SEEDS",
    )
    val_seeds: SeedsLike = setting(
        (),
        "e.g. 30-79: candidate selection (required unless --config or --resume)",
        group=SEEDS,
        metavar="SEEDS",
    )
    test_seeds: SeedsLike | None = setting(
        None, "held out: baseline and best scored after the run", group=SEEDS, metavar="SEEDS"
    )
    reflection_lm: Callable[[Any], Any] | str | dict[str, Any] | None = setting(
        None, "", flag="--reflection-model", group=REFLECTION, custom=True
    )
    policy: dict[str, Any] | None = setting(
        None, "", flag="--policy-config", group=TASK_APP, custom=True
    )
    budget: int = setting(
        300,
        "the most rollouts to use, baseline included (required unless --config)",
        group=SEEDS,
        kind="count",
        show_default=False,
    )
    policy_name: str | None = setting(None, "policy.policy_name of every rollout", group=TASK_APP)
    env_config: dict[str, Any] | None = setting(
        None, "", flag="--env-config", group=TASK_APP, custom=True
    )
    env_name: str | None = setting(None, "env.env_name of every rollout", group=TASK_APP)
    prompt_key: str = setting("prompt", "the policy.config key the prompt travels in", group=PROMPT)
    minibatch_size: int = setting(
        3, "train seeds per reflection", flag="--minibatch", group=SEEDS, kind="count"
    )
    max_concurrency: int = setting(
        8, "rollouts in flight", flag="--concurrency", group=SEEDS, kind="count"
    )
    patience: int | None = setting(
        20, "stop after N iterations without a better score; 0: never", group=SEEDS, metavar="N"
    )
    timeout_s: float | None = setting(
        None,
        "time limit of the whole run, in seconds: stop after the current step (default: "
        "none). Not per rollout: that is --rollout-timeout",
        flag="--timeout",
        group=SEEDS,
        kind="seconds",
    )
    perfect_score: float = setting(1.0, "the best possible rollout score", group=SEEDS)
    seed: int = setting(0, "random seed of the optimizer", group=SEEDS)
    selection: str = setting(
        "pareto", "how the next parent candidate is chosen", group=SEEDS, choices=SELECTIONS
    )
    reflection_prompt_template: str | None = setting(
        None, "", flag="--reflection-template", group=REFLECTION, custom=True
    )
    rollout_timeout: float = setting(
        300.0,
        "time limit of one rollout request, in seconds, as in taskapp eval",
        group=TASK_APP,
        kind="seconds",
    )
    health_timeout: float = setting(30.0, "", flag="--health-timeout", group=TASK_APP, custom=True)
    max_reflection_failures: int = setting(
        3,
        "stop the run (status failed, exit 4) when the reflection model fails this many "
        "times in a row",
        group=REFLECTION,
        kind="count",
    )
    output_dir: str | Path | None = setting(None, "", flag="--out", group=OUTPUT, custom=True)
    resume: bool = setting(False, "continue the run saved in --out", group=OUTPUT)

    def replace(self, **changes: Any) -> OptimizeConfig:
        """A copy with ``changes`` (unknown names are a :class:`ConfigurationError`)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigurationError(
                f"unknown optimize setting(s): {', '.join(unknown)}; known: "
                + ", ".join(f.name for f in dataclasses.fields(self))
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (a callable reflection model is refused: it cannot be stored)."""
        data: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "reflection_lm" and callable(value):
                raise ConfigurationError(
                    "a reflection model given as a Python callable cannot be stored; use "
                    "'stand-in' or {'model': ..., 'base_url': ...}"
                )
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, range):
                value = list(value)
            data[field.name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizeConfig:
        """The inverse of :meth:`to_dict` (unknown names are a :class:`ConfigurationError`)."""
        return cls().replace(**dict(data))

    def resolve(self) -> ResolvedRun:
        """Validate this config and derive what a run needs: the seed lists, the reflection
        model as a callable, the template, the output ``Path`` and, with ``resume``, the
        previous run (:class:`~taskapp.optimize.resolved.ResolvedRun`; a
        :class:`ConfigurationError` naming the bad setting otherwise).

        >>> run = OptimizeConfig(train_seeds="0-9", val_seeds="10-14", budget=50,
        ...                      reflection_lm="stand-in").resolve()
        >>> run.train[:3], len(run.val), run.config.budget
        ([0, 1, 2], 5, 50)
        """
        # imported here: the reflection model's module is not needed to describe a run
        from taskapp.optimize.resolved import resolve

        return resolve(self)

    def build_reflection_lm(self) -> Callable[[Any], Any] | None:
        """The reflection model as a callable (a mapping becomes an ``OpenAICompatLM``)."""
        lm = self.reflection_lm
        if isinstance(lm, Mapping):
            from taskapp.optimize.lm import OpenAICompatLM

            spec = dict(lm)
            model = spec.pop("model", None)
            if not isinstance(model, str) or not model:
                raise ConfigurationError("reflection model: 'model' (a model name) is missing")
            allowed = {"base_url", "api_key_env", "temperature", "max_tokens"}
            extra = sorted(set(spec) - allowed)
            if extra:
                raise ConfigurationError(f"reflection model: unknown field(s) {', '.join(extra)}")
            return OpenAICompatLM(model, **spec)
        if lm == "stand-in":
            from taskapp.optimize.lm import StandInReflectionLM

            return StandInReflectionLM(perfect_score=float(self.perfect_score))
        if lm is None or callable(lm):
            return lm
        raise ConfigurationError(
            f"reflection_lm must be callable (prompt -> text), 'stand-in' or a mapping, "
            f"got {type(lm).__name__}"
        )
