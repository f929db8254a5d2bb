"""The bundled support-intents example: data, offline baseline, HTTP contract, chat path.

The app runs on real uvicorn (InProcessTaskApp) and is called over real HTTP; the model
server is :class:`ChatStandIn`, a stand-in (no model can run here).
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskapp import InProcessTaskApp
from taskapp.examples import BUNDLED, resolve
from taskapp.examples.support_intents import DEFAULT_PROMPT, LABELS, build_config, load_examples
from taskapp.examples.support_intents.policy import normalize_answer, offline_predict
from tests.cli._cli_helpers import BETTER_PROMPT_FILE, EXAMPLES_DIR, ChatStandIn
from tests.helpers import run_child

BETTER_PROMPT = json.loads(BETTER_PROMPT_FILE.read_text())["prompt"]


def accuracy(prompt: str, split: str) -> float:
    examples = [e for e in load_examples() if e.split == split]
    return sum(offline_predict(prompt, e.text, LABELS).label == e.label for e in examples) / len(
        examples
    )


# -- data and baseline -------------------------------------------------------------------


def test_dataset_is_400_balanced_examples_with_a_fixed_split() -> None:
    examples = load_examples()
    assert len(examples) == 400
    assert [e.seed for e in examples] == list(range(400))
    assert Counter(e.label for e in examples) == dict.fromkeys(LABELS, 40)
    assert len({e.text for e in examples}) == 400
    assert Counter(e.split for e in examples) == {"train": 300, "test": 100}
    assert all((e.split == "test") == (e.seed % 4 == 3) for e in examples)
    # every intent is represented in the test split
    assert set(LABELS) == {e.label for e in examples if e.split == "test"}


def test_bundled_registry_resolves_names() -> None:
    assert resolve("support-intents") == BUNDLED["support-intents"]
    assert resolve("support_intents") == BUNDLED["support-intents"]
    assert resolve("nope") is None


def test_default_prompt_is_mediocre_and_a_better_prompt_scores_higher() -> None:
    assert accuracy(DEFAULT_PROMPT, "test") == pytest.approx(0.42)
    assert accuracy(DEFAULT_PROMPT, "train") == pytest.approx(125 / 300)
    assert accuracy(BETTER_PROMPT, "test") == pytest.approx(0.86)
    assert accuracy(BETTER_PROMPT, "train") == pytest.approx(0.80)


def test_baseline_depends_only_on_what_the_prompt_says() -> None:
    message = "Where is my parcel? Tracking has not moved."
    vague = "- shipping_status: shipping\n- refund: refund\n"
    precise = "- refund: refund\n- shipping_status: parcel, tracking\n"
    assert offline_predict(vague, message, LABELS).label == "shipping_status"  # fallback: first
    assert offline_predict(vague, message, LABELS).fell_back
    assert offline_predict(precise, message, LABELS).label == "shipping_status"
    assert offline_predict(precise, message, LABELS).matches == {
        "shipping_status": ["parcel", "tracking"]
    }
    fallback = "- refund: refund\n- complaint: rude\nIf no intent fits, answer complaint.\n"
    assert offline_predict(fallback, message, LABELS).label == "complaint"
    assert offline_predict("Classify it.", message, LABELS).label is None


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("refund", "refund"),
        ("Refund.", "refund"),
        ("Intent: cancel subscription", "cancel_subscription"),
        ("`password_reset`", "password_reset"),
        ("I think billing_issue, maybe refund", "billing_issue"),
        ("no idea", None),
    ],
)
def test_model_answers_map_to_intents(answer: str, label: str | None) -> None:
    assert normalize_answer(answer, LABELS) == label


# -- the HTTP contract -------------------------------------------------------------------


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[httpx.Client, str]]:
    with InProcessTaskApp(
        config=build_config(api_key_envs=["STANDIN_MODEL_KEY", "STANDIN_UNSET_KEY"]), port=18600
    ) as task_app:
        assert task_app.url is not None
        with httpx.Client(
            base_url=task_app.url, headers={"X-API-Key": task_app.api_key}, trust_env=False
        ) as client:
            yield client, task_app.api_key


def rollout(client: httpx.Client, seed: Any, config: dict[str, Any]) -> httpx.Response:
    return client.post(
        "/rollout",
        json={"run_id": f"r-{seed}", "env": {"seed": seed}, "policy": {"config": config}},
    )


def test_task_info_describes_splits_and_instances(app: tuple[httpx.Client, str]) -> None:
    client, _ = app
    taskset = client.get("/task_info").json()["taskset"]
    assert taskset["size"] == 400
    assert taskset["splits"]["test"]["size"] == 100
    assert taskset["splits"]["test"]["seeds"] == list(range(3, 400, 4))
    assert taskset["labels"] == list(LABELS)
    one = client.get("/task_info", params={"seed": 3}).json()
    assert one["dataset"]["split"] == "test"
    assert one["task_metadata"]["message"] == load_examples()[3].text
    two = client.get("/task_info", params=[("seed", 0), ("seed", 1)]).json()
    assert [item["dataset"]["split"] for item in two] == ["train", "train"]
    info = client.get("/info").json()
    assert info["service"]["app_id"] == "support-intents"


def test_rollout_scores_and_explains(app: tuple[httpx.Client, str]) -> None:
    client, _ = app
    wrong = next(
        e
        for e in load_examples()
        if offline_predict(DEFAULT_PROMPT, e.text, LABELS).label != e.label
    )
    body = rollout(client, wrong.seed, {}).json()
    details = body["metrics"]["details"]
    assert body["success_status"] == "success"
    assert body["metrics"]["outcome_score"] == 0.0
    assert details["expected"] == wrong.label
    assert details["predicted"] != wrong.label
    assert details["feedback"] and details["feedback"] != "correct"
    assert details["policy"] == "offline-baseline"
    right = rollout(client, wrong.seed, {"prompt": f"- {wrong.label}: {wrong.text}"}).json()
    assert right["metrics"]["outcome_score"] == 1.0
    assert right["metrics"]["details"]["feedback"] == "correct"


@pytest.mark.parametrize(
    ("seed", "config", "code"),
    [
        (400, {}, "seed_out_of_range"),
        (-1, {}, "seed_out_of_range"),
        (None, {}, "missing_seed"),
        (0, {"prompt": 5}, "invalid_policy"),
        (0, {"inference_url": "ftp://x", "model": "m"}, "invalid_policy"),
        (0, {"inference_url": "http://127.0.0.1:9/v1"}, "invalid_policy"),
        (
            0,
            {"inference_url": "http://x/v1", "model": "m", "api_key_env": "HOME"},
            "api_key_env_not_allowed",
        ),
    ],
)
def test_bad_rollouts_are_422_with_a_code(
    app: tuple[httpx.Client, str], seed: Any, config: dict[str, Any], code: str
) -> None:
    client, _ = app
    response = rollout(client, seed, config)
    assert response.status_code == 422
    assert response.json()["detail"]["error"]["code"] == code


def test_chat_policy_end_to_end_with_a_stand_in_model(
    app: tuple[httpx.Client, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = app
    model_key = "sk-standin-secret-value-42"
    monkeypatch.setenv("STANDIN_MODEL_KEY", model_key)
    refund = next(e for e in load_examples() if e.label == "refund")
    other = next(e for e in load_examples() if e.label == "complaint")
    with ChatStandIn(answer="Refund.") as model:
        config = {
            "inference_url": model.url + "/v1",
            "model": "standin-model",
            "api_key_env": "STANDIN_MODEL_KEY",
            "prompt": "Classify: {message}",
        }
        good = rollout(client, refund.seed, config)
        bad = rollout(client, other.seed, config)
    assert good.json()["metrics"]["outcome_score"] == 1.0
    assert good.json()["metrics"]["details"]["policy"] == "chat:standin-model"
    assert bad.json()["metrics"]["outcome_score"] == 0.0
    assert bad.json()["metrics"]["details"]["predicted"] == "refund"
    first = model.requests[0]
    assert first["authorization"] == f"Bearer {model_key}"
    assert first["body"]["model"] == "standin-model"
    assert first["body"]["messages"] == [{"role": "user", "content": f"Classify: {refund.text}"}]
    assert model_key not in good.text + bad.text


def test_chat_policy_system_prompt_without_placeholder(app: tuple[httpx.Client, str]) -> None:
    client, _ = app
    with ChatStandIn(answer="I would say: order change") as model:
        config = {"inference_url": model.url + "/v1", "model": "m", "prompt": "Be brief."}
        body = rollout(client, 0, config).json()
    assert model.requests[0]["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert model.requests[0]["authorization"] is None
    assert body["metrics"]["details"]["predicted"] == "order_change"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("refused", "could not reach the inference URL"),
        ("http_500", "answered HTTP 500"),
        ("http_401", "rejected the request with HTTP 401"),
        ("unset_env", "STANDIN_UNSET_KEY"),
    ],
)
def test_chat_policy_failures_are_runtime_errors_not_500s(
    app: tuple[httpx.Client, str], case: str, expected: str
) -> None:
    client, _ = app
    status = {"http_500": 500, "http_401": 401}.get(case)
    with ChatStandIn(fail_status=status) as model:
        config: dict[str, Any] = {"inference_url": model.url + "/v1", "model": "m"}
        if case == "refused":
            config["inference_url"] = "http://127.0.0.1:9/v1"
        elif case == "unset_env":
            config["api_key_env"] = "STANDIN_UNSET_KEY"
        response = rollout(client, 0, config)
    assert response.status_code == 200
    body = response.json()
    assert body["success_status"] == "runtime_error"
    assert body["metrics"]["outcome_score"] == 0.0
    assert expected in body["metrics"]["details"]["error"]


# -- the standalone copy and packaging ---------------------------------------------------


def test_standalone_example_matches_the_bundled_one() -> None:
    sys.path.insert(0, str(EXAMPLES_DIR))
    try:
        import support_intents_app as standalone
    finally:
        sys.path.remove(str(EXAMPLES_DIR))
    assert standalone.DEFAULT_PROMPT == DEFAULT_PROMPT
    assert standalone.LABELS == LABELS
    for prompt in (DEFAULT_PROMPT, BETTER_PROMPT):
        for example in load_examples():
            ours = offline_predict(prompt, example.text, LABELS).label
            theirs, _ = standalone.offline_policy(prompt, example.text)
            assert ours == theirs, (example.seed, prompt[:30])
        assert standalone.answer_to_label("Cancel subscription!") == "cancel_subscription"


def test_wheel_ships_the_data_file(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    run_child(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=60,
    )
    (wheel,) = tmp_path.glob("taskapp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "taskapp/examples/support_intents/data.jsonl" in names
    assert "taskapp/examples/support_intents/app.py" in names
