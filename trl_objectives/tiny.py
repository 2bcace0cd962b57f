"""A tiny offline test model: a randomly initialised 2-layer Phi-3 and a tokenizer trained on given texts.

Why: tests and examples must train real TRL runs in seconds without a model hub. The model has
Phi-3's module names, so the LoRA space's target-module presets apply as they would to Phi-3-mini.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["PHI3_CHAT_TEMPLATE", "build_tiny_phi3", "train_tokenizer"]

#: A Phi-3-style chat template (``<|user|>\n...<|end|>\n<|assistant|>\n``), used by the tiny model.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_TINY_SPECIAL_TOKENS = ["<unk>", "<s>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 512, chat_template: str = PHI3_CHAT_TEMPLATE
) -> "PreTrainedTokenizerBase":
    """Train a byte-level BPE tokenizer on ``texts`` (offline) with a Phi-3-style chat template.

    Byte-level BPE (not a word-level vocabulary) so that ``decode(encode(s)) == s`` for any string,
    which exact-match evaluation relies on.  Training is deterministic for the same texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [t for t in texts if isinstance(t, str) and t]
    if not corpus:
        raise ValueError("train_tokenizer needs at least one non-empty text.")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sorted(set(corpus)), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
    )
    fast.chat_template = chat_template
    return fast


def build_tiny_phi3(
    texts: Sequence[str],
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int | None = None,
    vocab_size: int = 512,
    max_position_embeddings: int = 512,
    seed: int = 0,
    save_to: str | os.PathLike[str] | None = None,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """A tiny randomly initialised Phi-3 (``Phi3ForCausalLM``) and a tokenizer trained on ``texts``.

    It has Phi-3's module names (``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj``), so the
    LoRA space's target-module presets apply as they would to Phi-3-mini, and it trains in about a
    second per epoch on a CPU: the model the fast tests use.

    Args:
        texts: Texts to train the tokenizer on (e.g. all questions and answers).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: Model shape
            (intermediate defaults to ``2 * hidden_size``).
        vocab_size: Target BPE vocabulary size (the special tokens are included).
        max_position_embeddings: Longest sequence the model accepts.
        seed: Seed of the weight initialisation.
        save_to: If given, the model and tokenizer are saved there (a folder usable as a model spec).
    """
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    if hidden_size % num_attention_heads:
        raise ValueError(f"hidden_size {hidden_size} must be a multiple of num_attention_heads {num_attention_heads}.")
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    config = Phi3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        original_max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Phi3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, end_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    if save_to is not None:
        Path(save_to).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(save_to)
        tokenizer.save_pretrained(save_to)
    return model, tokenizer
