# The small Context Cluster backbone both demos train from scratch (detection and segmentation), defined once.
demo_backbone = dict(
    _delete_=True,
    type='ContextCluster',
    arch=dict(layers=[1, 1, 2, 1], embed_dims=[32, 64, 128, 192], mlp_ratios=[4, 4, 4, 4],
              heads=[2, 2, 4, 4], head_dim=[16, 16, 16, 16]),
    proposal=2,
    fold=[8, 4, 2, 1],
    mixer_impl='auto',
    init_cfg=None)
demo_channels = demo_backbone['arch']['embed_dims']  # its stage widths: the neck's inputs
