"""DropConnect on recurrent weights (Wan et al. 2013; AWD-LSTM section 2, "weight-dropped LSTM").

`WeightDrop(module, ['weight_hh_l0'], dropout)` makes the named weights of `module` raw parameters
(`weight_hh_l0_raw`) and, before every forward call, hands the module a freshly dropped copy. The mask
is drawn once per forward call, so it is shared by all timesteps of the sequence, which is what
keeps DropConnect compatible with the fused (cuDNN) LSTM kernels.
"""
import warnings

import torch.nn as nn
import torch.nn.functional as F


def _keep_weights_as_given():
    """Replaces RNNBase.flatten_parameters on a wrapped RNN.

    cuDNN's flattening would copy our per-call dropped weight into its own buffer (and rewrite its
    storage) every step; the dropped weight is a fresh tensor each call, so there is nothing to keep.
    """


class WeightDrop(nn.Module):
    def __init__(self, module, weights, dropout=0.0, variational=False):
        super().__init__()
        self.module = module
        self.weights = list(weights)
        self.dropout = dropout
        self.variational = variational  # drop whole rows of the weight instead of single entries
        for name in self.weights:
            weight = getattr(module, name)
            del module._parameters[name]
            # The raw weight is what is trained and saved (state_dict key `<name>_raw`, as in the
            # original); `module.<name>` becomes a plain tensor attribute we overwrite per call.
            module.register_parameter(name + '_raw', nn.Parameter(weight.detach().clone()))
            setattr(module, name, weight.detach().clone())
        if isinstance(module, nn.RNNBase):
            module.flatten_parameters = _keep_weights_as_given

    def _dropped(self, raw):
        if not self.training or not self.dropout:
            # A view, not the Parameter itself: assigning a Parameter would register it again.
            # Still differentiable, which dynamic evaluation needs.
            return raw.view_as(raw)
        if self.variational:
            keep = F.dropout(raw.new_ones(raw.size(0), 1), p=self.dropout, training=True)
            return raw * keep
        return F.dropout(raw, p=self.dropout, training=True)

    def forward(self, *args, **kwargs):
        for name in self.weights:
            setattr(self.module, name, self._dropped(getattr(self.module, name + '_raw')))
        try:
            with warnings.catch_warnings():
                # cuDNN warns on every call that the weights are not one contiguous chunk: they
                # cannot be, since one of them is new at each call.
                warnings.filterwarnings('ignore', message='RNN module weights are not part')
                return self.module(*args, **kwargs)
        finally:
            # Drop the reference to this call's weight (and its autograd graph) so the module can
            # be deep-copied and pickled between calls; the next call sets a fresh one.
            for name in self.weights:
                setattr(self.module, name, getattr(self.module, name + '_raw').detach())
