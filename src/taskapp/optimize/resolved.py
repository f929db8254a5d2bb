"""An :class:`OptimizeConfig` resolved for one run, and the checks of its output directory.

``OptimizeConfig.resolve()`` (:func:`resolve`) validates the config (a
:class:`ConfigurationError` before any I/O but reading ``--out``) and returns a
:class:`ResolvedRun`: the validated config plus only what is *derived* from it (the seed
lists, the reflection model as a callable, the reflection template, the output ``Path``
and the previous run's ``run.json`` when resuming). The settings themselves are read from
``ResolvedRun.config``, never copied (uvicorn's ``Config.load()``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskapp.core.errors import ConfigurationError
from taskapp.core.secrets import redact
from taskapp.core.seeds import parse_seeds
from taskapp.optimize.lm import REFLECTION_TEMPLATE, describe_lm

if TYPE_CHECKING:
    from taskapp.optimize.config import OptimizeConfig

__all__ = ["HISTORY_FILE", "RUN_FILE", "STATE_DIR", "ResolvedRun", "resolve"]

STATE_DIR = "gepa"
RUN_FILE = "run.json"
HISTORY_FILE = "history.jsonl"
MAX_CONCURRENCY = 256


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
    """One run's validated config and what is derived from it."""

    #: the validated config: mappings as dicts, numbers as floats, and with ``resume`` the
    #: previous run's seed prompt when none was given
    config: OptimizeConfig
    train: list[int]
    val: list[int]
    test: list[int] | None
    reflection_lm: Callable[[Any], Any]
    template: str
    output_dir: Path | None
    #: the previous run's run.json (and result.json's metric_calls) when resuming, else {}
    previous: dict[str, Any]

    @property
    def iteration_cost(self) -> int:
        """The most rollouts one gepa iteration can use: parent + child minibatch + val."""
        return 2 * self.config.minibatch_size + len(self.val)

    def minimum_budget(self) -> int:
        return len(self.val) + self.iteration_cost

    def public(self) -> dict[str, Any]:
        """The resolved configuration, JSON-able, without key material."""
        c = self.config
        return {
            "prompt_key": c.prompt_key,
            "budget": c.budget,
            "minibatch_size": c.minibatch_size,
            "concurrency": c.max_concurrency,
            "patience": c.patience,
            "timeout_s": c.timeout_s,
            "perfect_score": c.perfect_score,
            "seed": c.seed,
            "selection": c.selection,
            "policy": json.loads(redact(json.dumps(c.policy, default=str))),
            "policy_name": c.policy_name,
            "env_config": json.loads(redact(json.dumps(c.env_config, default=str))),
            "env_name": c.env_name,
            "reflection_lm": describe_lm(self.reflection_lm),
            "rollout_timeout": c.rollout_timeout,
            "custom_template": self.template != REFLECTION_TEMPLATE,
        }


def resolve(config: OptimizeConfig) -> ResolvedRun:
    """Validate ``config`` and derive what a run needs (see :class:`ResolvedRun`)."""
    output_dir = Path(config.output_dir).expanduser() if config.output_dir is not None else None
    if config.resume and output_dir is None:
        raise ConfigurationError("resume=True needs output_dir (the run to continue)")
    previous = _previous_run(output_dir) if config.resume and output_dir is not None else {}
    config = _with_previous(config, previous)
    train = parse_seeds(config.train_seeds, what="train_seeds")
    val = parse_seeds(config.val_seeds, what="val_seeds")
    test = None
    if config.test_seeds is not None:
        test = parse_seeds(config.test_seeds, what="test_seeds")
    lm = config.build_reflection_lm()
    if lm is None:
        raise ConfigurationError(
            "no reflection model: pass reflection_lm=OpenAICompatLM(model=...) (any "
            "OpenAI-compatible server) or reflection_lm=StandInReflectionLM() (offline stand-in)"
        )
    run = ResolvedRun(
        config=_validated(config),
        train=train,
        val=val,
        test=test,
        reflection_lm=lm,
        template=_template(config.reflection_prompt_template),
        output_dir=output_dir,
        previous=previous,
    )
    _check_sizes(run)
    _check_output_dir(run)
    if previous:
        _check_budget_left(run)
    return run


def _with_previous(config: OptimizeConfig, previous: Mapping[str, Any]) -> OptimizeConfig:
    """--resume continues with the seeds and seed prompt in run.json unless others are given."""
    changes: dict[str, Any] = {}
    for name in ("train_seeds", "val_seeds"):
        if _unset(getattr(config, name)) and isinstance(previous.get(name), list):
            changes[name] = previous[name]
    if config.test_seeds is None and isinstance(previous.get("test_seeds"), list):
        changes["test_seeds"] = previous["test_seeds"] or None
    if config.seed_prompt is None and isinstance(previous.get("seed_candidate"), dict):
        changes["seed_prompt"] = previous["seed_candidate"]
    return dataclasses.replace(config, **changes) if changes else config


def _positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _positive_number(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _seed_prompt(prompt: Any) -> str | dict[str, str] | None:
    if prompt is None:
        return None
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConfigurationError("seed_prompt is empty")
        return prompt
    if not isinstance(prompt, Mapping):
        raise ConfigurationError(
            f"seed_prompt must be a string or a mapping, got {type(prompt).__name__}"
        )
    if not prompt or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in prompt.items()
    ):
        raise ConfigurationError(
            "seed_prompt as a mapping must map policy.config keys to non-empty texts"
        )
    return dict(prompt)


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if value is not None and not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a mapping (a JSON object)")
    return dict(value or {})


