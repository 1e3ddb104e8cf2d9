"""main.py and finetune.py against the original code, bit for bit on the CPU.

Two oracles: the 2018 code (salesforce/awd-lstm-lm at 1d466ec) for the default `--release 2018`, and the
first release (acb04a5, August 2017) for `--release 2017`. Each is run beside this code: same flags, same
seed, same corpus. Required: the same printed training-interval, end-of-epoch and test lines (timings left
out) and every tensor of the best checkpoint equal (`torch.equal`). The originals are looked for in
$AWD_LSTM_ORIGINAL (2018) and $AWD_LSTM_ORIGINAL_2017, then in ../shared/original/ beside the repository;
a test is skipped when its oracle is absent. Every loss the two compute or print is compared too, at full
precision (LOSS_TRACER). Each is copied to a temporary folder and given, in code, the
smallest fixes that let it run on torch 2.x on the CPU (ORIGINAL_FIXES, FIRST_RELEASE_FIXES below).

Where this code deliberately differs from the original (docs/PARITY.md, "Where this code differs"), the cases
stay clear of it: the last vocabulary word never appears in the training input (the originals'
padding_idx=-1 froze that word's input embedding), and the split-softmax case has no empty tail.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, write_corpus

SHARED_ORIGINALS = os.path.join(os.path.dirname(REPO), 'shared', 'original')
ORIGINAL = os.environ.get('AWD_LSTM_ORIGINAL') or os.path.join(SHARED_ORIGINALS, 'awd-lstm-lm')
FIRST_RELEASE = os.environ.get('AWD_LSTM_ORIGINAL_2017') or os.path.join(SHARED_ORIGINALS, 'awd-lstm-lm-2017')

# The eval-mode weight of WeightDrop, in both releases: F.dropout(training=False) hands back the raw
# Parameter itself; setattr of a Parameter registers it in the LSTM, and torch >= 1.0 then refuses the
# plain tensor of the next training step for that name. Assign a detached tensor instead: the same
# values, no registration.
WEIGHT_DROP_EVAL_FIX = (
    'weight_drop.py',
    'w = torch.nn.functional.dropout(raw_w, p=self.dropout, training=self.training)',
    'w = torch.nn.functional.dropout(raw_w, p=self.dropout, training=self.training)\n'
    '                if not self.training: w = w.detach()',
    'eval-mode weight is the raw Parameter')

# (file, text in the original, replacement, why). Each must match exactly once.
ORIGINAL_FIXES = [
    # torch >= 2.6 loads with weights_only=True by default; the original pickles whole modules and its
    # corpus, so it needs the old behaviour for its own files.
    ('main.py', 'model, criterion, optimizer = torch.load(f)',
     'model, criterion, optimizer = torch.load(f, weights_only=False)',
     'its checkpoint is a pickled [model, criterion, optimizer]'),
    ('main.py', 'corpus = torch.load(fn)', 'corpus = torch.load(fn, weights_only=False)',
     'its corpus cache is a pickled Corpus'),
    WEIGHT_DROP_EVAL_FIX,
    # PyTorch 0.4 compared into uint8 and summed the masks as integers (the split index of each target);
    # on torch >= 1.2 they are bool, and bool + bool is a logical or.
    ('splitcross.py', 'partial_mask = targets >= self.splits[idx]',
     'partial_mask = (targets >= self.splits[idx]).long()', 'split index of each target'),
]

# The first release was written for PyTorch 0.1.12 (Variables, 1-element tensors indexed with [0]).
FIRST_RELEASE_FIXES = [
    # A loss is a 0-dim tensor since PyTorch 0.4: it cannot be indexed; .item() reads the same number.
    *[(script, 'total_loss[0] / len(data_source)', 'total_loss.item() / len(data_source)', '0-dim loss sum')
      for script in ('main.py', 'finetune.py')],
    *[(script, 'cur_loss = total_loss[0] / args.log_interval', 'cur_loss = total_loss.item() / args.log_interval',
       '0-dim interval loss sum') for script in ('main.py', 'finetune.py')],
    # The private embed._backend.Embedding is gone; F.embedding is the same lookup with the same arguments.
    ('embed_regularize.py',
     'X = embed._backend.Embedding(\n    padding_idx, embed.max_norm, embed.norm_type,\n'
     '    embed.scale_grad_by_freq, embed.sparse\n  )(words, masked_embed_weight)',
     'X = torch.nn.functional.embedding(words, masked_embed_weight,\n    padding_idx, embed.max_norm, '
     'embed.norm_type,\n    embed.scale_grad_by_freq, embed.sparse\n  )',
     'embed._backend.Embedding removed'),
    # A Variable is a Tensor now, so `type(h) == Variable` is never true and the function would recurse
    # into the tensor's rows; detach() is what Variable(h.data) did.
    ('utils.py', '    if type(h) == Variable:\n        return Variable(h.data)',
     '    if isinstance(h, torch.Tensor):\n        return h.detach()', 'Variable-based repackage_hidden'),
    ('utils.py', 'from torch.autograd import Variable', 'import torch\nfrom torch.autograd import Variable',
     'repackage_hidden needs torch'),
    WEIGHT_DROP_EVAL_FIX,
    # Its checkpoints are pickled models (see ORIGINAL_FIXES): main.py loads the best one for test,
    # finetune.py loads main.py's and, at the end, its own best (two loads: the count says so).
    ('main.py', 'model = torch.load(f)', 'model = torch.load(f, weights_only=False)', 'pickled model'),
    ('finetune.py', 'model = torch.load(f)', 'model = torch.load(f, weights_only=False)', 'pickled model', 2),
]


def prepare_original(folder, release=2018):
    """A patched copy of the release's original code in `folder` (the test is skipped without it)."""
    source, fixes = (ORIGINAL, ORIGINAL_FIXES) if release == 2018 else (FIRST_RELEASE, FIRST_RELEASE_FIXES)
    if not os.path.isfile(os.path.join(source, 'main.py')):
        variable = 'AWD_LSTM_ORIGINAL' if release == 2018 else 'AWD_LSTM_ORIGINAL_2017'
        pytest.skip(f'the original awd-lstm-lm code ({release} release) is not at {source} (set {variable} '
                    'to a checkout of salesforce/awd-lstm-lm at that release)')
    return patched_copy(source, folder, fixes, f'the {release} code')


