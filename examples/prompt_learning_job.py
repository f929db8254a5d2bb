"""The seed's "Full GEPA Integration" example, with only the import line changed.

Start a backend first (offline; any key of 8+ characters):

    export TASKAPP_BACKEND_API_KEY=$(python -c "import secrets; print(secrets.token_hex(16))")
    taskapp backend serve &            # http://127.0.0.1:8000

then run this script from the repository root:

    python examples/prompt_learning_job.py

It starts the bundled support-intents task app in this process, submits the
[prompt_learning] job in examples/support_intents_gepa.toml (stand-in reflection model),
waits for it and prints the best score next to the baseline.
"""

import asyncio
import os

# was: from synth_ai.task import InProcessTaskApp; from synth_ai.api.train import PromptLearningJob
from taskapp import InProcessTaskApp, PromptLearningJob
from taskapp.examples.support_intents import build_config

BACKEND_URL = os.environ.get("BACKEND_URL", "http://localhost:8000")
CONFIG_PATH = os.environ.get(
    "CONFIG_PATH", os.path.join(os.path.dirname(__file__), "support_intents_gepa.toml")
)


async def main() -> None:
    async with InProcessTaskApp(
        config_factory=build_config,
        port=int(os.environ.get("TASK_APP_PORT", "8114")),
    ) as task_app:
        print(f"Task app running at: {task_app.url}")

        job = PromptLearningJob(
            backend_url=BACKEND_URL,
            api_key=os.environ["TASKAPP_BACKEND_API_KEY"],
        )
        job_id = await job.submit(
            config_path=CONFIG_PATH,
            task_app_url=task_app.url,
            task_app_api_key=task_app.api_key,
        )
        print(f"Job submitted: {job_id}")

        results = await job.poll_until_complete(job_id, timeout=600, interval=1.0)
        print(f"Status: {results.status}")
        print(f"Baseline score: {results.baseline_score:.3f}")
        print(f"Best score: {results.best_score:.3f}")
        print(f"Best prompt:\n{results.best_prompt}")


if __name__ == "__main__":
    asyncio.run(main())
