# Mask R-CNN + Context Cluster backbone, COCO 1x (12 epochs, steps at 8 and 11), as the public CoC
# detection configs: AdamW lr 2e-4, weight decay 1e-4, no gradient clipping, 4 images per GPU x 8 GPUs.
# With fewer GPUs pass --auto-scale-lr to rescale the lr from the base batch of 32.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['coc_det'], allow_failed_imports=False)

# ImageNet-pretrained CoC checkpoint (the public classification weights load as they are):
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/coc_small.pth.tar
# Left at None, the backbone starts from random weights (and says so in the log).
pretrained = None

model = dict(
    data_preprocessor=dict(pad_size_divisor=32),  # every stage's map must divide by its fold
    backbone=dict(
        _delete_=True,
        type='ContextCluster',
        arch='small',
        proposal=5,
        fold=[8, 4, 2, 1],
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.0,
        # the fused Triton kernels: these are GPU recipes. Without CUDA this raises a clear error instead of
        # silently running a slower path; 'auto' (Triton on CUDA, memory-light torch on the CPU) or
        # 'light' choose otherwise (--cfg-options model.backbone.mixer_impl=auto)
        mixer_impl='triton',
        # the paper's Eq. 1, as today's public code and ImageNet checkpoints; tools/test.py switches to 'count'
        # by itself for detectors trained by the original mmdet 2.x code (see docs/op.md, "Denominator")
        denominator='similarity',
        # True: torch.compile the whole backbone as one graph (inductor fuses GroupNorm, layer scale, residuals,
        # MLP; image sizes symbolic, so varying padded sizes do not recompile). See docs/performance.md,
        # "Compiled backbone".
        compile=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 320, 512], out_channels=256, num_outs=5))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0002, weight_decay=0.0001),
    clip_grad=None)

train_dataloader = dict(batch_size=4, num_workers=4)
# reseed the random generators every epoch from (seed, epoch, rank): --resume then continues exactly;
# write checkpoints that torch.load's weights-only default reads with nothing allowlisted
custom_hooks = [dict(type='EpochSeedHook'), dict(type='WeightsOnlyCheckpointHook')]
auto_scale_lr = dict(enable=False, base_batch_size=32)
