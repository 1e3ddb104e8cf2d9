import json
import math

import pytest

from conftest import patch_everywhere
import torch

from harness import checkpoint
import errors
import score
from pipeline_helpers import random_checkpoint, train_tiny
from reliability_helpers import must_not_run

WORDS = ['<eos>', '<unk>', 'the', 'cat', 'a', 'dog', 'sees', 'likes', '.', 'fish', 'tree', 'bread']
LINES = 'the cat sees a dog .\na dog likes the fish .\n\nthe zebra sees bread .\ncat\n'


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    return train_tiny(str(tmp_path_factory.mktemp('score')))


def run(argv, capsys):
    assert score.main(argv) == 0
    return capsys.readouterr().out


def tsv(text):
    header, *rows = text.rstrip('\n').split('\n')
    names = header.split('\t')
    return [dict(zip(names, row.split('\t'))) for row in rows]


def write(path, text):
    path.write_text(text)
    return str(path)


def test_stream_gives_main_test_loss(trained, capsys):
    corpus, save = trained
    summary = json.loads(run(['--checkpoint', save, '--text', corpus + '/test.txt', '--json', '--cpu'], capsys))
    with open(save + '.jsonl') as f:
        final = [json.loads(line) for line in f][-1]
    assert summary['loss'] == pytest.approx(final['test_loss'], rel=1e-6)
    assert summary['ppl'] == pytest.approx(math.exp(summary['loss']))
    assert summary['oov'] == 0 and summary['tokens'] == len(open(corpus + '/test.txt').read().split()) + 40
    line = run(['--checkpoint', save, '--text', corpus + '/test.txt', '--cpu'], capsys)
    assert 'tokens' in line and 'text ppl' in line


@pytest.mark.parametrize('splits', [(), (5,)], ids=['full softmax', 'split softmax'])
def test_sentences_batching_and_per_token(tmp_path, capsys, splits):
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS, splits)
    text = write(tmp_path / 'lines.txt', LINES)
    batched = tsv(run(['--checkpoint', save, '--text', text, '--sentences', '--cpu'], capsys))
    alone = tsv(run(['--checkpoint', save, '--text', text, '--sentences', '--cpu', '--batch-size', '1'], capsys))
    assert [r['text'] for r in batched] == ['the cat sees a dog .', 'a dog likes the fish .', '',
                                            'the zebra sees bread .', 'cat']
    assert [int(r['tokens']) for r in batched] == [7, 7, 1, 6, 2]
    assert [int(r['oov']) for r in batched] == [0, 0, 0, 1, 0]
    for a, b in zip(batched, alone):
        assert float(a['logprob']) == pytest.approx(float(b['logprob']), rel=1e-5)
    tokens = tsv(run(['--checkpoint', save, '--text', text, '--per-token', '--cpu'], capsys))
    assert len(tokens) == sum(int(r['tokens']) for r in batched)
    assert [t['word'] for t in tokens if t['line'] == '3'] == ['the', 'zebra', 'sees', 'bread', '.', '<eos>']
    assert [t['oov'] for t in tokens if t['word'] == 'zebra'] == ['1']
    for number, row in enumerate(batched):
        bits = sum(float(t['surprisal_bits']) for t in tokens if t['line'] == str(number))
        assert -bits * math.log(2) == pytest.approx(float(row['logprob']), rel=1e-5, abs=1e-5)
    # The criterion's own loss (head and tails of a split softmax) on line 0, from <eos> and a zero state.
    ckpt = checkpoint.load_checkpoint(save, resume_state_ok=False)
    model, criterion = ckpt['model'].eval(), ckpt['criterion']
    ids = torch.tensor([WORDS.index(w) for w in ['<eos>'] + 'the cat sees a dog . <eos>'.split()])
    with torch.no_grad():
        output, _ = model(ids[:-1].view(-1, 1), model.init_hidden(1))
        loss = criterion(model.decoder.weight, model.decoder.bias, output, ids[1:])
    assert float(batched[0]['logprob']) == pytest.approx(-7 * float(loss), rel=1e-5)


def test_unknown_words(trained, tmp_path, capsys):
    corpus, save = trained  # its vocabulary has no <unk>
    text = write(tmp_path / 'unk.txt', 'the cat sees the zebra .\n')
    with pytest.raises(errors.UserError, match="'zebra' is not in the vocabulary.*--unk"):
        score.main(['--checkpoint', save, '--text', text, '--cpu'])
    summary = json.loads(run(['--checkpoint', save, '--text', text, '--json', '--unk', 'fish', '--cpu'], capsys))
    assert summary['oov'] == 1 and summary['tokens'] == 7
    with pytest.raises(errors.UserError, match='--unk'):
        score.main(['--checkpoint', save, '--text', text, '--unk', 'zebra', '--cpu'])


def test_bad_input(trained, tmp_path):
    corpus, save = trained
    text = corpus + '/test.txt'
    cases = [
        (['--checkpoint', text, '--text', text], 'not a (readable|plain-data) checkpoint'),
        (['--checkpoint', save + '.state', '--text', text], f'use the checkpoint {save}'),
        (['--checkpoint', save, '--text', write(tmp_path / 'empty.txt', ' \n\n')], 'empty'),
        (['--checkpoint', save, '--text', str(tmp_path / 'none.txt')], 'not found'),
        (['--checkpoint', save, '--text', text, '--out', str(tmp_path / 'no' / 'x.tsv')], 'folder does not exist'),
        (['--checkpoint', save, '--text', text, '--out', text], 'would overwrite'),
        (['--checkpoint', save, '--text', text, '--batch-size', '0'], '--batch-size'),
    ]
    (tmp_path / 'latin1.txt').write_bytes(b'the cat\nsees a \xe9 .\n')
    cases.append((['--checkpoint', save, '--text', str(tmp_path / 'latin1.txt')], 'not UTF-8.*at byte 15'))
    for argv, message in cases:
        with pytest.raises(errors.UserError, match=message):
            score.main([*argv, '--cpu'])


