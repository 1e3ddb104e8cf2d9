"""Reliability, second round: each test reproduces one finding of a fault-injection pass (issue 11)
on a tiny model, and checks what should happen instead."""
import fcntl
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

import data
import dynamiceval
import finetune
import generate
import main as train_script
import checkpoint
import cli
import errors
import pointer
import training
from conftest import REPO, TINY, read_jsonl, tiny_run, write_corpus

LEGACY_FORMAT = 'awd-lstm-checkpoint-1'  # checkpoints written before the digest


def train(corpus, save, epochs=1, extra=()):
    return train_script.main(tiny_run(corpus, save, epochs, extra))


def must_not_run(*args, **kwargs):
    raise AssertionError('the bad location should have been found before this step')


def epochs_of(save):
    return [r['epoch'] for r in read_jsonl(cli.json_log_path(save)) if 'epoch' in r]


def temporaries(folder):
    return [name for name in os.listdir(folder) if name.endswith('.tmp')]


def hand_made(raw, path, digest=False):
    """Writes a checkpoint dict as someone could by hand: the legacy format without a digest, or the
    current one with a correct digest (a digest vouches for the bytes, not for the contents)."""
    raw = dict(raw)
    raw.pop('digest', None)
    if digest:
        raw = checkpoint.with_digest({**raw, 'format': checkpoint.CHECKPOINT_FORMAT})
    else:
        raw['format'] = LEGACY_FORMAT
    torch.save(raw, path)
    return path


@pytest.fixture
def small_corpus(tmp_path):
    return write_corpus(str(tmp_path / 'small'), (150, 40, 40))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A corpus, a one-epoch checkpoint with its resume state, and a one-epoch fine-tuning state."""
    folder = tmp_path_factory.mktemp('reliability')
    corpus = write_corpus(str(folder / 'corpus'), (150, 40, 40))
    save = str(folder / 'model.pt')
    assert train(corpus, save) == 0
    tuned = str(folder / 'tuned.pt')
    assert finetune.main(['--data', corpus, '--save', save, '--out', tuned, '--epochs', '1', *TINY]) == 0
    return corpus, save, finetune.finetune_state_path(tuned)


def copy_checkpoint(trained, tmp_path):
    """The fixture's checkpoint and state, copied so that a test may damage them."""
    _, save, _ = trained
    copy = str(tmp_path / 'copy.pt')
    shutil.copy(save, copy)
    shutil.copy(checkpoint.state_path(save), checkpoint.state_path(copy))
    return copy


# ---------------------------------------------------------------------------------------------
# Silent wrong results

@pytest.mark.parametrize('nhid', ['12', '16'], ids=['same architecture', 'other architecture'])
def test_ctrl_c_before_the_first_save_never_reports_an_older_runs_checkpoint(tmp_path, small_corpus,
                                                                            monkeypatch, nhid):
    save = str(tmp_path / 'm.pt')
    assert train(small_corpus, save) == 0
    before = open(save, 'rb').read()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(training, 'train_epoch', interrupted)
    with pytest.raises(errors.UserError, match='no model was saved by this run'):
        train(small_corpus, save, extra=['--nhid', nhid])
    assert open(save, 'rb').read() == before


def preempt(*args, **kwargs):
    raise cli.Preempted()


@pytest.mark.parametrize('script', ['main', 'finetune'])
def test_sigterm_before_the_first_epoch_ends_never_offers_an_older_runs_state(trained, tmp_path, monkeypatch,
                                                                             capsys, script):
    corpus, _, _ = trained
    save = copy_checkpoint(trained, tmp_path)  # an earlier run's checkpoint and state
    if script == 'main':
        run = lambda: train(corpus, save, epochs=3)
    else:
        argv = ['--data', corpus, '--save', save, '--epochs', '1', *TINY]
        assert finetune.main(argv) == 0  # leaves <save>.finetune.state
        run = lambda: finetune.main(argv)
    capsys.readouterr()
    monkeypatch.setattr(training, 'train_epoch', preempt)
    assert run() == 143
    out = capsys.readouterr().out
    assert 'nothing to resume from' in out and 'rerun with' not in out


@pytest.mark.parametrize('script', ['main', 'finetune'])
def test_sigterm_just_after_a_state_is_written_offers_it(trained, tmp_path, monkeypatch, capsys, script):
    corpus, save, _ = trained
    real = checkpoint.atomic_torch_save

    def signalled_once_written(obj, path):  # SIGTERM lands between the rename and the run noting it
        real(obj, path)
        if path.endswith('.state'):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs here, unless SIGTERM is held back until the note is made
    monkeypatch.setattr(checkpoint, 'atomic_torch_save', signalled_once_written)
    out = str(tmp_path / 'm.pt')
    if script == 'main':
        status = train(corpus, out, epochs=3)
    else:
        status = finetune.main(['--data', corpus, '--save', save, '--out', out, '--epochs', '3', *TINY])
    assert status == 143
    assert 'rerun with --resume' in capsys.readouterr().out


@pytest.mark.parametrize('flags,match', [
    (['--clip', '-1'], '--clip'), (['--wdecay', '-1'], '--wdecay'), (['--wdecay', 'nan'], '--wdecay'),
    (['--seed', '-1'], '--seed'), (['--seed', str(2 ** 32)], '--seed'), (['--lr', 'inf'], '--lr'),
])
def test_flags_that_would_train_uphill_or_crash_are_refused(tmp_path, small_corpus, monkeypatch, flags, match):
    monkeypatch.setattr(training, 'train_epoch', must_not_run)
    with pytest.raises(errors.UserError, match=match):
        train(small_corpus, str(tmp_path / 'm.pt'), extra=flags)


@pytest.mark.parametrize('script', [generate, dynamiceval], ids=lambda s: s.__name__)
def test_scripts_refuse_an_impossible_seed(trained, tmp_path, script):
    corpus, save, _ = trained
    argv = (['--checkpoint', save, '--outf', str(tmp_path / 'g.txt')] if script is generate else ['--save', save])
    with pytest.raises(errors.UserError, match='--seed'):
        script.main(['--data', corpus, *argv, '--seed', '-1', '--cpu'])


