"""Shared checks of chimera's Hugging Face imports against transformers itself.

A case builds a tiny random transformers model, saves it as safetensors and imports it with
`chimera.from_hf`; these functions compare float32 logits (full forward, ragged incremental
extend) and greedy generations with what transformers computes from the very same folder.
"""

import json

import numpy as np
import torch

import chimera

TOL = 1e-4  # relative error of float32 logits, fixed by the issues


def randomise_(hf):
    """Non-trivial weights everywhere, in place, so a swapped or dropped tensor shows."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:  # not ones (or zeros for (1 + w) norms)
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "embed_tokens" in name:
                p.normal_(0.0, 1.0)
            elif p.ndim == 1:  # per-head sinks and the like
                p.normal_(0.0, 1.0)
            else:  # fan-in scaling keeps activations O(1): sharp attention, spread-out logits
                p.normal_(0.0, p.shape[1] ** -0.5)
    return hf


def hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def random_tokens(shape, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def check_forward(hf, model, params, tokens):
    logits = model.forward(params, tokens)
    assert logits.dtype == np.float32 and logits.shape == tokens.shape + (model.config.vocab_size,)
    assert rel_err(logits, hf_logits(hf, tokens)) < TOL


def check_incremental(hf, model, params, tokens, prompt_lengths):
    """A ragged prompt batch, then one token at a time, against HF's full forward of each row alone."""
    batch, n = tokens.shape
    prompt = np.asarray(prompt_lengths)
    want = [hf_logits(hf, tokens[b:b + 1])[0] for b in range(batch)]  # [T, V] each
    state = model.init_state(batch, n)
    logits, state = model.extend(params, state, tokens[:, :prompt.max()], lengths=prompt, all_logits=True)
    for b in range(batch):
        assert rel_err(logits[b, :prompt[b]], want[b][:prompt[b]]) < TOL
    for step in range(n - prompt.max()):
        pos = prompt + step
        logits, state = model.extend(params, state, tokens[np.arange(batch), pos][:, None])
        for b in range(batch):
            assert rel_err(logits[b], want[b][pos[b]]) < TOL, (b, pos[b])
    np.testing.assert_array_equal(state.lengths, prompt + n - prompt.max())


def check_greedy(hf, model, params, prompts, new_tokens):
    """A ragged batch through the Engine gives, per prompt, HF's greedy continuation."""
    engine = chimera.Engine(model, params, max_batch=len(prompts),
                            max_len=max(map(len, prompts)) + new_tokens)
    outs = engine.generate(prompts, max_new_tokens=new_tokens, sampling=chimera.Sampling(temperature=0.0))
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():  # one unpadded prompt at a time: no HF padding quirks
            ids = torch.tensor([prompt])
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens)[0, len(prompt):].tolist()
        assert len(ref) == new_tokens
        assert out.tokens == ref
        assert out.finish_reason == "length"


def build_hf(model_class, config, seed=0):
    """A tiny float32 transformers model of `model_class` with non-trivial weights everywhere."""
    torch.manual_seed(seed)
    return randomise_(model_class._from_config(config, attn_implementation="eager", dtype=torch.float32).eval())


def save_and_import(hf, folder):
    """Save `hf` as safetensors into `folder` and import it: (chimera model, params)."""
    hf.save_pretrained(folder)
    return chimera.from_hf(folder)


def edit_config(folder, **changes):
    """Rewrite config.json: a key set to None is removed."""
    path = folder / "config.json"
    hf = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            hf.pop(key, None)
        else:
            hf[key] = value
    path.write_text(json.dumps(hf))


def tiny_llama_folder(folder, words):
    """A random 1-layer LlamaForCausalLM (vocab 32) saved to `folder` with a whitespace-split
    word-level tokenizer.json over `words` ("[UNK]" first); returns the tokenizer."""
    import transformers  # noqa: PLC0415
    from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: PLC0415
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, bos_token_id=None,
                                      eos_token_id=None, pad_token_id=None)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer

