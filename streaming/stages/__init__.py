"""Stage pipelines: one pipeline's forward split across processes, one process per device.

- `transport`: header-plus-tensors messages over torch.distributed point-to-point (NCCL on
  GPUs, gloo on CPU), sent asynchronously so transfer overlaps compute.
- `group`: the processes: this one is rank 0 (it runs the pipeline and the first stage), the
  others are started here and host the later stages; all of them are stopped with it.
- `balance`: the block scheduler's policy: the split that evens out measured stage times, and
  when a move is worth making (hysteresis).
- `placement`: what a pipeline declares (its stages) and how a server splits it.
"""
