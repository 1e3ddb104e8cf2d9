"""Model directories (harness/model_dir.py): export.py --pretrained writes one; every script and lm.py
read it as they read the checkpoint, with the same results."""
import json
import os

import pytest
import torch

import harness

import errors
import export
import generate
import pointer
import score
from conftest import read_jsonl
from harness import checkpoint
from harness.atomic_io import with_digest
from harness import cli
from harness import model_dir
from harness import run_log
from lm import LanguageModel
from pipeline_helpers import random_checkpoint, train_tiny

safetensors_torch = pytest.importorskip('safetensors.torch', reason='pip install -r requirements-export.txt')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """(corpus, checkpoint of a 2-epoch main.py run with its log, its model directory)."""
    folder = tmp_path_factory.mktemp('model_dir')
    corpus, save = train_tiny(str(folder))
    pretrained = str(folder / 'pretrained')
    assert export.main(['--checkpoint', save, '--pretrained', pretrained]) == 0
    return corpus, save, pretrained


def test_the_directory_holds_the_checkpoint(exported):
    corpus, save, pretrained = exported
    assert sorted(os.listdir(pretrained)) == ['README.md', 'config.json', 'model.safetensors', 'vocab.txt']
    ckpt = checkpoint.read_checkpoint(save)
    tensors = safetensors_torch.load_file(os.path.join(pretrained, 'model.safetensors'))
    with open(os.path.join(pretrained, 'config.json')) as f:
        config = json.load(f)
    # The tied decoder is stored once, under the embedding's name.
    assert config['tied'] == {'model.decoder.weight': 'model.encoder.weight'}
    expected = {f'{part}.{name}': t for part in ('model', 'criterion') for name, t in ckpt[part].items()}
    assert set(tensors) == set(expected) - set(config['tied'])
    assert all(torch.equal(tensors[k], expected[k]) and tensors[k].dtype == expected[k].dtype for k in tensors)
    with open(os.path.join(pretrained, 'vocab.txt'), encoding='utf-8') as f:
        assert f.read().split('\n')[:-1] == ckpt['idx2word']
    assert config['model_config'] == ckpt['model_config'] and config['training_args']['epochs'] == 2
    # Read back: the checkpoint's dict, tensor for tensor.
    again = checkpoint.read_checkpoint(pretrained)
    for part in ('model', 'criterion'):
        assert again[part].keys() == ckpt[part].keys()
        assert all(torch.equal(again[part][k], ckpt[part][k]) for k in ckpt[part])
    assert again['idx2word'] == ckpt['idx2word'] and again['run'] == ckpt['run']


def test_the_model_card_quotes_the_run_log(exported):
    corpus, save, pretrained = exported
    records = read_jsonl(run_log.json_log_path(save))
    final = [r for r in records if r.get('final')][-1]
    with open(os.path.join(pretrained, 'README.md')) as f:
        card = f.read()
    with open(os.path.join(pretrained, 'config.json')) as f:
        config = json.load(f)
    assert f'| {final["valid_ppl"]:.2f} | {final["test_ppl"]:.2f} | 2 |' in card
    provenance = records[0]['provenance']
    assert config['training_command'] == provenance['command'] and '    ' + provenance['command'] in card
    assert f'| git_commit | {provenance["git_commit"]} |' in card and f'| torch | {torch.__version__} |' in card
    assert config['results'] == {'log': os.path.basename(run_log.json_log_path(save)), 'epochs': 2,
                                 'best_valid_ppl': final['valid_ppl'], 'test_ppl': final['test_ppl']}
    assert f'`{corpus}`' in card and 'license: bsd-3-clause' in card


def test_a_checkpoint_without_a_log_gets_a_card_without_figures(tmp_path):
    save = random_checkpoint(str(tmp_path / 'm.pt'), ['<eos>', 'a', 'b'], (2,))
    assert export.main(['--checkpoint', save, '--pretrained', str(tmp_path / 'd')]) == 0
    card = (tmp_path / 'd' / 'README.md').read_text()
    assert 'no figures are quoted' in card and 'command line was not recorded' in card
    assert LanguageModel(str(tmp_path / 'd')).score(['a b']) == LanguageModel(save).score(['a b'])


