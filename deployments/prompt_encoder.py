"""PromptEncoder: UMT5 turns the prompt and negative prompt into embeddings.

Keeps the most recently used embeddings per text (`embedding_cache_size`): a
repeated prompt with new settings (size, steps, seed) skips the text encoder,
and the default negative prompt, shared by nearly every request, is encoded
once per replica, so a new prompt costs one text-encoder pass, not two.
"""

from __future__ import annotations

import functools
from typing import Any

from ray import serve

from deployments.base import ModelStage
from serve_app import metrics
from serve_app.deadline import Deadline
from serve_app.pipeline.optimize import compile_text_encoder
from serve_app.pipeline.stages import PromptEmbeddings, encode_prompts, encode_text


@serve.deployment
class PromptEncoder(ModelStage):
    stage = "prompt_encoder"

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__(args)
        if self.profile.speed.text_encoder_compile:
            compile_text_encoder(self.pipe.text_encoder)
        # Thread-safe; maxsize 0 caches nothing (and still counts misses).
        self._cached_text = functools.lru_cache(maxsize=self.args.embedding_cache_size)(self._text_uncached)
        if self.args.warmup:
            self.warm_up([("encode", functools.partial(self._encode, "warm up", "", 5.0))], before_ready=1)

    def _text_uncached(self, text: str):
        return encode_text(self.pipe, text, self.profile.max_sequence_length)

    def _text(self, text: str):
        hits = self._cached_text.cache_info().hits
        embeds = self._cached_text(text)
        # A miss is reported too: the hit ratio, not the hit count, says whether
        # `embedding_cache_size` is large enough for the traffic.
        metrics.embedding_cache_lookup(self._cached_text.cache_info().hits > hits)
        return embeds

    def _encode(self, prompt: str, negative_prompt: str, guidance_scale: float) -> PromptEmbeddings:
        return encode_prompts(
            self.pipe, prompt, negative_prompt, guidance_scale, self.profile.max_sequence_length, encode=self._text
        )

    async def encode(
        self, prompt: str, negative_prompt: str, guidance_scale: float, deadline: Deadline
    ) -> PromptEmbeddings:
        deadline.check("prompt_encode")
        return await self.run_model(self._encode, prompt, negative_prompt, guidance_scale)

    async def stats(self) -> dict:
        """Embedding-cache hits and misses, per text (for operators and tests)."""
        info = self._cached_text.cache_info()
        return {"embedding_hits": info.hits, "embedding_misses": info.misses, "embedding_entries": info.currsize}
