"""Multi-process runs on machines without GPUs (gloo, no SyncBN), and the process group's tear-down."""
from __future__ import annotations


def sync_bn_to_bn(node) -> int:
    """Replace ``type='SyncBN'`` norm configs in a config tree by ``'BN'``; returns how many."""
    n = 0
    if isinstance(node, dict):
        if node.get("type") == "SyncBN":
            node["type"] = "BN"
            n += 1
        for v in node.values():
            n += sync_bn_to_bn(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            n += sync_bn_to_bn(v)
    return n


def prepare_cpu_distributed(cfg):
    """Multi-process CPU training (gloo): mmengine 0.10 assumes a GPU per process in two places, so

    * the process group is created here (mmengine's init_dist calls torch.cuda.set_device first), and
    * the model is wrapped by a DDP that drops the per-process ``device_ids`` (CPU modules take none).
    """
    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel
    from mmengine.registry import MODEL_WRAPPERS

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")

    if "CPUDistributedDataParallel" not in MODEL_WRAPPERS.module_dict:
        @MODEL_WRAPPERS.register_module()
        class CPUDistributedDataParallel(MMDistributedDataParallel):
            def __init__(self, module, device_ids=None, **kwargs):
                super().__init__(module=module, device_ids=None, **kwargs)

    wrapper = dict(cfg.get("model_wrapper_cfg") or {})
    wrapper.update(type="CPUDistributedDataParallel")
    wrapper.setdefault("broadcast_buffers", False)
    wrapper.setdefault("find_unused_parameters", cfg.get("find_unused_parameters", False))
    cfg.model_wrapper_cfg = wrapper


def close_distributed():
    """Tear the process group down before the interpreter exits: left to static destruction, gloo's
    worker threads were seen to abort a finished 2-process CPU run ("terminate called without an
    active exception", SIGABRT) after training and validation had completed."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
