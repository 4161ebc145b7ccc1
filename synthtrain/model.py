"""The model: Llama-family size presets (``PRESETS``), built from a config with
no downloaded weights, and the figures the train stage reports
(``parameter_count``, ``flops_per_token``). Shared by ``train`` and the stages
that load ``models/current`` afterwards. The presets, and why the GPU ones
count fewer parameters than their names: docs/training.md.
"""

from dataclasses import dataclass

from transformers import LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int  # grouped-query attention when fewer than heads
    intermediate: int  # SwiGLU width
    tied: bool = True  # input embedding shared with the output head
    rope_theta: float = 10_000.0


PRESETS = {
    # CPU: deep-narrow like the GPU ones, head width 16-64; named by their size at
    # an 8K vocabulary, where the embedding is a third of 1M and 5M and an eighth of
    # 25M; at the default 2K vocabulary 5M has 3.5M parameters, 89 % in the layers.
    "1M": Shape(hidden=64, layers=4, heads=4, kv_heads=2, intermediate=256),
    "5M": Shape(hidden=192, layers=8, heads=6, kv_heads=2, intermediate=512),
    "25M": Shape(hidden=384, layers=14, heads=6, kv_heads=2, intermediate=1024),
    # GPU: SmolLM-135M / SmolLM2-135M, SmolLM-360M / SmolLM2-360M, Qwen2.5-0.5B
    # (without its qkv bias) and TinyLlama-1.1B (untied).
    "125M": Shape(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536),
    "360M": Shape(hidden=960, layers=32, heads=15, kv_heads=5, intermediate=2560),
    "500M": Shape(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, rope_theta=1_000_000.0),
    "1B": Shape(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, tied=False),
}


def llama_config(preset: str, vocab_size: int, seq_len: int, eos_id: int, pad_id: int) -> LlamaConfig:
    shape = PRESETS[preset]
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=seq_len,
        rope_theta=shape.rope_theta,
        tie_word_embeddings=shape.tied,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        bos_token_id=None,  # ChatML: no bos; a document starts where the last one's eos ended
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
        attn_implementation="sdpa",
    )


def build_model(config: LlamaConfig) -> LlamaForCausalLM:
    """Random weights from the torch seed in effect (call torch.manual_seed first)."""
    return LlamaForCausalLM(config)


def parameter_count(model: LlamaForCausalLM) -> int:
    """Distinct parameters: a tied embedding counts once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def flops_per_token(config: LlamaConfig, parameters: int, seq_len: int) -> float:
    """Training FLOPs per token, nanoGPT's estimate_mfu: 6N for the weights'
    forward and backward matmuls, plus 12·L·H·Q·T for attention's scores and
    weighted sums. N counts a tied embedding (it is the output head's matmul) but
    not an untied input embedding, which is a lookup."""
    matmul_parameters = parameters - (0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size)
    head_dim = config.hidden_size // config.num_attention_heads
    return 6 * matmul_parameters + 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
