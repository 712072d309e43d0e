"""torch.distributed for Ray Train workers, listening on the node's own Ray address only.

Ray Train's default setup lets torch's TCPStore (the rendezvous, rank 0) listen on every interface
of the machine, and it has no authentication. Here rank 0 binds the store's socket to the address
Ray runs the node on (127.0.0.1 for the embedded local Ray; the node's private address on a
cluster) and hands it to the TCPStore, and each worker's gloo device (nccl's bootstrap socket on
GPUs) sits on its own node's address too.
"""
from __future__ import annotations

import datetime
import fcntl
import os
import socket
import struct

from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

_store_socket: socket.socket | None = None  # rank 0's listening socket, between the two setup calls
SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def node_address() -> str:
    import ray

    return ray.util.get_node_ip_address()


def bind_store_socket() -> tuple[str, int]:
    """On rank 0: a listening socket on this node's address and a free port, kept for the TCPStore."""
    global _store_socket
    address = node_address()
    _store_socket = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    _store_socket.bind((address, 0))
    _store_socket.listen(128)
    return address, _store_socket.getsockname()[1]


def interface_with_address(address: str) -> str | None:
    """The network interface (lo, eth0, ...) that holds an IPv4 address, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue
            if socket.inet_ntoa(packed[20:24]) == address:
                return name
    return None


def process_group_options(backend: str):
    """Where this worker's collectives listen: its own node's address."""
    import torch.distributed as dist

    own = node_address()
    if backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=own)]
        return options
    if backend == "nccl" and "NCCL_SOCKET_IFNAME" not in os.environ:
        interface = interface_with_address(own)
        if interface:
            os.environ["NCCL_SOCKET_IFNAME"] = interface
    return None


def init_process_group(backend: str, address: str, port: int, world_rank: int, world_size: int, timeout_s: int) -> None:
    import torch.distributed as dist

    global _store_socket
    timeout = datetime.timedelta(seconds=timeout_s)
    listen_fd = _store_socket.detach() if world_rank == 0 else None
    _store_socket = None
    store = dist.TCPStore(address, port, world_size, is_master=world_rank == 0, timeout=timeout,
                          master_listen_fd=listen_fd)
    os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port))
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # fail on a hung collective, as Ray does
    dist.init_process_group(backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout,
                            pg_options=process_group_options(backend))


class NodeAddressTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        import ray

        address, port = worker_group.execute_single(0, bind_store_socket)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(rank, init_process_group, backend=backend_config.backend,
                                                   address=address, port=port, world_rank=rank,
                                                   world_size=len(worker_group), timeout_s=backend_config.timeout_s)
                 for rank in range(len(worker_group))])


class NodeAddressTorchConfig(TorchConfig):
    """Ray Train's TorchConfig with the rendezvous and collectives on the node's address."""

    @property
    def backend_cls(self):
        return NodeAddressTorchBackend
