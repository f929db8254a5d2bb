"""The validated inputs of one optimization run, and the checks of its output directory.

``_settings(config)`` turns an :class:`OptimizeConfig` into :class:`_Settings` (or a
:class:`ConfigurationError`, before any I/O but reading ``--out``): seeds, budget, prompt,
reflection model, output dir. With ``resume`` it reads the previous run's ``run.json``
(and ``result.json``) for the seeds and seed prompt it used and the rollouts it spent.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from taskapp.core.errors import ConfigurationError
from taskapp.core.secrets import redact
from taskapp.core.seeds import parse_seeds
from taskapp.optimize.config import OptimizeConfig
from taskapp.optimize.lm import REFLECTION_TEMPLATE, describe_lm

STATE_DIR = "gepa"
RUN_FILE = "run.json"
HISTORY_FILE = "history.jsonl"
SELECTIONS = ("pareto", "current_best", "epsilon_greedy", "top_k_pareto")


@dataclasses.dataclass
class _Settings:
    """Validated inputs of one run."""

    seed_prompt: str | dict[str, str] | None
    train: list[int]
    val: list[int]
    test: list[int] | None
    reflection_lm: Callable[[Any], Any]
    policy: dict[str, Any]
    policy_name: str | None
    env_config: dict[str, Any]
    env_name: str | None
    prompt_key: str
    budget: int
    minibatch_size: int
    concurrency: int
    patience: int | None
    timeout_s: float | None
    perfect_score: float
    seed: int
    selection: str
    template: str
    rollout_timeout: float
    health_timeout: float
    max_reflection_failures: int
    output_dir: Path | None
    resume: bool

    @property
    def iteration_cost(self) -> int:
        """The most rollouts one gepa iteration can use: parent + child minibatch + val."""
        return 2 * self.minibatch_size + len(self.val)

    def minimum_budget(self) -> int:
        return len(self.val) + self.iteration_cost

    def public(self) -> dict[str, Any]:
        """The resolved configuration, JSON-able, without key material."""
        return {
            "prompt_key": self.prompt_key,
            "budget": self.budget,
            "minibatch_size": self.minibatch_size,
            "concurrency": self.concurrency,
            "patience": self.patience,
            "timeout_s": self.timeout_s,
            "perfect_score": self.perfect_score,
            "seed": self.seed,
            "selection": self.selection,
            "policy": json.loads(redact(json.dumps(self.policy, default=str))),
            "policy_name": self.policy_name,
            "env_config": json.loads(redact(json.dumps(self.env_config, default=str))),
            "env_name": self.env_name,
            "reflection_lm": describe_lm(self.reflection_lm),
            "rollout_timeout": self.rollout_timeout,
            "custom_template": self.template != REFLECTION_TEMPLATE,
        }


def _positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _settings(config: OptimizeConfig) -> _Settings:
    kw = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
    output_dir = Path(kw["output_dir"]).expanduser() if kw["output_dir"] is not None else None
    if kw["resume"] and output_dir is None:
        raise ConfigurationError("resume=True needs output_dir (the run to continue)")
    previous: dict[str, Any] = {}
    if kw["resume"] and output_dir is not None:
        previous = _previous_run(output_dir)
        # --resume continues with the seeds stored in run.json unless others are given
        for name in ("train_seeds", "val_seeds"):
            if _unset(kw[name]) and isinstance(previous.get(name), list):
                kw[name] = previous[name]
        if kw["test_seeds"] is None and isinstance(previous.get("test_seeds"), list):
            kw["test_seeds"] = previous["test_seeds"] or None
    train = parse_seeds(kw["train_seeds"], what="train_seeds")
    val = parse_seeds(kw["val_seeds"], what="val_seeds")
    test = (
        parse_seeds(kw["test_seeds"], what="test_seeds") if kw["test_seeds"] is not None else None
    )
    lm = config.build_reflection_lm()
    if lm is None:
        raise ConfigurationError(
            "no reflection model: pass reflection_lm=OpenAICompatLM(model=...) (any "
            "OpenAI-compatible server) or reflection_lm=StandInReflectionLM() (offline stand-in)"
        )
    if not callable(lm):
        raise ConfigurationError(
            f"reflection_lm must be callable (prompt -> text), got {type(lm).__name__}"
        )
    seed_prompt = kw["seed_prompt"]
    if seed_prompt is None and isinstance(previous.get("seed_candidate"), dict):
        seed_prompt = previous["seed_candidate"]  # --resume: the run's own seed prompt
    if seed_prompt is not None:
        if isinstance(seed_prompt, str):
            if not seed_prompt.strip():
                raise ConfigurationError("seed_prompt is empty")
        elif isinstance(seed_prompt, Mapping):
            if not seed_prompt or not all(
                isinstance(k, str) and isinstance(v, str) and v.strip()
                for k, v in seed_prompt.items()
            ):
                raise ConfigurationError(
                    "seed_prompt as a mapping must map policy.config keys to non-empty texts"
                )
            seed_prompt = dict(seed_prompt)
        else:
            raise ConfigurationError(
                f"seed_prompt must be a string or a mapping, got {type(seed_prompt).__name__}"
            )
    for name in ("policy", "env_config"):
        if kw[name] is not None and not isinstance(kw[name], Mapping):
            raise ConfigurationError(f"{name} must be a mapping (a JSON object)")
    prompt_key = kw["prompt_key"]
    if not isinstance(prompt_key, str) or not prompt_key:
        raise ConfigurationError("prompt_key must be a non-empty string")
    patience = kw["patience"]
    if patience is not None:
        patience = _positive_int(patience, "patience")
    timeout_s = kw["timeout_s"]
    if timeout_s is not None and (
        not isinstance(timeout_s, int | float) or not math.isfinite(timeout_s) or timeout_s <= 0
    ):
        raise ConfigurationError(f"timeout_s must be a positive number, got {timeout_s!r}")
    perfect = kw["perfect_score"]
    if not isinstance(perfect, int | float) or not math.isfinite(perfect):
        raise ConfigurationError(f"perfect_score must be a finite number, got {perfect!r}")
    selection = kw["selection"]
    if selection not in SELECTIONS:
        raise ConfigurationError(f"selection must be one of {', '.join(SELECTIONS)}")
    template = kw["reflection_prompt_template"] or REFLECTION_TEMPLATE
    missing = [p for p in ("<curr_param>", "<side_info>") if p not in template]
    if missing:
        raise ConfigurationError(
            f"the reflection prompt template lacks {' and '.join(missing)}: gepa puts the "
            "current prompt and the examples there"
        )
    for name in ("rollout_timeout", "health_timeout"):
        value = kw[name]
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
    settings = _Settings(
        seed_prompt=seed_prompt,
        train=train,
        val=val,
        test=test,
        reflection_lm=lm,
        policy=dict(kw["policy"] or {}),
        policy_name=kw["policy_name"],
        env_config=dict(kw["env_config"] or {}),
        env_name=kw["env_name"],
        prompt_key=prompt_key,
        budget=_positive_int(kw["budget"], "budget"),
        minibatch_size=_positive_int(kw["minibatch_size"], "minibatch_size"),
        concurrency=_positive_int(kw["max_concurrency"], "max_concurrency"),
        patience=patience,
        timeout_s=float(timeout_s) if timeout_s is not None else None,
        perfect_score=float(perfect),
        seed=_positive_int(kw["seed"], "seed", minimum=0),
        selection=selection,
        template=template,
        rollout_timeout=float(kw["rollout_timeout"]),
        health_timeout=float(kw["health_timeout"]),
        max_reflection_failures=_positive_int(
            kw["max_reflection_failures"], "max_reflection_failures"
        ),
        output_dir=output_dir,
        resume=bool(kw["resume"]),
    )
    if settings.concurrency > 256:
        raise ConfigurationError("max_concurrency must be at most 256")
    if settings.minibatch_size > len(train):
        raise ConfigurationError(
            f"minibatch_size {settings.minibatch_size} is larger than the {len(train)} train seeds"
        )
    if settings.budget < settings.minimum_budget():
        raise ConfigurationError(
            f"budget {settings.budget} is too small: the baseline takes {len(val)} rollouts "
            f"(one per val seed) and one iteration up to {settings.iteration_cost} "
            f"(2 x minibatch {settings.minibatch_size} + {len(val)} val seeds); use "
            f"--budget {settings.minimum_budget()} or more, or fewer val seeds"
        )
    _check_output_dir(settings)
    if previous:
        _check_budget_left(settings, previous)
    return settings


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


def _check_budget_left(settings: _Settings, previous: Mapping[str, Any]) -> None:
    """Resuming with a budget the previous runs already spent would do nothing: say so."""
    used = previous.get("metric_calls")
    if not isinstance(used, int):
        return
    if settings.budget - used < settings.iteration_cost:
        raise ConfigurationError(
            f"the run in {str(settings.output_dir)!r} already used {used} of its "
            f"{settings.budget} rollouts, and one more iteration needs up to "
            f"{settings.iteration_cost}: the budget is a total over all runs in that "
            f"directory, so pass --budget {used + settings.iteration_cost} or more to continue"
        )


def _check_output_dir(settings: _Settings) -> None:
    folder = settings.output_dir
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise ConfigurationError(f"output dir {str(folder)!r} is a file")
    has_run = (folder / RUN_FILE).exists()
    if settings.resume:
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