def patched_copy(source, folder, fixes, what):
    """A copy of the original code at `source` in `folder`, with `fixes` applied (apply_fixes)."""
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns('.git', 'data'))
    apply_fixes(folder, fixes, what)
    return folder


def apply_fixes(folder, fixes, what='the original'):
    """Applies each (file, old, new, why[, count]) replacement to the files in `folder`, in order; each
    must match `count` times (once unless given), else the copy is not `what` the fixes were written for."""
    for name, old, new, why, *count in fixes:
        path = os.path.join(folder, name)
        os.chmod(path, 0o644)
        with open(path) as f:
            text = f.read()
        expected = count[0] if count else 1
        assert text.count(old) == expected, f'{name}: fix for "{why}" does not apply (is it {what}?)'
        with open(path, 'w') as f:
            f.write(text.replace(old, new))


# The same threads for both programs: CPU kernels are deterministic for a fixed thread count.
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONHASHSEED='0')


def run(cwd, script, argv):
    proc = subprocess.run([sys.executable, script, *argv], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, f'{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
    return proc.stdout


REPORT_LINE = re.compile(r'^\| (?:epoch +\d+ \| +\d+/ *\d+ batches|end of epoch|End of training) .*$', re.M)
TIMING = re.compile(r' \| (?:ms/batch|time:) +[\d.]+s?')


def printed_figures(stdout):
    """Every training-interval, end-of-epoch and test line, as printed, with its timing left out."""
    return [TIMING.sub('', line) for line in REPORT_LINE.findall(stdout)]


# The originals' checkpoints unpickle only beside their own modules: turn them into plain tensors there.
# The 2018 code saved [model, criterion, optimizer]; the first release the model alone (its loss had no
# parameters).
EXPORT_TENSORS = """
import sys, torch
saved = torch.load(sys.argv[1], weights_only=False)
model, criterion = (saved[0], saved[1]) if isinstance(saved, list) else (saved, torch.nn.Module())
torch.save({'model': model.state_dict(), 'criterion': criterion.state_dict()}, sys.argv[2])
"""


def original_tensors(original_folder, original_file):
    """{'model': ..., 'criterion': ...}: the state dicts of an original's pickled model (and criterion),
    unpickled by its own code in its folder."""
    exported = original_file + '.tensors'
    subprocess.run([sys.executable, '-c', EXPORT_TENSORS, original_file, exported], cwd=original_folder,
                   env=ENV, check=True)
    return torch.load(exported, weights_only=True)


def assert_same_checkpoints(original_folder, original_file, ours_file):
    original = original_tensors(original_folder, original_file)
    ours = torch.load(ours_file, weights_only=True)
    expected = {**{'model.' + k: v for k, v in original['model'].items()},
                **{'criterion.' + k: v for k, v in original['criterion'].items()}}
    got = {**{'model.' + k: v for k, v in ours['model'].items()},
           **{'criterion.' + k: v for k, v in ours['criterion'].items()}}
    assert sorted(got) == sorted(expected)
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f'tensors that differ from the original: {different}'


def assert_same_figures(original_out, ours_out, expect_in_log=()):
    for text in expect_in_log:  # the case exercises what it is meant to
        assert text in original_out and text in ours_out, text
    expected = printed_figures(original_out)
    assert expected and expected[-1].startswith('| End of training'), original_out[-2000:]
    assert printed_figures(ours_out) == expected


# The loss figures at full precision, watched from outside the code (no patch): a script is run by this
# tracer, which first wraps (a) the criterion's forward, printing every loss it returns (each training
# batch's raw loss, each evaluation chunk's), and (b) the function each printed figure goes through,
# printing its argument (every interval, valid and test loss, and so what NT-ASGD and the best-model
# choice compare). The originals print their figures through math.exp (its only use there); this code
# through training.loss_figures, wrapped before run_log imports it by name.
LOSS_TRACER = """
import importlib, runpy, sys, torch
criterion_at, figures_at, script = sys.argv[1:4]
sys.argv = sys.argv[3:]
sys.path.insert(0, '.')

def owner(path):
    module, name = path.rsplit(':', 1)
    return importlib.import_module(module), name

def trace(path, tag, traced_value):
    holder, name = owner(path)
    if '.' in name:
        cls, name = name.split('.')
        holder = getattr(holder, cls)
    wrapped = getattr(holder, name)
    def tracing(*args, **kwargs):
        result = wrapped(*args, **kwargs)
        print(tag, repr(float(traced_value(args, result))), flush=True)
        return result
    setattr(holder, name, tracing)

trace(criterion_at, '| criterion loss', lambda args, result: result)
trace(figures_at, '| printed loss', lambda args, result: args[0])
runpy.run_path(script, run_name='__main__')
"""
LOSS_PROBES = {'ours': ('splitcross:SplitCrossEntropyLoss.forward', 'training:loss_figures'),
               2018: ('splitcross:SplitCrossEntropyLoss.forward', 'math:exp'),
               2017: ('torch.nn:CrossEntropyLoss.forward', 'math:exp')}
TRACED_LOSS = re.compile(r'^\| (criterion|printed) loss (\S+)$', re.M)


def traced_run(cwd, script, argv, probes):
    """`run`, through LOSS_TRACER: stdout with the full-precision loss lines in it."""
    return run(cwd, '-c', [LOSS_TRACER, *probes, script, *argv])


def traced_losses(stdout):
    """(kind, value) of every traced loss, in order, the value exactly as repr printed it."""
    return TRACED_LOSS.findall(stdout)


def assert_same_losses(original_out, ours_out, ours_first_printed_extra=False):
    """Every traced loss equal, in order. `ours_first_printed_extra`: this code printed one figure more, its
    first (finetune.py's valid loss before fine-tuning, which the original computed but did not print)."""
    expected = traced_losses(original_out)
    assert [kind for kind, _ in expected].count('printed') >= 2, original_out[-2000:]
    got = traced_losses(ours_out)
    if ours_first_printed_extra:
        got.remove(next(entry for entry in got if entry[0] == 'printed'))
    assert len(got) == len(expected), (len(got), len(expected))
    different = [(i, e, g) for i, (e, g) in enumerate(zip(expected, got)) if e != g]
    assert not different, f'{len(different)} of {len(expected)} losses differ, first ones: {different[:5]}'


def compare(tmp_path, corpus, flags, expect_in_log=(), release=2018):
    """main.py against the original of `release`; returns the two folders' checkpoints for more runs."""
    original = prepare_original(str(tmp_path / 'original'), release)
    flags = ['--data', corpus, *flags]
    original_save, ours_save = str(tmp_path / 'original.pt'), str(tmp_path / 'ours.pt')
    # The original's --cuda was store_false: passing it is how it runs on the CPU.
    original_out = traced_run(original, 'main.py', [*flags, '--cuda', '--save', original_save], LOSS_PROBES[release])
    release_flag = ['--release', '2017'] if release == 2017 else []
    ours_out = traced_run(REPO, 'main.py', [*flags, *release_flag, '--cpu', '--save', ours_save], LOSS_PROBES['ours'])
    assert_same_figures(original_out, ours_out, expect_in_log)
    assert_same_losses(original_out, ours_out)
    assert_same_checkpoints(original, original_save, ours_save)
    return original, original_save, ours_save


def corpus_with_unseen_last_word(folder, lines_per_split=(200, 40, 40), seed=0):
    """The tiny grammar corpus, plus a word seen only in test: the last vocabulary entry never enters
    training, so the original's frozen last input embedding (padding_idx=-1) changes nothing."""
    write_corpus(folder, lines_per_split, seed)
    with open(os.path.join(folder, 'test.txt'), 'a') as f:
        f.write(' the zebra sees a ball . \n')
    return folder


# --log-interval 7: several interval lines an epoch, so their batches, sums and divisor are compared too.
TINY_MODEL = ['--emsize', '10', '--nhid', '16', '--nlayers', '3', '--batch_size', '4', '--bptt', '12',
              '--log-interval', '7']


@pytest.mark.slow
def test_nt_asgd_switch_inside_the_run(tmp_path):
    corpus = corpus_with_unseen_last_word(str(tmp_path / 'corpus'))
    compare(tmp_path, corpus, [*TINY_MODEL, '--epochs', '6', '--nonmono', '1', '--lr', '40', '--seed', '141',
                               '--dropouti', '0.4', '--dropouth', '0.25'],
            expect_in_log=['Switching to ASGD', 'Saving Averaged!'])


@pytest.mark.slow
def test_adam_with_when(tmp_path):
    corpus = corpus_with_unseen_last_word(str(tmp_path / 'corpus'))
    compare(tmp_path, corpus, [*TINY_MODEL, '--epochs', '4', '--optimizer', 'adam', '--lr', '0.003',
                               '--when', '2', '3', '--seed', '7'],
            expect_in_log=['Dividing learning rate by 10'])


@pytest.mark.slow
def test_gru(tmp_path):
    corpus = corpus_with_unseen_last_word(str(tmp_path / 'corpus'))
    compare(tmp_path, corpus, [*TINY_MODEL, '--model', 'GRU', '--epochs', '3', '--seed', '1882'])


def large_vocabulary_corpus(folder, train_words=21000, total_words=76500):
    """Over 75,000 words, so that main.py turns on the split softmax ([2800, 20000, 76000]): training
    text uses words of the head and of the first two tails; valid and test hold the rest, so every tail is
    non-empty and the last word is never a training input."""
    os.makedirs(folder, exist_ok=True)
    import random
    rnd = random.Random(1)
    train_vocab = [f'w{i}' for i in range(train_words)]
    frequent = train_vocab[:50]
    lines = []
    for i in range(0, train_words, 7):  # every training word at least once, in vocabulary order
        lines.append(' '.join(train_vocab[i:i + 7] + rnd.sample(frequent, 5)))
    with open(os.path.join(folder, 'train.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    rest = [f'w{i}' for i in range(train_words, total_words)]
    half = len(rest) // 2
    for name, words in (('valid', rest[:half]), ('test', rest[half:])):
        with open(os.path.join(folder, name + '.txt'), 'w') as f:
            for i in range(0, len(words), 20):
                f.write(' '.join(words[i:i + 20] + rnd.sample(frequent, 5)) + '\n')
    return folder


@pytest.mark.slow
def test_split_softmax_with_dropouts_and_weight_decay(tmp_path):
    corpus = large_vocabulary_corpus(str(tmp_path / 'corpus'))
    compare(tmp_path, corpus, ['--emsize', '8', '--nhid', '12', '--nlayers', '2', '--batch_size', '8',
                               '--bptt', '20', '--log-interval', '5', '--epochs', '2', '--seed', '3',
                               '--dropout', '0.3', '--dropouth', '0.2', '--dropouti', '0.3', '--dropoute', '0.1',
                               '--wdrop', '0.4', '--wdecay', '1e-4'],
            expect_in_log=['Using [2800, 20000, 76000]'])


# ---------------------------------------------------------------------------------------------
# The first release (--release 2017) against acb04a5

@pytest.mark.slow
def test_first_release_main_across_the_asgd_switch(tmp_path):
    corpus = corpus_with_unseen_last_word(str(tmp_path / 'corpus'))
    compare(tmp_path, corpus, [*TINY_MODEL, '--epochs', '6', '--nonmono', '1', '--lr', '40', '--seed', '141',
                               '--dropouti', '0.4', '--dropouth', '0.25'],
            expect_in_log=['Switching', 'Saving Averaged!'], release=2017)


@pytest.mark.slow
def test_first_release_finetune_continues_its_checkpoint(tmp_path):
    corpus = corpus_with_unseen_last_word(str(tmp_path / 'corpus'))
    flags = [*TINY_MODEL, '--seed', '28', '--dropouti', '0.4', '--lr', '30']
    original, original_save, ours_save = compare(tmp_path, corpus, [*flags, '--epochs', '2'], release=2017)
    # finetune.py builds a model from the flags before loading the checkpoint, as the original did (the
    # draws of that construction come before every dropout mask); the same flags for both.
    flags = ['--data', corpus, *flags, '--epochs', '3', '--nonmono', '5']
    original_out = traced_run(original, 'finetune.py', [*flags, '--cuda', '--save', original_save], LOSS_PROBES[2017])
    ours_out = traced_run(REPO, 'finetune.py', [*flags, '--cpu', '--save', ours_save], LOSS_PROBES['ours'])
    assert_same_figures(original_out, ours_out, expect_in_log=['Saving Averaged!'])
    assert_same_losses(original_out, ours_out, ours_first_printed_extra=True)
    assert_same_checkpoints(original, original_save, ours_save)
