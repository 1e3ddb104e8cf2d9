"""A model directory: a trained model in the form people share models in (the Hugging Face Hub's),
written by `export.py --checkpoint X.pt --pretrained DIR` and read wherever a checkpoint is
(checkpoint.read_checkpoint takes a folder through read_model_dir; this module imports no checkpoint
code, so that the two do not import each other):

    DIR/config.json        the model's and the loss's configuration, the training flags and command
                           line, the run's figures and provenance, a digest of the weights and words
    DIR/model.safetensors  the evaluation weights (model.* and criterion.*; no optimizer state)
    DIR/vocab.txt          the vocabulary, one word a line, in id order
    DIR/tokenizer.json     the corpus's tokenizer (prepare.py --tokenizer chars or bpe), when it has one
    DIR/README.md          the model card

Safetensors holds tensors and nothing else (no pickled code, as weights_only=True guarantees for a
checkpoint), and stores each tensor once: a tied decoder (section 4.4: weight tying) is written under
the embedding's name alone and config.json's `tied` restores it.

A folder is written whole into a temporary sibling and then renamed into place, so a reader sees the
old directory or the new one, never a mix. Writing never replaces a folder that is not a model
directory (an empty one aside), nor one that holds other files too. Uploading: docs/PYTHON.md.
"""
import json
import os
import shutil
import tempfile

from .atomic_io import atomic_write, atomic_write_text, content_digest
from errors import UserError, first_line

FORMAT = 'awd-lstm-model-dir-1'
CONFIG, WEIGHTS, VOCABULARY, CARD = 'config.json', 'model.safetensors', 'vocab.txt', 'README.md'
TOKENIZER = 'tokenizer.json'
FILES = (CONFIG, WEIGHTS, VOCABULARY, CARD, TOKENIZER)
REQUIREMENTS = 'requirements-export.txt'


def safetensors_torch():
    """safetensors.torch, or a UserError saying how to install it (it is not in requirements.txt)."""
    try:
        import safetensors.torch
    except ImportError:
        raise UserError(f'model directories need the safetensors package, which is not installed: '
                        f'pip install -r {REQUIREMENTS}') from None
    return safetensors.torch


# ---------------------------------------------------------------------------------------------
# Writing


def export(folder, ckpt, checkpoint_path):
    """Write the model directory `folder` of a checkpoint as checkpoint.load_checkpoint returned it
    (its weights thus known to fit its configuration), with the figures and provenance of its run's
    JSON log when one is beside `checkpoint_path`."""
    check_target(folder)
    safetensors_torch()
    raw = {**ckpt, 'model': ckpt['model_state'], 'criterion': ckpt['criterion_state']}
    write_model_dir(folder, raw, run_summary(checkpoint_path, ckpt.get('run')))


