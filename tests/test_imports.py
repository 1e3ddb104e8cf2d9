"""The layout of the modules: no module imports one that imports it back, at any depth.

Every import of a project module counts, at the top of a file or inside a function: a lazy import
only hides a circle from the interpreter, not from a reader. utils.py is the original's name kept
for users' code: no project module imports it.
"""
import ast
import os

from conftest import REPO

MODULES = sorted(name[:-3] for name in os.listdir(REPO) if name.endswith('.py'))


def project_imports(name):
    """The project modules that `name`.py imports anywhere in its code."""
    with open(os.path.join(REPO, name + '.py')) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split('.')[0])
    return found & set(MODULES) - {name}


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


def test_no_project_module_imports_utils():
    assert [name for name in MODULES if 'utils' in project_imports(name)] == []


# The leaves: imported from everywhere, they import (at most) errors.py, so that any module may use them.
LEAVES = {'errors': set(), 'atomic_io': {'errors'}, 'batching': set(), 'recipes': set(), 'embed_regularize': set(),
          'locked_dropout': set(), 'weight_drop': set()}
# The scripts: what a user runs. No module below them imports one (benchmark.py reads main.py's parser).
SCRIPTS = {'main', 'finetune', 'pointer', 'generate', 'dynamiceval', 'plot', 'benchmark'}


def test_leaf_modules_import_nothing_above_them():
    assert {name: project_imports(name) for name in LEAVES} == LEAVES


def test_data_imports_no_model_or_training_code():
    assert project_imports('data') & {'model', 'training', 'splitcross', 'qrnn', 'weight_drop', 'checkpoint'} == set()


def test_no_module_imports_a_script():
    importers = {name: project_imports(name) & SCRIPTS for name in MODULES if name not in SCRIPTS | {'utils'}}
    assert {name: found for name, found in importers.items() if found} == {}
