"""Truncated BPTT batching, as the original's utils.py held it: batchify cuts a token stream into
columns, get_batch takes one chunk of inputs and next-word targets, repackage_hidden detaches the
hidden state from the previous chunk's graph.

Only what turns a token stream into batches belongs here: no model, no training, no files.
"""
import torch


def batchify(data, bsz, args=None, device=None):
    """Cut a 1-D token stream into `bsz` columns: returns (len(data) // bsz, bsz).

    Tokens that do not fill a last row are dropped. `args` is accepted for the original's signature;
    if it says `cuda` and a GPU exists the result goes there, as `device` does.
    """
    nbatch = data.size(0) // bsz
    data = data.narrow(0, 0, nbatch * bsz).view(bsz, -1).t().contiguous()
    if device is None and getattr(args, 'cuda', False) and torch.cuda.is_available():
        device = 'cuda'
    return data if device is None else data.to(device)


def get_batch(source, i, args=None, seq_len=None, evaluation=False):
    """Inputs source[i:i+L] and flattened next-word targets source[i+1:i+1+L], L clipped at the end.

    Called as get_batch(source, i, args, seq_len=...) as in the original (args.bptt is the default
    length), or get_batch(source, i, seq_len) with an int. `evaluation` is accepted and unused.
    """
    if isinstance(args, int):
        seq_len = seq_len or args
    seq_len = min(seq_len or args.bptt, len(source) - 1 - i)
    data = source[i:i + seq_len]
    target = source[i + 1:i + 1 + seq_len].reshape(-1)
    return data, target


def repackage_hidden(h):
    """Detach hidden states from the graph of the previous batch (truncated BPTT)."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return type(h)(repackage_hidden(v) for v in h)