def check_target(folder):
    """A UserError unless `folder` may be written: absent, empty, or a model directory holding its own
    files alone (replaced whole)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f'{folder}: exists and is not a folder (--pretrained names the folder to write)')
    if os.path.isdir(folder) and os.listdir(folder) and not is_model_dir(folder):
        raise UserError(f'{folder}: a folder that is not a model directory (no {CONFIG} of this code): '
                        'not overwritten; name a new folder')
    others = sorted(set(os.listdir(folder)) - set(FILES)) if os.path.isdir(folder) else []
    if others:  # replacing the folder would delete them
        raise UserError(f'{folder}: a model directory that holds other files too ({", ".join(others)}): not '
                        'overwritten; name a new folder')
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise UserError(f'{parent}: folder does not exist (--pretrained {folder})')
    if not os.access(parent, os.W_OK):
        raise UserError(f'{parent}: folder is read-only (--pretrained {folder})')


def is_model_dir(folder):
    """Whether `folder` holds a config.json of this format."""
    try:
        with open(os.path.join(folder, CONFIG), encoding='utf-8') as f:
            return json.load(f).get('format') == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_model_dir(folder, ckpt, run):
    """Write `ckpt` (a raw checkpoint dict, read_checkpoint's) and `run` (run_summary's) as the model
    directory `folder`: built in a temporary sibling, then renamed into place."""
    tensors, tied = flat_tensors(ckpt)
    config = model_config_json(ckpt, tied, run)
    parent = os.path.dirname(os.path.abspath(folder))
    staging = tempfile.mkdtemp(prefix='.' + os.path.basename(os.path.abspath(folder)) + '.', dir=parent)
    try:
        os.chmod(staging, folder_mode())  # mkdtemp's 0700 would keep the shared folder from others
        data = safetensors_torch().save(tensors, metadata={'format': 'pt'})
        atomic_write(os.path.join(staging, WEIGHTS), lambda f: f.write(data))  # fsync'd before the rename
        atomic_write_text(''.join(word + '\n' for word in ckpt['idx2word']), os.path.join(staging, VOCABULARY))
        if ckpt.get('tokenizer'):
            atomic_write_text(ckpt['tokenizer'], os.path.join(staging, TOKENIZER))
        atomic_write_text(json.dumps(config, indent=2, default=str) + '\n', os.path.join(staging, CONFIG))
        atomic_write_text(model_card(config), os.path.join(staging, CARD))
        replace_folder(staging, folder)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError):
            raise UserError(f'{folder}: could not be written ({e.strerror or e})') from None
        raise


def folder_mode():
    """The permission bits a new folder gets from os.mkdir under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def replace_folder(staging, folder):
    """Put the finished folder `staging` at `folder`; an old model directory there is moved aside first
    and removed after (between the two renames `folder` is briefly absent, never half-written)."""
    if os.path.isdir(folder):
        old = tempfile.mkdtemp(prefix='.' + os.path.basename(os.path.abspath(folder)) + '.old.',
                               dir=os.path.dirname(os.path.abspath(folder)))
        aside = os.path.join(old, 'dir')
        os.rename(folder, aside)
        try:
            os.rename(staging, folder)
        except OSError:
            os.rename(aside, folder)  # the old directory back where it was
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, folder)


def flat_tensors(ckpt):
    """({'model.<name>' / 'criterion.<name>': tensor}, {tied name: the name it shares storage with}):
    safetensors stores a tensor once, so each tensor that is another's storage (the tied decoder) is
    written under the first name only."""
    tensors, tied, seen = {}, {}, {}
    for part in ('model', 'criterion'):
        for name, tensor in ckpt[part].items():
            key = f'{part}.{name}'
            identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                        tensor.stride(), tensor.dtype)
            if tensor.numel() and identity in seen:
                tied[key] = seen[identity]
                continue
            seen[identity] = key
            tensors[key] = tensor.detach().contiguous()
    return tensors, tied


def model_config_json(ckpt, tied, run):
    """The contents of config.json."""
    return {
        'format': FORMAT,
        'model_config': ckpt['model_config'],
        'criterion_config': ckpt['criterion_config'],
        'tied': tied,
        'vocabulary_size': len(ckpt['idx2word']),
        'training_args': ckpt['args'],
        'training_command': (run.get('provenance') or {}).get('command'),
        'run': ckpt.get('run'),
        'results': {k: v for k, v in run.items() if k != 'provenance'},
        'provenance': run.get('provenance'),
        # Over the weights and the words, not the configuration (which a user may edit, e.g. a dropout).
        'digest': weights_digest(ckpt),
    }


def weights_digest(ckpt):
    return content_digest({'model': ckpt['model'], 'criterion': ckpt['criterion'], 'idx2word': list(ckpt['idx2word'])})


# ---------------------------------------------------------------------------------------------
# The run's JSON log


def run_summary(checkpoint_path, run):
    """What the card quotes from the JSON log of the run that wrote the checkpoint (main.py's
    `<save>.jsonl`, finetune.py's `<out>.finetune.jsonl`), its records told apart by `run`:
    {log, epochs, best_valid_ppl, test_ppl, provenance}; {} when there is no such log."""
    for log in (checkpoint_path + '.jsonl', checkpoint_path + '.finetune.jsonl'):
        records = [r for r in read_records(log) if run is None or r.get('run') == run]
        if records:
            return summarize(os.path.basename(log), records)
    return {}


