"""The ``[prompt_learning]`` TOML reader and ``taskapp optimize --config`` / ``--resume``.

The CLI tests run the installed console script against the bundled example, offline (the
stand-in reflection model).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from taskapp import ConfigurationError
from taskapp.optimize.config import OptimizeConfig
from taskapp.optimize.prompt_learning import load_prompt_learning, parse_prompt_learning
from tests.helpers import run_child
from tests.optimize._optimize_helpers import taskapp

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_TOML = REPO / "examples" / "support_intents_gepa.toml"

SYNTH = """
[prompt_learning]
algorithm = "gepa"
task_app_url = "http://127.0.0.1:8114"
task_app_api_key = "${PL_TEST_KEY}"
results_folder = "results"

[prompt_learning.initial_prompt]
id = "banking"
[[prompt_learning.initial_prompt.messages]]
role = "user"
order = 1
pattern = "Message: {query}"
[[prompt_learning.initial_prompt.messages]]
role = "system"
order = 0
pattern = "Classify the message."
[prompt_learning.initial_prompt.wildcards]
query = "REQUIRED"

[prompt_learning.policy]
model = "llama-3.1-8b-instant"
provider = "groq"
temperature = 0.0
policy_name = "banking77-classifier"

[prompt_learning.gepa]
env_name = "banking77"
proposer_mode = "synth"

[prompt_learning.gepa.evaluation]
train_seeds = {start = 0, end = 30}
val_seeds = [30, 31, 32, 33]
test_pool = "40-49"

[prompt_learning.gepa.rollout]
budget = 120
max_concurrent = 5
minibatch_size = 4
budgte = 3

[prompt_learning.gepa.mutation]
rate = 0.3
llm_model = "llama-3.3-70b-versatile"
llm_provider = "groq"
llm_inference_url = "http://127.0.0.1:9/v1"
temperature = 0.5
max_tokens = 256

[prompt_learning.gepa.population]
num_generations = 5
patience_generations = 3

[prompt_learning.gepa.archive]
size = 64

