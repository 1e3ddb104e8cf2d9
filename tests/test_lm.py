"""lm.LanguageModel against the scripts whose computation it shares (score.py, generate.py), and
torch.hub's entry (hubconf.py)."""
import json
import math

import pytest
import torch

import errors
import generate
import score
from conftest import REPO
from lm import LanguageModel
from pipeline_helpers import random_checkpoint, train_tiny

WORDS = ['<eos>', '<unk>', 'the', 'cat', 'a', 'dog', 'sees', 'likes', '.', 'fish', 'tree', 'bread']
LINES = ['the cat sees a dog .', 'a dog likes the fish .', '', 'the zebra sees bread .', 'cat']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    return train_tiny(str(tmp_path_factory.mktemp('lm')))


def tsv(text):
    header, *rows = text.rstrip('\n').split('\n')
    return [dict(zip(header.split('\t'), row.split('\t'))) for row in rows]


@pytest.mark.parametrize('splits', [(), (5,)], ids=['full softmax', 'split softmax'])
def test_score_is_what_score_sentences_prints(tmp_path, capsys, splits):
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS, splits)
    text = tmp_path / 'lines.txt'
    text.write_text(''.join(line + '\n' for line in LINES))
    for batch in ('64', '2'):
        assert score.main(['--checkpoint', save, '--text', str(text), '--sentences', '--cpu', '--batch-size', batch]) == 0
        printed = [row['logprob'] for row in tsv(capsys.readouterr().out)]
        scores = LanguageModel(save).score(LINES, batch_size=int(batch))
        assert [f'{s:.6f}' for s in scores] == printed
    # A line scored on its own: the criterion's loss of its tokens after <eos>, from a zero state.
    lm = LanguageModel(save)
    ids = torch.tensor([WORDS.index(w) for w in '<eos> the cat sees a dog . <eos>'.split()])
    with torch.no_grad():
        output, _ = lm.model(ids[:-1].view(-1, 1), lm.model.init_hidden(1))
        loss = lm.criterion(lm.model.decoder.weight, lm.model.decoder.bias, output, ids[1:])
    assert lm.score(LINES[:1])[0] == pytest.approx(-7 * float(loss), rel=1e-5)


def test_perplexity_is_score_py_stream_figure(trained, capsys):
    corpus, save = trained
    assert score.main(['--checkpoint', save, '--text', corpus + '/test.txt', '--json', '--cpu']) == 0
    summary = json.loads(capsys.readouterr().out)
    with open(corpus + '/test.txt') as f:
        assert LanguageModel(save).perplexity(f.read()) == summary['ppl']
    with open(save + '.jsonl') as f:  # main.py's own test figure
        assert math.log(summary['ppl']) == pytest.approx([json.loads(line) for line in f][-1]['test_loss'], rel=1e-6)


@pytest.mark.parametrize('settings', [
    ['--seed', '7', '--temperature', '0.8'],
    ['--seed', '3', '--prompt', 'the cat', '--top-p', '0.9'],
    ['--seed', '5', '--prompt', 'a dog likes', '--top-k', '4', '--temperature', '1.5'],
], ids=['original sampling', 'prompt and nucleus', 'prompt, top-k, temperature'])
def test_generate_gives_generate_py_words(trained, tmp_path, settings):
    corpus, save = trained
    out = str(tmp_path / 'g.txt')
    assert generate.main(['--data', corpus, '--checkpoint', save, '--outf', out, '--words', '60', '--cpu', *settings]) == 0
    given = dict(zip(settings[::2], settings[1::2]))
    text = LanguageModel(save).generate(given.get('--prompt', ''), words=60, seed=int(given['--seed']),
                                        temperature=float(given.get('--temperature', 1.0)),
                                        top_k=int(given['--top-k']) if '--top-k' in given else None,
                                        top_p=float(given['--top-p']) if '--top-p' in given else None)
    with open(out) as f:
        assert text.split() == f.read().split()
    assert text.startswith(given.get('--prompt', ''))
    assert len(text.split()) == 60 + len(given.get('--prompt', '').split())


def test_generate_seed_and_bad_settings(tmp_path):
    lm = LanguageModel(random_checkpoint(str(tmp_path / 'm.pt'), WORDS))
    assert lm.generate('the cat', words=30, seed=1) == lm.generate('the cat', words=30, seed=1)
    assert lm.generate('the cat', words=30, seed=1) != lm.generate('the cat', words=30, seed=2)
    for settings, message in (({'top_p': 0}, 'top_p'), ({'top_k': 0}, 'top_k'), ({'temperature': 0}, 'temperature'),
                              ({'words': 0}, 'words')):
        with pytest.raises(errors.UserError, match=message):
            lm.generate('the', **settings)
    assert torch.is_grad_enabled()  # sampling switched gradients off only while it ran


def test_hidden_states_are_the_last_layer_outputs(tmp_path):
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS)  # bptt 6: the text below takes three chunks
    lm = LanguageModel(save)
    text = 'the cat sees a dog .\na dog likes the fish .'
    states = lm.hidden_states(text)
    ids = torch.tensor([WORDS.index(w) for w in 'the cat sees a dog . <eos> a dog likes the fish . <eos>'.split()])
    with torch.no_grad():  # the whole stream in one pass; the last layer's output is the model's output
        output, _ = lm.model(ids.view(-1, 1), lm.model.init_hidden(1))
    assert states.shape == (14, lm.model.nhidlast) and states.device.type == 'cpu'
    assert torch.allclose(states, output, atol=1e-6)


def test_bad_input_is_one_line(trained, tmp_path):
    corpus, save = trained  # its vocabulary has no <unk>
    lm = LanguageModel(save)
    with pytest.raises(errors.UserError, match="'zebra' is not in the vocabulary"):
        lm.score(['the zebra'])
    assert lm.score(['the zebra'], unknown='fish') == lm.score(['the fish'])
    with pytest.raises(errors.UserError, match='list of lines'):
        lm.score('the cat')
    with pytest.raises(errors.UserError, match='checkpoint not found'):
        LanguageModel(str(tmp_path / 'none.pt'))
    with pytest.raises(errors.UserError, match='resume state'):
        LanguageModel(save + '.state')
    with pytest.raises(errors.UserError, match='batch_size'):
        lm.score(['the cat'], batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(errors.UserError, match="device 'cuda': no GPU"):
            LanguageModel(save, device='cuda')


def test_torch_hub_loads_it(trained):
    corpus, save = trained
    hub = torch.hub.load(REPO, 'awd_lstm', checkpoint=save, source='local')
    assert isinstance(hub, LanguageModel)
    assert hub.score(['the cat sees the fish .']) == LanguageModel(save).score(['the cat sees the fish .'])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no GPU')
def test_on_the_gpu(trained):
    corpus, save = trained
    cpu, gpu = LanguageModel(save), LanguageModel(save, device='cuda')
    assert gpu.model.encoder.weight.is_cuda
    assert gpu.score(['the cat sees the fish .']) == pytest.approx(cpu.score(['the cat sees the fish .']), rel=1e-4)
    assert gpu.hidden_states('the cat').shape == cpu.hidden_states('the cat').shape
    assert len(gpu.generate('the cat', words=10, seed=1).split()) == 12