def read_records(path):
    """The JSON records of a log (a line that is not one, e.g. cut off by a crash, is passed over)."""
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding='utf-8', errors='replace') as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def summarize(log, records):
    epochs = [r['epoch'] for r in records if not r.get('final') and isinstance(r.get('epoch'), int)]
    final = [r for r in records if r.get('final')]
    valid = [r['valid_ppl'] for r in records if isinstance(r.get('valid_ppl'), (int, float))]
    return {'log': log,
            'epochs': max(epochs) if epochs else None,
            # The final record's valid figure is the best model's (main.py re-evaluates nothing else).
            'best_valid_ppl': final[-1].get('valid_ppl') if final else (min(valid) if valid else None),
            'test_ppl': final[-1].get('test_ppl') if final else None,
            'provenance': next((r['provenance'] for r in records if isinstance(r.get('provenance'), dict)), None)}


# ---------------------------------------------------------------------------------------------
# The model card


def model_card(config):
    """README.md of the directory: the model, the data, the training command, the figures, provenance."""
    m, results, provenance = config['model_config'], config['results'], config['provenance'] or {}
    args = config['training_args']
    splits = config['criterion_config'].get('splits')
    lines = [
        '---', 'license: bsd-3-clause', 'library_name: pytorch', 'tags: [language-modeling, awd-lstm]', '---', '',
        f'# AWD-LSTM language model ({m["rnn_type"]}, {m["nlayers"]} layers)', '',
        'A word-level language model of "Regularizing and Optimizing LSTM Language Models" (Merity, Keskar & '
        'Socher 2017, arXiv:1708.02182), trained with a reimplementation of salesforce/awd-lstm-lm for '
        'current PyTorch.', '',
        '## Model', '',
        '| | |', '| --- | --- |',
        f'| recurrent core | {m["rnn_type"]}, {m["nlayers"]} layers, {m["nhid"]} hidden units |',
        f'| embedding | {m["ninp"]}, tied to the decoder: {"yes" if m.get("tie_weights") else "no"} |',
        f'| vocabulary | {config["vocabulary_size"]} words (`{VOCABULARY}`) |',
        f'| softmax | {"split at " + ", ".join(map(str, splits)) if splits else "full"}'
        + (f'; mixture of {m["n_experts"]} softmaxes' if m.get('n_experts', 1) > 1 else '') + ' |',
        f'| computation of | the {m.get("release", 2018)} release of the original code |',
        '',
        '## Data', '',
        f'Trained on the corpus folder `{args.get("data", "?")}` (train.txt, valid.txt, test.txt: whitespace '
        'words, `<eos>` at each line end).', '',
        '## Training', '',
    ]
    command = config['training_command']
    lines += (['    ' + command, ''] if command else
              ['The command line was not recorded (no JSON log with provenance beside the checkpoint); the '
               f'training flags are in `{CONFIG}` (`training_args`).', ''])
    lines += ['## Results', '']
    if results:
        lines += [f'From the run\'s JSON log `{results["log"]}`:', '',
                  '| best valid perplexity | test perplexity | epochs |', '| --- | --- | --- |',
                  f'| {figure(results["best_valid_ppl"])} | {figure(results["test_ppl"])} | '
                  f'{results["epochs"] if results["epochs"] is not None else "-"} |', '']
    else:
        lines += ['No JSON log of the run was found beside the checkpoint: no figures are quoted.', '']
    if provenance:
        lines += ['## Provenance', '', '| | |', '| --- | --- |']
        lines += [f'| {key} | {provenance.get(key)} |' for key in
                  ('git_commit', 'git_dirty', 'python', 'torch', 'cuda', 'cudnn', 'device', 'started')]
        lines.append('')
    lines += ['## Use', '',
              'With this repository on the Python path (or `torch.hub.load(REPO, "awd_lstm", checkpoint=DIR, '
              "source='local')`):", '',
              '    from lm import LanguageModel',
              "    lm = LanguageModel('DIR')",
              "    lm.score(['the cat sat on the mat'])", '',
              'and every script takes the folder where it takes a checkpoint: '
              '`python score.py --checkpoint DIR --text file.txt`.', '',
              '## Licence', '', 'BSD-3-Clause, as the original awd-lstm-lm.', '']
    return '\n'.join(lines)


