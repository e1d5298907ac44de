"""The tiny model: Wan2.2-TI2V-5B's shapes with tiny widths, built without downloads.

Same component classes and the same shape-defining settings as the 5B
(48-channel latents, 16x spatial / 4x temporal VAE with patch 2 and residual
blocks, `expand_timesteps=True`, UniPC with flow shift), widths small enough
that a 9-frame 64x64 video takes ~0.1 s on a CPU. The tokenizer is a byte-level
BPE built with `tokenizers`, so any Unicode prompt tokenizes.
"""

from __future__ import annotations

from pathlib import Path

from serve_app.config import ModelProfile, TinyModelSpec

SPECIAL_TOKENS = {"<pad>": 0, "</s>": 1, "<unk>": 2}


def build_tokenizer(max_length: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = dict(SPECIAL_TOKENS)
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # T5 appends </s>; so do we, so that sequence lengths behave like UMT5's.
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def build_tiny_pipeline(spec: TinyModelSpec, max_sequence_length: int, flow_shift: float):
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from serve_app.pipeline.architecture import TRANSFORMER_5B, VAE_5B

    tokenizer = build_tokenizer(max_sequence_length)
    torch.manual_seed(spec.seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=spec.text_dim,
            d_kv=8,
            d_ff=spec.text_dim * 2,
            num_layers=spec.text_layers,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    transformer = WanTransformer3DModel(
        **{
            **TRANSFORMER_5B,
            "num_attention_heads": spec.heads,
            "attention_head_dim": spec.head_dim,
            "text_dim": spec.text_dim,
            "freq_dim": 32,
            "ffn_dim": spec.ffn_dim,
            "num_layers": spec.layers,
        }
    )
    vae = AutoencoderKLWan(
        **{
            **VAE_5B,
            "base_dim": spec.vae_base_dim,
            "decoder_base_dim": spec.vae_decoder_base_dim,
            "dim_mult": [1, 1, 1, 1],
            "num_res_blocks": 1,
        }
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift, num_train_timesteps=1000
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
        expand_timesteps=True,
    )


def ensure_tiny_model(profile: ModelProfile, models_dir: Path) -> Path:
    """Build and save the tiny model once; later calls return the saved directory.

    The directory name hashes the spec, so a changed spec never loads stale
    weights. Saving goes through a temporary directory and a rename, so two
    replicas starting at once never see a half-written model.
    """
    import hashlib
    import os
    import tempfile

    key = hashlib.sha256(
        f"{profile.tiny.model_dump_json()}|{profile.max_sequence_length}|{profile.flow_shift}".encode()
    ).hexdigest()[:12]
    target = models_dir / f"tiny-{key}"
    if (target / "model_index.json").exists():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(profile.tiny, profile.max_sequence_length, profile.flow_shift)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=models_dir))
    pipe.save_pretrained(tmp)
    try:
        os.rename(tmp, target)
    except OSError:
        # Another process won the race; its copy is identical.
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target
