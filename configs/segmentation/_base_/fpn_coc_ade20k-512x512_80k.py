# Semantic FPN + Context Cluster on ADE20K, the public CoC recipe (theirs: mmseg 0.19 with PVT's settings):
# AdamW lr 1e-4, weight decay 1e-4, poly schedule (power 0.9) down to 0 over 80k iterations, 512x512 crops,
# 150 classes, 8 GPUs x 4 images (their configs keep mmseg's 4 images per GPU and say they train on 8 GPUs,
# "so lr*2 and max_iters/2" of PVT's 4-GPU schedule, with gpu_multiples = 1). With another number of GPUs
# pass --auto-scale-lr to rescale the lr from the base batch of 32.
_base_ = 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['coc_det'], allow_failed_imports=False)
# mmseg's visualizer on contiguous images (its browse_dataset.py fails otherwise: coc_det.datasets)
visualizer = dict(type='CocSegLocalVisualizer')
# write checkpoints that torch.load's weights-only default reads with nothing allowlisted
custom_hooks = [dict(type='WeightsOnlyCheckpointHook')]

# ImageNet-pretrained CoC checkpoint: --cfg-options model.backbone.init_cfg.checkpoint=/path/to/coc_small.pth.tar
pretrained = None
max_iters = 80000
interval = 8000

model = dict(
    pretrained=None,  # the base config's ResNet weights; the backbone's own init_cfg loads CoC weights
    # whole-image testing: pad every image to a multiple of 32 so that each stage's map divides by its fold
    # (the original resized to a multiple of 32 instead, "AlignResize"); the padding is cut off the logits
    data_preprocessor=dict(test_cfg=dict(size_divisor=32)),
    backbone=dict(
        _delete_=True,
        type='ContextCluster',
        arch='small',
        proposal=2,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.0,
        mixer_impl='triton',  # the fused kernels (GPU recipe); 'auto' or 'light' elsewhere
        denominator='similarity',  # today's public ImageNet checkpoints; the paper's ADE20K models used 'count'
        # True: torch.compile the whole backbone as one graph (inductor fuses GroupNorm, layer scale, residuals,
        # MLP; image sizes symbolic, so varying padded sizes do not recompile). See docs/performance.md,
        # "Compiled backbone".
        compile=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 320, 512]),
    decode_head=dict(num_classes=150))

optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=0.0001, weight_decay=0.0001), clip_grad=None)
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=interval)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=interval))
train_dataloader = dict(batch_size=4)  # per GPU, x 8 GPUs
auto_scale_lr = dict(enable=False, base_batch_size=32)
