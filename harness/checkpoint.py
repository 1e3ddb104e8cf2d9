"""Checkpoints and resume states: what a run saves, and loading it back.

    from . import checkpoint
    ckpt = checkpoint.load_checkpoint('PTB.pt', map_location='cpu')   # ckpt['model'], ckpt['criterion']

A checkpoint is a plain dict of tensors, numbers and strings (torch.load(weights_only=True) reads it;
no pickled code) carrying a digest of its contents (atomic_io.content_digest), written atomically.
A resume state (`<save>.state` of main.py, `<out>.finetune.state` of finetune.py) is a checkpoint plus
what continuing exactly needs: epoch, history, optimizer (with ASGD's averages) and random states.
Files of earlier versions of this code are brought up to date in one place, `upgrade`.

No training logic, argument parsing or printing here; data.py must not import it.
"""
import argparse
import os
import uuid
import zipfile

import numpy as np
import torch

import data
from . import model_dir
from .atomic_io import atomic_torch_save, digest_matches, with_digest
from errors import UserError, first_line
from model import RNNModel
from mos import MixtureOfSoftmaxesLoss
from splitcross import SplitCrossEntropyLoss
from training import optimizer_name


# Format 2 adds the digest; format 1 files (written before it) still load, unverified.
CHECKPOINT_FORMAT = 'awd-lstm-checkpoint-2'


LEGACY_CHECKPOINT_FORMAT = 'awd-lstm-checkpoint-1'


# ---------------------------------------------------------------------------------------------
# Save, load


def save_checkpoint(path, model, criterion, optimizer, args, idx2word, **extra):
    """A plain dict of tensors, numbers and strings: loadable with torch.load(weights_only=True).
    `extra` holds what a resume state adds, and `run`, the id of the run that wrote it."""
    atomic_torch_save(with_digest({
        'format': CHECKPOINT_FORMAT,
        'model_config': dict(model.config),
        'model': model.state_dict(),
        'criterion_config': criterion_config(criterion),
        'criterion': criterion.state_dict(),
        'optimizer': optimizer.state_dict() if optimizer is not None else None,
        'optimizer_name': optimizer_name(optimizer) if optimizer is not None else None,
        'args': plain_args(args) if isinstance(args, argparse.Namespace) else dict(args),
        'idx2word': list(idx2word),
        **extra,
    }), path)


def load_checkpoint(path, map_location=None, resume_state_ok=True):
    """Load a checkpoint of main.py / finetune.py (or, unless `resume_state_ok` is False, a resume state:
    the scripts that use a trained model refuse one, see refuse_resume_state).

    Returns the checkpoint dict with `model` an RNNModel holding the saved weights, `criterion` the
    SplitCrossEntropyLoss (both moved to `map_location`, a device, when given), `args` the training
    arguments (a dict), `idx2word` the vocabulary, and `model_state` / `criterion_state` /
    `optimizer` the raw state dicts (on the CPU).
    """
    ckpt = read_checkpoint(path)
    if not resume_state_ok:
        refuse_resume_state(ckpt, path)
    try:
        model = RNNModel(**ckpt['model_config'])
        criterion = build_criterion(ckpt['criterion_config'], release=model.release)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f'{path}: the model configuration stored in it cannot be built ({first_line(e)})') from None
    try:
        model.load_state_dict(ckpt['model'])
        criterion.load_state_dict(ckpt['criterion'])
    except RuntimeError as e:
        raise UserError(f'{path}: weights do not fit the stored model configuration '
                        f'({weights_mismatch(model, criterion, ckpt, e)})') from None
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
        criterion.to(map_location)
    ckpt['model_state'], ckpt['criterion_state'] = ckpt['model'], ckpt['criterion']
    ckpt['model'], ckpt['criterion'] = model, criterion
    return ckpt


def criterion_config(criterion):
    """What rebuilds the loss: the split softmax's cut points, or the Mixture of Softmaxes' size."""
    if isinstance(criterion, MixtureOfSoftmaxesLoss):
        return criterion.config
    return {'hidden_size': criterion.hidden_size, 'splits': list(criterion.splits)}


def build_criterion(config, release=2018):
    """The loss a checkpoint's `criterion_config` describes: MoS's mixture, or the (split) softmax of the
    model's release (whose loss figures follow that release's reduction)."""
    if 'n_experts' in config:
        return MixtureOfSoftmaxesLoss(**config)
    return SplitCrossEntropyLoss(**config, release=release)


def read_checkpoint(path):
    """The raw dict of a checkpoint (or of a model directory, harness/model_dir.py), its tensors on the
    CPU, with a UserError for anything that is not one of ours: unreadable, carrying pickled code,
    damaged (its digest does not match), or missing fields a checkpoint has."""
    check_checkpoint_path(path)
    if os.path.isdir(path):  # a model directory (export.py --pretrained): the same dict, from its files
        return upgrade(model_dir.read_model_dir(path))
    if not is_torch_file(path):
        raise UserError(f'{path}: not a readable checkpoint (truncated or not a torch file)')
    if is_torchscript_archive(path):
        raise UserError(f'{path}: an exported TorchScript model (export.py), not a checkpoint: give the checkpoint '
                        'it was exported from')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        text = str(e)
        if 'Weights only load failed' in text or 'Unsupported global' in text:
            raise UserError(f'{path}: refused: the file needs pickled Python objects to load '
                            '(not a plain-data checkpoint; it was not executed)') from None
        raise UserError(f'{path}: not a readable checkpoint (truncated or not a torch file)') from None
    if not isinstance(ckpt, dict) or ckpt.get('format') not in (CHECKPOINT_FORMAT, LEGACY_CHECKPOINT_FORMAT):
        raise UserError(f'{path}: not a checkpoint written by this code')
    if ckpt['format'] == CHECKPOINT_FORMAT and not digest_matches(ckpt):
        raise UserError(f'{path}: damaged checkpoint: its contents do not match the digest stored in it'
                        if 'digest' in ckpt else f'{path}: damaged checkpoint: its digest is missing')
    check_fields(ckpt, path, CHECKPOINT_FIELDS, 'checkpoint')
    for key in ('model', 'criterion'):
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt[key].items()):
            raise UserError(f'{path}: damaged checkpoint: {key!r} must map names to tensors')
    if not all(isinstance(word, str) for word in ckpt['idx2word']):
        raise UserError(f"{path}: damaged checkpoint: 'idx2word' must be a list of words")
    return upgrade(ckpt)


def check_checkpoint_path(path, flag='--save'):
    """A UserError naming `flag` unless `path` names a file or a model directory: the scripts call this
    before any work, with their own flag (score.py and generate.py read --checkpoint)."""
    if not path:
        raise UserError(f'no checkpoint given ({flag})')
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, model_dir.CONFIG)):
            raise UserError(f'{path}: a folder without {model_dir.CONFIG}: not a model directory (export.py '
                            f'--pretrained writes one), nor a checkpoint file ({flag})')
        return
    if not os.path.isfile(path):
        raise UserError(f'{path}: checkpoint not found ({flag})' if not os.path.exists(path)
                        else f'{path}: not a regular file, so not a checkpoint ({flag})')


def is_torch_file(path):
    """Whether the file starts as torch.save's files do: a zip archive, or a pickle (its legacy format)."""
    with open(path, 'rb') as f:
        head = f.read(4)
    return head.startswith(b'PK\x03\x04') or head[:1] == b'\x80'


def is_torchscript_archive(path):
    """Whether a zip archive is torch.jit.save's (export.py's --torchscript): its code/ and constants.pkl
    tell it from torch.save's archives, which torch.load would otherwise hand to torch.jit.load."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception:  # noqa: BLE001 - a damaged archive (a flipped bit in a name: UnicodeDecodeError, ...)
        return False  # is no export: torch.load then says what is wrong with it
    return any(name.endswith('/constants.pkl') or '/code/' in name for name in names)


def load_weights(model, criterion, ckpt, path):
    """Load saved weights into a model built from the flags; a mismatch is the user's to fix."""
    try:
        model.load_state_dict(ckpt['model'])
        criterion.load_state_dict(ckpt['criterion'])
    except RuntimeError as e:
        saved = ckpt.get('model_config', {})
        raise UserError(f'{path}: checkpoint does not fit the model the flags describe '
                        f'(it was saved with {saved}): {weights_mismatch(model, criterion, ckpt, e)}') from None


