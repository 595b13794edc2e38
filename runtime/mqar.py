"""Multi-query associative recall (MQAR): a synthetic probe of in-context recall.

A sequence lists key-value pairs, then asks for some keys again; after each queried key
the model must produce that key's value. Attention solves it by looking the key up;
a fixed-size recurrent state or a short window must have kept the pair. Training a tiny
model briefly on it shows what an architecture can recall beside what it costs.

Layout of one sequence (token 0 unused; keys and values from disjoint ranges):

    k1 v1 k2 v2 ... kn vn  q1 a1 q2 a2 ... qm am

The loss and accuracy count only the answers: the prediction made at each query qj must be
aj (the answers are in the input too, so each query sees its predecessors answered).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from chimera.architectures.config import ModelConfig
from chimera.runtime.model import build


@dataclasses.dataclass(frozen=True)
class MQARTask:
    """n_pairs distinct keys (of n_keys) each bound to a value (of n_values), then n_queries
    of those keys, in random order, each followed by its value."""
    n_pairs: int = 8
    n_queries: int = 8
    n_keys: int = 64
    n_values: int = 64

    def __post_init__(self):
        if not 1 <= self.n_queries <= self.n_pairs <= self.n_keys or self.n_values < 1:
            raise ValueError(f"MQAR needs 1 <= n_queries <= n_pairs <= n_keys and n_values >= 1, got {self}")

    @property
    def seq_len(self) -> int:
        return 2 * (self.n_pairs + self.n_queries)

    @property
    def vocab_needed(self) -> int:
        return 1 + self.n_keys + self.n_values

    @property
    def chance(self) -> float:
        """Accuracy of guessing a value uniformly: what a model that cannot recall gets."""
        return 1 / self.n_values


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    steps: int = 300
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    eval_batch_size: int = 256
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class MQARResult:
    """accuracy: fraction of held-out answers predicted exactly (argmax over the vocabulary).
    losses: the training loss at every step (answers only, nats)."""
    accuracy: float
    chance: float
    losses: tuple[float, ...]


def make_batch(task: MQARTask, key, batch_size: int):
    """-> tokens [B, T] int32, targets [B, T] int32 (the next token), answer mask [B, T] bool."""
    k_keys, k_values, k_queries = jax.random.split(key, 3)
    rows = jax.random.split(k_keys, batch_size)
    # Distinct keys per row: the first n_pairs of a random permutation of the key range.
    keys = jax.vmap(lambda k: jax.random.permutation(k, task.n_keys)[:task.n_pairs])(rows) + 1  # [B, n]
    values = jax.random.randint(k_values, (batch_size, task.n_pairs), 0, task.n_values) + 1 + task.n_keys
    which = jax.vmap(lambda k: jax.random.permutation(k, task.n_pairs)[:task.n_queries])(
        jax.random.split(k_queries, batch_size))  # [B, m]: the pairs asked for
    queries = jnp.take_along_axis(keys, which, axis=1)
    answers = jnp.take_along_axis(values, which, axis=1)
    interleave = lambda a, b: jnp.stack([a, b], axis=2).reshape(batch_size, -1)  # noqa: E731
    tokens = jnp.concatenate([interleave(keys, values), interleave(queries, answers)], axis=1).astype(jnp.int32)
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros((batch_size, 1), jnp.int32)], axis=1)
    position = jnp.arange(task.seq_len)
    is_query = (position >= 2 * task.n_pairs) & (position % 2 == 0)
    return tokens, targets, jnp.broadcast_to(is_query, tokens.shape)


def answer_loss(model, params, tokens, targets, mask):
    """Mean cross-entropy (nats) of the answers."""
    logits = model.forward(params, tokens)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * mask) / jnp.sum(mask)


def answer_accuracy(model, params, tokens, targets, mask) -> jax.Array:
    predicted = jnp.argmax(model.forward(params, tokens), axis=-1)
    return jnp.sum((predicted == targets) & mask) / jnp.sum(mask)


def train(config: ModelConfig, task: MQARTask = MQARTask(), settings: TrainSettings = TrainSettings()) -> MQARResult:
    """Train a fresh model of `config` (in float32: the architecture is probed, not its
    precision) on MQAR with AdamW; return its accuracy on a held-out batch. Deterministic
    by `settings.seed`."""
    if task.vocab_needed > config.vocab_size:
        raise ValueError(f"MQAR with {task.n_keys} keys and {task.n_values} values needs a vocabulary of "
                         f"{task.vocab_needed}; {config.name} has {config.vocab_size}")
    model = build(config.replace(dtype="float32"))
    k_train, k_eval = jax.random.split(jax.random.key(settings.seed))
    optimizer = optax.adamw(settings.learning_rate, weight_decay=settings.weight_decay)
    # Eager init with an "unsafe_rbg" key: no whole-model compile (a jitted threefry init takes
    # a CPU seconds), and still deterministic by seed.
    params = model.init(jax.random.key(settings.seed, impl="unsafe_rbg"))
    opt_state = optimizer.init(params)

    # One jitted step called from Python: XLA compiles it ~4x faster than a lax.scan over all
    # steps, and a tiny model's step costs far more than the dispatch.
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, index):
        batch = make_batch(task, jax.random.fold_in(k_train, index), settings.batch_size)
        loss, grads = jax.value_and_grad(lambda p: answer_loss(model, p, *batch))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def evaluate(params):  # k_eval never draws a training batch: these sequences are unseen
        return answer_accuracy(model, params, *make_batch(task, k_eval, settings.eval_batch_size))

    losses = []
    for index in range(settings.steps):
        params, opt_state, loss = step(params, opt_state, index)
        losses.append(loss)
    accuracy, losses = jax.device_get((evaluate(params), losses))
    return MQARResult(accuracy=float(accuracy), chance=task.chance, losses=tuple(float(x) for x in losses))
