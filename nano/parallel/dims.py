"""World size -> the (dp_replicate, dp_shard, tp) device mesh, validated before any weight exists."""

from __future__ import annotations

from dataclasses import dataclass

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from nano.config import ConfigError, Parallelism, dp_degree


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    world_size: int

    @classmethod
    def from_config(cls, cfg: Parallelism, world_size: int) -> ParallelDims:
        dp = dp_degree(cfg, world_size)
        return cls(cfg.data_parallel_replicate_degree, dp // cfg.data_parallel_replicate_degree,
                   cfg.tensor_parallel_degree, world_size)

    @property
    def dp_degree(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def fsdp_enabled(self) -> bool:
        return self.dp_shard > 1 or self.dp_replicate > 1

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    def validate_model(self, n_heads: int, n_kv_heads: int) -> None:
        """Tensor parallel splits whole heads: refuse a degree that does not divide both head counts."""
        for name, heads in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
            if heads % self.tp:
                valid = [d for d in range(1, n_kv_heads + 1) if n_heads % d == 0 and n_kv_heads % d == 0]
                raise ConfigError(
                    f"parallelism.tensor_parallel_degree ({self.tp}) must divide the model's {name} ({heads}); "
                    f"choose a degree among {valid}"
                )

    def build_mesh(self, device_type: str) -> DeviceMesh | None:
        """The named mesh; None for one process, which then runs with no wrappers at all."""
        if self.world_size == 1:
            return None
        names, sizes = ("dp_replicate", "dp_shard", "tp"), (self.dp_replicate, self.dp_shard, self.tp)
        mesh = init_device_mesh(device_type, sizes, mesh_dim_names=names)
        mesh[("dp_replicate", "dp_shard")]._flatten(mesh_dim_name="dp")
        return mesh

    def dp_rank(self, mesh: DeviceMesh | None) -> int:
        """This process's index among the data-parallel ranks: which share of the data it reads."""
        return 0 if mesh is None else mesh["dp"].get_local_rank()
