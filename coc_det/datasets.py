"""The bundled demo data's classes and dataset types (``tools/make_demo_data.py`` draws and writes them).

``SHAPES`` are the object classes in label order (COCO category ids 1, 2, 3; segmentation labels 1, 2, 3 with 0
the background); ``SHAPE_COLOURS`` their base RGB colours, also the segmentation palette. Where mmdet / mmseg are
installed, ``import coc_det`` registers ``CocDemoShapesDataset`` (mmdet, COCO format) and ``CocDemoShapesSegDataset``
(mmseg, ADE20K layout) with these classes in their ``METAINFO``, where OpenMMLab's tools look for them
(mmseg's ``browse_dataset.py`` reads the class attribute, not a config's ``metainfo``).
"""
SHAPES = ("circle", "square", "triangle")
SHAPE_COLOURS = ((220, 60, 50), (60, 200, 70), (70, 110, 230))
SEG_CLASSES = ("background",) + SHAPES
SEG_PALETTE = [[0, 0, 0]] + [list(c) for c in SHAPE_COLOURS]


def register_det(datasets) -> None:
    """``CocDemoShapesDataset`` in mmdet's ``DATASETS``."""
    from mmdet.datasets import CocoDataset

    class CocDemoShapesDataset(CocoDataset):
        """The detection demo set (COCO format) of ``tools/make_demo_data.py``."""
        METAINFO = dict(classes=SHAPES, palette=[tuple(c) for c in SHAPE_COLOURS])

    datasets.register_module(force=True)(CocDemoShapesDataset)


def register_seg(datasets) -> None:
    """``CocDemoShapesSegDataset`` in mmseg's ``DATASETS``."""
    from mmseg.datasets import BaseSegDataset

    class CocDemoShapesSegDataset(BaseSegDataset):
        """The segmentation demo set (ADE20K layout, ``.png`` images and label maps) of ``make_demo_data.py``."""
        METAINFO = dict(classes=SEG_CLASSES, palette=SEG_PALETTE)

        def __init__(self, img_suffix=".png", seg_map_suffix=".png", reduce_zero_label=False, **kwargs):
            super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                             reduce_zero_label=reduce_zero_label, **kwargs)

    datasets.register_module(force=True)(CocDemoShapesSegDataset)


def register_seg_visualizer(visualizers) -> None:
    """``CocSegLocalVisualizer`` in mmseg's ``VISUALIZERS`` (the segmentation configs' visualizer)."""
    import numpy as np
    from mmseg.visualization import SegLocalVisualizer

    class CocSegLocalVisualizer(SegLocalVisualizer):
        """mmseg's ``SegLocalVisualizer`` drawing on a C-contiguous copy of the image: mmseg 1.2.2 draws the class
        labels with ``cv2.rectangle`` into ``np.zeros_like(image)``, which keeps the image's strides, and OpenCV
        refuses the channel-strided array that ``browse_dataset.py`` passes (mmsegmentation issue #3405)."""

        def _draw_sem_seg(self, image, sem_seg, classes, palette, with_labels=True):
            return super()._draw_sem_seg(np.ascontiguousarray(image), sem_seg, classes, palette, with_labels)

    visualizers.register_module(force=True)(CocSegLocalVisualizer)
