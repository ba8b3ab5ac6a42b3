"""Tiny random causal LMs of each family the research hooks support, built in memory (no files)."""

from __future__ import annotations

import torch

FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "gemma4")
VOCAB = 128
D_MODEL = 32
N_LAYERS = 3


def build(family: str, seed: int = 0):
    """(model, config) with random weights; eval mode, float32."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=N_LAYERS,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "llama":
        config, cls = tf.LlamaConfig(**common), tf.LlamaForCausalLM
    elif family == "qwen2":
        config, cls = tf.Qwen2Config(**common), tf.Qwen2ForCausalLM
    elif family == "qwen3":
        config, cls = tf.Qwen3Config(head_dim=8, **common), tf.Qwen3ForCausalLM
    elif family == "gemma2":
        config, cls = tf.Gemma2Config(head_dim=8, sliding_window=16, **common), tf.Gemma2ForCausalLM
    elif family == "gemma3":
        config, cls = tf.Gemma3TextConfig(head_dim=8, sliding_window=16, **common), tf.Gemma3ForCausalLM
    elif family == "gemma4":
        config = tf.Gemma4TextConfig(head_dim=8, global_head_dim=8, sliding_window=16,
                                     hidden_size_per_layer_input=0, vocab_size_per_layer_input=VOCAB,
                                     final_logit_softcapping=30.0, **common)
        cls = tf.Gemma4ForCausalLM
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    model = cls(config).eval()
    return model, config