[prompt_learning.termination_config]
max_cost_usd = 3.0
"""


def test_synth_config_maps_onto_the_local_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_prompt_learning(SYNTH, source="banking.toml")
    c = spec.config
    assert spec.task_app_url == "http://127.0.0.1:8114"
    assert spec.results_folder == "results"
    assert c.seed_prompt == {"system": "Classify the message.", "user": "Message: {query}"}
    assert c.train_seeds == list(range(30)) and c.val_seeds == [30, 31, 32, 33]
    assert c.test_seeds == list(range(40, 50))
    assert (c.budget, c.max_concurrency, c.minibatch_size, c.patience) == (120, 5, 4, 3)
    assert c.policy == {"model": "llama-3.1-8b-instant", "provider": "groq", "temperature": 0.0}
    assert c.policy_name == "banking77-classifier" and c.env_name == "banking77"
    assert c.reflection_lm == {
        "model": "llama-3.3-70b-versatile",
        "base_url": "http://127.0.0.1:9/v1",
        "api_key_env": "GROQ_API_KEY",
        "temperature": 0.5,
        "max_tokens": 256,
    }
    text = "\n".join(spec.warnings)
    # every key without a local equivalent is named, never dropped silently
    for name in (
        "prompt_learning.gepa.mutation.rate is ignored",
        "prompt_learning.gepa.population.num_generations is ignored",
        "prompt_learning.gepa.archive is ignored",
        "prompt_learning.termination_config.max_cost_usd is ignored",
        "prompt_learning.gepa.proposer_mode = 'synth' runs as 'gepa-ai'",
        "unknown key prompt_learning.gepa.rollout.budgte is ignored; did you mean 'budget'?",
    ):
        assert name in text
    assert len(spec.warnings) == 6
    # the key is expanded only when asked for; an explicit key wins
    with pytest.raises(ConfigurationError, match=r"refers to \$\{PL_TEST_KEY\}, which is not set"):
        spec.task_app_key()
    assert spec.task_app_key("explicit") == "explicit"
    monkeypatch.setenv("PL_TEST_KEY", "k-123")
    assert spec.task_app_key() == "k-123"
    # JSON round trip (what the job backend stores)
    assert OptimizeConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_overrides_replace_file_values() -> None:
    spec = parse_prompt_learning(
        SYNTH, overrides={"prompt_learning.gepa.rollout.budget": 77, "gepa.seed": 5}
    )
    assert spec.config.budget == 77 and spec.config.seed == 5


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            '[prompt_learning]\nalgorithm = "gepa"\n[prompt_learning.gepa.rollout]\nbudget = 3OO\n',
            r"x.toml: malformed TOML at line 4, key prompt_learning.gepa.rollout.budget: "
            r".*\n  4 \| budget = 3OO",
        ),
        (
            '[prompt_learning]\nalgorithm = "mipro"\n',
            r"prompt_learning.algorithm is 'mipro': taskapp runs 'gepa' only",
        ),
        (
            '[prompt_learning]\n[prompt_learning.gepa.rollout]\nbudget = "many"\n',
            r"prompt_learning.gepa.rollout.budget must be an integer >= 1, got 'many'",
        ),
        (
            "[prompt_learning.gepa.evaluation]\ntrain_seeds = 3\n",
            r"prompt_learning.gepa.evaluation.train_seeds must be a list",
        ),
        (
            "[prompt_learning.gepa.rollout]\nbudget = 10\n",
            r"prompt_learning.gepa.mutation needs llm_provider = \"stand-in\"",
        ),
        ("[other]\na = 1\n", r"x.toml: no \[prompt_learning\] table"),
    ],
)
def test_bad_configs_name_the_file_and_key(text: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        parse_prompt_learning(text, source="x.toml")


def test_the_example_config_reads_cleanly() -> None:
    spec = load_prompt_learning(EXAMPLE_TOML)
    assert spec.warnings == []
    assert spec.config.reflection_lm == "stand-in" and spec.config.seed_prompt is None
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_prompt_learning(EXAMPLE_TOML.with_name("nope.toml"))


def test_cli_config_runs_and_warns_by_name(tmp_path: Path) -> None:
    config = tmp_path / "job.toml"
    config.write_text(EXAMPLE_TOML.read_text().replace("budget = 200", "budget = 120\nbudgte = 1"))
    out = tmp_path / "run"
    done = taskapp(
        "optimize", "support-intents", "--config", str(config), "--out", str(out), "--json"
    )
    assert done.returncode == 0, done.stderr
    assert "warning: " in done.stderr and "prompt_learning.gepa.rollout.budgte" in done.stderr
    result = json.loads(done.stdout)
    assert result["best_score"] > result["baseline_score"]
    assert result["metric_calls"] <= 120 and result["val_seeds"] == list(range(100, 140))
    assert result["test_seeds"] == list(range(300, 340))

    # --resume takes the seeds from run.json; a spent budget is a clear error
    spent = taskapp("optimize", "support-intents", "--stand-in", "--budget", "120",
                    "--out", str(out), "--resume")  # fmt: skip
    assert spent.returncode == 2
    assert "is the total over all runs" in spent.stderr and "--budget" in spent.stderr
    more = taskapp("optimize", "support-intents", "--stand-in", "--budget", "200",
                   "--out", str(out), "--resume", "--json")  # fmt: skip
    assert more.returncode == 0, more.stderr
    resumed = json.loads(more.stdout)
    assert result["metric_calls"] < resumed["metric_calls"] <= 200
    assert resumed["val_seeds"] == result["val_seeds"]
    # resumed progress lines still show the baseline (the resumed run has no baseline event)
    iteration_lines = [line for line in more.stderr.splitlines() if line.startswith("iter")]
    assert iteration_lines and all("(baseline " in line for line in iteration_lines)
    # the score curve has a legend, and the baseline is drawn as its own line
    svg = ET.fromstring((out / "score_curve.svg").read_text())
    texts = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert any(t.startswith("baseline (seed prompt, ") for t in texts)
    assert {"best so far", "candidate", "budget"} <= set(texts)
    lines = svg.iter("{http://www.w3.org/2000/svg}line")
    assert [line for line in lines if line.get("class") == "baseline"]

    bad = tmp_path / "bad.toml"
    bad.write_text('[prompt_learning]\nalgorithm = "gepa"\ntask_app_url = \n')
    done = taskapp("optimize", "--config", str(bad), "--stand-in")
    assert done.returncode == 2
    assert f"{bad}: malformed TOML at line 3, key prompt_learning.task_app_url" in done.stderr


def test_plugins_say_which_extra_a_backend_needs() -> None:
    """With Ray missing, `taskapp plugins --all` says what to install instead of listing
    `ray` as if it worked."""
    code = (
        "import sys; sys.modules['ray'] = None\n"  # Ray not importable, as on a fresh install
        "from taskapp.cli import main\n"
        "raise SystemExit(main(['plugins', '--all']))\n"
    )
    done = run_child(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "ray (needs taskapp[ray])" in done.stdout
    assert "thread" in done.stdout and "thread (needs" not in done.stdout


def test_no_prompt_error_names_the_file(tmp_path: Path) -> None:
    """An app file that advertises no prompt: the error names the file, not the temporary
    URL taskapp started it on."""
    app = tmp_path / "silent_app.py"
    app.write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from tests.optimize._optimize_helpers import ToyTask\n"
        "config = ToyTask(advertise=False).config()\n"
    )
    done = taskapp("optimize", str(app), "--stand-in", "--train-seeds", "0-9",
                   "--val-seeds", "10-14", "--budget", "40", "--out", str(tmp_path / "o"))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"the task app at {app} advertise" in done.stderr
    assert "127.0.0.1" not in done.stderr


def test_standalone_example_advertises_its_prompt() -> None:
    """examples/support_intents_app.py, the app docs/writing_task_apps.md says to copy,
    can be optimized without --prompt."""
    from taskapp import InProcessTaskApp, TaskAppClient
    from taskapp.optimize import advertised_prompts

    with InProcessTaskApp(task_app_path=REPO / "examples" / "support_intents_app.py",
                          port=0) as app, TaskAppClient(app.local_url, app.api_key) as client:  # fmt: skip
        prompts = advertised_prompts(client.info())
    assert set(prompts) == {"prompt"} and "Answer with the intent name only" in prompts["prompt"]


def test_cli_config_names_the_task_app_url_and_key(tmp_path: Path) -> None:
    """TARGET defaults to the TOML's task_app_url; its key comes from ${ENV} in the file."""
    from taskapp import InProcessTaskApp
    from tests.optimize._optimize_helpers import ToyTask

    task = ToyTask()
    with InProcessTaskApp(config=task.config(), port=0, api_key="toml-key-123456") as app:
        config = tmp_path / "url.toml"
        config.write_text(
            "[prompt_learning]\n"
            f'task_app_url = "{app.url}"\n'
            'task_app_api_key = "${PL_TOY_KEY}"\n'
            "[prompt_learning.gepa.evaluation]\n"
            'train_seeds = "0-39"\nval_seeds = "100-119"\n'
            "[prompt_learning.gepa.rollout]\nbudget = 80\n"
            '[prompt_learning.gepa.mutation]\nllm_provider = "stand-in"\n'
        )
        missing = taskapp("optimize", "--config", str(config), "--out", str(tmp_path / "a"))
        assert missing.returncode == 2
        assert "refers to ${PL_TOY_KEY}, which is not set" in missing.stderr
        done = taskapp("optimize", "--config", str(config), "--out", str(tmp_path / "b"),
                       "--json", "-q", PL_TOY_KEY="toml-key-123456")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded" and result["metric_calls"] <= 80
    assert len(task.requests) == result["metric_calls"]
    assert "toml-key-123456" not in done.stdout + done.stderr
