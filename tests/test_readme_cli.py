"""README's command list against the CLI's parser, so that neither drifts from the other.

The convention README.md keeps for this test:

- The synopsis is the first ```text fenced block under the heading `## Commands`.
- In it, each line starting with `cifar100 ` begins one command's synopsis; the indented lines
  after it continue that synopsis. The line whose first word after `cifar100` is an option
  (`cifar100 [--version] [--debug] COMMAND`) is the global one.
- Tokens are split on white space; brackets, braces, parentheses and `...` around them are
  decoration, and `|` alone separates alternatives (`[--preset NAME | --config FILE]`).
- A token starting with `-` is an option. The token after it is its value unless the option
  closes its bracket (`[--json]`): `a|b|c` (or one word) for an option with choices, listing
  exactly the parser's choices in the parser's order; otherwise the option's metavar as
  `--help` shows it (its metavar, or its dest in capitals). An option that takes no value
  shows none.
- Any other token is a positional: its metavar as `--help` shows it, or `a|b` for one with
  choices (`cache [list|clear]`), in the parser's order.

Every subcommand must have a synopsis and every synopsis a subcommand; every option of the
parser (long forms; -h/--help and the shared --debug left out) must appear, and every option
the README names must exist. Beyond the synopsis, each `cifar100 NAME ...` command in the
README's and docs/'s code (lines, and inline code spans) may use only NAME's options, and each
Makefile variable the README tells users to set must exist in the Makefile.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cifar100.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAKEFILE = ROOT / "Makefile"
GLOBAL = "(global)"  # the synopsis of `cifar100 [--version] [--debug] COMMAND`
LEFT_OUT = {"-h", "--help"}  # and --debug in each subcommand: the shared parent's
DECORATION = "[]{}()"


@dataclass
class Synopsis:
    """What one README synopsis line says about a command."""

    options: dict[str, str | None] = field(default_factory=dict)  # option -> value token
    positionals: list[str] = field(default_factory=list)


def section(text: str, heading: str) -> str:
    """The text from `heading` to the next heading of its level."""
    start = text.index(f"\n{heading}\n")
    level = heading.split()[0]
    end = text.find(f"\n{level} ", start + len(heading) + 2)
    return text[start : end if end > 0 else None]


def synopsis_block(text: str) -> str:
    found = re.search(r"```text\n(.*?)```", section(text, "## Commands"), flags=re.S)
    assert found, "README's `## Commands` section has no ```text block (the synopsis)"
    return found.group(1)


def clean(raw: str) -> str:
    token = raw.strip(DECORATION)
    return "" if token in ("...", "") else token.removesuffix("...").strip(DECORATION)


def parse_synopses(block: str) -> dict[str, Synopsis]:
    """Command name (or GLOBAL) -> its synopsis, by the convention in this module's docstring."""
    lines: list[str] = []
    for line in block.splitlines():
        if line.startswith("cifar100 "):
            lines.append(line)
        elif line.strip():
            assert line[0].isspace() and lines, (
                f"synopsis line neither a command nor indented: {line!r}"
            )
            lines[-1] += " " + line.strip()
    synopses: dict[str, Synopsis] = {}
    for line in lines:
        words = line.split()[1:]
        name = GLOBAL if clean(words[0]).startswith("-") else words.pop(0)
        assert name not in synopses, f"README lists `cifar100 {name}` twice in its synopsis"
        synopses[name] = parse_tokens(words)
    return synopses


def parse_tokens(words: list[str]) -> Synopsis:
    s = Synopsis()
    pending: str | None = None  # an option whose value may come next
    for raw in words:
        token = clean(raw)
        if token in ("", "|"):
            pending = None
            continue
        if token.startswith("-"):
            s.options[token] = None
            pending = None if raw.endswith("]") else token
        elif pending is not None:
            s.options[pending] = token
            pending = None
        else:
            s.positionals.append(token)
    return s


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def options(parser: argparse.ArgumentParser, top: bool = False) -> list[argparse.Action]:
    """The parser's options, -h/--help left out, and --debug too in a subcommand."""
    skip = LEFT_OUT if top else LEFT_OUT | {"--debug"}
    return [a for a in parser._actions if a.option_strings and not set(a.option_strings) <= skip]


