"""`dpt` as `accelerate launch` starts it, reporting how many DDP wrappers are alive when the
process group is destroyed (tests/test_multiprocess.py).

It must be none: a DDP wrapper freed after `destroy_process_group` frees the group from its
reducer with the GIL held, and gloo's destructor then waits on a worker thread that needs
the GIL (the hang at exit that `training.loop._end` prevents).
"""

import gc
import sys

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

_destroy = dist.destroy_process_group


def _counting_destroy(*args, **kwargs):
    alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    print(f"DDP wrappers alive at destroy_process_group: {alive}", flush=True)
    return _destroy(*args, **kwargs)


if __name__ == "__main__":
    dist.destroy_process_group = _counting_destroy
    from dpt_t2i.cli import main

    sys.exit(main(sys.argv[1:]))
