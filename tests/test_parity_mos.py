"""main.py and finetune.py with --n_experts against AWD-LSTM-MoS's own code (zihangdai/mos at 9c0c608),
bit for bit on the CPU: the same printed training-interval, end-of-epoch and test lines (timings left
out) and every tensor of the best checkpoint equal (`torch.equal`).

The original is looked for in $MOS_ORIGINAL, then in ../shared/original/mos beside the repository (the
test is skipped without it); it is copied to a temporary folder and given, in code, the smallest fixes
that let it run on torch 2.x on the CPU (MOS_FIXES below). The corpus keeps clear of the originals'
frozen last input embedding, as in tests/test_parity.py.
"""
import glob
import os

import pytest
import torch

from conftest import REPO
from test_parity import (SHARED_ORIGINALS, WEIGHT_DROP_EVAL_FIX, corpus_with_unseen_last_word, original_tensors,
                         patched_copy, printed_figures, run)

MOS = os.environ.get('MOS_ORIGINAL') or os.path.join(SHARED_ORIGINALS, 'mos')

# (file, text in the original, replacement, why, [count]). Each must match exactly (count) times.
MOS_FIXES = [
    # torch >= 2.6 loads with weights_only=True by default; MoS saves whole pickled models.
    ('main.py', "model = torch.load(os.path.join(args.save, 'model.pt'))",
     "model = torch.load(os.path.join(args.save, 'model.pt'), weights_only=False)", 'pickled model', 2),
    ('finetune.py', "model = torch.load(os.path.join(args.save, 'finetune_model.pt'))",
     "model = torch.load(os.path.join(args.save, 'finetune_model.pt'), weights_only=False)", 'pickled model', 2),
    ('finetune.py', "model = torch.load(os.path.join(args.save, 'model.pt'))",
     "model = torch.load(os.path.join(args.save, 'model.pt'), weights_only=False)", 'pickled model'),
    # The test of the best model moved it to the GPU whatever --cuda said; on the CPU the model is its
    # own parallel_model, as at the start of the run.
    *[(script, "parallel_model = nn.DataParallel(model, dim=1).cuda()\n",
       "parallel_model = nn.DataParallel(model, dim=1).cuda() if args.cuda else model\n",
       'unconditional .cuda()', 2) for script in ('main.py', 'finetune.py')],
    WEIGHT_DROP_EVAL_FIX,
]


def prepare_mos(folder):
    if not os.path.isfile(os.path.join(MOS, 'main.py')):
        pytest.skip(f'the original AWD-LSTM-MoS code is not at {MOS} (set MOS_ORIGINAL to a checkout of '
                    'zihangdai/mos at 9c0c608)')
    return patched_copy(MOS, folder, MOS_FIXES, 'zihangdai/mos at 9c0c608')


# MoS saves the pickled model alone: turn it into plain tensors beside its own modules.
def assert_same_tensors(original_folder, original_file, ours_file):
    expected = original_tensors(original_folder, original_file)['model']  # MoS saved the whole model
    ours = torch.load(ours_file, weights_only=True)
    assert not ours['criterion'], 'the mixture NLL has no parameters of its own'
    # MoS registered the mixture's layers on the model itself; here they sit in its `mixture` submodule.
    got = {k.replace('mixture.', '', 1): v for k, v in ours['model'].items()}
    assert sorted(got) == sorted(expected)
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f'tensors that differ from MoS: {different}'


# A tiny MoS: 3 experts, a last layer (12) of its own size, latent dropout unlike --dropouth.
TINY_MOS = ['--emsize', '10', '--nhid', '16', '--nlayers', '3', '--n_experts', '3',
            '--dropoutl', '0.3', '--dropouti', '0.4', '--dropouth', '0.25', '--batch_size', '4', '--bptt', '12',
            '--log-interval', '7', '--seed', '141']


def compare_main(tmp_path, flags):
    corpus = corpus_with_unseen_last_word(str(tmp_path / 'corpus'))
    original = prepare_mos(str(tmp_path / 'mos'))
    flags = ['--data', corpus, *flags]
    # MoS's --cuda was store_false: passing it is how it runs on the CPU. --save names a folder prefix.
    original_out = run(original, 'main.py', [*flags, '--cuda', '--save', str(tmp_path / 'run')])
    (original_save,) = glob.glob(str(tmp_path / 'run-*'))
    ours_save = str(tmp_path / 'ours.pt')
    ours_out = run(REPO, 'main.py', [*flags, '--cpu', '--save', ours_save])
    expected = printed_figures(original_out)
    assert expected and expected[-1].startswith('| End of training'), original_out[-2000:]
    assert printed_figures(ours_out) == expected
    assert_same_tensors(original, os.path.join(original_save, 'model.pt'), ours_save)
    return corpus, original, original_save, original_out, ours_save, ours_out


@pytest.mark.slow
def test_main_across_the_switch_to_asgd(tmp_path):
    _, _, _, original_out, _, ours_out = compare_main(
        tmp_path, ['--nhidlast', '12', *TINY_MOS, '--epochs', '6', '--nonmono', '1', '--lr', '40'])
    assert 'Switching!' in original_out and 'Switching to ASGD' in ours_out
    assert 'Saving Averaged!' in original_out and 'Saving Averaged!' in ours_out


@pytest.mark.slow
def test_small_batch_size_then_finetune(tmp_path):
    """--small_batch_size 2 of 4 across the switch, then each finetune.py on its own main.py's model."""
    flags = ['--nhidlast', '12', *TINY_MOS, '--small_batch_size', '2', '--max_seq_len_delta', '3',
             '--nonmono', '1']
    corpus, original, original_save, original_out, ours_save, ours_out = compare_main(
        tmp_path, [*flags, '--epochs', '5', '--lr', '40'])
    assert 'Switching!' in original_out and 'Switching to ASGD' in ours_out
    # MoS's finetune.py has no --nhidlast (the model is the checkpoint's).
    tune = ['--data', corpus, *flags[2:], '--epochs', '2', '--lr', '10']
    original_out = run(original, 'finetune.py', [*tune, '--cuda', '--save', original_save])
    ours_tuned = str(tmp_path / 'ours.finetuned.pt')
    ours_out = run(REPO, 'finetune.py', [*tune, '--cpu', '--save', ours_save, '--out', ours_tuned])
    expected = printed_figures(original_out)
    assert expected and expected[-1].startswith('| End of training'), original_out[-2000:]
    assert printed_figures(ours_out) == expected
    assert_same_tensors(original, os.path.join(original_save, 'finetune_model.pt'), ours_tuned)
