"""MQAR: the sequences say what the task says, and brief training really learns to recall."""

import jax
import numpy as np
import pytest

import chimera
from chimera.runtime import mqar


def test_batch_layout_matches_a_lookup_table():
    """Every answer is the value its key was bound to earlier in the same sequence (checked with a
    plain dict), keys are distinct, ranges are disjoint, only answers are scored, and a batch is
    a function of its key."""
    task = mqar.MQARTask(n_pairs=6, n_queries=4, n_keys=10, n_values=7)
    make = jax.jit(lambda key: mqar.make_batch(task, key, 16))
    tokens, targets, mask = map(np.asarray, make(jax.random.key(3)))
    assert np.array_equal(tokens, np.asarray(make(jax.random.key(3))[0]))
    assert not np.array_equal(tokens, np.asarray(make(jax.random.key(4))[0]))
    assert tokens.shape == targets.shape == mask.shape == (16, task.seq_len)
    np.testing.assert_array_equal(targets[:, :-1], tokens[:, 1:])  # next-token targets
    for row, row_mask in zip(tokens, mask):
        keys, values = row[0:2 * task.n_pairs:2], row[1:2 * task.n_pairs:2]
        assert len(set(keys)) == task.n_pairs and all(1 <= k <= task.n_keys for k in keys)
        assert all(task.n_keys < v <= task.n_keys + task.n_values for v in values)
        table = dict(zip(keys, values))
        queries, answers = row[2 * task.n_pairs::2], row[2 * task.n_pairs + 1::2]
        assert len(set(queries)) == task.n_queries
        assert [table[q] for q in queries] == list(answers)
        scored = np.flatnonzero(row_mask)
        np.testing.assert_array_equal(scored, 2 * task.n_pairs + 2 * np.arange(task.n_queries))


def test_training_learns_to_recall():
    """On an easy setting (2 pairs, 8 values: chance 1/8) a tiny transformer trained for 100 steps
    recalls most held-out answers; broken training (no gradient flow, wrong targets or mask)
    stays near chance."""
    task = mqar.MQARTask(n_pairs=2, n_queries=2, n_keys=8, n_values=8)
    result = mqar.train(chimera.load_config("llama-tiny"), task, mqar.TrainSettings(steps=100))
    assert len(result.losses) == 100 and result.chance == pytest.approx(1 / 8)
    assert np.mean(result.losses[-10:]) < 0.5 * np.mean(result.losses[:10])
    assert result.accuracy > 4 * result.chance


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="n_queries <= n_pairs"):
        mqar.MQARTask(n_pairs=2, n_queries=3)
    small_vocab = chimera.load_config("llama-tiny").replace(vocab_size=32)
    with pytest.raises(ValueError, match="needs a vocabulary of 129"):
        mqar.train(small_vocab, mqar.MQARTask(n_keys=64, n_values=64))