def positionals(parser: argparse.ArgumentParser) -> list[str]:
    """Positional arguments as the README writes them: metavar, `a|b` choices, or DEST."""
    shown = []
    for a in parser._actions:
        if a.option_strings:
            continue
        if a.metavar is not None:
            shown.append(a.metavar)
        elif a.choices is not None and not isinstance(a, argparse._SubParsersAction):
            shown.append("|".join(a.choices))
        else:
            shown.append(a.dest.upper())
    return shown


def long_forms(action: argparse.Action) -> list[str]:
    return [o for o in action.option_strings if o.startswith("--")]


def takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0 and not isinstance(
        action, argparse._StoreConstAction | argparse._VersionAction | argparse._HelpAction
    )


def option_problems(command: str, parser_options: list[argparse.Action], s: Synopsis) -> list[str]:
    """Every difference between the parser's options of `command` and its README synopsis."""
    where = f"`cifar100 {command}`" if command != GLOBAL else "the global synopsis line"
    problems = []
    known = {o for a in parser_options for o in a.option_strings}
    for flag in s.options:
        if flag not in known:
            problems.append(f"{where}: README lists {flag}, which the parser does not have")
    for action in parser_options:
        shown = [o for o in action.option_strings if o in s.options]
        missing = [o for o in long_forms(action) if o not in s.options]
        if missing:
            problems.append(f"{where}: the parser's {'/'.join(missing)} is missing from README")
        for flag in shown:
            value = s.options[flag]
            if not takes_value(action):
                if value is not None:
                    problems.append(f"{where}: {flag} takes no value, README shows {value!r}")
            elif action.choices is not None:
                listed = value.split("|") if value else []
                if listed != [str(c) for c in action.choices]:
                    want = "|".join(str(c) for c in action.choices)
                    problems.append(f"{where}: {flag} {want} in the parser, README: {value!r}")
            else:
                metavar = action.metavar or action.dest.upper()
                if value != metavar:
                    problems.append(f"{where}: {flag} {metavar} in the parser, README: {value!r}")
    return problems


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def synopses(readme) -> dict[str, Synopsis]:
    return parse_synopses(synopsis_block(readme))


def test_the_synopsis_lists_every_subcommand_and_no_other(parser, synopses):
    parsed = set(subcommands(parser))
    listed = set(synopses) - {GLOBAL}
    assert not parsed - listed, f"subcommands missing from README's synopsis: {parsed - listed}"
    assert not listed - parsed, f"README's synopsis lists unknown subcommands: {listed - parsed}"
    assert GLOBAL in synopses, "README's synopsis has no global line: cifar100 [--version] ..."


def test_the_global_line_matches_the_parser(parser, synopses):
    problems = option_problems(GLOBAL, options(parser, top=True), synopses[GLOBAL])
    assert synopses[GLOBAL].positionals == ["COMMAND"], synopses[GLOBAL].positionals
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command", sorted(subcommands(build_parser())))
def test_each_command_synopsis_matches_its_parser(parser, synopses, command):
    sub = subcommands(parser)[command]
    assert command in synopses, f"`cifar100 {command}` has no synopsis line in README"
    s = synopses[command]
    problems = option_problems(command, options(sub), s)
    if s.positionals != positionals(sub):
        problems.append(
            f"`cifar100 {command}`: positionals {positionals(sub)} in the parser, "
            f"README: {s.positionals}"
        )
    assert not problems, "\n".join(problems)


