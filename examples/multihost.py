"""Data-parallel training of a LIF layer on several processes (hosts), one per host.

    python examples/multihost.py COORDINATOR_HOST:PORT NUM_PROCESSES PROCESS_ID

Start it once on every host, with the same coordinator (the address of process 0) and
number of processes, each with its own id. The training loop is the single-host one of
docs/scaling.md; two things change: ``jax.distributed.initialize`` first, and each process
builds the global arrays from the blocks of its own devices (``make_array_from_callback``).
"""

import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from spikefuse.neurons import LIF
from spikefuse.surrogate import Sigmoid

coordinator, num_processes, process_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
jax.config.update("jax_cpu_collectives_implementation", "gloo")  # for CPU devices only
jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                           process_id=process_id)  # first, once per process
mesh = jax.make_mesh((jax.device_count(),), ("data",))  # all devices of all processes
batch = NamedSharding(mesh, P(None, "data"))  # x_seq is [T, batch, features]: split the batch

T, B, D, H, C = 8, 128, 16, 32, 4  # B splits evenly over 1, 2, 4, 8 or 16 devices
rng = np.random.default_rng(0)  # every process draws the same data (or reads its own part)
labels = rng.integers(0, C, B)
rates = 1 / (1 + np.exp(-2 * rng.normal(size=(C, D))))  # a firing-rate pattern per class
x_seq = (rng.random((T, B, D)) < rates[labels]).astype(np.float32)
params = {"w1": rng.normal(0, D ** -0.5, (D, H)).astype(np.float32),
          "w2": rng.normal(0, H ** -0.5, (H, C)).astype(np.float32)}
lif = LIF(tau=2.0, surrogate=Sigmoid(alpha=4.0))


def loss_fn(params, x_seq, labels):
    spikes, _ = lif(x_seq @ params["w1"])  # [T, batch, H]: each device runs its shard
    logits = spikes.mean(0) @ params["w2"]  # firing rates -> class scores
    return -(jax.nn.one_hot(labels, C) * jax.nn.log_softmax(logits)).sum(-1).mean()


@jax.jit
def train_step(params, x_seq, labels):
    loss, grads = jax.value_and_grad(loss_fn)(params, x_seq, labels)  # grads: all-reduced
    return jax.tree.map(lambda p, g: p - 1.0 * g, params, grads), loss


def global_array(data, sharding):  # one array over all processes; here only local blocks
    return jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])


with jax.set_mesh(mesh):
    params = jax.tree.map(lambda p: global_array(p, NamedSharding(mesh, P())), params)
    x_seq = global_array(x_seq, batch)
    labels = global_array(labels, NamedSharding(mesh, P("data")))
    losses = []
    for step in range(40):
        params, loss = train_step(params, x_seq, labels)
        losses.append(float(loss))  # the loss is replicated: every process can read it
    hlo = train_step.lower(params, x_seq, labels).compile().as_text()
print(f"process {jax.process_index()} of {jax.process_count()}: "
      f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; all-gathers: {hlo.count('all-gather')}")
