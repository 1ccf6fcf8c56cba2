"""The documentation cannot drift from the code: the site builds strictly (a broken link, a missing image, a page
left out of the navigation or an API reference to a name that does not exist fails), the README stays short and
its links resolve, every tool command shown in a code block of the README or the docs parses its arguments with
the tool's own parser (nothing runs), every config named there exists and loads, and the README's Python quick
start runs."""
import argparse
import glob
import os
import os.path as osp
import re
import runpy
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

PAGES = [osp.join(ROOT, "README.md")] + sorted(glob.glob(osp.join(ROOT, "docs", "**", "*.md"), recursive=True))


def _blocks(path, langs=("bash", "sh", "shell")):
    """The fenced code blocks of a Markdown file in the given languages, as text."""
    text = open(path).read()
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M) if m.group(1) in langs]


def _commands(path):
    """``(line, argv)`` of each shell command of a file's code blocks: continuations joined, comments dropped,
    optional ``[--flag]`` placeholders taken as given."""
    out = []
    for block in _blocks(path):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            if not pending:
                line = line.split(" #")[0].strip()
                if not line or line.startswith("#"):
                    continue
            line = (pending + " " + line.strip()) if pending else line
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:  # a quoted string goes on on the next line
                pending = line
                continue
            pending = ""
            argv = [a[1:-1] if a.startswith("[") and a.endswith("]") else a for a in tokens]
            if argv:
                out.append((line, argv))
        assert not pending, f"{path}: unclosed quote in `{pending}`"
    return out


ALL_COMMANDS = [(osp.relpath(p, ROOT), line, argv) for p in PAGES for line, argv in _commands(p)]


def test_docs_build_strictly(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", osp.join(ROOT, "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("context_cluster", "cluster_assignment", "ContextCluster", "LaunchPolicy", "read_checkpoint"):
        assert name in api, f"the API reference has no {name}"


def test_readme_is_short_and_its_links_resolve():
    text = open(osp.join(ROOT, "README.md")).read()
    lines = text.splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"
    first_screen = "\n".join(lines[:50])
    assert "make demo" in first_screen and "make test" in first_screen
    assert re.search(r"tools/dist_train\.sh configs/mask-rcnn_coc-\S+_coco\.py 8", first_screen), \
        "the COCO train command is not on the README's first screen"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert osp.exists(osp.join(ROOT, target)), f"README links to {target}, which does not exist"


class _Parsed(Exception):
    pass


def _parse_only(monkeypatch):
    """Make every argparse parser stop right after parsing (its errors still raise SystemExit)."""
    real = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        real(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)


def _tool_argv(argv):
    """``(script, its arguments)`` that a command runs, through the launcher scripts: ``dist_train.sh CONFIG N
    ARGS`` runs ``train.py CONFIG ARGS``, ``dist_test.sh CONFIG CKPT N ARGS`` ``test.py CONFIG CKPT ARGS``,
    ``slurm_train.sh PARTITION JOB CONFIG [WORK_DIR]`` ``train.py CONFIG --work-dir WORK_DIR``."""
    argv = [a for a in argv if not re.match(r"^[A-Z_]+=", a)]  # environment assignments
    if argv[0] == "python" and len(argv) > 1 and argv[1].endswith(".py"):
        return argv[1], argv[2:]
    if argv[0] == "python" and len(argv) > 2 and argv[1] == "-m" and argv[2].startswith(("benchmarks.", "tools.")):
        return argv[2].replace(".", "/") + ".py", argv[3:]
    name = osp.basename(argv[0])
    if name == "dist_train.sh":
        return "tools/train.py", [argv[1]] + argv[3:]
    if name == "dist_test.sh":
        return "tools/test.py", argv[1:3] + argv[4:]
    if name == "slurm_train.sh":
        return "tools/train.py", [argv[3]] + (["--work-dir", argv[4]] if len(argv) > 4 else [])
    return None, None


TOOL_COMMANDS = [c for c in ALL_COMMANDS if _tool_argv(c[2])[0]]


def test_the_docs_show_tool_commands():
    """The parse test below has something to check: the README and the docs show the train, test, dist, slurm,
    export and classify commands."""
    scripts = {_tool_argv(argv)[0] for _, _, argv in TOOL_COMMANDS}
    assert {"tools/train.py", "tools/test.py", "tools/export_onnx.py", "tools/classify.py"} <= scripts, scripts
    launchers = {osp.basename(argv[0]) for _, _, argv in ALL_COMMANDS}
    assert {"dist_train.sh", "dist_test.sh"} <= launchers


@pytest.mark.parametrize("page,line,argv", TOOL_COMMANDS, ids=[f"{p}:{i}" for i, (p, _, _) in enumerate(TOOL_COMMANDS)])
def test_tool_commands_in_the_docs_parse(page, line, argv, monkeypatch):
    script, args = _tool_argv(argv)
    path = osp.join(ROOT, script)
    assert osp.isfile(path), f"{page}: `{line}` names {script}, which does not exist"
    if argv[0].endswith(".sh"):
        launcher = osp.join(ROOT, argv[0])
        assert os.access(launcher, os.X_OK), f"{page}: {argv[0]} is not executable"
        assert subprocess.run(["bash", "-n", launcher]).returncode == 0
    for token in args:
        if re.match(r"^configs/\S+\.py$", token):
            assert osp.isfile(osp.join(ROOT, token)), f"{page}: `{line}` names {token}, which does not exist"
    # as python puts them first on the path: the script's folder (python tools/x.py), or the root (python -m)
    monkeypatch.syspath_prepend(ROOT if "-m" in argv else osp.dirname(path))
    mod = runpy.run_path(path, run_name="docs_check")
    entry = mod.get("main") or mod.get("parse_args")
    assert entry, f"{script} has no main(argv) or parse_args(argv)"
    _parse_only(monkeypatch)
    monkeypatch.chdir(ROOT)
    try:
        entry(args)
    except _Parsed:
        return
    except SystemExit as e:
        pytest.fail(f"{page}: `{line}`: {script} refuses these arguments (exit {e.code})")
    pytest.fail(f"{script} returned without parsing its arguments")


def test_configs_named_in_the_docs_load():
    from mmengine.config import Config
    named = sorted({t for _, _, argv in ALL_COMMANDS for t in argv if re.match(r"^configs/\S+\.py$", t)}
                   | set(re.findall(r"`(configs/[^`{}*]+\.py)`", "".join(open(p).read() for p in PAGES))))
    assert named
    for cfg in named:
        assert osp.isfile(osp.join(ROOT, cfg)), f"the docs name {cfg}, which does not exist"
        assert Config.fromfile(osp.join(ROOT, cfg)).model.type, cfg


def test_the_readme_quick_start_runs():
    (code,) = [b for b in _blocks(osp.join(ROOT, "README.md"), ("python",))]
    scope = {}
    exec(compile(code, "README.md quick start", "exec"), scope)
    assert tuple(scope["y"].shape) == (2, 128, 56, 56)
    assert [o.shape[1] for o in scope["backbone"](scope["torch"].randn(1, 3, 64, 64))] == [64, 128, 320, 512]
    assert scope["model"].num_classes == 10
