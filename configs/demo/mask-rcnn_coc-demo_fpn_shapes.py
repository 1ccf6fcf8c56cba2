# The README's main job: Mask R-CNN + a small Context Cluster backbone trained from scratch on the bundled
# synthetic shapes (tools/make_demo_data.py -> data/coc_demo), on the CPU in a few minutes, then COCO
# bbox/segm evaluation with pycocotools. Same model code as the COCO configs, smaller widths.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './_base_/coc-demo_backbone.py']

custom_imports = dict(imports=['coc_det'], allow_failed_imports=False)

# the demo set's classes are the dataset type's METAINFO (coc_det.datasets.SHAPES: 3 classes)
dataset_type = 'CocDemoShapesDataset'
data_root = 'data/coc_demo/'
image_size = 128
ch = 64  # FPN / head width

model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone={{_base_.demo_backbone}},
    neck=dict(in_channels={{_base_.demo_channels}}, out_channels=ch, num_outs=5),
    rpn_head=dict(in_channels=ch, feat_channels=ch,
                  anchor_generator=dict(scales=[4])),  # 16..256 px anchors for 18..50 px objects
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=ch),
        bbox_head=dict(in_channels=ch, fc_out_channels=256, num_classes=3),
        mask_roi_extractor=dict(out_channels=ch),
        mask_head=dict(num_convs=2, in_channels=ch, conv_out_channels=ch, num_classes=3)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=300),
        rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),  # a no-op that records scale_factor
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(type=dataset_type, data_root=data_root,
                 ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(type=dataset_type, data_root=data_root,
                 ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json', metric=['bbox', 'segm'])
test_evaluator = val_evaluator

max_epochs = 6
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[5], gamma=0.1),
]
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4))
auto_scale_lr = dict(enable=False, base_batch_size=4)
# reseed the random generators every epoch from (seed, epoch, rank): --resume then continues exactly;
# write checkpoints that torch.load's weights-only default reads with nothing allowlisted
custom_hooks = [dict(type='EpochSeedHook'), dict(type='WeightsOnlyCheckpointHook')]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs))
