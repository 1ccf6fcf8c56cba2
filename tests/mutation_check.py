#!/usr/bin/env python
"""Mutation check: plant plausible one-line bugs, one at a time, in a scratch copy of the project and run the
tests that exist to catch each; every mutant must make them fail. Run before a release (not in CI: about
5 minutes on 2 cores: the baselines, then ~8 s a mutant, most of it pytest start-up).

    python tests/mutation_check.py [--only NAME ...] [--list] [--md FILE]

Each mutant is (name, file, exact text, replacement, tests). The text must occur exactly once in the file
(a mutant that no longer applies is reported as stale: edit it along with the code). A baseline run of each
selection of tests on the unmutated copy comes first. Mutants marked ``gpu`` change what only a compiled kernel can
show (the interpreter's argmax always takes the first maximum): without CUDA they are listed, not run.
Exit status 1 if a mutant survives, is stale, or the baseline fails.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
R, F_, B, T = ("coc_kernels/reference.py", "coc_kernels/functional.py", "coc_det/backbone.py",
               "tests/ops/test_context_cluster.py")
#: the fused op's files: forward and backward kernels, tile helpers, geometry
KF, KB, KT, KG = (f"coc_kernels/ops/context_cluster/{n}.py" for n in ("fwd", "bwd", "tiles", "geometry"))
MATCH = "tests/ops/test_context_cluster.py::test_matches_dense"
ORACLE = "tests/models/test_original_model.py"

#: (name, file, text, replacement, pytest arguments, needs a GPU)
MUTANTS = [
    # the model around the op (caught only by the comparison with the public model)
    ("f/v convs swapped", B, "value, feat = _conv(self.v, x), _conv(self.f, x)",
     "value, feat = _conv(self.f, x), _conv(self.v, x)", [ORACLE, "-k", "tiny"], False),
    ("layer scales swapped", B, "self.layer_scale_1[:, None, None] * self.token_mixer",
     "self.layer_scale_2[:, None, None] * self.token_mixer", [ORACLE, "-k", "tiny"], False),
    ("tanh GELU", B, "self.act = nn.GELU()", 'self.act = nn.GELU(approximate="tanh")', [ORACLE, "-k", "tiny"], False),
    ("position channels / H instead of / (H - 1)", B, "/ max(H - 1, 1) - 0.5", "/ max(H, 1) - 0.5",
     [ORACLE, "-k", "tiny"], False),
    ("classifier without its final norm", "coc_det/classifier.py", "return self.norm(self.forward_stages(x)[-1])",
     "return self.forward_stages(x)[-1]", [ORACLE, "-k", "classifier and tiny"], False),
    ("assignment hook on the wrong fold", B, "proposal=mod.proposal, fold=mod.fold,",
     "proposal=mod.proposal, fold=mod.proposal,", ["tests/integration/test_pictures.py", "-k", "record"], False),
    # the memory-light torch path
    ("light: denominator + 2", R, "o = (U + vc) / (den + 1.0)", "o = (U + vc) / (den + 2.0)",
     [MATCH, "-k", "light and regions_5x7"], False),
    ("light: argmax before the sigmoid", R, ".add_(beta).sigmoid_()", ".add_(beta)",
     [T, "-k", "ties_first_index and light"], False),
    ("light: last index on ties", R, "        s_max, a = s.max(dim=-1)",
     "        s_max, a = s.flip(-1).max(dim=-1)\n        a = s.shape[-1] - 1 - a",
     [T, "-k", "identical_points and light"], False),
    # the fused kernels (interpreter)
    ("kernel: dispatch denominator + 2", KF, "    o = uv / (den + 1.0)[:, None]", "    o = uv / (den + 2.0)[:, None]",
     [MATCH, "-k", "triton and regions_5x7"], False),
    ("kernel: backward denominator + 2", KB, "    inv = 1.0 / (den + 1.0)", "    inv = 1.0 / (den + 2.0)",
     [MATCH, "-k", "triton and regions_5x7"], False),
    ("kernel: dx without the normalisation's projection", KB, "proj = tl.where(xn > eps, cos_a, 0.0)",
     "proj = tl.where(xn > eps, cos_a * 0.0, 0.0)", [MATCH, "-k", "triton and regions_5x7"], False),
    ("kernel: floor for ceil in a pooling window's size", KT, "    rows = (lo_r + rh + ph - 1) // ph - lo_r // ph",
     "    rows = (lo_r + rh) // ph - lo_r // ph", [MATCH, "-k", "triton and regions_5x7"], False),
    ("kernel: a point one row past its pooling window", KT, "(rp[:, None] < hi_r[None, :])",
     "(rp[:, None] <= hi_r[None, :])", [MATCH, "-k", "triton and fold_4"], False),
    ("kernel: one window too few in the pooling adjoint", KG,
     "self.KH, self.KW = 1 + cdiv(ph, max(self.rh, 1)), 1 + cdiv(pw, max(self.rw, 1))",
     "self.KH, self.KW = cdiv(ph, max(self.rh, 1)), cdiv(pw, max(self.rw, 1))",
     # also caught by test_gradcheck_float64_overlapping_windows, but a failing gradcheck recomputes every
     # Jacobian column for its message: 4 minutes in the interpreter
     [MATCH, "-k", "triton and regions_5x7"], False),
    ("kernel: centre gradient dropped from dx", KB,
     "        dxt += pool_adjoint(scr + BLOCK_M * D, offs_d, D, r, col, valid, rh, rw, ph, pw, KH, KW)",
     "        dxt += 0.0 * pool_adjoint(scr + BLOCK_M * D, offs_d, D, r, col, valid, rh, rw, ph, pw, KH, KW)",
     [MATCH, "-k", "triton and regions_5x7"], False),
    ("kernel: a point in one window too many in the adjoint's cells", KT,
     "        er += tl.where((i0 + di) * rh < rp + ph, 1, 0)",
     "        er += tl.where((i0 + di) * rh <= rp + ph, 1, 0)",
     [MATCH, "-k", "triton and (fold_4 or fold_8x4)"], False),
    ("kernel: the adjoint table's last window column dropped", KT,
     "                ok = live & (di <= er) & (dj <= ec)", "                ok = live & (di <= er) & (dj < ec)",
     [MATCH, "-k", "triton and regions_5x7"], False),
    ("kernel: eps clamp of the norm dropped", KT, "    return t / tl.maximum(nrm, eps)[None, :], nrm",
     "    return t / nrm[None, :], nrm", [T, "-k", "zero_norm and triton"], False),
    ("kernel: only the first block of dalpha/dbeta partials", KB, "        for p0 in range(0, NPART, BLOCK_P):",
     "        for p0 in range(0, BLOCK_P, BLOCK_P):", [T, "-k", "every_block_of_partials"], False),
    ("kernel: last index on ties", KF, "a = tl.min(tl.where(s == sigma[None, :], offs_m[:, None], BLOCK_M), axis=0)",
     "a = tl.max(tl.where(s == sigma[None, :], offs_m[:, None], -1), axis=0)",
     [T, "-k", "ties_first_index or identical_points"], False),
    ("chunking: equal chunks ignored", "coc_kernels/ops/context_cluster/config.py",
     '    if c["balanced"]:', "    if False:",
     ["tests/ops/test_launch_config.py", "-k", "shipped_chunking"], False),
    ("chunking: the centre class's target ignored", "coc_kernels/ops/context_cluster/config.py",
     '    target = policy().target_programs or c["programs"]', "    target = policy().target_programs or 1024",
     ["tests/ops/test_launch_config.py", "-k", "shipped_chunking"], False),
    # tools and loading
    ("mmseg 0.x checkpoints not switched to count", "coc_det/checkpoint.py", '("mmseg", "0.")',
     '("mmseg", "9.")', ["tests/integration/test_tools.py", "-k", "count_denominator"], False),
    ("import allowlists getattr", "coc_det/__init__.py", '"""\nfrom coc_kernels import __version__',
     '"""\nimport torch as _t\n_t.serialization.add_safe_globals([getattr])\nfrom coc_kernels import __version__',
     ["tests/integration/test_checkpoint.py", "-k", "allowlists_nothing or imported_coc_det"], False),
]


