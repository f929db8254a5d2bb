"""An optimize run is described once, by ``OptimizeConfig``; the other layers are held to it.

``run()`` keeps its explicit, documented signature, so this test checks that its
parameters are exactly ``OptimizeConfig``'s fields plus what is not part of a run's
description, with the same defaults; ``OptimizeConfig.resolve()`` adds only derived values.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from taskapp import ConfigurationError
from taskapp.optimize import OptimizeConfig, run
from taskapp.optimize.resolved import ResolvedRun

# where and how to reach the task app (taskapp.core.endpoint), and how to report: not the run
NOT_A_SETTING = {"target", "api_key", "start", "aliases", "on_progress", "stop_event"}
FIELDS = {f.name: f for f in dataclasses.fields(OptimizeConfig)}


def test_run_parameters_are_the_config_fields() -> None:
    parameters = inspect.signature(run).parameters
    assert set(parameters) == set(FIELDS) | NOT_A_SETTING


def test_run_defaults_are_the_config_defaults() -> None:
    parameters = inspect.signature(run).parameters
    for name, field in FIELDS.items():
        assert field.default is not dataclasses.MISSING, name
        assert parameters[name].default == field.default, (
            f"run({name}=...) defaults to {parameters[name].default!r}, "
            f"OptimizeConfig.{name} to {field.default!r}"
        )


def test_resolved_run_holds_only_derived_values() -> None:
    """No second copy of the settings: the config itself plus what is computed from it."""
    assert [f.name for f in dataclasses.fields(ResolvedRun)] == [
        "config",
        "train",
        "val",
        "test",
        "reflection_lm",
        "template",
        "output_dir",
        "previous",
    ]


def test_resolve_derives_and_normalizes() -> None:
    config = OptimizeConfig(
        train_seeds="0-9",
        val_seeds=range(10, 15),
        test_seeds=[20, 21],
        budget=50,
        reflection_lm="stand-in",
        timeout_s=5,
        output_dir="~/nowhere-taskapp-test",
    )
    resolved = config.resolve()
    assert resolved.train == list(range(10))
    assert resolved.val == list(range(10, 15))
    assert resolved.test == [20, 21]
    assert callable(resolved.reflection_lm)
    assert "<curr_param>" in resolved.template
    assert resolved.output_dir == Path("~/nowhere-taskapp-test").expanduser()
    assert resolved.previous == {}
    assert resolved.config.policy == {} and resolved.config.env_config == {}
    assert isinstance(resolved.config.timeout_s, float)
    assert config.policy is None  # the caller's config is not changed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"budget": 0}, "budget must be an integer >= 1"),
        ({"max_concurrency": 1000}, "max_concurrency must be at most 256"),
        ({"minibatch_size": 20}, "larger than the 10 train seeds"),
        ({"selection": "best"}, "selection must be one of"),
        ({"timeout_s": float("inf")}, "timeout_s must be a positive number"),
        ({"seed_prompt": " "}, "seed_prompt is empty"),
        ({"policy": [1]}, "policy must be a mapping"),
        ({"reflection_prompt_template": "no placeholders"}, "lacks <curr_param>"),
        ({"resume": True}, "resume=True needs output_dir"),
        ({"reflection_lm": None}, "no reflection model"),
    ],
)
def test_resolve_names_the_bad_setting(change: dict[str, object], message: str) -> None:
    config = OptimizeConfig(
        train_seeds="0-9", val_seeds="10-14", budget=50, reflection_lm="stand-in"
    ).replace(**change)
    with pytest.raises(ConfigurationError, match=message):
        config.resolve()


def test_resume_takes_the_previous_run(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(
        json.dumps(
            {
                "train_seeds": [0, 1, 2, 3],
                "val_seeds": [7, 8],
                "seed_candidate": {"prompt": "Label it."},
                "metric_calls": 12,
            }
        )
    )
    resolved = OptimizeConfig(
        budget=100, reflection_lm="stand-in", output_dir=tmp_path, resume=True
    ).resolve()
    assert (resolved.train, resolved.val) == ([0, 1, 2, 3], [7, 8])
    assert resolved.config.seed_prompt == {"prompt": "Label it."}
    assert resolved.previous["metric_calls"] == 12
    with pytest.raises(
        ConfigurationError, match="already used 12 rollouts; --budget 14 is the total"
    ):
        OptimizeConfig(
            budget=14, reflection_lm="stand-in", output_dir=tmp_path, resume=True
        ).resolve()
