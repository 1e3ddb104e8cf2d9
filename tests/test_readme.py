"""README.md and docs/ as an entry point: size, published command lines, links, the test command.

The published command lines live in one place, recipes.py. The rule that ties the docs to it:

  A code line of README.md or docs/*.md (indented by 4 spaces, or inside a ``` block) that runs
  `python main.py`, `python finetune.py`, `python pointer.py` or `python dynamiceval.py` (or one of
  them under `torchrun`) *claims* a recipe when it carries all of that recipe's identifying flags for
  the stage, with the recipe's values: the flags among --seed, --data, --window and --lamb that the
  recipe's stage has. A line that claims a recipe must be exactly `recipes.command(name, stage)` of
  one of the recipes it claims, optionally followed by extra flags (`--release 2017`, `--epochs 1`,
  `--save WT103.pt`, ...) and a trailing `# comment`. Lines that claim no recipe (`--resume PTB.pt`,
  tiny test sizes, `<flags>` placeholders) are not checked.

So a published line with a changed, dropped or reordered flag fails, as long as its seed (main,
finetune) or its --data and --window / --lamb (pointer, dynamiceval) are the recipe's.
"""
import os
import re
import shlex

from conftest import REPO

from harness import recipes

SCRIPTS = ('main', 'finetune', 'pointer', 'dynamiceval')
IDENTIFYING = ('--seed', '--data', '--window', '--lamb')
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')


def doc_files():
    docs = os.path.join(REPO, 'docs')
    names = sorted(n for n in os.listdir(docs) if n.endswith('.md')) if os.path.isdir(docs) else []
    return [os.path.join(REPO, 'README.md')] + [os.path.join(docs, n) for n in names]


def read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def code_lines(text):
    """The code lines of a markdown text: indented by 4 spaces, or inside a ``` fence."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith('```'):
            fenced = not fenced
            continue
        if fenced or line.startswith('    '):
            yield line.strip()


def as_script_line(line):
    """`python S.py flags` of a code line running one of SCRIPTS (directly or under torchrun), else None.
    A trailing `# comment` is dropped."""
    line = line.split(' #')[0].rstrip()
    m = re.match(r'^(?:python3? |torchrun .*?)(main|finetune|pointer|dynamiceval)\.py( .*)?$', line)
    if not m:
        return None
    return f'python {m.group(1)}.py{m.group(2) or ""}'


def flag_values(argv):
    """{flag: value} of the flags in argv that take one value (the last one wins, as in argparse)."""
    values = {}
    for i, tok in enumerate(argv):
        if tok.startswith('--') and i + 1 < len(argv) and not argv[i + 1].startswith('--'):
            values[tok] = argv[i + 1]
    return values


def claimed(script_line):
    """(stage, [recipe names]) that the line claims by the rule of the module docstring."""
    argv = shlex.split(script_line)
    stage = argv[1][:-len('.py')]
    given = flag_values(argv[2:])
    names = []
    for name, recipe in recipes.RECIPES.items():
        if stage not in recipe:
            continue
        ident = {k: v for k, v in flag_values(recipes.argv(name, stage)).items() if k in IDENTIFYING}
        if ident and all(given.get(k) == v for k, v in ident.items()):
            names.append(name)
    return stage, names


def recipe_line_problem(script_line):
    """None if the line is fine by the rule, else what is wrong."""
    stage, names = claimed(script_line)
    if not names:
        return None
    for name in names:
        cmd = recipes.command(name, stage)
        if script_line == cmd or script_line.startswith(cmd + ' --'):
            return None
    return f'claims {names} ({stage}) but is not {recipes.command(names[0], stage)!r} (+ extra flags)'


def test_readme_is_at_most_20000_bytes():
    size = os.path.getsize(os.path.join(REPO, 'README.md'))
    assert size <= 20000, f'README.md is {size} bytes'


def test_the_rule_catches_a_changed_recipe_line():
    good = recipes.command('ptb-2018', 'main')
    assert recipe_line_problem(good) is None
    assert recipe_line_problem(good + ' --release 2017 --epochs 1') is None
    assert recipe_line_problem(good.replace('--dropouth 0.25', '--dropouth 0.3')) is not None
    assert recipe_line_problem(good.replace(' --save PTB.pt', '')) is not None
    pointer = recipes.command('wt2-2018', 'pointer')
    assert recipe_line_problem(pointer.replace('--theta 0.662', '--theta 0.66')) is not None
    assert recipe_line_problem('python main.py --resume PTB.pt') is None
    assert as_script_line('torchrun --standalone --nproc_per_node 4 ' + good[len('python '):]) == good


def test_published_command_lines_come_from_recipes_py():
    problems, checked = [], 0
    for path in doc_files():
        for line in code_lines(read(path)):
            script_line = as_script_line(line)
            if script_line is None:
                continue
            checked += bool(claimed(script_line)[1])
            problem = recipe_line_problem(script_line)
            if problem:
                problems.append(f'{os.path.relpath(path, REPO)}: {line}\n    {problem}')
    assert not problems, '\n'.join(problems)
    assert checked >= 8  # the README's pipeline alone has eight recipe lines


def test_relative_links_point_to_files_in_the_repository():
    broken = []
    for path in doc_files():
        for target in LINK.findall(read(path)):
            if re.match(r'^[a-z][a-z0-9+.-]*:', target) or target.startswith('#'):
                continue  # a URL, or an anchor within the page
            resolved = os.path.realpath(os.path.join(os.path.dirname(path), target.split('#')[0]))
            inside = resolved.startswith(os.path.realpath(REPO) + os.sep)
            if not (inside and os.path.exists(resolved)):
                broken.append(f'{os.path.relpath(path, REPO)}: {target}')
    assert not broken, 'links to nothing in the repository:\n' + '\n'.join(broken)


def test_readme_names_the_test_command_and_stays_inside_the_repository():
    readme = read(os.path.join(REPO, 'README.md'))
    assert 'python -m pytest -q tests' in readme
    assert '../shared' not in readme and 'REFERENCE.md' not in readme


def test_docs_name_no_tracker_issue():
    for path in doc_files() + [os.path.join(REPO, 'RESULTS.md')]:
        hits = re.findall(r'.*\b[Ii]ssues? #?[0-9]+.*', read(path))
        assert not hits, f'{os.path.relpath(path, REPO)}: {hits}'