def scratch_copy(dst: str) -> None:
    """The tracked and untracked-but-not-ignored files of the work tree (what git would commit), no venv."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if osp.isfile(osp.join(ROOT, f)):
            os.makedirs(osp.dirname(osp.join(dst, f)) or dst, exist_ok=True)
            shutil.copy2(osp.join(ROOT, f), osp.join(dst, f))


def pytest(cwd: str, args: list) -> tuple:
    t = time.time()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args], cwd=cwd,
                          capture_output=True, text=True, env=env)
    return proc.returncode, time.time() - t, proc.stdout[-1500:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", help="run only the mutants whose name contains one of these")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--md", help="also write the table to this file")
    args = p.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or any(o in m[0] for o in args.only)]
    if args.list:
        for name, path, *_rest, gpu in mutants:
            print(f"{name}  ({path}{', GPU only' if gpu else ''})")
        return 0
    import torch
    cuda = torch.cuda.is_available()
    rows, bad, t0 = [], 0, time.time()
    with tempfile.TemporaryDirectory(prefix="coc-mutants-") as tmp:
        scratch_copy(tmp)
        for targs in sorted({tuple(m[4]) for m in mutants if cuda or not m[5]}):  # each selection passes as is
            rc, secs, out = pytest(tmp, list(targs))
            print(f"baseline {' '.join(targs)}: {'passed' if rc == 0 else f'rc {rc}'} ({secs:.0f} s)", flush=True)
            if rc != 0:
                print(out)
                return 1
        for name, path, text, repl, targs, gpu in mutants:
            src = osp.join(tmp, path)
            original = open(src).read()
            count = original.count(text)
            if count != 1:
                rows.append((name, path, f"STALE (text found {count} times)", 0.0))
                bad += 1
                continue
            if gpu and not cuda:
                rows.append((name, path, "not run: the interpreter cannot catch it (GPU only)", 0.0))
                continue
            with open(src, "w") as f:
                f.write(original.replace(text, repl))
            try:
                rc, secs, out = pytest(tmp, targs)
            finally:
                with open(src, "w") as f:
                    f.write(original)
            caught = rc == 1  # 1: tests failed (2-5: interrupted, usage or collection errors: not a catch)
            bad += not caught
            rows.append((name, path, "caught" if caught else f"SURVIVED (pytest rc {rc})", secs))
            print(f"{name}: {rows[-1][2]} ({secs:.0f} s)", flush=True)
            if not caught:
                print(out)
    lines = ["| mutant | file | result | seconds |", "|---|---|---|---|"]
    lines += [f"| {n} | {p} | {r} | {s:.0f} |" for n, p, r, s in rows]
    lines.append(f"\n{sum(r[2] == 'caught' for r in rows)} of {len(rows)} caught; {time.time() - t0:.0f} s in all "
                 f"({'CUDA' if cuda else 'CPU, Triton interpreter'})")
    print("\n".join(lines))
    if args.md:
        with open(args.md, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
