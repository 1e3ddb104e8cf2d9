"""Locked (variational) dropout: one mask per sequence, shared by every timestep.

Gal & Ghahramani (2016); AWD-LSTM paper section 4.2. Standard dropout draws a new mask at each
timestep, which destroys the information an RNN carries across time; locking the mask over the time
axis drops the same units all along the sequence.

The first release of the original code (acb04a5, August 2017; `--release 2017`) drew its mask the
other way round: one per timestep, shared by every sequence of the batch, shape (seq_len, 1, features).
The 2017 README's figures were trained with that mask; commit a3020a7 changed it to the one above.
"""
import torch.nn as nn


class LockedDropout(nn.Module):
    def __init__(self, shared_over='time'):
        """shared_over='time': the paper's mask, (1, batch, features); 'batch': the first release's,
        (seq_len, 1, features)."""
        super().__init__()
        if shared_over not in ('time', 'batch'):
            raise ValueError(f"shared_over must be 'time' or 'batch', got {shared_over!r}")
        self.shared_over = shared_over

    def forward(self, x, dropout=0.5):
        """x: (seq_len, batch, features). Identity in eval mode or when dropout == 0."""
        if not self.training or not dropout:
            return x
        # One Bernoulli(1 - p) draw per (batch, feature) (or per (timestep, feature)), broadcast over
        # the shared axis, scaled by 1/(1-p) so that the expected activation is unchanged.
        shape = (1, x.size(1), x.size(2)) if self.shared_over == 'time' else (x.size(0), 1, x.size(2))
        mask = x.new_empty(shape).bernoulli_(1 - dropout) / (1 - dropout)
        return x * mask
