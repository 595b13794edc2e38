"""Text <-> token ids: UTF-8 bytes for random-weight presets, a checkpoint's own tokenizer otherwise."""

from __future__ import annotations


class ByteTokenizer:
    """Token id = byte value (0..255). Ids past 255 decode as `<id>`."""

    def __init__(self, vocab_size: int):
        if vocab_size < 256:
            raise ValueError(f"the byte tokenizer needs vocab_size >= 256, the model has {vocab_size}")

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        out, pending = [], bytearray()
        for i in ids:
            if i < 256:
                pending.append(i)
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending = bytearray()
            out.append(f"<{i}>")
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


class HFTokenizer:
    """A `tokenizers.Tokenizer` (a checkpoint's tokenizer.json) behind the same two methods."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def tokenizer_for(model):
    return HFTokenizer(model.tokenizer) if model.tokenizer is not None else ByteTokenizer(model.config.vocab_size)