def code_lines(text: str) -> list[str]:
    """Lines of fenced and indented code blocks (continuations joined), and inline code spans."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            if lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1] + " " + line.strip()
            else:
                lines.append(line.strip())
        else:
            lines.extend(re.findall(r"`([^`\n]+)`", line))
    return lines


def commands_used(text: str) -> list[tuple[str, list[str]]]:
    """(subcommand, its option tokens) of every `cifar100 NAME ...` in `text`'s code."""
    used = []
    for line in code_lines(text):
        line = line.split(" # ")[0].removeprefix("$ ")
        # At the start of a line or span, or run as a module (`torchrun ... -m cifar100 train`):
        # not prose in a code block ("a cifar100 run directory").
        for found in re.finditer(r"(?:^|\s-m )cifar100 ([a-z][\w-]*)(.*)", line):
            name, rest = found.group(1), found.group(2)
            rest = re.split(r"\s(?:cifar100|&&|\|\||;)\s", rest)[0]
            flags = [t.split("=")[0].strip("\"'`,)]") for t in rest.split() if t.startswith("-")]
            used.append((name, flags))
    return used


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_example_command_uses_options_its_command_has(parser, doc):
    subs = subcommands(parser)
    problems = []
    text = doc.read_text(encoding="utf-8")
    if doc == README:  # the synopsis is checked above, by its own stricter rules
        text = text.replace(synopsis_block(text), "")
    for name, flags in commands_used(text):
        if name not in subs:
            problems.append(f"{doc.name}: `cifar100 {name}`: no such subcommand")
            continue
        known = {o for a in subs[name]._actions for o in a.option_strings}
        problems += [
            f"{doc.name}: `cifar100 {name} {flag}`: {name} has no option {flag}"
            for flag in flags
            if flag not in known
        ]
    assert not problems, "\n".join(problems)


def make_lines(text: str) -> list[str]:
    return [line for line in code_lines(text) if line.startswith("make ")]


def test_the_makefile_variables_readme_names_exist(readme):
    defined = set(re.findall(r"^([A-Z_]+)\s*[?:]?=", MAKEFILE.read_text(), flags=re.M))
    named = {v for line in make_lines(readme) for v in re.findall(r"\b([A-Z][A-Z_]+)=", line)}
    install = section(readme, "## Install")
    table = set(re.findall(r"^\| `([A-Z][A-Z_]+)`", install, flags=re.M))
    table |= set(re.findall(r"^\| `[A-Z_]+`, `([A-Z][A-Z_]+)`", install, flags=re.M))
    assert named, "README shows no `make ... VAR=value` example"
    assert table, "README's Install section has no table of Makefile variables"
    unknown = sorted((named | table) - defined)
    assert not unknown, f"README names Makefile variables the Makefile lacks: {unknown}"


def test_make_train_args_are_train_options(parser, readme):
    known = {o for a in subcommands(parser)["train"]._actions for o in a.option_strings}
    for line in make_lines(readme):
        if line.split()[1] != "train" or "ARGS=" not in line:
            continue
        args = re.search(r"ARGS=\"([^\"]*)\"", line).group(1)
        unknown = [t for t in args.split() if t.startswith("-") and t.split("=")[0] not in known]
        assert not unknown, f"README `{line}`: train has no option {unknown}"


def every_action(parser: argparse.ArgumentParser):
    yield "cifar100", parser, options(parser, top=True)
    for name, sub in subcommands(parser).items():
        yield f"cifar100 {name}", sub, [a for a in sub._actions if "-h" not in a.option_strings]


def test_every_argument_has_help(parser):
    missing = []
    for where, _, actions in every_action(parser):
        for a in actions:
            if not a.help or a.help == argparse.SUPPRESS:
                missing.append(f"{where} {'/'.join(a.option_strings) or a.metavar or a.dest}")
    assert not missing, f"arguments without help: {missing}"


def test_every_subcommand_has_help_and_a_description(parser):
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helped = {a.dest: a.help for a in sub._choices_actions}
    for name, subparser in sub.choices.items():
        assert helped.get(name), f"`cifar100 {name}` has no help line in `cifar100 --help`"
        assert subparser.description, f"`cifar100 {name}` has no description"


def test_help_shows_each_default(parser):
    """A value the command falls back to is said in the option's help, as --help shows it."""
    missing = []
    for where, _, actions in every_action(parser):
        for a in actions:
            default = a.default
            if not takes_value(a) or default in (None, argparse.SUPPRESS) or default == []:
                continue
            shown = {str(default)} | ({f"{default:g}"} if isinstance(default, float) else set())
            if not any(re.search(rf"(?<![\w.]){re.escape(t)}(?![\w.])", a.help) for t in shown):
                missing.append(
                    f"{where} {'/'.join(a.option_strings) or a.dest} (default {default})"
                )
    assert not missing, f"help that does not say the default: {missing}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_between_readme_and_docs_resolve(doc):
    """Each relative link names a file that exists and, after #, one of its headings."""
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            problems.append(f"{doc.name}: link to {target}: no file {path}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{doc.name}: link to {target}: no heading #{anchor} in {file.name}")
    assert not problems, "\n".join(problems)
