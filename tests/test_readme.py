"""README.md (and docs/) are a user's guide whose every command is real, short, and self-contained.

Every command line in a shell code block (```bash, ```sh, ```shell, ```console or an untagged fence) of README.md
and docs/*.md is checked without running anything heavy:

- `make TARGET [VAR=value]`: `make -n` in the repository root must succeed (the target exists; nothing is built);
- `bnas ...` (and `torchrun ... -m harness.cli ...`): parsed by the real click CLI, command by command
  (`make_context` with `resilient_parsing=False`), so an unknown command, an unknown option or a missing required
  option fails;
- `dvc ...`: a subcommand the guide may use, parsed by DVC's own argument parser, whose path arguments exist and
  whose other targets are stages of dvc.yaml or pipelines/small/dvc.yaml;
- any other command fails: the guide shows no command this file cannot check.

The heavy commands are run for real elsewhere: `dvc repro` (what `make repro` runs) end to end on real CIFAR-10 in a
copy of the repository by tests/test_pipeline.py::test_micro_profile_dvc_repro_end_to_end; `bnas train` and
`bnas evaluate` by tests/test_cli.py::test_train_and_evaluate_end_to_end (and the two-stage recipe by
tests/test_cli.py::test_two_stage_recipe_binary_activations_then_binary_weights); `bnas --version` by
tests/test_cli.py::test_version_prints_the_package_and_its_version; `bnas ui` by
tests/test_cli.py::test_ui_serves_on_loopback_and_sigterm_stops_the_whole_server; `bnas tables` / `bnas figures` by
tests/test_cli.py::test_tables_and_figures_take_the_profile_of_the_params_file; `make test-views` is the `browser`
suite tests/test_views.py; `make test` is what CI runs (.ci/run).

Also: README.md stays under 1,500 words, neither it nor docs/ points outside the repository, and every relative
link resolves to a file of the repository.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import click
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
GUIDES = [README, *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
# what the guide may ask a user to run with dvc
DVC_COMMANDS = {"repro", "exp", "plots", "status", "metrics", "params", "dag"}
FORBIDDEN = [
    (re.compile(r"\.\./shared"), "../shared"),
    (re.compile(r"(?<!docs/)(?<![(\[])\bbnas\.md"), "bnas.md (other than this repository's docs/bnas.md, linked)"),
    (re.compile(r"poster\.md"), "poster.md"),
    (re.compile(r"issue\s*#?\s*\d", re.IGNORECASE), "issue <number>"),
    (re.compile(r"this team", re.IGNORECASE), "this team"),
]
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def shell_lines(text: str) -> list[str]:
    """The command lines of the shell code blocks of a Markdown text: continuation lines joined, blank lines and
    comment-only lines dropped (comments are removed later, by shlex)."""
    lines: list[str] = []
    fence: str | None = None
    keep = False
    pending = ""
    for raw in text.splitlines():
        m = _FENCE.match(raw)
        if fence is None:
            if m:
                fence, keep = m.group(2), m.group(3).lower() in SHELL_FENCES
            continue
        if raw.strip().startswith(fence[0] * len(fence)) and not raw.strip().strip(fence[0]):
            fence = None
            continue
        if not keep:
            continue
        line = raw.strip()
        if line.startswith("$ "):  # a console prompt
            line = line[2:]
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line and not line.startswith("#"):
            lines.append(line)
    assert fence is None, "unclosed code fence"
    return lines


def split_command(line: str) -> tuple[dict[str, str], str, list[str]]:
    """(leading VAR=value assignments, the program's name, its arguments) of one shell line."""
    tokens = shlex.split(line, comments=True)
    env = {}
    while tokens and _ENV.match(tokens[0]):
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    assert tokens, f"no command in {line!r}"
    return env, os.path.basename(tokens[0]), tokens[1:]


def _commands() -> list[tuple[str, str, str, dict[str, str], list[str]]]:
    out = []
    for path in GUIDES:
        for line in shell_lines(path.read_text()):
            env, prog, args = split_command(line)
            out.append((_rel(path), line, prog, env, args))
    return out


COMMANDS = _commands()


def _of(prog: str) -> list[pytest.param]:
    """The (env, args) of every guide line that runs `prog`, each with the line (without its comment) as its id."""
    return [
        pytest.param(env, args, id=f"{where}: {shlex.join([*(f'{k}={v}' for k, v in env.items()), p, *args])}")
        for where, _, p, env, args in COMMANDS
        if p == prog
    ]


def test_the_guides_show_only_commands_this_file_checks():
    unchecked = [
        (where, line) for where, line, prog, _, _ in COMMANDS if prog not in {"make", "bnas", "dvc", "torchrun"}
    ]
    assert not unchecked
    readme = [(prog, args[:1]) for where, _, prog, _, args in COMMANDS if where == "README.md"]
    assert ("make", ["repro"]) in readme and ("make", ["test"]) in readme  # the two entry points


def test_the_readme_is_well_under_1500_words():
    words = len(README.read_text().split())
    assert words < 1500, f"README.md has {words} words"


@pytest.mark.parametrize("guide", GUIDES, ids=_rel)
def test_the_guides_point_to_nothing_outside_the_repository(guide):
    text = guide.read_text()
    found = [label for pattern, label in FORBIDDEN if pattern.search(text)]
    assert not found, f"{_rel(guide)} mentions {found}"


# the files of the method's description that live outside this repository: code and params cite docs/ instead
OUTSIDE = re.compile(r"(?<!docs/)\b(bnas|baselines|baselines_more|search_performance|poster|STYLE)\.md\b|shared/spec")
DOC_SECTION = re.compile(r"docs/bnas\.md §(\d+)(?:\.(\d+))?")


def test_the_code_cites_only_this_repository_and_sections_that_exist():
    """Docstrings and comments cite the paper or docs/ (never a description kept outside the repository), and every
    `docs/bnas.md §N[.M]` they cite is a section (or a row of §8's table) of that page."""
    page = (REPO / "docs" / "bnas.md").read_text()
    sections = set(re.findall(r"^##+ (\d+(?:\.\d+)?)\.? ", page, flags=re.MULTILINE))
    sections |= set(re.findall(r"^\| (8\.\d+) \|", page, flags=re.MULTILINE))
    files = [p for d in ("harness", "methods", "tests", "pipelines") for p in (REPO / d).rglob("*") if p.is_file()]
    files = [p for p in files if p.suffix in (".py", ".yaml") and p.name != "dvc.lock"]
    outside, missing = [], []
    for p in files:
        text = p.read_text()
        if p.name != "test_readme.py":
            outside += [f"{_rel(p)}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
        for m in DOC_SECTION.finditer(text):
            sec = m.group(1) + (f".{m.group(2)}" if m.group(2) else "")
            if sec not in sections:
                missing.append(f"{_rel(p)}: §{sec}")
    assert not outside, outside
    assert not missing, missing


@pytest.mark.parametrize("guide", GUIDES, ids=_rel)
def test_every_relative_link_points_to_an_existing_file(guide):
    links = _LINK.findall(guide.read_text())
    broken = []
    for target in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):  # a URL or an anchor on this page
            continue
        path = (guide.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or REPO not in (path, *path.parents):
            broken.append(target)
    assert not broken, f"{_rel(guide)}: broken links {broken}"


def test_the_readme_links_to_every_docs_page():
    text = README.read_text()
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"({_rel(page)})" in text, f"README.md does not link to {_rel(page)}"


def make_n(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`make -n ARGS VAR=value...` in the repository root, with no make settings inherited from a calling make:
    it prints what the target would run without running it (only $(MAKE) or `+` lines would run; there are none)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES")}
    return subprocess.run(
        ["make", "-n", *args, *(f"{k}={v}" for k, v in env.items())],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("env,args", _of("make"))
def test_make_targets_exist(env, args):
    assert args and not args[0].startswith("-"), args
    res = make_n(args, env)
    assert res.returncode == 0, res.stderr


def test_make_n_refuses_a_target_the_makefile_lacks():
    assert make_n(["no-such-target"], {}).returncode != 0


def parse_bnas(args: list[str]) -> list[str]:
    """Parse `bnas ARGS` with the real CLI, group by group, without invoking any command; returns the command path
    (e.g. ["bnas", "tables"]). Raises click.UsageError where the CLI would refuse the line."""
    from harness.cli import cli

    path: list[str] = []
    command: click.Command = cli
    name = "bnas"
    parent = None
    while True:
        path.append(name)
        try:
            ctx = command.make_context(name, list(args), parent=parent, resilient_parsing=False)
        except click.exceptions.Exit as e:  # --version, --help: eager options that print and exit
            assert e.exit_code == 0
            return path
        if not isinstance(command, click.Group):
            if ctx.args:
                raise click.UsageError(f"unexpected arguments {ctx.args}", ctx)
            return path
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:
            raise click.UsageError("no command given", ctx)
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            raise click.UsageError(f"no such command {rest[0]!r}", ctx)
        command, name, args, parent = sub, rest[0], rest[1:], ctx


@pytest.mark.parametrize("env,args", _of("bnas"))
def test_bnas_commands_parse(env, args):
    assert parse_bnas(args)[0] == "bnas"


@pytest.mark.parametrize("env,args", _of("torchrun"))
def test_torchrun_lines_launch_a_bnas_command_that_parses(env, args):
    assert "-m" in args, args
    i = args.index("-m")
    assert args[i + 1] == "harness.cli", args
    assert len(parse_bnas(args[i + 2 :])) == 2  # bnas COMMAND


def _stage_names() -> set[str]:
    names = set()
    for dvc_yaml in (REPO / "dvc.yaml", REPO / "pipelines" / "small" / "dvc.yaml"):
        names |= set(yaml.safe_load(dvc_yaml.read_text())["stages"])
    return names


def _looks_like_path(arg: str) -> bool:
    return "/" in arg or arg.endswith((".yaml", ".yml", ".json", ".csv", ".lock"))


@pytest.mark.parametrize("env,args", _of("dvc"))
def test_dvc_commands_are_allowed_parse_and_name_existing_paths(env, args):
    from dvc.cli import DvcParserError, parse_args

    assert args and args[0] in DVC_COMMANDS, f"dvc {args[:1]}: not a command this guide uses"
    try:
        ns = parse_args(list(args))
    except DvcParserError:
        pytest.fail(f"dvc {' '.join(args)}: DVC's parser refuses it")
    stages = _stage_names()
    for target in getattr(ns, "targets", None) or []:
        file, _, stage = target.rpartition(":") if target.endswith(tuple(f":{s}" for s in stages)) else (target, "", "")
        if _looks_like_path(file):
            assert (REPO / file).exists(), f"dvc {args[0]}: {file} does not exist"
        else:
            assert file.split("@", 1)[0] in stages, f"dvc {args[0]}: {file!r} is neither a path nor a stage"
        if stage:
            assert stage.split("@", 1)[0] in stages, target
    for setting in getattr(ns, "set_param", None) or []:  # dvc exp run -S FILE:KEY=VALUE
        key = setting.split("=", 1)[0]
        if ":" in key:
            file = key.split(":", 1)[0]
            assert (REPO / file).is_file(), f"dvc exp run -S: {file} does not exist"
    for arg in args[1:]:  # any other path the line mentions
        if not arg.startswith("-") and "=" not in arg and _looks_like_path(arg):
            assert (REPO / arg).exists(), f"dvc {args[0]}: {arg} does not exist"


def test_the_line_parser_reads_fences_comments_and_continuations():
    text = (
        "intro\n```bash\nmake repro   # comment\nFOO=1 make x \\\n  Y=2\n# only a comment\n```\n"
        "```text\nbnas nothing [--x]\n```\n```\nbnas --version\n```\n"
    )
    lines = shell_lines(text)
    assert lines == ["make repro   # comment", "FOO=1 make x  Y=2", "bnas --version"]
    assert split_command(lines[1]) == ({"FOO": "1"}, "make", ["x", "Y=2"])
    assert split_command(".venv/bin/bnas ui --port 1 # x") == ({}, "bnas", ["ui", "--port", "1"])


@pytest.mark.parametrize(
    "args",
    [["no-such-command"], [], ["train", "--data", "d"], ["ui", "--no-such-option"], ["tables", "--runs"], ["show"]],
)
def test_the_bnas_parser_refuses_what_the_cli_refuses(args):
    with pytest.raises(click.exceptions.UsageError):
        parse_bnas(args)


def test_the_dvc_check_refuses_unknown_options():
    from dvc.cli import DvcParserError, parse_args

    with pytest.raises(DvcParserError):
        parse_args(["repro", "--no-such-option"])