def _validated(config: OptimizeConfig) -> OptimizeConfig:
    """``config`` checked field by field, with mappings as dicts and numbers as floats."""
    if not isinstance(config.prompt_key, str) or not config.prompt_key:
        raise ConfigurationError("prompt_key must be a non-empty string")
    perfect = config.perfect_score
    if not isinstance(perfect, int | float) or not math.isfinite(perfect):
        raise ConfigurationError(f"perfect_score must be a finite number, got {perfect!r}")
    selections = _declared(config, "selection")["choices"]  # declared once, on the field
    if config.selection not in selections:
        raise ConfigurationError(f"selection must be one of {', '.join(selections)}")
    patience = config.patience
    timeout_s = config.timeout_s
    return dataclasses.replace(
        config,
        seed_prompt=_seed_prompt(config.seed_prompt),
        policy=_mapping(config.policy, "policy"),
        env_config=_mapping(config.env_config, "env_config"),
        budget=_positive_int(config.budget, "budget"),
        minibatch_size=_positive_int(config.minibatch_size, "minibatch_size"),
        max_concurrency=_positive_int(config.max_concurrency, "max_concurrency"),
        patience=_positive_int(patience, "patience") if patience is not None else None,
        timeout_s=_positive_number(timeout_s, "timeout_s") if timeout_s is not None else None,
        perfect_score=float(perfect),
        seed=_positive_int(config.seed, "seed", minimum=0),
        rollout_timeout=_positive_number(config.rollout_timeout, "rollout_timeout"),
        health_timeout=_positive_number(config.health_timeout, "health_timeout"),
        max_reflection_failures=_positive_int(
            config.max_reflection_failures, "max_reflection_failures"
        ),
        resume=bool(config.resume),
    )


def _declared(config: OptimizeConfig, name: str) -> Mapping[str, Any]:
    """What ``OptimizeConfig`` declares about field ``name`` (help, flag, choices...)."""
    return next(f.metadata for f in dataclasses.fields(config) if f.name == name)


def _template(template: str | None) -> str:
    template = template or REFLECTION_TEMPLATE
    missing = [p for p in ("<curr_param>", "<side_info>") if p not in template]
    if missing:
        raise ConfigurationError(
            f"the reflection prompt template lacks {' and '.join(missing)}: gepa puts the "
            "current prompt and the examples there"
        )
    return template


def _check_sizes(run: ResolvedRun) -> None:
    c = run.config
    if c.max_concurrency > MAX_CONCURRENCY:
        raise ConfigurationError(f"max_concurrency must be at most {MAX_CONCURRENCY}")
    if c.minibatch_size > len(run.train):
        raise ConfigurationError(
            f"minibatch_size {c.minibatch_size} is larger than the {len(run.train)} train seeds"
        )
    if c.budget < run.minimum_budget():
        raise ConfigurationError(
            f"budget {c.budget} is too small: the baseline takes {len(run.val)} rollouts "
            f"(one per val seed) and one iteration up to {run.iteration_cost} "
            f"(2 x minibatch {c.minibatch_size} + {len(run.val)} val seeds); use "
            f"--budget {run.minimum_budget()} or more, or fewer val seeds"
        )


def _unset(seeds: Any) -> bool:
    return seeds is None or (not isinstance(seeds, str | Mapping) and len(list(seeds)) == 0)


def _previous_run(folder: Path) -> dict[str, Any]:
    """What run.json (and result.json) in ``folder`` say about the run there; {} if none."""
    try:
        previous = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {folder / RUN_FILE}: {exc}") from exc
    if not isinstance(previous, dict):
        raise ConfigurationError(f"{folder / RUN_FILE} is not a JSON object")
    try:
        result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        previous.setdefault("metric_calls", int(result["metric_calls"]))
        previous.setdefault("test_seeds", result.get("test_seeds"))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return previous


def _check_budget_left(run: ResolvedRun) -> None:
    """Resuming with a budget the previous runs already spent would do nothing: say so."""
    settings = run.config
    used = run.previous.get("metric_calls")
    if not isinstance(used, int):
        return
    if settings.budget - used < run.iteration_cost:
        raise ConfigurationError(
            f"the runs in {str(run.output_dir)!r} already used {used} rollouts; "
            f"--budget {settings.budget} is the total over all runs in that directory and "
            f"one more iteration needs up to {run.iteration_cost}, so pass --budget "
            f"{used + run.iteration_cost} or more to continue"
        )


def _check_output_dir(run: ResolvedRun) -> None:
    folder = run.output_dir
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise ConfigurationError(f"output dir {str(folder)!r} is a file")
    has_run = (folder / RUN_FILE).exists()
    if run.config.resume:
        if not has_run:
            raise ConfigurationError(
                f"nothing to resume in {str(folder)!r} (no {RUN_FILE}); drop --resume to "
                "start a new run there"
            )
        return
    if folder.exists() and any(folder.iterdir()):
        raise ConfigurationError(
            f"output dir {str(folder)!r} is not empty: pass --resume to continue the run in "
            "it, or choose another --out"
        )
