"""generate.py, pointer.py and dynamiceval.py against their authors' code, run beside this code on the CPU.

The oracles: the first release of salesforce/awd-lstm-lm (acb04a5) for generate.py and pointer.py (its
models return logits and are scored with nn.CrossEntropyLoss), benkrause/dynamic-evaluation for
dynamiceval.py. Each stage starts from the checkpoints of one training run of each code whose every tensor
is equal (test_parity.compare checks it), so the stage's own computation is what is compared. Each original
is copied to a temporary folder and given, in code, the smallest fixes that let it run on torch 2.x on the
CPU, each explained where it is made; the fixes its training code needs (test_parity.FIRST_RELEASE_FIXES)
apply to its model code here too.
"""
import os
import re
import shutil

import pytest

from harness import corpus_cache
from conftest import REPO
from test_parity import (LOSS_PROBES, apply_fixes, SHARED_ORIGINALS, TINY_MODEL, compare, corpus_with_unseen_last_word, run,
                         traced_losses, traced_run)


def patch(folder, name, fixes):
    """Applies (old, new, why) replacements to `folder/name`; each must match exactly once."""
    apply_fixes(folder, [(name, *fix) for fix in fixes])


@pytest.fixture(scope='module')
def first_release_run(tmp_path_factory):
    """One training run of the first release and of main.py --release 2017 on the same tiny corpus:
    (the original's patched folder, its pickled model, this code's checkpoint, the corpus)."""
    tmp_path = tmp_path_factory.mktemp('first_release')
    corpus = corpus_with_unseen_last_word(str(tmp_path / 'corpus'))
    original, original_save, ours_save = compare(
        tmp_path, corpus, [*TINY_MODEL, '--epochs', '2', '--seed', '28', '--lr', '30'], release=2017)
    return original, original_save, ours_save, corpus


# ---------------------------------------------------------------------------------------------
# generate.py against the first release's generate.py

GENERATE_FIXES = [
    # Its checkpoint is a pickled model (torch >= 2.6 loads with weights_only=True by default).
    ('model = torch.load(f)', 'model = torch.load(f, weights_only=False)', 'pickled model'),
]


@pytest.mark.slow
def test_generate_writes_the_original_words_and_layout(first_release_run, tmp_path):
    original, original_save, ours_save, corpus = first_release_run
    patch(original, 'generate.py', GENERATE_FIXES)
    common = ['--data', corpus, '--words', '300', '--seed', '11', '--temperature', '0.7']
    original_text, ours_text = str(tmp_path / 'original.txt'), str(tmp_path / 'ours.txt')
    run(original, 'generate.py', [*common, '--checkpoint', original_save, '--outf', original_text])
    run(REPO, 'generate.py', [*common, '--checkpoint', ours_save, '--outf', ours_text, '--cpu'])
    with open(original_text) as f:
        expected = f.read()
    with open(ours_text) as f:
        assert f.read() == expected
    assert '<eos>' in expected and len(expected.split('\n')) == 300 // 20 + 1


# ---------------------------------------------------------------------------------------------
# dynamiceval.py against benkrause/dynamic-evaluation's dynamiceval.py

DYNAMIC_EVALUATION = os.environ.get('DYNAMIC_EVALUATION_ORIGINAL') or os.path.join(
    SHARED_ORIGINALS, 'dynamic-evaluation')