def test_output_file_and_stdin(trained, tmp_path, monkeypatch, capsys):
    corpus, save = trained
    out = tmp_path / 'scores.tsv'
    raw = b'\xef\xbb\xbfthe cat sees a ball .\n'  # a byte-order mark is dropped, as in the corpus files
    monkeypatch.setattr('sys.stdin', type('Stdin', (), {'buffer': __import__('io').BytesIO(raw)})())
    assert score.main(['--checkpoint', save, '--sentences', '--out', str(out), '--cpu']) == 0
    rows = tsv(out.read_text())
    assert [r['text'] for r in rows] == ['the cat sees a ball .'] and rows[0]['oov'] == '0'


@pytest.mark.slow
def test_a_stream_output_is_written_in_place(trained, tmp_path):
    # `--out /dev/stdout | cat`: /dev/stdout resolves into /proc/PID/fd, a read-only folder where no file
    # can be replaced; a stream (a pipe, a terminal, /dev/null) is written to, not replaced.
    import os
    import subprocess
    import sys
    from conftest import REPO
    corpus, save = trained
    test_txt = os.path.join(corpus, 'test.txt')
    done = subprocess.run(f'{sys.executable} score.py --checkpoint {save} --text {test_txt} --json --cpu '
                          '--out /dev/stdout | cat', shell=True, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == '', done.stderr
    assert set(json.loads(done.stdout)) >= {'tokens', 'oov', 'loss', 'ppl'}
    assert score.main(['--checkpoint', save, '--text', test_txt, '--cpu', '--out', os.devnull]) == 0
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)  # /dev/null is still the device
    if os.path.exists('/dev/full'):
        with pytest.raises(errors.UserError, match='/dev/full: could not be written [(]the disk is full'):
            score.main(['--checkpoint', save, '--text', test_txt, '--cpu', '--sentences', '--out', '/dev/full'])


def test_standard_output_holds_the_result_only(trained, monkeypatch, capsys):
    # --cuda without a GPU: the device note went to standard output ahead of the JSON (and the TSV header).
    corpus, save = trained
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    text = corpus + '/test.txt'
    assert score.main(['--checkpoint', save, '--text', text, '--json', '--cuda']) == 0
    captured = capsys.readouterr()
    assert set(json.loads(captured.out)) >= {'tokens', 'loss'} and 'no GPU is available' in captured.err
    assert score.main(['--checkpoint', save, '--text', text, '--sentences', '--cuda']) == 0
    assert capsys.readouterr().out.startswith('logprob\ttokens\toov\ttext\n')


def test_closed_standard_input_is_one_line(trained, monkeypatch):
    # `score.py 0<&-`: Python sets sys.stdin to None, and reading it was a traceback.
    corpus, save = trained
    monkeypatch.setattr('sys.stdin', None)
    with pytest.raises(errors.UserError, match='standard input is closed'):
        score.main(['--checkpoint', save, '--cpu'])


def test_empty_and_odd_paths_are_refused_before_any_work(trained, tmp_path, monkeypatch):
    # --out '' was called a folder, --checkpoint '' "no checkpoint given (--save)" (score.py has no
    # --save), a folder as --checkpoint "not found".
    corpus, save = trained
    text = corpus + '/test.txt'
    patch_everywhere(monkeypatch, checkpoint, 'load_checkpoint', must_not_run)
    cases = [(['--checkpoint', save, '--text', text, '--out', ''], '^--out is empty'),
             (['--checkpoint', '', '--text', text], r'^no checkpoint given \(--checkpoint\)$'),
             (['--checkpoint', str(tmp_path), '--text', text], r'not a model directory .*, nor a checkpoint file \(--checkpoint\)'),
             (['--checkpoint', save, '--text', ''], '^--text is empty'),
             (['--checkpoint', save, '--text', str(tmp_path)], r'is a folder, not a text file \(--text\)')]
    for argv, message in cases:
        with pytest.raises(errors.UserError, match=message):
            score.main([*argv, '--cpu'])


@pytest.mark.parametrize('n_experts', [1, 3])
def test_logprobs_are_computed_a_bounded_number_of_floats_at_a_time(tmp_path, monkeypatch, n_experts):
    # A Mixture of Softmaxes makes n_experts distributions over the vocabulary for each row before mixing
    # them: rows x n_experts x vocabulary must stay under the bound (15 experts made one 4,000-word line
    # of a 10,000-word vocabulary take over 6 GB).
    import scoring
    ckpt = checkpoint.load_checkpoint(random_checkpoint(str(tmp_path / 'm.pt'), WORDS, n_experts=n_experts))
    model, criterion = ckpt['model'], ckpt['criterion']
    lines = [[2, 3, 6, 4, 5, 8, 0], [4, 5, 7, 2, 9, 8, 0, 3, 3, 0], [11, 0]]
    whole = scoring.line_logprobs(model, criterion, lines, 0)
    rows_at_once = []
    logprob = type(criterion).logprob
    monkeypatch.setattr(type(criterion), 'logprob',
                        lambda self, weight, bias, output: rows_at_once.append(len(output)) or logprob(self, weight, bias, output))
    monkeypatch.setattr(scoring, 'LOGPROB_FLOATS', 4 * n_experts * len(WORDS))
    chunked = scoring.line_logprobs(model, criterion, lines, 0)
    assert max(rows_at_once) == 4 and sum(rows_at_once) == 10 * 3  # (longest line, lines) rows, 4 at a time
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(whole, chunked))
