"""Instruction-aware tokenization with an embed mask (LLM2Vec input format).

A query is fed as `instruction + "; " + text`: the instruction tokens are seen by the model (and
attend both ways), but only the text tokens are pooled. `embed_mask` marks those text tokens.

Where upstream llm2vec re-tokenizes the text alone and takes its length (off by one when the
boundary tokens merge, and spilling into the instruction when truncation shortens the text), we
count the instruction tokens instead: the length of the common prefix between the tokenized
`instruction + ";"` and the tokenized full string. Everything after that prefix is text, so the
mask can never cover instruction tokens, whatever the truncation.
"""

from __future__ import annotations

from typing import Any

SEPARATOR = "!@#$%^&*()"


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad token nor an eos token to pad with")
    return int(pad)


def _split(text: str, instruction: str | None, index: int) -> tuple[str | None, str]:
    """(instruction, text) of one input; an llm2vec-style `instr; SEP text` string carries its own."""
    if not isinstance(text, str):
        raise TypeError(f"texts[{index}] must be a string, got {type(text).__name__}")
    own = None
    if SEPARATOR in text:
        own, text = text.split(SEPARATOR, 1)
        own = own.strip().rstrip(";").strip() or None
        if own is not None and instruction:
            raise ValueError(
                f"texts[{index}] carries its own instruction (separator {SEPARATOR!r}) and instruction= was also given"
            )
    if not text.strip():
        raise ValueError(f"texts[{index}] is empty: there is nothing to embed")
    return (own or instruction or None), text.strip()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_with_instruction(
    tokenizer: Any, texts: list[str], instruction: str | None, max_length: int
) -> dict[str, Any]:
    """Left-padded `input_ids`, `attention_mask` and `embed_mask` (LongTensors [B, T]).

    instruction None or "" => every real token is embedded (embed_mask == attention_mask).
    Texts are right-truncated to max_length tokens in total; the instruction is kept.
    """
    import torch

    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string")
    if not texts:
        raise ValueError("texts is empty")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    instruction = instruction.strip() if instruction else None
    parts = [_split(text, instruction, i) for i, text in enumerate(texts)]
    fulls = [f"{instr}; {text}" if instr else text for instr, text in parts]

    # Tokenizers may truncate from the left when so configured; the instruction must survive.
    saved_side = getattr(tokenizer, "truncation_side", "right")
    tokenizer.truncation_side = "right"
    try:
        ids = tokenizer(fulls, add_special_tokens=True, truncation=True, max_length=max_length)[
            "input_ids"
        ]
    finally:
        tokenizer.truncation_side = saved_side

    prefixes: dict[str, list[int]] = {}
    n_instruction = []
    for i, (instr, _) in enumerate(parts):
        if not instr:
            n_instruction.append(0)
            continue
        if instr not in prefixes:
            prefixes[instr] = tokenizer(f"{instr};", add_special_tokens=True)["input_ids"]
        n = _common_prefix(prefixes[instr], ids[i])
        if n >= len(ids[i]):
            raise ValueError(
                f"texts[{i}]: the instruction alone fills max_length={max_length} tokens; "
                "raise max_length or shorten the instruction"
            )
        n_instruction.append(n)

    width = max(len(row) for row in ids)
    pad = _pad_id(tokenizer)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    embed_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        if not row:
            raise ValueError(f"texts[{i}] tokenized to zero tokens")
        start = width - len(row)  # left padding: real tokens sit at the end
        input_ids[i, start:] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, start:] = 1
        embed_mask[i, start + n_instruction[i] :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "embed_mask": embed_mask}


def position_ids_from_mask(attention_mask: Any) -> Any:
    """Positions counted from each row's first real token, so left padding does not shift them."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
