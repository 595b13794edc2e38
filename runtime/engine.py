"""The Engine: batched generation with ragged prompts, stop tokens and seeded sampling.

A `generate` is a jitted prefill per chunk of `prefill_chunk` prompt tokens (bounding
prefill memory; each chunk samples the first token of the rows it ends) and one jitted
decode loop (`lax.while_loop`, stop checks on the device). Both donate the decode state,
which XLA then updates in place. Shapes are bucketed to powers of two so a new prompt
length rarely recompiles; the cache is sized to what the request needs (at most
`max_len`), so a step reads no more cache than necessary.

On GPUs the decode loop compiles with runtime/gpu_options.py's options (`compiler_options`;
{} for XLA's defaults), which make it CUDA graphs, collectives and the loop included. Where
the loop is not captured, `decode_chunk` K > 1 runs K steps per iteration of an outer loop
while every unfinished row has K or more tokens left: a loop of known length, so XLA need not
read the stop condition back to the host after each step (one GPU: 4.48 -> 4.27 ms a step).

With a mesh (`Engine(mesh=chimera.make_mesh(...))`) the params and the decode state are laid
out by the blocks' logical axes (sharding/rules.py: heads, MLP hidden, SSM channels over
`tensor`, experts over `expert`, sequences over `data` x `expert`); the programs are jitted
with those in/out shardings and traced under the mesh, and the batch is padded to a
multiple of the mesh's batch shards. The results equal the single-device ones. On GPUs split over
`tensor` alone the programs sum the tensor-parallel products with chimera's all-reduce kernel
(sharding/all_reduce.py), prepared when the Engine is made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from chimera.runtime.gpu_options import decode_compiler_options, nccl_graph_mixing_off
from chimera.runtime.model import Model
from chimera.runtime.sampling import Sampling, sample
from chimera.runtime.state import DecodeState
from chimera.sharding import all_reduce
from chimera.sharding.placement import fetch, place, place_array
from chimera.sharding.shardings import batch_shards, batch_sharding, param_shardings, replicated, state_shardings

STOP_SLOTS = 8  # stop-token lists are padded to a multiple of this, so their count rarely recompiles


@dataclasses.dataclass(frozen=True)
class Generation:
    """tokens: the new tokens (a stop token that ended the row is included last).
    finish_reason: "stop" (a stop token was generated) or "length" (max_new_tokens reached)."""
    tokens: list[int]
    finish_reason: str


@dataclasses.dataclass(frozen=True)
class Programs:
    """The jitted programs for one (batch, cache length): see Engine.new_state/prefill/decode."""
    new_state: Callable
    prefill: Callable
    decode: Callable


def bucket(n: int, minimum: int, cap: int | None = None) -> int:
    """The smallest power of two >= max(n, minimum), at most `cap`."""
    size = max(minimum, 1 << max(n - 1, 0).bit_length())
    return size if cap is None else min(size, cap)


class Engine:
    def __init__(self, model: Model, params, max_batch: int = 8, max_len: int = 4096, mesh=None,
                 prefill_chunk: int = 2048, decode_chunk: int = 1, compiler_options: dict | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {max_len}")
        if prefill_chunk < 16 or prefill_chunk & (prefill_chunk - 1):
            raise ValueError(f"prefill_chunk must be a power of two >= 16, got {prefill_chunk}")
        if isinstance(decode_chunk, bool) or not isinstance(decode_chunk, int) or decode_chunk < 1:
            raise ValueError(f"decode_chunk must be an integer >= 1, got {decode_chunk!r}")
        if compiler_options is not None and not isinstance(compiler_options, dict):
            raise ValueError(f"compiler_options must be a dict of XLA options (or None), got {compiler_options!r}")
        self.prefill_chunk = prefill_chunk
        self.decode_chunk = decode_chunk
        self.model = model
        self.max_batch = max_batch
        self.max_len = max_len
        self.mesh = mesh
        # None: chimera's defaults for the devices and each program's batch; {}: XLA's own defaults
        self.compiler_options = compiler_options
        self._programs: dict[tuple[int, int], Programs] = {}
        # With a mesh each leaf is split by its block's logical axes (sharding/rules.py).
        self.param_shardings = None if mesh is None else param_shardings(model, mesh)
        # tensor-parallel sums by chimera's kernel where it runs (sharding/all_reduce.py)
        self.all_reduce_ready = mesh is not None and all_reduce.prepare_if_wanted(mesh)
        self.params = params if mesh is None else place(params, self.param_shardings)

    # --- device programs ---

    def programs(self, batch: int, cache_len: int) -> Programs:
        """The jitted programs for a state of `batch` rows and `cache_len` slots. With a mesh
        their inputs and outputs are pinned to the shardings (the state's in == out, so the
        donated buffers alias), and they are traced under the mesh, where the MoE block goes
        expert-parallel."""
        key = (batch, cache_len)
        if key not in self._programs:
            self._programs[key] = self._compile(batch, cache_len)
        return self._programs[key]

    def _compile(self, batch: int, cache_len: int) -> Programs:
        # Static arguments are positional (trailing): jit takes no keyword arguments with in_shardings.
        new_state = functools.partial(self.model.init_state, batch, cache_len)
        prefill = functools.partial(jax.jit, self._prefill, static_argnums=(7,), donate_argnums=(1,))
        decode = functools.partial(jax.jit, self._decode, static_argnums=(8, 9), donate_argnums=(1,),
                                   compiler_options=self.decode_options(batch) or None)
        if self.mesh is None:
            return Programs(new_state=jax.jit(new_state), prefill=prefill(), decode=decode())
        state = state_shardings(self.model, self.mesh, batch, cache_len)
        rows, whole = batch_sharding(self.mesh, batch), replicated(self.mesh)
        return Programs(
            new_state=jax.jit(new_state, out_shardings=state),
            prefill=prefill(in_shardings=(self.param_shardings, state, rows, rows, rows, rows, whole),
                            out_shardings=(state, rows)),
            # the tokens come out replicated: every process reads them whole
            decode=decode(in_shardings=(self.param_shardings, state, rows, rows, rows, whole, whole, whole),
                          out_shardings=(whole, whole, whole, state)))

    def decode_options(self, batch: int) -> dict:
        """The XLA options the decode program of `batch` rows compiles with."""
        if self.compiler_options is None:
            return decode_compiler_options(self.mesh, batch)
        return self.compiler_options

    def on_mesh(self):
        """The context the programs run (and are traced) in."""
        if self.mesh is None:
            return contextlib.nullcontext()
        context = contextlib.ExitStack()
        context.enter_context(jax.set_mesh(self.mesh))
        if self.all_reduce_ready:
            context.enter_context(all_reduce.summing_on(self.mesh))
        return context

    def put(self, x, per_row: bool):
        """A host input laid out for the mesh: split over the batch (per_row) or replicated."""
        if self.mesh is None:
            return x
        return place_array(x, batch_sharding(self.mesh, np.shape(x)[0]) if per_row else replicated(self.mesh))

    def settle(self, *inputs):
        """Wait until `inputs` exist when NCCL runs without graph mixing (NCCL_GRAPH_MIXING_SUPPORT=0)
        on a mesh. NCCL then forbids an uncaptured NCCL call while a CUDA graph holding NCCL calls is
        unfinished, and XLA runs a program's first call uncaptured (also its first after another
        compile evicted its graphs). Each of the Engine's programs takes what the one before it
        made, so once the inputs exist none of its graphs still runs."""
        if self.mesh is not None and nccl_graph_mixing_off():
            jax.block_until_ready(inputs)

    def new_state(self, batch: int, cache_len: int) -> DecodeState:
        """An empty DecodeState allocated on the device(s)."""
        with self.on_mesh():
            return self.programs(batch, cache_len).new_state()

    def _prefill(self, params, state, tokens, lengths, first, row_ids, seed, sampling: Sampling):
        logits, state = self.model.extend_unchecked(params, state, tokens, lengths)
        sampled = sample(logits, row_keys(seed, row_ids, 0), sampling)
        return state, jnp.where(lengths > 0, sampled, first)

    def prefill(self, params, state, tokens, lengths, first, row_ids, seed, *, sampling: Sampling):
        """(params, state, tokens [B,C], lengths [B], first [B], row_ids [B], seed; sampling) -> (state, first).
        Appends one chunk of the prompts; a row that appended tokens gets a freshly sampled first
        token (the last chunk a row appends to decides it), the others keep theirs."""
        program = self.programs(state.batch_size, state.max_len).prefill
        tokens, lengths, first, row_ids = (self.put(x, per_row=True) for x in (tokens, lengths, first, row_ids))
        seed = self.put(seed, per_row=False)
        self.settle(state, first)
        with self.on_mesh():
            return program(params, state, tokens, lengths, first, row_ids, seed, sampling)

    def prefill_prompts(self, tokens: np.ndarray, lengths: np.ndarray, cache_len: int, row_ids, seed,
                        sampling: Sampling):
        """Right-padded prompts [B, T] (T a power of two or a multiple of `prefill_chunk`) ->
        (state holding them, each row's first sampled token [B])."""
        batch, width = tokens.shape
        chunk = min(width, self.prefill_chunk)
        state = self.new_state(batch, cache_len)
        first = np.zeros((batch,), np.int32)
        for start in range(0, width, chunk):
            chunk_lengths = np.clip(lengths - start, 0, chunk).astype(np.int32)
            state, first = self.prefill(self.params, state, tokens[:, start:start + chunk], chunk_lengths, first,
                                        row_ids, seed, sampling=sampling)
        return state, first

    def cache_len(self, needed: int) -> int:
        """Cache slots for a request whose longest sequence reaches `needed` tokens: a power
        of two (so few shapes compile), at most `max_len`."""
        return bucket(needed, 64, self.max_len)

    def pad_width(self, longest: int) -> int:
        """Prompt buffer width: a power of two up to `prefill_chunk`, then whole chunks."""
        if longest <= self.prefill_chunk:
            return bucket(longest, 16)
        return -(-longest // self.prefill_chunk) * self.prefill_chunk

    def decode(self, params, state: DecodeState, first, active, row_ids, seed, stop_tokens, max_new,
               *, out_len: int, sampling: Sampling):
        """(params, state, first [B], active [B], row_ids [B], seed, stop [S], max_new; out_len, sampling)
        -> (tokens [B, out_len], counts [B], stopped [B], final state). Donating the state
        lets XLA update the cache in place; the final state is returned so its buffers alias."""
        program = self.programs(state.batch_size, state.max_len).decode
        first, active, row_ids = (self.put(x, per_row=True) for x in (first, active, row_ids))
        seed, stop_tokens, max_new = (self.put(x, per_row=False) for x in (seed, stop_tokens, max_new))
        self.settle(state, first)
        with self.on_mesh():
            return program(params, state, first, active, row_ids, seed, stop_tokens, max_new, out_len, sampling)

    def _decode(self, params, state: DecodeState, first, active, row_ids, seed, stop_tokens, max_new,
                out_len: int, sampling: Sampling):
        out = jnp.full((first.shape[0], out_len), -1, jnp.int32).at[:, 0].set(first)
        counts = active.astype(jnp.int32)
        stopped = active & jnp.isin(first, stop_tokens)
        done = ~active | stopped | (counts >= max_new)

        def keep_going(carry):
            step, _, _, _, _, _, done = carry
            return (step < max_new) & ~jnp.all(done)

        def step_fn(carry):
            step, state, last, out, counts, stopped, done = carry
            logits, state = self.model.extend_unchecked(
                params, state, last[:, None], jnp.where(done, 0, 1).astype(jnp.int32))
            token = sample(logits, row_keys(seed, row_ids, step), sampling)
            token = jnp.where(done, last, token)
            out = out.at[:, step].set(jnp.where(done, out[:, step], token))
            counts = counts + (~done).astype(jnp.int32)
            hit_stop = ~done & jnp.isin(token, stop_tokens)
            stopped = stopped | hit_stop
            done = done | hit_stop | (counts >= max_new)
            return step + 1, state, token, out, counts, stopped, done

        def chunk_fits(carry):
            # Unfinished rows advance together, so any of them tells how many steps remain before
            # `max_new`; only a stop token can end rows inside a chunk (the chunk's remaining
            # steps then mask them, as the step-by-step loop masks finished rows).
            _, _, _, _, counts, _, done = carry
            steps_left = jnp.max(jnp.where(done, 0, max_new - counts))
            return (steps_left >= self.decode_chunk) & ~jnp.all(done)

        def chunk_fn(carry):
            return jax.lax.fori_loop(0, self.decode_chunk, lambda _, carry: step_fn(carry), carry)

        carry = (jnp.int32(1), state, first, out, counts, stopped, done)
        if self.decode_chunk > 1:
            carry = jax.lax.while_loop(chunk_fits, chunk_fn, carry)
        _, state, _, out, counts, stopped, _ = jax.lax.while_loop(keep_going, step_fn, carry)
        return out, counts, stopped, state

    # --- the public API ---

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
                 sampling: Sampling = Sampling(), stop_tokens: Sequence[int] = ()) -> list[Generation]:
        """Generate up to `max_new_tokens` new tokens for each prompt (lists of ints, any lengths)."""
        self._check(prompts, max_new_tokens, sampling, stop_tokens)
        n = len(prompts)
        batch = bucket(n, 1, self.max_batch)
        if self.mesh is not None:  # padding rows (empty, inactive) let the mesh split the batch evenly
            shards = batch_shards(self.mesh)
            batch = -(-batch // shards) * shards
        longest = max(len(p) for p in prompts)
        tokens = np.zeros((batch, self.pad_width(longest)), np.int32)
        lengths = np.zeros((batch,), np.int32)
        for i, prompt in enumerate(prompts):
            tokens[i, :len(prompt)] = prompt
            lengths[i] = len(prompt)
        cache_len = self.cache_len(longest + max_new_tokens)
        stop = np.full((bucket(len(stop_tokens), STOP_SLOTS),), -1, np.int32)
        stop[:len(stop_tokens)] = list(stop_tokens)
        static = dataclasses.replace(sampling, seed=0)  # the seed is traced, not compiled in
        row_ids = np.arange(batch, dtype=np.int32)
        seed = np.int32(sampling.seed)

        state, first = self.prefill_prompts(tokens, lengths, cache_len, row_ids, seed, static)
        out, counts, stopped, _ = self.decode(self.params, state, first, lengths > 0, row_ids, seed, stop,
                                              np.int32(max_new_tokens), out_len=bucket(max_new_tokens, 16),
                                              sampling=static)
        out, counts, stopped = (fetch(x) for x in (out, counts, stopped))
        return [Generation(tokens=out[i, :counts[i]].tolist(), finish_reason="stop" if stopped[i] else "length")
                for i in range(n)]

    def _check(self, prompts, max_new_tokens, sampling, stop_tokens):
        vocab = self.model.config.vocab_size
        if not isinstance(sampling, Sampling):
            raise ValueError(f"sampling must be a chimera.Sampling, got {type(sampling).__name__}")
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
            raise ValueError("prompts must be a non-empty list of token-id lists")
        if len(prompts) > self.max_batch:
            raise ValueError(f"{len(prompts)} prompts exceed the engine's max_batch {self.max_batch}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence):
                raise ValueError(f"prompt {i} must be a list of token ids, got {type(prompt).__name__}")
            if len(prompt) == 0:
                raise ValueError(f"prompt {i} is empty")
            for t, token in enumerate(prompt):
                if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
                    raise ValueError(f"prompt {i} token {t} is not an integer: {token!r}")
                if not 0 <= token < vocab:
                    raise ValueError(f"prompt {i} token {t} = {token} is outside the vocabulary [0, {vocab})")
            if len(prompt) + max_new_tokens > self.max_len:
                raise ValueError(f"prompt {i} has {len(prompt)} tokens; with max_new_tokens={max_new_tokens} "
                                 f"it would pass the engine's max_len {self.max_len}")
        for token in stop_tokens:
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token < vocab:
                raise ValueError(f"stop token {token!r} is outside the vocabulary [0, {vocab})")


def row_keys(seed, row_ids, step) -> jax.Array:
    """One PRNG key per row for this step: a row's samples depend on (seed, row, step) only."""
    base = jax.random.key(seed)
    return jax.vmap(lambda row: jax.random.fold_in(jax.random.fold_in(base, row), step))(row_ids)