def same(a, b):
    """Equal as checkpoint contents: tensors bit for bit, containers item by item."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a.view(torch.uint8) if a.dtype == torch.bool else a,
                                                       b.view(torch.uint8) if b.dtype == torch.bool else b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and (a == b or a != a and b != b)


@pytest.mark.parametrize('which', ['checkpoint', 'state'])
def test_a_flipped_bit_never_loads_as_other_weights(trained, tmp_path, which):
    _, save, _ = trained
    path = save if which == 'checkpoint' else checkpoint.state_path(save)
    reference = torch.load(path, weights_only=True)
    content = open(path, 'rb').read()
    flipped_path = str(tmp_path / 'flipped.pt')
    rnd = random.Random(11)
    silently_different = []
    for _ in range(300):
        bit = rnd.randrange(len(content) * 8)
        damaged = bytearray(content)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with open(flipped_path, 'wb') as f:
            f.write(damaged)
        try:
            loaded = checkpoint.read_checkpoint(flipped_path)
        except errors.UserError as e:
            assert 'flipped.pt' in str(e) and '\n' not in str(e)
            continue
        if not same(loaded, reference):
            silently_different.append(bit)
    assert not silently_different, f'{len(silently_different)} of 300 flips loaded with other contents'


def test_a_checkpoint_without_its_digest_is_refused_unless_it_predates_digests(trained, tmp_path):
    _, save, _ = trained
    raw = torch.load(save, weights_only=True)
    legacy = hand_made(raw, str(tmp_path / 'legacy.pt'))
    assert checkpoint.load_checkpoint(legacy)['model'] is not None  # written before this change: still loads
    stripped = {k: v for k, v in raw.items() if k != 'digest'}
    torch.save(stripped, str(tmp_path / 'stripped.pt'))
    with pytest.raises(errors.UserError, match='stripped.pt: .*digest'):
        checkpoint.load_checkpoint(str(tmp_path / 'stripped.pt'))


def test_a_corpus_cache_with_a_swapped_vocabulary_is_rebuilt(small_corpus):
    data.load_corpus(small_corpus, log=lambda *a: None)
    cache, = [os.path.join(small_corpus, f) for f in os.listdir(small_corpus) if f.startswith('corpus.')]
    saved = torch.load(cache, weights_only=True)
    saved['idx2word'][0], saved['idx2word'][1] = saved['idx2word'][1], saved['idx2word'][0]
    torch.save(saved, cache)
    notes = []
    corpus = data.load_corpus(small_corpus, log=notes.append)
    assert corpus.dictionary.idx2word == data.Corpus(small_corpus).dictionary.idx2word
    assert any(cache in note for note in notes)  # says which file it did not trust
    again = data.load_corpus(small_corpus, log=lambda *a: None)  # and the rebuilt cache is good
    assert again.dictionary.idx2word == corpus.dictionary.idx2word


def corpus_of(folder, train_lines):
    """Lines of 3 words + <eos> = 4 tokens each; valid and test big enough for their batch sizes."""
    os.makedirs(folder)
    for name, n in (('train', train_lines), ('valid', 10), ('test', 10)):
        with open(os.path.join(folder, name + '.txt'), 'w') as f:
            f.write(' a b c \n' * n)
    return folder


def test_a_train_split_needs_at_least_one_batch(tmp_path):
    # Batch size 4: 8 tokens make 2 rows, which train nothing; 12 make 3 rows, one batch.
    with pytest.raises(errors.UserError, match=r'train.txt: 8 tokens are too few'):
        train(corpus_of(str(tmp_path / 'two_rows'), 2), str(tmp_path / 'a.pt'))
    save = str(tmp_path / 'b.pt')
    assert train(corpus_of(str(tmp_path / 'three_rows'), 3), save) == 0
    assert read_jsonl(cli.json_log_path(save))[0]['train_loss'] > 0


def test_pointer_refuses_to_report_a_non_finite_loss(trained):
    corpus, save, _ = trained
    with pytest.raises(errors.UserError, match='not finite'):
        pointer.main(['--data', corpus, '--save', save, '--window', '5', '--bptt', '20', '--cpu',
                      '--theta', '1e300', '--log', os.devnull])


# ---------------------------------------------------------------------------------------------
# Data loss

def test_log_names_of_different_saves_never_collide(tmp_path, small_corpus):
    runs = tmp_path / 'runs'
    runs.mkdir()
    saves = {lr: str(runs / f'lr{lr}') for lr in ('0.5', '0.1')}
    for lr, save in saves.items():
        assert train(small_corpus, save, extra=['--lr', lr]) == 0
    assert cli.json_log_path(saves['0.5']) != cli.json_log_path(saves['0.1'])
    for lr, save in saves.items():
        records = [r for r in read_jsonl(cli.json_log_path(save)) if 'epoch' in r]
        assert [r['lr'] for r in records] == [float(lr)]


def test_resume_from_a_checkpoint_alone_keeps_its_log(tmp_path, small_corpus):
    save = str(tmp_path / 'm.pt')
    assert train(small_corpus, save) == 0
    os.remove(checkpoint.state_path(save))
    log = cli.json_log_path(save)
    before = read_jsonl(log)
    with pytest.raises(errors.UserError, match='does not fit'):  # a resume that fails ...
        train(small_corpus, save, extra=['--resume', save, '--nhid', '20'])
    assert read_jsonl(log) == before  # ... leaves the log as it was
    assert train(small_corpus, save, extra=['--resume', save]) == 0
    after = read_jsonl(log)
    assert after[:len(before)] == before and len(after) == 2 * len(before)
    assert len({r['run'] for r in after}) == 2  # two runs, told apart


@pytest.mark.parametrize('with_state', [True, False])
def test_resume_alone_continues_the_run_it_names(tmp_path, small_corpus, monkeypatch, with_state):
    monkeypatch.chdir(tmp_path)
    save = str(tmp_path / 'part.pt')
    assert train(small_corpus, save) == 0
    if not with_state:
        os.remove(checkpoint.state_path(save))
    files = set(os.listdir(tmp_path))
    assert train_script.main([*TINY, '--data', small_corpus, '--epochs', '2', '--resume', save]) == 0
    assert set(os.listdir(tmp_path)) - files <= {'part.pt.state'}  # no timestamp-named run beside it
    assert checkpoint.read_checkpoint(checkpoint.state_path(save))['epoch'] == 2
    assert epochs_of(save) == ([1, 2] if with_state else [1, 1, 2])


def test_a_second_run_on_the_same_files_stops_at_once(trained, tmp_path, monkeypatch):
    corpus, _, _ = trained
    save = copy_checkpoint(trained, tmp_path)
    monkeypatch.setattr(cli, 'load_data', must_not_run)
    with open(save + '.lock', 'a') as held:  # as another run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(errors.UserError, match='another run'):
            train(corpus, save)
        with pytest.raises(errors.UserError, match='another run'):  # fine-tuning writes the same file
            finetune.main(['--data', corpus, '--save', save, '--epochs', '1', *TINY])
    monkeypatch.undo()
    assert train(corpus, save) == 0  # released with its holder


@pytest.mark.parametrize('target', ['checkpoint', 'train.txt'])
def test_generate_never_overwrites_its_inputs(trained, tmp_path, target):
    corpus, save, _ = trained
    data_copy = str(tmp_path / 'data')
    shutil.copytree(corpus, data_copy)
    ckpt = str(tmp_path / 'model.pt')
    shutil.copy(save, ckpt)
    outf = ckpt if target == 'checkpoint' else os.path.join(data_copy, 'train.txt')
    before = open(outf, 'rb').read()
    with pytest.raises(errors.UserError, match='would overwrite'):
        generate.main(['--data', data_copy, '--checkpoint', ckpt, '--outf', outf, '--words', '5', '--cpu'])
    assert open(outf, 'rb').read() == before


def test_main_never_saves_over_its_data(tmp_path, small_corpus, monkeypatch):
    monkeypatch.setattr(training, 'train_epoch', must_not_run)
    with pytest.raises(errors.UserError, match='would overwrite'):
        train(small_corpus, os.path.join(small_corpus, 'valid.txt'))


# Run main.py in a subprocess that dies as under kill -9 while writing the resume state of epoch 2:
# after the epoch's log record, leaving a half-written hidden temporary file.
DIES_WRITING_STATE_2 = '''
import os, sys
sys.path.insert(0, os.getcwd())
import checkpoint, main
real = checkpoint.atomic_torch_save

def dies(obj, path):
    if path.endswith('.state') and obj['epoch'] == 2:
        folder, name = os.path.split(path)
        with open(os.path.join(folder, '.' + name + '.k9k9k9k9.tmp'), 'wb') as f:
            f.write(b'half a state file')
        os._exit(137)
    return real(obj, path)

checkpoint.atomic_torch_save = dies
main.main(sys.argv[1:])
'''


def test_resume_after_kill_9_leaves_one_record_per_epoch_and_no_temporaries(tmp_path, small_corpus):
    save, straight = str(tmp_path / 'm.pt'), str(tmp_path / 'straight.pt')
    killed = subprocess.run([sys.executable, '-c', DIES_WRITING_STATE_2, *tiny_run(small_corpus, save, epochs=3)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == 137, killed.stderr
    assert epochs_of(save) == [1, 2] and temporaries(tmp_path)  # the state is still that of epoch 1
    assert train(small_corpus, save, epochs=3, extra=['--resume', save]) == 0
    assert epochs_of(save) == [1, 2, 3]
    assert not temporaries(tmp_path)
    assert train(small_corpus, straight, epochs=3) == 0
    strip = lambda path: [{k: v for k, v in r.items() if k not in ('seconds', 'run')}
                          for r in read_jsonl(cli.json_log_path(path))]
    assert strip(save) == strip(straight)


# ---------------------------------------------------------------------------------------------
# One-line errors instead of tracebacks

DISK_FULL = RuntimeError('[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing '
                         'file data/0: file write failed')


def disk_full(obj, f, *args, **kwargs):
    f.write(b'PK\x03\x04 the start of a file')
    raise DISK_FULL


def test_a_full_disk_while_caching_the_corpus_only_skips_the_cache(small_corpus, monkeypatch):
    monkeypatch.setattr(torch, 'save', disk_full)
    notes = []
    corpus = data.load_corpus(small_corpus, log=notes.append)
    assert len(corpus.train) > 0
    assert not [f for f in os.listdir(small_corpus) if f.startswith('corpus.')] and not temporaries(small_corpus)


def test_a_full_disk_while_saving_a_checkpoint_is_a_one_line_error(tmp_path, small_corpus, monkeypatch):
    save = str(tmp_path / 'm.pt')
    assert train(small_corpus, save) == 0
    before = open(save, 'rb').read()
    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(errors.UserError, match=r'm.pt: could not be written .*PytorchStreamWriter') as e:
        train(small_corpus, save, extra=['--lr', '1'])
    assert '\n' not in str(e.value)
    assert open(save, 'rb').read() == before and not temporaries(tmp_path)


def test_a_full_disk_while_logging_is_a_one_line_error(tmp_path, monkeypatch):
    log = cli.JsonLog(str(tmp_path / 'l.jsonl'))

    class Full:
        def write(self, text):
            raise OSError(28, 'No space left on device')

        def flush(self):
            pass
    log.file = Full()
    with pytest.raises(errors.UserError, match='l.jsonl: .*No space left'):
        log.write(epoch=1)


def save_location(tmp_path, where):
    if where == 'missing folder':
        return str(tmp_path / 'nowhere' / 'm.pt')
    if where == 'a folder':
        (tmp_path / 'folder').mkdir()
        return str(tmp_path / 'folder')
    read_only = tmp_path / 'read_only'
    read_only.mkdir()
    read_only.chmod(0o555)  # honoured even when the tests run as root
    return str(read_only / 'm.pt')


@pytest.mark.parametrize('where,match', [('missing folder', 'does not exist'), ('a folder', 'is a folder'),
                                         ('read-only folder', 'read-only')])
def test_unusable_save_locations_are_found_before_training(tmp_path, small_corpus, monkeypatch, where, match):
    save = save_location(tmp_path, where)
    monkeypatch.setattr(cli, 'load_data', must_not_run)
    try:
        with pytest.raises(errors.UserError, match=match):
            train(small_corpus, save)
    finally:
        for folder in tmp_path.iterdir():
            folder.chmod(0o755)


def test_pointer_checks_where_its_log_goes_before_evaluating(trained, tmp_path, monkeypatch):
    corpus, save, _ = trained
    shared = tmp_path / 'shared'
    shared.mkdir()
    ckpt = str(shared / 'model.pt')
    shutil.copy(save, ckpt)
    shared.chmod(0o555)
    argv = ['--data', corpus, '--save', ckpt, '--window', '5', '--bptt', '20', '--cpu']
    try:
        monkeypatch.setattr(pointer, 'pointer_loss', must_not_run)
        with pytest.raises(errors.UserError, match='read-only.*--log'):
            pointer.main(argv)
        monkeypatch.undo()
        log = str(tmp_path / 'pointer.jsonl')
        assert pointer.main(argv + ['--log', log]) == 0
        assert read_jsonl(log)[-1]['checkpoint'] == ckpt
    finally:
        shared.chmod(0o755)


@pytest.mark.parametrize('where,match', [('missing folder', 'does not exist'), ('a folder', 'is a folder'),
                                         ('read-only folder', 'read-only')])
def test_generate_checks_its_output_before_sampling(trained, tmp_path, monkeypatch, where, match):
    corpus, save, _ = trained
    outf = save_location(tmp_path, where)
    monkeypatch.setattr(checkpoint, 'load_checkpoint', must_not_run)
    try:
        with pytest.raises(errors.UserError, match=match):
            generate.main(['--data', corpus, '--checkpoint', save, '--outf', outf, '--words', '5', '--cpu'])
    finally:
        for folder in tmp_path.iterdir():
            folder.chmod(0o755)


def test_finetune_resume_needs_to_know_which_run(trained):
    corpus, _, _ = trained
    with pytest.raises(errors.UserError, match='--resume'):
        finetune.main(['--data', corpus, '--resume', '--epochs', '1', *TINY])


def test_each_script_resumes_only_its_own_states(trained, tmp_path):
    corpus, save, finetune_state = trained
    copy = copy_checkpoint(trained, tmp_path)
    with pytest.raises(errors.UserError, match=r'main\.py'):
        finetune.main(['--data', corpus, '--save', copy, '--resume', checkpoint.state_path(copy), '--epochs', '2',
                       *TINY])
    with pytest.raises(errors.UserError, match=r'finetune\.py'):
        train(corpus, str(tmp_path / 'x.pt'), epochs=2, extra=['--resume', finetune_state])


BROKEN = {
    'model missing': lambda c: c.pop('model'),
    'model not a dict': lambda c: c.__setitem__('model', [1, 2]),
    'a weight replaced by a number': lambda c: c['model'].__setitem__(next(iter(c['model'])), 3),
    'args not a dict': lambda c: c.__setitem__('args', 'lr=30'),
    'vocabulary not words': lambda c: c.__setitem__('idx2word', list(range(len(c['idx2word'])))),
    'model_config with an unknown key': lambda c: c['model_config'].__setitem__('colour', 'blue'),
    'model_config with a wrong type': lambda c: c['model_config'].__setitem__('nhid', 'twelve'),
    'criterion_config missing a key': lambda c: c['criterion_config'].pop('splits'),
}


@pytest.mark.parametrize('digest', [False, True], ids=['legacy', 'with digest'])
@pytest.mark.parametrize('case', BROKEN)
def test_hand_made_checkpoints_with_missing_or_wrong_fields(trained, tmp_path, case, digest):
    corpus, save, _ = trained
    raw = torch.load(save, weights_only=True)
    BROKEN[case](raw)
    path = hand_made(raw, str(tmp_path / 'hand.pt'), digest)
    with pytest.raises(errors.UserError, match='hand.pt'):
        checkpoint.load_checkpoint(path)
    if not case.startswith(('model_config', 'criterion_config')):  # main.py builds the model from its flags
        with pytest.raises(errors.UserError, match='hand.pt'):
            train(corpus, str(tmp_path / 'x.pt'), extra=['--resume', path])


STATE_BROKEN = {
    'epoch not a number': lambda s: s.__setitem__('epoch', 'one'),
    'history missing': lambda s: s.pop('history'),
    'random state damaged': lambda s: s['rng'].__setitem__('numpy', {}),
    'optimizer state of another shape': lambda s: s['optimizer']['param_groups'].append({'params': [99]}),
}


@pytest.mark.parametrize('case', STATE_BROKEN)
def test_hand_made_resume_states_with_missing_or_wrong_fields(trained, tmp_path, case):
    corpus, _, _ = trained
    copy = copy_checkpoint(trained, tmp_path)
    raw = torch.load(checkpoint.state_path(copy), weights_only=True)
    STATE_BROKEN[case](raw)
    hand_made(raw, checkpoint.state_path(copy))
    with pytest.raises(errors.UserError, match='copy.pt.state'):
        train(corpus, copy, epochs=2, extra=['--resume', copy])


@pytest.mark.parametrize('flag,value', [('bptt', 0), ('lr', -1.0), ('batch_size', 'four'), ('dropout', 1.5)])
def test_a_resume_state_with_invalid_flags_is_refused(trained, tmp_path, flag, value):
    corpus, _, _ = trained
    copy = copy_checkpoint(trained, tmp_path)
    raw = torch.load(checkpoint.state_path(copy), weights_only=True)
    raw['args'][flag] = value
    hand_made(raw, checkpoint.state_path(copy))
    with pytest.raises(errors.UserError, match=f'copy.pt.state: .*--{flag}'):
        train(corpus, copy, epochs=2, extra=['--resume', copy])


def run_script(main, capsys):
    """cli.run(main) as a script runs it: returns (exit status, stderr)."""
    try:
        cli.run(main)
    except SystemExit as e:
        return e.code, capsys.readouterr().err
    except KeyboardInterrupt:
        pytest.fail('KeyboardInterrupt escaped cli.run')
    pytest.fail('cli.run returned without exiting')


def test_ctrl_c_during_start_up_is_one_line(tmp_path, small_corpus, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, 'load_data', interrupted)
    status, err = run_script(lambda: train_script.main(tiny_run(small_corpus, str(tmp_path / 'm.pt'))), capsys)
    assert status == 130 and err.count('\n') == 1 and 'Traceback' not in err


def test_an_unexpected_os_error_is_one_line(capsys):
    def fails():
        raise OSError(28, 'No space left on device', 'somewhere.pt')
    status, err = run_script(fails, capsys)
    assert status == 2 and err == "error: somewhere.pt: No space left on device\n"


def test_output_piped_into_head_ends_quietly(trained, tmp_path):
    corpus, save, _ = trained
    proc = subprocess.Popen([sys.executable, 'generate.py', '--data', corpus, '--checkpoint', save,
                             '--outf', str(tmp_path / 'g.txt'), '--words', '300', '--log-interval', '1', '--cpu'],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader has gone, as `| head` does once it has its lines
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert 'Traceback' not in err and 'Exception ignored' not in err


# ---------------------------------------------------------------------------------------------
# Smaller

@pytest.mark.parametrize('umask', [0o022, 0o002, 0o077])
def test_atomic_writes_follow_the_umask_and_keep_an_existing_mode(tmp_path, umask):
    path = str(tmp_path / 'x.pt')
    old = os.umask(umask)
    try:
        checkpoint.atomic_torch_save({'x': torch.ones(1)}, path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    os.chmod(path, 0o640)
    checkpoint.atomic_torch_save({'x': torch.zeros(1)}, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_a_symlinked_save_is_written_through(tmp_path, small_corpus):
    store = tmp_path / 'store'
    store.mkdir()
    link = str(tmp_path / 'm.pt')
    os.symlink(str(store / 'm.pt'), link)
    assert train(small_corpus, link, epochs=2, extra=['--lr', '1']) == 0
    assert os.path.islink(link)
    assert checkpoint.read_checkpoint(str(store / 'm.pt'))['model'].keys()


def test_log_records_are_strict_json(tmp_path):
    path = str(tmp_path / 'l.jsonl')
    cli.JsonLog(path).write(epoch=1, valid_loss=float('nan'), valid_ppl=float('inf'), lr=[float('-inf')])

    def reject(constant):
        raise ValueError(f'{constant} is not JSON')
    with open(path) as f:
        record = json.loads(f.readline(), parse_constant=reject)
    assert record['valid_loss'] is None and record['valid_ppl'] is None and record['lr'] == [None]


# ---------------------------------------------------------------------------------------------
# Third round (issue 19): paths, locks, flags and distributed start-up

@pytest.mark.parametrize('flags,match', [
    (['--lr', '1e39'], '--lr'), (['--wdecay', '1e39'], '--wdecay'),
    (['--lr', '1e300', '--optimizer', 'adam'], '--lr'),
    (['--lr', '1e38', '--optimizer', 'adam'], '--lr with --optimizer adam'),  # its first step is 10 x lr
])
def test_values_beyond_float32_are_refused_before_the_optimizer_sees_them(tmp_path, small_corpus, monkeypatch,
                                                                          flags, match):
    monkeypatch.setattr(training, 'train_epoch', must_not_run)
    with pytest.raises(errors.UserError, match=match):
        train(small_corpus, str(tmp_path / 'm.pt'), extra=flags)
    if '--optimizer' not in flags:  # fine-tuning takes the same flags, but always uses ASGD
        with pytest.raises(errors.UserError, match=match):
            finetune.main(tiny_run(small_corpus, str(tmp_path / 'm.pt'), extra=flags))


def test_dynamiceval_refuses_an_lr_beyond_float32(trained):
    corpus, save, _ = trained
    with pytest.raises(errors.UserError, match='--lr must be >= 0 and finite in float32'):
        dynamiceval.main(['--data', corpus, '--save', save, '--cpu', '--lr', '1e39', '--max-batches', '2'])
    with pytest.raises(errors.UserError, match='--lr'):
        dynamiceval.main(['--data', corpus, '--save', save, '--cpu', '--sgd', '--lr', '1e39', '--max-batches', '2'])


def test_the_cpu_running_out_of_memory_is_one_line(tmp_path, small_corpus, capsys):
    # 10**16 columns: beyond any machine's address space, so the allocation fails at once whatever the
    # kernel's overcommit policy (the 10**11 fails the same way on a machine that does not overcommit).
    status, err = run_script(lambda: train(small_corpus, str(tmp_path / 'm.pt'), extra=['--emsize', str(10 ** 16)]),
                             capsys)
    assert status == 2 and err.count('\n') == 1, err
    assert err.startswith('error: CPU out of memory: an allocation for ') and '--emsize' in err, err
    assert not os.path.exists(tmp_path / 'm.pt')


def special_file(tmp_path, kind):
    """A FIFO or a socket (a device node needs root: /dev/null itself must never be tried)."""
    path = str(tmp_path / f'{kind}.pt')
    if kind == 'fifo':
        os.mkfifo(path)
    else:
        import socket
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        sock.close()
    return path


@pytest.mark.parametrize('kind', ['fifo', 'socket'])
@pytest.mark.parametrize('through', ['path', 'symlink'])
def test_a_non_regular_file_is_never_replaced_by_a_checkpoint(trained, tmp_path, monkeypatch, kind, through):
    corpus, save, _ = trained
    special = special_file(tmp_path, kind)
    target = special
    if through == 'symlink':
        target = str(tmp_path / 'link.pt')
        os.symlink(special, target)
    monkeypatch.setattr(cli, 'load_data', must_not_run)
    monkeypatch.setattr(checkpoint, 'load_checkpoint', must_not_run)
    with pytest.raises(errors.UserError, match=f'is a {kind.upper() if kind == "fifo" else kind}, not a regular file'):
        train(corpus, target)
    with pytest.raises(errors.UserError, match='not a regular file'):
        finetune.main(['--data', corpus, '--save', save, '--out', target, '--epochs', '1', *TINY])
    with pytest.raises(errors.UserError, match='not a regular file'):  # the last line of defence
        checkpoint.atomic_torch_save({'x': torch.ones(1)}, target)
    assert not stat.S_ISREG(os.stat(special).st_mode)
    # Only files that are replaced must be regular: a log or generated text may go to a device.
    cli.check_output(os.devnull, '--log')


def test_dev_null_as_save_is_refused_without_writing_anything():
    # Checked without running a script: as root, a failure here would replace the system's /dev/null.
    with pytest.raises(errors.UserError, match='/dev/null: is a device, not a regular file'):
        checkpoint.check_replaceable(os.devnull, os.devnull)
    with pytest.raises(errors.UserError, match='is a device|read-only'):  # as root / as anyone else
        cli.check_output(os.devnull, '--save', replaced=True)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


@pytest.mark.parametrize('length', [236, 240, 245, 256])
def test_a_save_name_too_long_for_the_file_system_is_found_before_any_work(trained, tmp_path, monkeypatch, length):
    corpus, save, _ = trained
    if os.pathconf(str(tmp_path), 'PC_NAME_MAX') != 255:
        pytest.skip('the lengths are chosen for a file system with 255-byte names')
    # The longest name a run writes is the temporary file of <save>.state: 6 + 14 bytes more than <save>.
    name = str(tmp_path / ('x' * length))
    monkeypatch.setattr(cli, 'load_data', must_not_run)
    monkeypatch.setattr(checkpoint, 'load_checkpoint', must_not_run)
    with pytest.raises(errors.UserError, match=rf'name too long for this file system \(--save\): shorten it by '
                                               rf'at least {length - 235} bytes'):
        train(corpus, name)
    with pytest.raises(errors.UserError, match='name too long'):
        finetune.main(['--data', corpus, '--save', save, '--out', name, '--epochs', '1', *TINY])
    assert os.listdir(tmp_path) == []


def test_the_longest_save_name_that_fits_trains(tmp_path, small_corpus):
    if os.pathconf(str(tmp_path), 'PC_NAME_MAX') != 255:
        pytest.skip('the length is chosen for a file system with 255-byte names')
    save = str(tmp_path / ('x' * 235))
    assert train(small_corpus, save) == 0
    assert checkpoint.read_checkpoint(checkpoint.state_path(save))['epoch'] == 1


def test_a_symlink_loop_as_save_is_found_before_any_work(trained, tmp_path, monkeypatch):
    corpus, save, _ = trained
    loop = str(tmp_path / 'loop.pt')
    os.symlink('loop.pt', loop)
    monkeypatch.setattr(cli, 'load_data', must_not_run)
    monkeypatch.setattr(checkpoint, 'load_checkpoint', must_not_run)
    with pytest.raises(errors.UserError, match=r'loop.pt: Too many levels of symbolic links \(--save\)'):
        train(corpus, loop)
    with pytest.raises(errors.UserError, match=r'loop.pt: Too many levels of symbolic links \(--out\)'):
        finetune.main(['--data', corpus, '--save', save, '--out', loop, '--epochs', '1', *TINY])
    assert os.path.islink(loop) and sorted(os.listdir(tmp_path)) == ['loop.pt']


@pytest.mark.parametrize('through', ['a symlinked file', 'a symlinked folder'])
def test_a_symlink_to_another_runs_save_is_locked_out_too(trained, tmp_path, monkeypatch, through):
    corpus, _, _ = trained
    save = copy_checkpoint(trained, tmp_path)  # the other run's --save
    if through == 'a symlinked file':
        other_name = str(tmp_path / 'alias.pt')
        os.symlink(save, other_name)
    else:
        os.symlink(str(tmp_path), str(tmp_path / 'alias'))
        other_name = str(tmp_path / 'alias' / os.path.basename(save))
    before = open(save, 'rb').read()
    monkeypatch.setattr(cli, 'load_data', must_not_run)
    monkeypatch.setattr(checkpoint, 'load_checkpoint', must_not_run)
    with open(save + '.lock', 'a') as held:  # the other run, on its own path
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(errors.UserError, match='alias.* another run is using these files'):
            train(corpus, other_name)
        with pytest.raises(errors.UserError, match='another run'):
            finetune.main(['--data', corpus, '--save', save, '--out', other_name, '--epochs', '1', *TINY])
    assert open(save, 'rb').read() == before


def test_no_checkpoint_is_ever_written_over_a_resume_state(trained, tmp_path, monkeypatch):
    corpus, _, _ = trained
    save = copy_checkpoint(trained, tmp_path)
    state = checkpoint.state_path(save)
    before = open(state, 'rb').read()
    monkeypatch.setattr(cli, 'load_data', must_not_run)
    monkeypatch.setattr(checkpoint, 'load_checkpoint', must_not_run)
    with pytest.raises(errors.UserError, match=r'copy.pt.state: --save names a resume state'):
        finetune.main(['--data', corpus, '--save', state, '--epochs', '1', *TINY])  # fine-tunes in place
    with pytest.raises(errors.UserError, match=r'--out names a resume state'):
        finetune.main(['--data', corpus, '--save', save, '--out', str(tmp_path / 'other.pt.finetune.state'),
                       '--epochs', '1', *TINY])
    with pytest.raises(errors.UserError, match=r'--save names a resume state'):
        train(corpus, state)
    assert open(state, 'rb').read() == before
    checkpoint.read_state(state, 'main')  # its run can still continue


def test_resuming_a_run_whose_model_was_fine_tuned_in_place_stops_before_any_work(trained, tmp_path, monkeypatch):
    corpus, _, _ = trained
    save = copy_checkpoint(trained, tmp_path)
    main_run = checkpoint.read_checkpoint(save)['run']
    assert finetune.main(['--data', corpus, '--save', save, '--epochs', '2', *TINY]) == 0  # in place
    tuned = open(save, 'rb').read()
    assert checkpoint.read_checkpoint(save)['run'] != main_run  # the fine-tuned model replaced the run's
    monkeypatch.setattr(training, 'train_epoch', must_not_run)
    with pytest.raises(errors.UserError, match=r'copy.pt: holds the model of another run .* --save NEW.pt'):
        train(corpus, save, epochs=3, extra=['--resume', save])
    assert open(save, 'rb').read() == tuned
    monkeypatch.undo()
    # As the message says: the run continues from its state, into other files.
    elsewhere = str(tmp_path / 'continued.pt')
    assert train_script.main([*TINY, '--data', corpus, '--epochs', '2', '--resume', checkpoint.state_path(save),
                              '--save', elsewhere]) == 0
    assert checkpoint.read_checkpoint(checkpoint.state_path(elsewhere))['epoch'] == 2
    assert open(save, 'rb').read() == tuned

# Third round (issue 19)

def write_records(path, records):
    with open(path, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
    return str(path)


def epoch_record(run, epoch, lr, valid_loss):
    return dict(run=run, epoch=epoch, lr=lr, optimizer='sgd', train_loss=valid_loss + 0.5,
                **cli.loss_record('valid', valid_loss))


def test_plot_draws_each_run_of_a_shared_log_as_its_own_curve(tmp_path):
    import plot
    # A run of 4 epochs, then a restart from its checkpoint with --lr 5 (a new run id) for 2 more.
    first = [epoch_record('aaaa1111bbbb2222', e, 30, 6 - 0.2 * e) for e in (1, 2, 3, 4)]
    second = [epoch_record('cccc3333dddd4444', e, 5, 5 - 0.1 * e) for e in (1, 2)]
    log = write_records(tmp_path / 'm.pt.jsonl', first + [dict(run=first[0]['run'], final=True)] + second)
    runs = plot.log_curves(log, 'm')
    assert [label for label, _ in runs] == ['m run 1/2 (aaaa1111)', 'm run 2/2 (cccc3333)']
    assert [points[0] for _, points in runs] == [[1, 2, 3, 4], [1, 2]]
    assert runs[1][1][2] == pytest.approx([training.perplexity(4.9), training.perplexity(4.8)])
    # One run (continued exactly from its state: the same id) stays one curve with the log's label.
    assert [label for label, _ in plot.log_curves(write_records(tmp_path / 'one.jsonl', first), 'one')] == ['one']


@pytest.mark.parametrize('nhid', ['12', '16'], ids=['same architecture', 'other architecture'])
def test_finetune_never_reports_a_model_that_replaced_its_output(trained, tmp_path, monkeypatch, nhid):
    corpus, save, _ = trained
    other = str(tmp_path / 'other.pt')
    assert train(corpus, other, extra=['--nhid', nhid]) == 0
    out = str(tmp_path / 'tuned.pt')
    real = checkpoint.atomic_torch_save

    def replaced_after_the_last_epoch(obj, path):  # another run writes over the output at the end
        real(obj, path)
        if path.endswith('.finetune.state'):
            shutil.copy(other, out)
    monkeypatch.setattr(checkpoint, 'atomic_torch_save', replaced_after_the_last_epoch)
    with pytest.raises(errors.UserError, match='tuned.pt: replaced by another run'):
        finetune.main(['--data', corpus, '--save', save, '--out', out, '--epochs', '1', *TINY])
    assert open(out, 'rb').read() == open(other, 'rb').read()  # left as it is


def test_finetune_in_place_without_improvement_reports_the_loaded_model(trained, tmp_path, monkeypatch, capsys):
    corpus, _, _ = trained
    save = copy_checkpoint(trained, tmp_path)
    before = open(save, 'rb').read()
    monkeypatch.setattr(training, 'evaluate', lambda *args: 5.0)  # valid never improves: nothing saved
    assert finetune.main(['--data', corpus, '--save', save, '--epochs', '2', *TINY]) == 0
    assert open(save, 'rb').read() == before
    assert 'End of training' in capsys.readouterr().out


@pytest.mark.parametrize('flags', [['--sgd', '--lr', '3e38'], ['--sgd', '--lr', '1e30'], ['--lr', '1e30']],
                         ids=lambda f: ' '.join(f))
def test_dynamiceval_refuses_to_report_a_diverged_result(trained, capsys, flags):
    corpus, save, _ = trained
    with pytest.raises(errors.UserError, match='not a usable result: the updates diverged with --lr'):
        dynamiceval.main(['--data', corpus, '--save', save, '--cpu', '--max-batches', '5', *flags])
    assert 'End of dynamic evaluation' not in capsys.readouterr().out


def evaluation_argv(script, corpus, model, tmp_path):
    """argv of pointer.py, generate.py or dynamiceval.py evaluating `model`."""
    if script is generate:
        return ['--data', corpus, '--checkpoint', model, '--outf', str(tmp_path / 'g.txt'), '--words', '5', '--cpu']
    if script is pointer:
        return ['--data', corpus, '--save', model, '--window', '5', '--bptt', '20', '--cpu',
                '--log', str(tmp_path / 'p.jsonl')]
    return ['--data', corpus, '--save', model, '--cpu', '--max-batches', '2']


@pytest.mark.parametrize('which', ['main', 'finetune', 'renamed'])
@pytest.mark.parametrize('script', [pointer, generate, dynamiceval], ids=lambda s: s.__name__)
def test_evaluation_scripts_refuse_a_resume_state_and_name_the_checkpoint(trained, tmp_path, monkeypatch,
                                                                          script, which):
    corpus, save, tuned_state = trained
    state, best = {'main': (checkpoint.state_path(save), save),
                   'finetune': (tuned_state, tuned_state[:-len('.finetune.state')])}.get(which, (None, save))
    if which == 'renamed':  # a state copied under another name: its run's --save is named
        state = str(tmp_path / 'weights.pt')
        shutil.copy(checkpoint.state_path(save), state)
    monkeypatch.setattr(cli, 'load_data', must_not_run)
    with pytest.raises(errors.UserError, match='a resume state of ') as refused:
        script.main(evaluation_argv(script, corpus, state, tmp_path))
    assert str(refused.value).startswith(f'{state}: ') and str(refused.value).endswith(f'use the checkpoint {best}')


def test_the_corpus_cache_is_named_after_the_text_that_was_read(small_corpus, monkeypatch):
    train_file = os.path.join(small_corpus, 'train.txt')
    old_text = open(train_file).read()
    real_key = data._content_key

    def split_changes_once_hashed(path):  # another process rewrites train.txt in between
        key = real_key(path)
        with open(train_file, 'a') as f:
            f.write(' a brand new line . \n')
        return key
    monkeypatch.setattr(data, '_content_key', split_changes_once_hashed)
    data.load_corpus(small_corpus, log=lambda *a: None)
    monkeypatch.setattr(data, '_content_key', real_key)
    cache, = [name for name in os.listdir(small_corpus) if name.startswith('corpus.')]
    assert cache == f'corpus.{real_key(small_corpus)}.pt'  # the new text's name
    with open(train_file, 'w') as f:  # back to the old text: its corpus, not the new one's
        f.write(old_text)
    loaded = data.load_corpus(small_corpus, log=lambda *a: None)
    assert 'brand' not in loaded.dictionary.idx2word
    assert loaded.dictionary.idx2word == data.Corpus(small_corpus).dictionary.idx2word


def test_a_utf8_byte_order_mark_is_not_a_word(tmp_path, small_corpus):
    marked = str(tmp_path / 'marked')
    shutil.copytree(small_corpus, marked)
    for split in data.SPLITS:
        name = os.path.join(marked, split + '.txt')
        text = open(name, 'rb').read()
        with open(name, 'wb') as f:
            f.write(b'\xef\xbb\xbf' + text)
    plain, with_mark = data.Corpus(small_corpus), data.Corpus(marked)
    assert with_mark.dictionary.idx2word == plain.dictionary.idx2word
    assert all(torch.equal(getattr(with_mark, s), getattr(plain, s)) for s in data.SPLITS)
    # An old cache of the marked text (the mark a word) is not taken for the new reading.
    assert data._content_key(marked) != data._content_key(small_corpus)
    assert data.load_corpus(marked, log=lambda *a: None).dictionary.idx2word == plain.dictionary.idx2word


@pytest.mark.parametrize('offset', [5, 8191, 8192, 10000, (1 << 20) + 3])
def test_the_utf8_error_names_the_offset_from_the_start_of_the_file(tmp_path, offset):
    folder = corpus_of(str(tmp_path / 'c'), 3)
    name = os.path.join(folder, 'valid.txt')
    text = ('a b \u00e9t\u00e9 c \n' * (offset // 12 + 1)).encode()[:offset]
    text = text[:len(text.decode('utf-8', 'ignore').encode())]  # no character cut at the end
    text += b'x' * (offset - len(text)) + b'\xff more words \n'
    with open(name, 'wb') as f:
        f.write(text)
    with pytest.raises(data.DataError, match=rf'valid.txt: not UTF-8 text \(invalid start byte at byte {offset}\)'):
        data.Corpus(folder)


@pytest.mark.parametrize('cut', ['partial record', 'whole record without its newline'])
def test_appending_to_a_log_whose_last_line_was_cut_off(tmp_path, capsys, cut):
    path = str(tmp_path / 'm.pt.jsonl')
    records = [epoch_record('r', e, 30, 6 - 0.1 * e) for e in (1, 2)]
    text = ''.join(json.dumps(r) + '\n' for r in records)
    last = json.dumps(epoch_record('r', 3, 30, 5.5))
    with open(path, 'w') as f:  # the disk filled up (or kill -9 struck) in the middle of epoch 3's record
        f.write(text + (last[:25] if cut == 'partial record' else last))
    cli.JsonLog(path, 'r').write(epoch=4, valid_loss=5.4)
    lines = open(path).read().splitlines()
    kept = records + ([] if cut == 'partial record' else [json.loads(last)])
    assert [json.loads(line) for line in lines] == kept + [{'run': 'r', 'epoch': 4, 'valid_loss': 5.4}]
    assert ('dropped its last line' in capsys.readouterr().out) == (cut == 'partial record')


def test_plot_skips_lines_cut_off_by_an_interrupted_write(tmp_path, capsys):
    import plot
    records = [epoch_record('r', e, 30, 6 - 0.1 * e) for e in (1, 2, 3, 4)]
    lines = [json.dumps(r) for r in records]
    # Written before logs were repaired: epoch 2's record cut off, epoch 3's appended to it; the last cut off.
    damaged = [lines[0], lines[1][:30] + lines[2], lines[3][:20]]
    log = str(tmp_path / 'm.pt.jsonl')
    with open(log, 'w') as f:
        f.write('\n'.join(damaged))
    (label, points), = plot.log_curves(log, 'm')
    assert points[0] == [1, 3]
    assert 'skipped 1 line(s) cut off by an interrupted write (line 3)' in capsys.readouterr().err


def test_pointer_refuses_lambdasm_1_naming_the_real_cause(trained, monkeypatch):
    corpus, save, _ = trained
    monkeypatch.setattr(cli, 'load_data', must_not_run)
    with pytest.raises(errors.UserError) as refused:
        pointer.main(['--data', corpus, '--save', save, '--window', '5', '--bptt', '20', '--cpu',
                      '--lambdasm', '1', '--log', os.devnull])
    message = str(refused.value)
    assert message.startswith('--lambdasm must be in [0, 1), got 1.0') and 'probability 0' in message
    assert '--theta' not in message


@pytest.mark.parametrize('script', ['main', 'finetune'])
def test_the_resume_note_names_only_flags_given_on_the_command_line(trained, tmp_path, capsys, script):
    corpus, save, _ = trained
    out = str(tmp_path / 'm.pt')
    # The run's own settings differ from the defaults: --lr 5 (default 30), --nonmono 3 (default 5).
    if script == 'main':
        first = lambda *extra: train(corpus, out, epochs=1, extra=['--lr', '5', '--nonmono', '3', *extra])
        resume = lambda *extra: train_script.main([*TINY, '--data', corpus, '--epochs', '2', '--resume', out, *extra])
    else:
        first = lambda: finetune.main(['--data', corpus, '--save', save, '--out', out, '--epochs', '1',
                                       '--lr', '5', '--nonmono', '3', *TINY])
        resume = lambda *extra: finetune.main(['--data', corpus, '--out', out, '--resume', '--epochs', '2', *TINY,
                                               *extra])
    assert first() == 0
    capsys.readouterr()
    assert resume() == 0
    assert 'ignored flags' not in capsys.readouterr().out  # nothing given but what may change
    state = checkpoint.state_path(out) if script == 'main' else finetune.finetune_state_path(out)
    # Given, and different from the run's: noted (an abbreviation counts); given with the run's value: not.
    assert resume('--lr', '7', '--nonmon', '4', '--clip', '0.25', '--resume', state, '--epochs', '3') == 0
    assert 'ignored flags: lr, nonmono\n' in capsys.readouterr().out


def test_benchmark_data_naming_a_missing_folder_is_an_error(tmp_path, monkeypatch, capsys):
    import benchmark
    missing = str(tmp_path / 'no-such-corpus')
    monkeypatch.setattr(benchmark, 'load_streams', must_not_run)
    with pytest.raises(errors.UserError, match=f'--data {missing}: folder not found .*--synthetic'):
        benchmark.main(['--data', missing, '--small', '--cpu', '--batches', '1', '--warmup', '0'])
    assert 'recipe=' not in capsys.readouterr().out