DYNAMIC_EVALUATION_FIXES = [
    # Its model is a pickled first-release model (torch >= 2.6 loads with weights_only=True by default).
    ('model = torch.load(f)', 'model = torch.load(f, weights_only=False)', 'pickled model'),
    # A Variable is a Tensor now (see test_parity.FIRST_RELEASE_FIXES): detach() is what Variable(h.data) did.
    ('    if type(h) == Variable:\n        return Variable(h.data)',
     '    if isinstance(h, torch.Tensor):\n        return h.detach()', 'Variable-based repackage_hidden'),
    # Its perplexity is a 0-dim tensor since PyTorch 0.4, and it prints element [0] of its numpy array.
    ('return perp.numpy()', 'return perp.reshape(1).numpy()', '0-dim perplexity'),
]
# Dynamic evaluation backpropagates in eval mode: the eval-mode weight of WeightDrop must pass its gradient
# to the raw weight, as the Parameter that PyTorch 0.1.12's dropout handed back did; a clone does (the
# training runs' detach() would leave the raw weight without a gradient, and its code reads every grad).
WEIGHT_DROP_GRADIENT_FIX = ('if not self.training: w = w.detach()', 'if not self.training: w = w.clone()',
                            'eval-mode weight passes its gradient')


def dynamic_evaluation_folder(first_release_run, tmp_path):
    """The patched first-release folder with the authors' dynamiceval.py in it, as their README says
    ("Copy the file dynamiceval.py into the repository")."""
    if not os.path.isfile(os.path.join(DYNAMIC_EVALUATION, 'dynamiceval.py')):
        pytest.skip(f'benkrause/dynamic-evaluation is not at {DYNAMIC_EVALUATION} (set DYNAMIC_EVALUATION_ORIGINAL)')
    folder = str(tmp_path / 'dynamic-evaluation')
    shutil.copytree(first_release_run[0], folder)
    shutil.copy(os.path.join(DYNAMIC_EVALUATION, 'dynamiceval.py'), folder)
    os.chmod(os.path.join(folder, 'dynamiceval.py'), 0o644)
    patch(folder, 'dynamiceval.py', DYNAMIC_EVALUATION_FIXES)
    patch(folder, 'weight_drop.py', [WEIGHT_DROP_GRADIENT_FIX])
    return folder


AUTHORS_RESULT = re.compile(r'^((?:validation |test )?perplexity loss: \S+|best hyperparams: .*?)(?: \| grid.*)?$', re.M)


def run_both_dynamic_evaluations(first_release_run, tmp_path, flags):
    """Each code's dynamiceval.py on its own checkpoint with the same command line (the path aside):
    (the authors' stdout, this code's stdout)."""
    folder = dynamic_evaluation_folder(first_release_run, tmp_path)
    _, original_save, ours_save, corpus = first_release_run
    common = ['--data', corpus, '--gpu', '-1', '--bptt', '7', '--batch_size', '4', *flags]
    authors_out = traced_run(folder, 'dynamiceval.py', ['--model', original_save, *common], LOSS_PROBES[2017])
    ours_out = traced_run(REPO, 'dynamiceval.py', ['--model', ours_save, *common], LOSS_PROBES['ours'])
    return authors_out, ours_out


def criterion_losses(stdout):
    return [value for kind, value in traced_losses(stdout) if kind == 'criterion']


@pytest.mark.slow
def test_dynamic_evaluation_at_lr_0_scores_every_segment_as_the_authors(first_release_run, tmp_path):
    authors_out, ours_out = run_both_dynamic_evaluations(first_release_run, tmp_path,
                                                         ['--val', '--lr', '0', '--max_batches', '20'])
    expected = criterion_losses(authors_out)  # 20 gradient-statistics segments, then every valid segment
    got = criterion_losses(ours_out)
    corpus = first_release_run[3]
    rows = len(corpus_cache.load_corpus(corpus, use_cache=False, log=lambda *a: None).valid)
    if (rows - 1) % 7 == 1:  # the authors' loop does not score a final one-token segment
        got = got[:-1]
    assert len(expected) > 20 and got == expected
    result = AUTHORS_RESULT.findall(authors_out)
    assert len(result) == 1 and AUTHORS_RESULT.findall(ours_out) == result


def authors_figures(stdout):
    return [float(line.rsplit(' ', 1)[1]) for line in AUTHORS_RESULT.findall(stdout) if 'perplexity' in line]


