"""The optimizer of the head: Adam through TensorFlow's fused kernel, and its learning rate
schedule (private: used by the training loop)."""

from __future__ import annotations

import math

from tripletsk._tensorflow import import_tensorflow

tf = import_tensorflow()


class FusedAdam:
    """Adam exactly as Keras computes it, applied by TensorFlow's fused kernel.

    ``keras.optimizers.Adam`` updates a variable with several element-wise passes (each moment,
    then the variable), each reading and writing the whole tensor; ``ResourceApplyAdam`` makes
    one pass. On the 2048 x 512 kernel that is 1.0 ms instead of 2.8 ms per step (2 Zen 3 cores),
    a third of a 64-triplet step (``benchmarks/cached_vs_end_to_end.py``). The update rule is
    the same (``epsilon`` added to ``sqrt(v)``, bias correction folded into the step size);
    ``tests/training/test_loop.py`` checks it against Keras step by step.
    """

    def __init__(
        self,
        variables,
        learning_rate: float,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        weight_decay: float = 0.0,
    ):
        self.variables = list(variables)
        # Slots are created here, not in the first traced call (which would trace twice).
        self.moments = [
            (tf.Variable(tf.zeros_like(v), trainable=False),
             tf.Variable(tf.zeros_like(v), trainable=False))
            for v in self.variables
        ]  # fmt: skip
        self.iterations = tf.Variable(0.0, trainable=False)
        hyper = {"lr": learning_rate, "beta1": beta_1, "beta2": beta_2, "epsilon": epsilon}
        self.hyper = {name: tf.constant(value, tf.float32) for name, value in hyper.items()}
        # A variable, so that a schedule can change it between epochs without retracing.
        self.hyper["lr"] = tf.Variable(learning_rate, trainable=False, dtype=tf.float32)
        # Decoupled weight decay (AdamW, Loshchilov & Hutter 2019), on kernels only. Whether
        # there is any is in the graph; its value is a variable, so that a pooled graph serves
        # fits with other decays (tripletsk.training.compiled).
        self.decayed = [len(v.shape) > 1 for v in self.variables] if weight_decay else []
        self.weight_decay = tf.Variable(weight_decay, trainable=False, dtype=tf.float32)

    def set_learning_rate(self, value: float) -> None:
        self.hyper["lr"].assign(value)

    def reset(self, learning_rate: float, weight_decay: float = 0.0) -> None:
        """Back to the state of a new optimizer: zero moments, step 0, ``learning_rate`` and
        ``weight_decay`` (which applies only if this optimizer was made with a decay)."""
        if bool(weight_decay) != bool(self.decayed):
            raise ValueError("weight_decay can change its value, not whether there is any")
        for m, v in self.moments:
            m.assign(tf.zeros_like(m))
            v.assign(tf.zeros_like(v))
        self.iterations.assign(0.0)
        self.set_learning_rate(learning_rate)
        self.weight_decay.assign(weight_decay)

    def apply_gradients(self, grads) -> None:
        step = self.iterations.assign_add(1.0)
        hyper = self.hyper
        beta1_power = tf.pow(hyper["beta1"], step)
        beta2_power = tf.pow(hyper["beta2"], step)
        for variable, decay in zip(self.variables, self.decayed, strict=False):
            if decay:
                variable.assign_sub(hyper["lr"] * self.weight_decay * variable)
        for variable, (m, v), grad in zip(self.variables, self.moments, grads, strict=True):
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=beta1_power,
                beta2_power=beta2_power,
                grad=grad,
                **hyper,
            )


def epoch_learning_rate(schedule: str, learning_rate: float, epoch: int, max_epochs: int) -> float:
    """The learning rate of ``epoch`` (from 0): constant, or cosine decay to 0 at ``max_epochs``."""
    if schedule == "constant":
        return learning_rate
    if schedule == "cosine":
        return float(learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / max_epochs)))
    raise ValueError(f"learning_rate_schedule must be 'constant' or 'cosine'; got {schedule!r}.")
