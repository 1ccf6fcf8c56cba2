# CoC-small-4 (2x2 centres per region) Mask R-CNN, COCO 1x. Original name: mask_rcnn_coc_small_2_fpn_1x_coco.py
_base_ = './_base_/mask-rcnn_coc_fpn_1x_coco.py'

model = dict(backbone=dict(arch='small', proposal=2))