@pytest.mark.slow
def test_dynamic_evaluation_with_updates_gives_the_authors_result(first_release_run, tmp_path):
    # The paper's AWD-LSTM command line (its README: --oldhyper), with updates that move the figure.
    authors_out, ours_out = run_both_dynamic_evaluations(
        first_release_run, tmp_path, ['--lr', '0.002', '--lamb', '0.02', '--epsilon', '0.001', '--oldhyper'])
    expected, got = authors_figures(authors_out), authors_figures(ours_out)
    assert len(expected) == 1 and got == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_dynamic_evaluation_grid_picks_the_authors_hyper_parameters(first_release_run, tmp_path):
    authors_out, ours_out = run_both_dynamic_evaluations(first_release_run, tmp_path, ['--gridfast'])
    best = [line for line in AUTHORS_RESULT.findall(authors_out) if line.startswith('best')]
    assert len(best) == 1 and [line for line in AUTHORS_RESULT.findall(ours_out) if line.startswith('best')] == best
    expected, got = authors_figures(authors_out), authors_figures(ours_out)
    assert len(expected) == 2 and got == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# pointer.py against the first release's pointer.py

POINTER_FIXES = [
    # Its checkpoint is a pickled model (torch >= 2.6 loads with weights_only=True by default).
    ('model = torch.load(f, map_location=lambda storage, loc: storage)',
     'model = torch.load(f, map_location=lambda storage, loc: storage, weights_only=False)', 'pickled model'),
    # one_hot moved every row to CUDA whatever --cuda said (the call passes no cuda=); on the CPU it must not.
    ('def one_hot(idx, size, cuda=True):', 'def one_hot(idx, size, cuda=False):', 'one-hot rows on the CPU'),
    # Elements of a 1-dim tensor are 0-dim since PyTorch 0.4: they cannot be indexed; .item() reads the
    # same number (the word id; the token's loss).
    ('one_hot(t.data[0], ntokens) for t in targets]) if', 'one_hot(t.item(), ntokens) for t in targets]) if',
     'word id of the first chunk'),
    ('torch.cat([one_hot(t.data[0], ntokens) for t in targets])])',
     'torch.cat([one_hot(t.item(), ntokens) for t in targets])])', 'word id of later chunks'),
    ('loss += (-torch.log(target_loss)).data[0]', 'loss += (-torch.log(target_loss)).item()', "token's loss"),
]
POINTER_RESULT = re.compile(r'^\| printed loss (\S+)\n\| End of pointer \| (val|valid|test) loss', re.M)


@pytest.mark.slow
@pytest.mark.parametrize('window, theta, lambdasm', [(9, 1.0, 0.1), (50, 0.662, 0.1279)])
def test_pointer_gives_the_original_losses(first_release_run, tmp_path, window, theta, lambdasm):
    original, original_save, ours_save, corpus = first_release_run
    folder = str(tmp_path / 'pointer')
    shutil.copytree(original, folder)
    patch(folder, 'pointer.py', POINTER_FIXES)
    # --bptt 30: windows smaller and larger than a chunk, the cache rule's two regimes.
    common = ['--data', corpus, '--bptt', '30', '--window', str(window), '--theta', str(theta),
              '--lambdasm', str(lambdasm)]
    # The original's --cuda was store_false: passing it is how it runs on the CPU.
    original_out = traced_run(folder, 'pointer.py', [*common, '--save', original_save, '--cuda'], LOSS_PROBES[2017])
    ours_out = traced_run(REPO, 'pointer.py', [*common, '--save', ours_save, '--cpu'], LOSS_PROBES['ours'])
    expected = [float(value) for value, _ in POINTER_RESULT.findall(original_out)]
    got = [float(value) for value, _ in POINTER_RESULT.findall(ours_out)]
    assert len(expected) == 2 and got == pytest.approx(expected, rel=1e-6, abs=0)
