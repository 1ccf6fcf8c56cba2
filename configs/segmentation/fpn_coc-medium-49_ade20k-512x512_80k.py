# Semantic FPN + CoC-medium-49 (7x7 centres per region), ADE20K 512x512, 80k iterations.
# Original name: fpn_coc_medium_7_ade20k_80k.py (mmseg 0.19); its published mIoU: 40.8 (trained with the 'count'
# denominator, before the public code's fix; see docs/op.md, "Denominator").
_base_ = './_base_/fpn_coc_ade20k-512x512_80k.py'
model = dict(backbone=dict(arch='medium', proposal=7))
