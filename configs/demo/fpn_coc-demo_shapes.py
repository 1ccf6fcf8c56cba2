# The segmentation demo: Semantic FPN + the same small Context Cluster backbone as the detection demo,
# trained from scratch on the bundled synthetic shapes as semantic classes (tools/make_demo_data.py
# --layout ade -> data/coc_demo_seg, ADE20K's folder layout), on the CPU in a few minutes, then mIoU.
# Same model code and mmseg recipe structure as configs/segmentation/, smaller widths and schedule.
_base_ = ['mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py', './_base_/coc-demo_backbone.py']

custom_imports = dict(imports=['coc_det'], allow_failed_imports=False)
# mmseg's visualizer on contiguous images (its browse_dataset.py fails otherwise: coc_det.datasets)
visualizer = dict(type='CocSegLocalVisualizer')
# write checkpoints that torch.load's weights-only default reads with nothing allowlisted
custom_hooks = [dict(type='WeightsOnlyCheckpointHook')]

data_root = 'data/coc_demo_seg/'
image_size = 128
ch = 64  # FPN / head width
max_iters = 500
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    pretrained=None,
    data_preprocessor=dict(size=(image_size, image_size), test_cfg=dict(size_divisor=32)),
    backbone={{_base_.demo_backbone}},
    neck=dict(in_channels={{_base_.demo_channels}}, out_channels=ch),
    # 4 classes: the background and the 3 shapes (coc_det.datasets.SEG_CLASSES)
    decode_head=dict(in_channels=[ch] * 4, channels=ch, dropout_ratio=0.0, num_classes=4, norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# the demo set's classes and palette are the dataset type's METAINFO (coc_det.datasets)
dataset = dict(type='CocDemoShapesSegDataset', data_root=data_root)
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(**dataset, data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(**dataset, data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=50, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(by_epoch=False, interval=max_iters))
env_cfg = dict(cudnn_benchmark=False)
