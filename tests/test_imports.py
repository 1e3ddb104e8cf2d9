"""The layout of the modules (docs/ARCHITECTURE.md): the paper's modules and the scripts at the root,
the run bookkeeping in the package `harness`, which the scripts reach through its front door alone.

Every import of a project module counts, at the top of a file or inside a function: a lazy import
only hides a circle from the interpreter, not from a reader.
"""
import ast
import os

from conftest import REPO

PACKAGE = 'harness'
ROOT = sorted(name[:-3] for name in os.listdir(REPO) if name.endswith('.py'))
INSIDE = sorted(f'{PACKAGE}.{name[:-3]}' for name in os.listdir(os.path.join(REPO, PACKAGE))
                if name.endswith('.py') and name != '__init__.py')
MODULES = ROOT + [PACKAGE] + INSIDE

# What a user runs (lm.py: what a user imports, a trained model from Python). No module below them
# imports one (benchmark.py and finetune.py read main.py's flags).
SCRIPTS = {'main', 'finetune', 'pointer', 'generate', 'score', 'export', 'dynamiceval', 'plot', 'benchmark',
           'hubconf', 'prepare', 'lm'}
# The paper's modules and the computation they share: what a researcher edits. They stand alone.
RESEARCH = set(ROOT) - SCRIPTS
# The leaves: imported from everywhere, they import (at most) errors.py.
LEAVES = {'errors': set(), 'utils': set(), 'embed_regularize': set(), 'locked_dropout': set(), 'weight_drop': set()}


def path_of(module):
    if module == PACKAGE:
        return os.path.join(REPO, PACKAGE, '__init__.py')
    return os.path.join(REPO, *module.split('.')) + '.py'


def project_imports(module):
    """The project modules that `module` imports anywhere in its code (a package's submodule by its
    dotted name; `from harness import x` counts as harness and harness.x)."""
    with open(path_of(module)) as f:
        tree = ast.parse(f.read())
    inside = module == PACKAGE or module.startswith(PACKAGE + '.')
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
                if alias.name.startswith(PACKAGE + '.'):
                    found.add(PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside the package
                assert inside, module
                base = PACKAGE + ('.' + node.module if node.module else '')
            else:
                base = node.module or ''
            found.add(base)
            if base.startswith(PACKAGE + '.'):
                found.add(PACKAGE)
            for alias in node.names:
                found.add(f'{base}.{alias.name}')
    if inside:  # a submodule's own package is not an import of it: Python runs __init__ first, it is one unit
        found.discard(PACKAGE)
    return found & set(MODULES) - {module}


def find_cycle(graph):
    """A list of modules that import each other around a circle, or None."""
    state = {}

    def visit(node, path):
        state[node] = 'open'
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = 'done'
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_find_cycle_sees_a_circle():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, **{m: set() for m in MODULES}}) == ['a', 'b', 'c', 'a']


def test_no_module_imports_one_that_imports_it_back():
    graph = {name: project_imports(name) for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, 'import circle: ' + ' -> '.join(cycle)


def test_the_root_holds_at_most_24_modules_and_every_one_is_a_script_or_research():
    assert len(ROOT) <= 24, ROOT
    assert SCRIPTS <= set(ROOT) | {'hubconf', 'prepare'}


def test_research_modules_do_not_import_the_bookkeeping():
    """The paper's modules read without the package: a researcher never needs it to change the model."""
    assert {name: sorted(project_imports(name) & ({PACKAGE} | set(INSIDE))) for name in RESEARCH
            if project_imports(name) & ({PACKAGE} | set(INSIDE))} == {}


def test_scripts_use_the_package_through_its_front_door_only():
    assert {name: sorted(project_imports(name) & set(INSIDE)) for name in SCRIPTS & set(ROOT)
            if project_imports(name) & set(INSIDE)} == {}


def test_main_imports_at_most_8_project_modules():
    assert len(project_imports('main')) <= 8, sorted(project_imports('main'))


def test_leaf_modules_import_nothing_above_them():
    assert {name: project_imports(name) for name in LEAVES} == LEAVES


def test_data_imports_no_model_or_training_code():
    assert project_imports('data') & {'model', 'training', 'splitcross', 'qrnn', 'weight_drop'} == set()


def test_no_module_imports_a_script():
    # finetune.py and benchmark.py build their parsers from main.py's flags, the one place they are declared.
    importers = {name: project_imports(name) & SCRIPTS for name in MODULES if name not in SCRIPTS}
    assert {name: found for name, found in importers.items() if found} == {}


def test_the_training_scripts_functions_are_at_most_80_lines():
    """main.py and finetune.py read top to bottom: flags, model, the epoch loop; none longer than a screen."""
    for script in ('main', 'finetune'):
        with open(path_of(script)) as f:
            tree = ast.parse(f.read())
        lengths = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert max(lengths.values()) <= 80, (script, lengths)
