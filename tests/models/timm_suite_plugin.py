"""pytest plugin for running timm's own ``tests/test_models.py`` against the ``coc_*`` models (loaded with
``-p timm_suite_plugin`` by ``test_timm_suite.py``; never collected as a test file itself).

It registers the models (``import coc_det``) before timm's file is imported, and widens the one filter timm
applies by module name: the feature-API tests (``forward_intermediates``, the ``features_only`` getter, the
prune contract) take ``list_models(module=<timm's module names>)``, which can never name a model registered
outside timm; the ``coc_*`` models are added to those lists (with every other filter still applied)."""
import os

import timm
import timm.models

import coc_det  # noqa: F401  (registers coc_tiny ... coc_base_dim96 in timm)
from coc_det.classifier import TIMM_MODELS

_list_models = timm.list_models


def list_models(filter="", module="", *args, **kwargs):
    names = _list_models(filter, module, *args, **kwargs)
    if not module:
        return names
    ours = _list_models(filter, "", *args, **kwargs)
    extra = [n for n in ours if n.split(".")[0] in TIMM_MODELS and n not in names]
    return sorted(names + extra) if extra else names


list_models.__doc__ = _list_models.__doc__
timm.list_models = list_models
timm.models.list_models = list_models


def pytest_collection_modifyitems(config, items):
    """Keep only the coc_* cases (the file parametrises over every timm model); ``COC_TIMM_MODELS`` (names,
    comma-separated) keeps only those models' cases."""
    keep = set(os.environ.get("COC_TIMM_MODELS", "").split(",")) - {""} or set(TIMM_MODELS)

    def ours(item):
        spec = getattr(item, "callspec", None)
        return spec is not None and spec.params.get("model_name") in keep
    config.hook.pytest_deselected(items=[it for it in items if not ours(it)])
    items[:] = [it for it in items if ours(it)]