def weights_mismatch(model, criterion, ckpt, error):
    """What keeps saved weights out of a model, named: the model's tensors missing from the checkpoint,
    the checkpoint's tensors the model has no place for, and tensors of another shape (torch's own
    message when it is none of these)."""
    problems = []
    for part, module in (('model', model), ('criterion', criterion)):
        expected, saved = module.state_dict(), ckpt[part]
        missing = [name for name in expected if name not in saved]
        unexpected = [name for name in saved if name not in expected]
        reshaped = [f'{name} {tuple(saved[name].shape)} for {tuple(tensor.shape)}' for name, tensor in expected.items()
                    if name in saved and saved[name].shape != tensor.shape]
        for what, names in (('missing', missing), ('unexpected', unexpected), ('of another shape', reshaped)):
            if names:
                problems.append(f'{part} tensors {what}: {", ".join(names)}')
    return '; '.join(problems) or first_line(error)


def vocabulary_options(ckpt):
    """The vocabulary options (data.Corpus's) the checkpoint's run read its corpus with: a later script
    reads the corpus with them, so that its words get the checkpoint's ids. A checkpoint saved before
    the options existed (or by a script without them) used the default, the original's rule."""
    return data.vocabulary_options(**{name: ckpt['args'].get(name, default)
                                      for name, default in data.DEFAULT_VOCABULARY.items()})


def check_vocabulary(ckpt_idx2word, corpus, path, data):
    """A checkpoint only makes sense with the corpus it was trained on: same words, same ids."""
    idx2word = corpus.dictionary.idx2word
    if list(ckpt_idx2word) != idx2word:
        raise UserError(f'{path}: checkpoint vocabulary ({len(ckpt_idx2word)} words) does not match '
                        f'{data} ({len(idx2word)} words); was it trained on another corpus?')


# ---------------------------------------------------------------------------------------------
# Resume state: everything needed to continue a run exactly


def state_path(save):
    return save + '.state'


def save_of_state(path):
    """The checkpoint a resume state belongs to: `--resume X.state` continues the run saving to X."""
    return path[:-len('.state')] if path.endswith('.state') else path


def find_resume_state(resume):
    """The resume-state file that --resume names (directly, or beside the checkpoint), else None."""
    if resume.endswith('.state') and os.path.isfile(resume):
        return resume
    return state_path(resume) if os.path.isfile(state_path(resume)) else None


def read_state(path, script):
    """The raw dict of a resume state of `script`, checked as read_checkpoint and check_state do."""
    state = read_checkpoint(path)
    check_state(state, path, script)
    return state


def restore_training_state(optimizer, rng, device, state, path):
    """Put the optimizer (with ASGD's averages) and every random state back as `state` saved them."""
    try:
        optimizer.load_state_dict(state['optimizer'])
        restore_rng_state(state['rng'], rng, device)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise UserError(f'{path}: damaged resume state: its optimizer or random state cannot be restored '
                        f'({first_line(e)})') from None


def rng_state(rng, device):
    """Every random state a run depends on, as tensors and numbers (weights_only-loadable)."""
    name, keys, pos, has_gauss, cached = rng.get_state()
    state = {'torch': torch.get_rng_state(),
             'numpy': {'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                       'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)}}
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state, rng, device):
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    rng.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['cached_gaussian']))
    if device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


def new_run_id():
    """The id of a run: kept in its checkpoints, resume state and log records, and carried over by
    an exact resume, so that a run only ever reports or offers files it wrote itself."""
    return uuid.uuid4().hex[:16]


def same_file(a, b):
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


# ---------------------------------------------------------------------------------------------
# What each field must hold

