"""Locked (variational) dropout: one mask per sequence, shared by every timestep.

Gal & Ghahramani (2016); AWD-LSTM paper section 4.2. Standard dropout draws a new mask at each
timestep, which destroys the information an RNN carries across time; locking the mask over the time
axis drops the same units all along the sequence.
"""
import torch.nn as nn


class LockedDropout(nn.Module):
    def forward(self, x, dropout=0.5):
        """x: (seq_len, batch, features). Identity in eval mode or when dropout == 0."""
        if not self.training or not dropout:
            return x
        # One Bernoulli(1 - p) draw per (batch, feature), broadcast over seq_len, scaled by 1/(1-p)
        # so that the expected activation is unchanged.
        mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - dropout) / (1 - dropout)
        return x * mask
