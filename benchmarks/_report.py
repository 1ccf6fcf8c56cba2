"""Shared output of the benchmarks: print the markdown table, optionally write it and the rows."""
import json

import torch


def report(md: str, rows: list, device: str, json_path: str = None, md_path: str = None):
    print("\n" + md)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(dict(device=device, torch=torch.__version__, rows=rows), f, indent=1)
    if md_path:
        with open(md_path, "w") as f:
            f.write(md + "\n")