# The fields every checkpoint holds, and the types they must have.
CHECKPOINT_FIELDS = {'model_config': dict, 'model': dict, 'criterion_config': dict, 'criterion': dict,
                     'args': dict, 'idx2word': list, 'optimizer': (dict, type(None)),
                     'optimizer_name': (str, type(None))}

# The fields of a resume state beyond a checkpoint's, and the types they must have.
STATE_FIELDS = {'epoch': int, 'history': list, 'best_val_loss': (int, float), 'optimizer': dict,
                'optimizer_name': str, 'rng': dict}


def check_fields(ckpt, path, fields, what):
    """Each field of `fields` (name: type or tuple of types) is in `ckpt` with such a type; a bool
    counts as a number only where bool is named."""
    for key, kinds in fields.items():
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if key not in ckpt:
            raise UserError(f'{path}: damaged {what}: it has no {key!r} field')
        value = ckpt[key]
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            raise UserError(f'{path}: damaged {what}: its {key!r} field holds a {type(value).__name__}')


def check_state(state, path, script):
    """A resume state of `script` ('main' or 'finetune') with the fields it needs. States written
    before they named their script are told apart by finetune.py's `done`."""
    kind = state_script(state)
    if kind != script:
        raise UserError(f'{path}: a resume state of {kind}.py, not of {script}.py: continue it with '
                        f'{kind}.py --resume')
    check_fields(state, path, {**STATE_FIELDS, **({'done': bool} if script == 'finetune' else {})}, 'resume state')
    if not all(isinstance(v, (int, float)) for v in state['history']):
        raise UserError(f"{path}: damaged resume state: its 'history' must hold validation losses")


def is_resume_state(ckpt):
    """Whether a checkpoint dict (as read_checkpoint returns it) is a resume state."""
    return 'script' in ckpt


def state_script(state):
    """'main' or 'finetune': the script that wrote a resume state."""
    return state['script']


def checkpoint_of_state(path, state):
    """The checkpoint beside the resume state at `path`: X for X.state (main.py) and X.finetune.state
    (finetune.py), or, for a renamed state, the output its run wrote to."""
    suffix = '.finetune.state' if state_script(state) == 'finetune' else '.state'
    if path.endswith(suffix):
        return path[:-len(suffix)]
    saved = state.get('args', {}).get('out' if state_script(state) == 'finetune' else 'save')
    return saved if isinstance(saved, str) else None


def refuse_resume_state(ckpt, path):
    """A resume state holds the raw weights of a run's last epoch (under ASGD not even the averaged
    ones), not the best model the run saved: evaluating it would report other figures than the run's."""
    if is_resume_state(ckpt):
        best = checkpoint_of_state(path, ckpt)
        raise UserError(f'{path}: a resume state of {state_script(ckpt)}.py (the raw weights of its last epoch, '
                        'kept to continue training), not the best model the run saved: '
                        + (f'use the checkpoint {best}' if best else 'use the checkpoint of that run'))


def upgrade(ckpt):
    """A checkpoint or resume state written by an earlier version of this code, brought up to date in
    place (after its digest was checked; the file itself is left as it is). What each version lacked:
    - format 1: no digest (read_checkpoint loads it unverified);
    - before --release: every model computed as the 2018 release, so its config and flags say 2018;
    - resume states before `script` named their writer: finetune.py's are those with `done`;
    - before run ids: no `run` (None: whose files they are goes unchecked); fine-tuning states before
      `start_runs`: none (the output's owner goes unchecked).
    """
    ckpt['model_config'].setdefault('release', 2018)
    ckpt['args'].setdefault('release', 2018)
    if 'script' not in ckpt and 'epoch' in ckpt and 'history' in ckpt:
        ckpt['script'] = 'finetune' if 'done' in ckpt else 'main'
    ckpt.setdefault('run', None)
    if ckpt.get('script') == 'finetune':
        ckpt.setdefault('start_runs', None)
    return ckpt


def plain_args(args):
    """argparse.Namespace -> dict of plain values, storable in a weights_only checkpoint."""
    return dict(vars(args))
