"""PromptEncoder: UMT5 turns the prompt and negative prompt into embeddings."""

from __future__ import annotations

from typing import Any

from ray import serve

from deployments.base import ModelStage
from serve_app.deadline import Deadline
from serve_app.pipeline.stages import PromptEmbeddings, encode_prompts


@serve.deployment
class PromptEncoder(ModelStage):
    stage = "prompt_encoder"

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__(args)
        if self.args.warmup:
            self._encode("warm up", "", 5.0)

    def _encode(self, prompt: str, negative_prompt: str, guidance_scale: float) -> PromptEmbeddings:
        return encode_prompts(self.pipe, prompt, negative_prompt, guidance_scale, self.profile.max_sequence_length)

    async def encode(
        self, prompt: str, negative_prompt: str, guidance_scale: float, deadline: Deadline
    ) -> PromptEmbeddings:
        deadline.check("prompt_encode")
        return await self.run_model(self._encode, prompt, negative_prompt, guidance_scale)
