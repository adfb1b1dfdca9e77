"""A torchrun worker (2 gloo processes) for the multi-node checks of `tests/test_train.py`: the resume checkpoint
chosen by rank 0 and broadcast, and the shared-filesystem probe. Each rank may be given its own folder, which is how
two nodes whose views of the run folder differ look to the code.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_checks.py MODE BASE
"""
import json, sys
from pathlib import Path

import torch.distributed as dist

from lion_nb.core import LionError
from lion_nb.train import agreed_checkpoint, check_shared_folder, latest_checkpoint

mode, base = sys.argv[1], Path(sys.argv[2])
dist.init_process_group('gloo')
rank, world = dist.get_rank(), dist.get_world_size()
name = lambda p: p.name if p is not None else None
if mode == 'resume':                        # each rank's own view of `checkpoints/`
    out = base/f'rank{rank}'
    res = {'own': name(latest_checkpoint(out)), 'agreed': name(agreed_checkpoint(out, rank))}
else:                                       # 'shared': one folder for all; 'private': one per rank
    out = base/'shared' if mode == 'shared' else base/f'rank{rank}'
    out.mkdir(parents=True, exist_ok=True)
    try:
        check_shared_folder(out, rank, world)
        res = {'ok': True}
    except LionError as e: res = {'ok': False, 'error': str(e)}
    res['left'] = sorted(p.name for p in out.iterdir())
(base/f'result_{rank}.json').write_text(json.dumps(res))
dist.destroy_process_group()