def figure(value):
    return f'{value:.2f}' if isinstance(value, (int, float)) else '-'


# ---------------------------------------------------------------------------------------------
# Reading


def read_model_dir(folder):
    """The raw checkpoint dict (read_checkpoint's fields) of the model directory `folder`, with a
    UserError for a folder that is not one or is damaged."""
    config = read_config(folder)
    tensors = read_weights(folder)
    idx2word = read_vocabulary(folder)
    for alias, source in config['tied'].items():
        if source not in tensors:
            raise UserError(f'{folder}: damaged model directory: {CONFIG} ties {alias} to {source}, '
                            f'which {WEIGHTS} lacks')
        tensors[alias] = tensors[source]
    parts = {'model': {}, 'criterion': {}}
    for key, tensor in tensors.items():
        part, _, name = key.partition('.')
        if part not in parts:
            raise UserError(f'{folder}: damaged model directory: {WEIGHTS} holds {key!r}, neither model.* nor criterion.*')
        parts[part][name] = tensor
    ckpt = {'model_config': config['model_config'],
            'criterion_config': config['criterion_config'], **parts, 'optimizer': None, 'optimizer_name': None,
            'args': config['training_args'], 'idx2word': idx2word, 'run': config.get('run'),
            'tokenizer': read_tokenizer(folder)}
    if weights_digest(ckpt) != config['digest']:
        raise UserError(f'{folder}: damaged model directory: its weights or vocabulary do not match the digest '
                        f'in {CONFIG}')
    return ckpt


# The fields config.json must have, and their types.
CONFIG_FIELDS = {'model_config': dict, 'criterion_config': dict, 'tied': dict, 'training_args': dict, 'digest': str}


def read_config(folder):
    path = os.path.join(folder, CONFIG)
    if not os.path.isfile(path):
        raise UserError(f'{folder}: a folder without {CONFIG}: not a model directory (export.py --pretrained '
                        'writes one)')
    try:
        with open(path, encoding='utf-8') as f:
            config = json.load(f)
    except (ValueError, OSError) as e:
        raise UserError(f'{path}: not readable as JSON ({first_line(e)})') from None
    if not isinstance(config, dict) or config.get('format') != FORMAT:
        raise UserError(f'{path}: not the {CONFIG} of a model directory of this code (format {FORMAT})')
    for key, kind in CONFIG_FIELDS.items():
        if not isinstance(config.get(key), kind):
            raise UserError(f'{path}: its {key!r} field is missing or not a {kind.__name__}')
    return config


def read_weights(folder):
    path = os.path.join(folder, WEIGHTS)
    if not os.path.isfile(path):
        raise UserError(f'{folder}: damaged model directory: it has no {WEIGHTS}')
    st = safetensors_torch()
    try:
        with open(path, 'rb') as f:
            return dict(st.load(f.read()))
    except Exception as e:  # safetensors raises its own SafetensorError for a damaged file
        raise UserError(f'{path}: not a readable safetensors file ({first_line(e)})') from None


def read_tokenizer(folder):
    """The contents of the directory's tokenizer.json, or None when the corpus had no tokenizer."""
    try:
        with open(os.path.join(folder, TOKENIZER), encoding='utf-8') as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_vocabulary(folder):
    path = os.path.join(folder, VOCABULARY)
    try:
        with open(path, encoding='utf-8', newline='') as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f'{folder}: damaged model directory: it has no {VOCABULARY}') from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f'{path}: not readable as UTF-8 text ({first_line(e)})') from None
    if not text.endswith('\n'):
        raise UserError(f'{path}: damaged vocabulary: its last line is cut off')
    return text[:-1].split('\n')

