"""``taskapp/standin``: a **stand-in** for a real model, as an Inspect model provider.

Registered with Inspect's ``@modelapi`` under the provider name ``taskapp`` (through the
``inspect_ai`` entry point of taskapp's pyproject), so ``inspect eval ... --model
taskapp/standin`` and taskapp's Inspect task apps both use it. It reads the system
message the way the support-intents offline baseline reads its prompt
(:func:`taskapp.examples.support_intents.policy.offline_predict`): the intents listed as
``- name: description`` lines, and answers the one sharing the most words with the user
message. A prompt that describes the intents better scores better, deterministically and
without any network; it is not a language model.

Usage is reported as word counts, so Inspect never needs tiktoken's data file (which it
would download) for this model.
"""

from __future__ import annotations

import re
from typing import Any

from inspect_ai.model import (
    ChatMessage,
    ChatMessageSystem,
    ChatMessageUser,
    GenerateConfig,
    ModelAPI,
    ModelOutput,
    ModelUsage,
    modelapi,
)
from inspect_ai.tool import ToolChoice, ToolInfo

from taskapp.examples.support_intents.policy import offline_predict

__all__ = ["StandInModelAPI", "answer"]

_LISTED = re.compile(r"^\s*[-*\u2022]\s*`?([A-Za-z][A-Za-z0-9_]*)`?\s*:", re.M)


_CHOICE = re.compile(r"^([A-Z])\) (.+)$", re.M)


def answer(prompt: str, message: str) -> str:
    """The stand-in's answer to ``message`` under the instructions ``prompt``.

    A multiple-choice question (Inspect's ``multiple_choice()`` template: ``A) ...``
    lines, ``ANSWER: $LETTER``) is answered ``ANSWER: X``, X the choice the prompt's
    descriptions match best (the first choice when none matches).
    """
    if "ANSWER: $LETTER" in message:
        return _choose(prompt, message)
    labels = tuple(dict.fromkeys(name.lower() for name in _LISTED.findall(prompt)))
    if not labels:
        return ""
    return offline_predict(prompt, message, labels).label or ""


def _choose(prompt: str, message: str) -> str:
    choices = {text.strip().lower(): letter for letter, text in _CHOICE.findall(message)}
    if not choices:
        return "ANSWER: A"
    question = _CHOICE.sub("", message.replace("ANSWER: $LETTER", ""))
    label = offline_predict(prompt, question, tuple(choices)).label
    return f"ANSWER: {choices.get(label or '', next(iter(choices.values())))}"


class StandInModelAPI(ModelAPI):
    """The ``taskapp`` provider: model ``standin`` (any name answers the same way)."""

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig = GenerateConfig(),  # noqa: B008 - Inspect's signature
        **model_args: Any,
    ) -> None:
        super().__init__(model_name, base_url, api_key, [], config)

    async def generate(
        self,
        input: list[ChatMessage],
        tools: list[ToolInfo],
        tool_choice: ToolChoice,
        config: GenerateConfig,
    ) -> ModelOutput:
        prompt = "\n".join(m.text for m in input if isinstance(m, ChatMessageSystem))
        users = [m.text for m in input if isinstance(m, ChatMessageUser)]
        text = answer(prompt, users[-1] if users else "")
        output = ModelOutput.from_content(f"taskapp/{self.model_name}", text)
        words = sum(len(m.text.split()) for m in input)
        output.usage = ModelUsage(
            input_tokens=words,
            output_tokens=len(text.split()),
            total_tokens=words + len(text.split()),
        )
        return output

    async def count_text_tokens(self, text: str) -> int:
        return max(1, len(text.split()))

    def max_connections(self) -> int:
        return 64


@modelapi(name="taskapp")
def taskapp_provider() -> type[ModelAPI]:
    return StandInModelAPI
