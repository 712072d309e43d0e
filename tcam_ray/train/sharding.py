"""How Ray Train hands the datasets to the workers (on Train's controller): each worker a shard of the
training split, equal in size so that DDP steps stay in lockstep, and a shard of the eval split in which
every frame comes exactly once (Ray's own split evens shards out by dropping rows, which would change
CorLoc); the workers' evaluator counts are then summed (Runner.validate)."""
from __future__ import annotations

from ray.train import DataConfig


class TrainAndEvalShards(DataConfig):
    def __init__(self, eval_split: str):
        super().__init__(datasets_to_split=["train", eval_split])
        self.eval_split = eval_split

    def configure(self, datasets: dict, world_size: int, worker_handles, worker_node_ids, **kwargs) -> list[dict]:
        others = {name: dataset for name, dataset in datasets.items() if name != self.eval_split}
        output = super().configure(others, world_size, worker_handles, worker_node_ids, **kwargs)
        if self.eval_split in datasets:
            evaluated = datasets[self.eval_split].copy(datasets[self.eval_split])
            if evaluated.name is None:
                evaluated.set_name(self.eval_split)
            evaluated.context.execution_options = self._resolve_execution_options(self.eval_split)
            hints = worker_node_ids if self._enable_shard_locality else None
            for shards, shard in zip(output, evaluated.streaming_split(world_size, equal=False, locality_hints=hints)):
                shards[self.eval_split] = shard
        return output
