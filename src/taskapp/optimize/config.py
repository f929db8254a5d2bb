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
from taskapp.core.seeds import SeedsLike

if TYPE_CHECKING:
    from taskapp.optimize.resolved import ResolvedRun

__all__ = ["OptimizeConfig"]


@dataclasses.dataclass
class OptimizeConfig:
    """The description of one GEPA run (validated when the run starts).

    Field meanings are those of :func:`taskapp.optimize.run`'s parameters of the same
    names. ``reflection_lm`` may be a callable, ``"stand-in"`` (the offline stand-in) or a
    mapping ``{"model": ..., "base_url": ..., "api_key_env": ..., "temperature": ...,
    "max_tokens": ...}`` describing an OpenAI-compatible model (JSON-able, so a job backend
    can store it).
    """

    seed_prompt: str | dict[str, str] | None = None
    train_seeds: SeedsLike = ()
    val_seeds: SeedsLike = ()
    test_seeds: SeedsLike | None = None
    reflection_lm: Callable[[Any], Any] | str | dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    budget: int = 300
    policy_name: str | None = None
    env_config: dict[str, Any] | None = None
    env_name: str | None = None
    prompt_key: str = "prompt"
    minibatch_size: int = 3
    max_concurrency: int = 8
    patience: int | None = 20
    timeout_s: float | None = None
    perfect_score: float = 1.0
    seed: int = 0
    selection: str = "pareto"
    reflection_prompt_template: str | None = None
    rollout_timeout: float = 300.0
    health_timeout: float = 30.0
    max_reflection_failures: int = 3
    output_dir: str | Path | None = None
    resume: bool = False

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
