"""Multi-worker QAT: a custom training loop on ``tf.distribute.MultiWorkerMirroredStrategy``.

Keras 3's ``Model.fit`` does not run under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585,
tensorflow/tensorflow#72388: it fails in the first step), so training on several machines takes a custom loop
that calls ``strategy.run``. :func:`fit_distributed` is that loop, written once for QAT models:

* every replica (all devices of all workers) computes the loss of its share of the global batch, scaled by the
  global batch size (``tf.nn.compute_average_loss``), and the optimizer all-reduces the gradients (SUM), so the
  update is the one of a single process on the whole global batch;
* the wrappers reduce each activation's batch ``max |x|`` with MAX over all replicas of all workers before they
  update their range (:func:`qdq_toolkit.quantizers.batch_amax`), so every worker ends with identical ranges,
  equal to those of one process trained on the same global batches (tested with 2 worker processes);
* only the chief (:func:`is_chief`) should export or save: every worker holds the same model.

How to run it on N machines: start the same script on each machine with ``TF_CONFIG`` naming all workers and this
machine's index (see the README, "Multi-worker QAT")::

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}'
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import keras
import tensorflow as tf


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process is the chief: worker 0 of ``TF_CONFIG`` (or the only process). Export from it only."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.task_type is not None:
        task_type, task_id = resolver.task_type, resolver.task_id
    else:
        task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
        task_type, task_id = task.get("type"), task.get("index", 0)
    return task_type in (None, "chief") or (task_type == "worker" and int(task_id) == 0)


def fit_distributed(
    model: keras.Model,
    dataset: tf.data.Dataset,
    *,
    optimizer: keras.optimizers.Optimizer,
    loss: keras.losses.Loss,
    global_batch_size: int,
    epochs: int = 1,
    strategy: tf.distribute.Strategy | None = None,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` on ``dataset`` with ``strategy.run``; return the mean loss of each epoch.

    Args:
        model: the QAT model, created (``quantize_model``) inside ``strategy.scope()``.
        dataset: a ``tf.data.Dataset`` of ``(x, y)`` **global** batches of ``global_batch_size``; it is split across
            the replicas of all workers (``experimental_distribute_dataset``, sharded by data, so each global batch
            is spread over the workers and every worker must build the same dataset). Batch with
            ``drop_remainder=True`` so that every step has full batches on every replica.
        optimizer: a Keras optimizer created inside ``strategy.scope()``.
        loss: a Keras loss; its reduction is replaced by a per-example loss averaged over the global batch.
        global_batch_size: the number of examples per step across all workers.
        epochs: passes over ``dataset``.
        strategy: defaults to the strategy in scope (``tf.distribute.get_strategy()``).
        on_epoch_end: called as ``on_epoch_end(epoch, mean_loss)`` after each epoch (progress, checkpoints).

    Raises:
        ValueError: ``global_batch_size`` is not a positive multiple of the number of replicas, or the model was
            not created in the strategy's scope.
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if global_batch_size <= 0 or global_batch_size % replicas:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of the {replicas} replicas in sync, "
            "so that every replica gets an equal share of each global batch."
        )
    if replicas > 1 and not all(
        isinstance(v.value, tf.distribute.DistributedValues) for v in model.trainable_variables
    ):
        raise ValueError(
            "The model's variables were not created in this strategy's scope. Call quantize_model (and build the "
            "optimizer) inside `with strategy.scope():`."
        )
    per_example = type(loss).from_config({**loss.get_config(), "reduction": None})

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            predictions = model(x, training=True)
            losses = tf.reshape(per_example(y, predictions), [-1])
            scaled = tf.nn.compute_average_loss(losses, global_batch_size=global_batch_size)
            if model.losses:
                scaled += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return scaled

    @tf.function
    def train_step(batch):
        per_replica = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    distributed = strategy.experimental_distribute_dataset(dataset.with_options(options))
    history = []
    for epoch in range(epochs):
        total, steps = 0.0, 0
        for batch in distributed:
            total += float(train_step(batch))
            steps += 1
        history.append(total / max(steps, 1))
        if on_epoch_end is not None:
            on_epoch_end(epoch, history[-1])
    return history
