"""The checkpoint ``--resume`` will load, checked before anything is built."""
from __future__ import annotations

import os.path as osp


def _intact(path: str) -> bool:
    """A torch checkpoint whose zip directory reads (a truncated or empty file's does not); cheap: the
    weights are not read."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def resume_checkpoint(work_dir: str, resume: str) -> str | None:
    """The checkpoint ``--resume`` (``resume='auto'``: the work dir's ``last_checkpoint``) will load, checked
    before anything is built: a missing, empty or truncated one (a run killed while saving) is named, with the
    newest intact checkpoint of the work dir offered. None when there is nothing to resume (a fresh run)."""
    import glob
    if resume == "auto":
        last = osp.join(work_dir, "last_checkpoint")
        if not osp.isfile(last):
            return None  # mmengine starts from scratch, as it always has
        with open(last) as f:
            path = f.read().strip()
    else:
        path = resume
    if path.startswith(("http://", "https://")) or _intact(path):
        return path
    others = sorted((p for p in glob.glob(osp.join(work_dir, "*.pth")) if osp.abspath(p) != osp.abspath(path)
                     and _intact(p)), key=osp.getmtime)
    what = "does not exist" if not osp.exists(path) else (
        "is empty" if osp.getsize(path) == 0 else "is truncated or not a torch checkpoint")
    offer = f"; the newest intact one is {others[-1]}: --resume {others[-1]}" if others else ""
    raise SystemExit(f"error: the checkpoint to resume from, {path}, {what}{offer}")
