"""PromptEncoder: UMT5 turns the prompt and negative prompt into embeddings.

Keeps the most recently used embeddings (`embedding_cache_size`): a repeated
prompt with new settings (size, steps, seed) skips the text encoder.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from ray import serve

from deployments.base import ModelStage
from serve_app import metrics
from serve_app.deadline import Deadline
from serve_app.pipeline.stages import PromptEmbeddings, encode_prompts, uses_guidance


@serve.deployment
class PromptEncoder(ModelStage):
    stage = "prompt_encoder"

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__(args)
        self._embeddings: OrderedDict[tuple, PromptEmbeddings] = OrderedDict()
        self.counts: Counter[str] = Counter()
        if self.args.warmup:
            self._encode("warm up", "", 5.0)

    def _encode(self, prompt: str, negative_prompt: str, guidance_scale: float) -> PromptEmbeddings:
        # Guidance only decides whether the negative prompt is encoded at all.
        key = (prompt, negative_prompt, uses_guidance(guidance_scale))
        cached = self._embeddings.get(key)
        if cached is not None:
            self._embeddings.move_to_end(key)
            self.counts["hits"] += 1
            metrics.embedding_cache_hit()
            return PromptEmbeddings(cached.prompt_embeds, cached.negative_prompt_embeds, 0.0)
        self.counts["misses"] += 1
        embeddings = encode_prompts(
            self.pipe, prompt, negative_prompt, guidance_scale, self.profile.max_sequence_length
        )
        if self.args.embedding_cache_size:
            self._embeddings[key] = embeddings
            while len(self._embeddings) > self.args.embedding_cache_size:
                self._embeddings.popitem(last=False)
        return embeddings

    async def encode(
        self, prompt: str, negative_prompt: str, guidance_scale: float, deadline: Deadline
    ) -> PromptEmbeddings:
        deadline.check("prompt_encode")
        return await self.run_model(self._encode, prompt, negative_prompt, guidance_scale)

    async def stats(self) -> dict:
        """Embedding-cache hits and misses (for operators and tests)."""
        return {"embedding_hits": self.counts["hits"], "embedding_misses": self.counts["misses"],
                "embedding_entries": len(self._embeddings)}