def test_the_scripts_give_the_same_results_on_the_directory(exported, tmp_path, capsys):
    corpus, save, pretrained = exported
    for mode in (['--sentences'], ['--per-token'], ['--json']):
        outputs = []
        for model in (save, pretrained):
            assert score.main(['--checkpoint', model, '--text', corpus + '/valid.txt', '--cpu', *mode]) == 0
            outputs.append(capsys.readouterr().out)
        assert outputs[0] == outputs[1]
    texts = []
    for name, model in (('pt', save), ('dir', pretrained)):
        out = str(tmp_path / f'{name}.txt')
        assert generate.main(['--data', corpus, '--checkpoint', model, '--outf', out, '--words', '50', '--cpu',
                              '--prompt', 'the cat', '--top-p', '0.9']) == 0
        texts.append(open(out).read())
    assert texts[0] == texts[1]
    results = []
    for name, model in (('pt', save), ('dir', pretrained)):
        log = str(tmp_path / f'{name}.pointer.jsonl')
        assert pointer.main(['--data', corpus, '--save', model, '--window', '20', '--bptt', '30', '--cpu',
                             '--log', log]) == 0
        results.append({k: v for k, v in read_jsonl(log)[-1].items() if k.endswith(('_loss', '_ppl'))})
    assert results[0] == results[1] and results[0]['test_loss'] > 0
    a, b = LanguageModel(save), LanguageModel(pretrained)
    assert a.hidden_states('the cat sees').equal(b.hidden_states('the cat sees'))


@pytest.mark.slow
def test_finetune_and_dynamiceval_give_the_same_results_on_the_directory(exported, tmp_path):
    import dynamiceval
    import finetune
    from conftest import TINY
    corpus, save, pretrained = exported
    finals = []
    for name, model in (('pt', save), ('dir', pretrained)):
        out = str(tmp_path / f'{name}.pt')
        assert finetune.main(['--data', corpus, '--save', model, '--out', out, '--epochs', '1', *TINY]) == 0
        finals.append({k: v for k, v in read_jsonl(harness.finetune_log_path(out))[-1].items() if k.endswith('_loss')})
    assert finals[0] == finals[1] and finals[0]['test_loss'] > 0
    # A fine-tuned checkpoint's card quotes fine-tuning's log (<out>.finetune.jsonl).
    tuned = str(tmp_path / 'pt.pt')
    assert export.main(['--checkpoint', tuned, '--pretrained', str(tmp_path / 'tuned')]) == 0
    final = read_jsonl(harness.finetune_log_path(tuned))[-1]
    card = (tmp_path / 'tuned' / 'README.md').read_text()
    assert '`pt.pt.finetune.jsonl`' in card and f'| {final["valid_ppl"]:.2f} | {final["test_ppl"]:.2f} | 1 |' in card
    results = [dynamiceval.evaluate_checkpoint(dynamiceval.parse_args(['--data', corpus, '--save', model, '--cpu']),
                                               log=lambda *a: None)[0] for model in (save, pretrained)]
    assert results[0] == results[1]


def test_exporting_again_replaces_the_directory(tmp_path):
    first = random_checkpoint(str(tmp_path / 'a.pt'), ['<eos>', 'a', 'b'], seed=1)
    second = random_checkpoint(str(tmp_path / 'b.pt'), ['<eos>', 'a', 'b', 'c'], seed=2)
    target = str(tmp_path / 'shared')
    assert export.main(['--checkpoint', first, '--pretrained', target]) == 0
    assert export.main(['--checkpoint', second, '--pretrained', target]) == 0
    assert LanguageModel(target).idx2word == ['<eos>', 'a', 'b', 'c']
    assert sorted(os.listdir(tmp_path)) == ['a.pt', 'b.pt', 'shared']  # no staging or old folder left
    assert oct(os.stat(target).st_mode & 0o777) == oct(model_dir.folder_mode())
    # A file of someone else's in the directory (a clone's .gitattributes): replacing would delete it.
    with open(os.path.join(target, '.gitattributes'), 'w') as f:
        f.write('*.safetensors filter=lfs\n')
    with pytest.raises(errors.UserError, match=r'holds other files too \(.gitattributes\): not overwritten'):
        export.main(['--checkpoint', first, '--pretrained', target])
    assert LanguageModel(target).idx2word == ['<eos>', 'a', 'b', 'c']


def one_line_error(argv, capsys):
    """export.py's exit status and stderr, run as its command line runs it."""
    with pytest.raises(SystemExit) as stop:
        cli.run(lambda: export.main(argv))
    return stop.value.code, capsys.readouterr().err.strip().splitlines()


