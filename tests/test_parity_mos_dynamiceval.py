"""dynamiceval.py on an MoS model against AWD-LSTM-MoS's own dynamiceval.py (zihangdai/mos at 9c0c608).

One tiny MoS model is trained by each code's main.py (test_parity_mos.compare_main: the same printed lines
and every tensor equal); then MoS's dynamiceval.py runs on its checkpoint with its own flags and this code's
dynamiceval.py on its checkpoint with the translation the recipes use (`--paper-scale`, the same --lr,
--lamb, --epsilon; docs/MOS.md, "Recipes"). The figures compared are MoS's printed `perplexity loss:` line
and the same line of this code (exp of the mean loss over the tokens scored, the last segment weighted by
its length / bptt: the convention of both authors' loops).

The models are trained with `--wdrop 0`: MoS's dynamiceval.py evaluates in train mode with
`model.use_dropout = False`, which its model reads for the embedding, locked and latent dropouts but not
for WeightDrop (its rate is fixed at construction), so with DropConnect its figure is a random draw.
"""
import os
import re

import pytest

from conftest import REPO
from test_parity import run
from test_parity_mos import TINY_MOS, compare_main
from test_parity_stages import authors_figures, patch

# (text in MoS's dynamiceval.py, replacement, why). Each must match exactly once.
MOS_DYNAMICEVAL_FIXES = [
    # torch >= 2.6 loads with weights_only=True by default; MoS saves whole pickled models.
    ('    model = torch.load(f)', '    model = torch.load(f, weights_only=False)', 'pickled model'),
]

PERPLEXITY_LINE = re.compile(r'^perplexity loss: \S+$', re.M)


@pytest.fixture(scope='module')
def mos_run(tmp_path_factory):
    """(MoS's patched folder, its pickled model, this code's checkpoint, the corpus), trained alike."""
    tmp_path = tmp_path_factory.mktemp('mos_dynamiceval')
    corpus, original, original_save, _, ours_save, _ = compare_main(
        tmp_path, ['--nhidlast', '12', *TINY_MOS, '--wdrop', '0', '--epochs', '2', '--lr', '30'])
    patch(original, 'dynamiceval.py', MOS_DYNAMICEVAL_FIXES)
    return original, os.path.join(original_save, 'model.pt'), ours_save, corpus


def run_both(mos_run, lr, lamb, epsilon, mos_flags=(), ours_flags=('--paper-scale',)):
    """MoS's dynamiceval.py (test split, its default) and this code's, by default with the recipes'
    translation (MoS's --ms off: its statistics are sums, this code's --paper-scale): (MoS's stdout, this
    code's stdout). `ours_flags` replaces --paper-scale; this code's --lamb is `lamb` unless it gives one."""
    original, original_model, ours_save, corpus = mos_run
    # --batch_size / --max_batches: the gradient statistics' columns and segments; --bptt 5 is both codes'
    # default, and both evaluate one column (MoS fixed it at 1; this code's --eval_batch_size default).
    common = ['--data', corpus, '--lr', str(lr), '--epsilon', str(epsilon), '--batch_size', '4',
              '--max_batches', '30', '--bptt', '5']
    # MoS's --gpu -1 is its CPU.
    mos_out = run(original, 'dynamiceval.py', ['--model', original_model, '--gpu', '-1', *common,
                                               '--lamb', str(lamb), *mos_flags])
    ours_out = run(REPO, 'dynamiceval.py', ['--save', ours_save, '--cpu', '--split', 'test', *common,
                                            '--lamb', str(lamb), *ours_flags])
    return mos_out, ours_out


@pytest.fixture(scope='module')
def static_run(mos_run):
    # lr 0: every update is exactly zero in both codes, so the figure is the scored losses' sum alone
    # (lamb and epsilon then change nothing).
    return run_both(mos_run, 0, 0.02, 0.001)


@pytest.mark.slow
def test_static_at_lr_0_is_mos_figure_bit_for_bit(static_run):
    mos_out, ours_out = static_run
    expected = PERPLEXITY_LINE.findall(mos_out)
    assert len(expected) == 1 and PERPLEXITY_LINE.findall(ours_out) == expected


@pytest.mark.slow
@pytest.mark.parametrize('lamb, epsilon', [(0.075, 0.001), (0.02, 0.002)])
def test_recipe_translation_gives_mos_figure(mos_run, static_run, lamb, epsilon):
    # The PTB and WT2 recipes' settings (MoS README: --lamb 0.075; --epsilon 0.002, on its defaults), with
    # the recipes' lr, which moves the tiny model's figure well away from its static one.
    mos_out, ours_out = run_both(mos_run, 0.002, lamb, epsilon)
    expected, got = authors_figures(mos_out), authors_figures(ours_out)
    assert len(expected) == 1 and got == pytest.approx(expected, rel=1e-5)
    (static,) = authors_figures(static_run[1])
    assert abs(got[0] - static) > 1e-3 * static, 'the updates did not move the figure'


@pytest.mark.slow
def test_mos_ms_flag_is_this_code_default_scale(mos_run):
    # MoS's --ms (root of the mean squared gradient) is Krause's later scale, this code's default, but its
    # decay rates are divided by the sum over parameter tensors of their mean roots, not the mean: lamb
    # over the number of tensors (17 here: embedding, 3 x 4 LSTM, prior, latent weight and bias, decoder bias).
    mos_out, ours_out = run_both(mos_run, 0.002, 0.075, 0.001, mos_flags=['--ms'],
                                 ours_flags=['--lamb', repr(0.075 / 17)])
    assert '17 tensors' in ours_out
    expected, got = authors_figures(mos_out), authors_figures(ours_out)
    assert len(expected) == 1 and got == pytest.approx(expected, rel=1e-5)