def test_bad_targets_are_refused_and_left_whole(tmp_path, capsys):
    save = random_checkpoint(str(tmp_path / 'm.pt'), ['<eos>', 'a', 'b'])
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'notes.txt').write_text('keep me')
    status, err = one_line_error(['--checkpoint', save, '--pretrained', str(mine)], capsys)
    assert status == 2 and len(err) == 1 and 'not a model directory' in err[0] and 'not overwritten' in err[0]
    assert os.listdir(mine) == ['notes.txt'] and (mine / 'notes.txt').read_text() == 'keep me'
    a_file = tmp_path / 'file'
    a_file.write_text('x')
    status, err = one_line_error(['--checkpoint', save, '--pretrained', str(a_file)], capsys)
    assert status == 2 and 'is not a folder' in err[0] and a_file.read_text() == 'x'
    state = tmp_path / 'run.pt.state'
    ckpt = checkpoint.read_checkpoint(save)
    torch.save(with_digest({**{k: v for k, v in ckpt.items() if k != 'digest'}, 'script': 'main', 'epoch': 1}),
               str(state))
    with pytest.raises(errors.UserError, match='resume state'):
        export.main(['--checkpoint', str(state), '--pretrained', str(tmp_path / 'new')])
    assert not os.path.exists(tmp_path / 'new')


def test_bad_directories_are_one_line_errors(tmp_path, capsys):
    save = random_checkpoint(str(tmp_path / 'm.pt'), ['<eos>', 'a', 'b'])
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(errors.UserError, match='without config.json: not a model directory'):
        LanguageModel(str(empty))
    target = tmp_path / 'd'
    assert export.main(['--checkpoint', save, '--pretrained', str(target)]) == 0
    config_path = target / 'config.json'
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, 'model_config': {**config['model_config'], 'nhid': 13}}))
    with pytest.raises(errors.UserError, match='weights do not fit the stored model configuration'):
        LanguageModel(str(target))
    config_path.write_text('{"format": ')
    with pytest.raises(errors.UserError, match='not readable as JSON'):
        LanguageModel(str(target))
    config_path.write_text(json.dumps(config))
    weights = target / 'model.safetensors'
    content = bytearray(weights.read_bytes())
    content[-3] ^= 0x40  # a flipped bit in the last tensor's data
    weights.write_bytes(bytes(content))
    with pytest.raises(errors.UserError, match='damaged model directory: its weights or vocabulary do not match'):
        score.main(['--checkpoint', str(target), '--text', str(config_path), '--cpu'])
    weights.write_bytes(bytes(content[:100]))
    with pytest.raises(errors.UserError, match='not a readable safetensors file'):
        LanguageModel(str(target))


def test_without_safetensors_installed(tmp_path, monkeypatch):
    save = random_checkpoint(str(tmp_path / 'm.pt'), ['<eos>', 'a', 'b'])
    target = str(tmp_path / 'd')
    assert export.main(['--checkpoint', save, '--pretrained', target]) == 0
    monkeypatch.setitem(__import__('sys').modules, 'safetensors', None)
    monkeypatch.setitem(__import__('sys').modules, 'safetensors.torch', None)
    for action in (lambda: export.main(['--checkpoint', save, '--pretrained', str(tmp_path / 'e')]),
                   lambda: LanguageModel(target)):
        with pytest.raises(errors.UserError, match='safetensors package.*requirements-export.txt'):
            action()
    assert not os.path.exists(tmp_path / 'e')


def test_a_corpus_tokenizer_travels_with_the_directory(tmp_path):
    """A checkpoint of a prepare.py corpus with a tokenizer (characters, subwords) carries it; its model
    directory does too (tokenizer.json), and reading the directory gives it back."""
    save = random_checkpoint(str(tmp_path / 'm.pt'), ['<eos>', 'a', 'b'], (2,))
    ckpt = checkpoint.load_checkpoint(save)
    ckpt['tokenizer'] = json.dumps({'kind': 'chars'})
    folder = str(tmp_path / 'dir')
    model_dir.export(folder, ckpt, save)
    with open(os.path.join(folder, 'tokenizer.json')) as f:
        assert f.read() == ckpt['tokenizer']
    assert checkpoint.read_checkpoint(folder)['tokenizer'] == ckpt['tokenizer']
    assert LanguageModel(folder).tokenizer == ckpt['tokenizer']
    plain = str(tmp_path / 'plain')
    model_dir.export(plain, checkpoint.load_checkpoint(save), save)
    assert not os.path.exists(os.path.join(plain, 'tokenizer.json'))
    assert checkpoint.read_checkpoint(plain)['tokenizer'] is None
