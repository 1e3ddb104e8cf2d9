"""The AWD-LSTM language model (Merity, Keskar & Socher 2017).

embedding -> embedding dropout -> locked dropout -> [weight-dropped RNN -> locked dropout] x nlayers.
The model returns the last layer's (dropped) output; the decoder's weight and bias are applied by
the loss (splitcross.py), which is how the adaptive softmax avoids a full vocabulary projection.

`release` picks which code's computation the model follows: 2018 (the default: the original's
1d466ec, the code the paper's final numbers and the 2018 README come from) or 2017 (its first release,
acb04a5, whose figures the 2017 README quotes). The model differs only in the locked-dropout mask
(locked_dropout.py); the first release built LSTMs only.

With `n_experts` > 1 the model is AWD-LSTM-MoS (Yang et al. 2018, mos.py): the last layer has `nhidlast`
units and the output is the Mixture of Softmaxes' input (its latent vectors and prior logits), which
mos.MixtureOfSoftmaxesLoss turns into probabilities through the tied decoder.
"""
import functools
import inspect

import torch.nn as nn

from mos import MixtureOfSoftmaxes
from embed_regularize import embedded_dropout
from locked_dropout import LockedDropout
from weight_drop import WeightDrop


def lstm_layer(input_size, hidden_size, index, wdrop):
    # The first release passed dropout=dropouth here; torch applies that dropout between stacked
    # layers only, so on a one-layer LSTM it does nothing (docs/PARITY.md: "The two releases").
    layer = nn.LSTM(input_size, hidden_size, 1, dropout=0)
    return WeightDrop(layer, ['weight_hh_l0'], dropout=wdrop) if wdrop else layer


def gru_layer(input_size, hidden_size, index, wdrop):
    layer = nn.GRU(input_size, hidden_size, 1, dropout=0)
    return WeightDrop(layer, ['weight_hh_l0'], dropout=wdrop) if wdrop else layer


def qrnn_layer(input_size, hidden_size, index, wdrop):
    from qrnn import QRNNLayer  # imported only when used: its Triton kernel is CUDA's
    # The first layer looks at two timesteps (window 2), the others at one (Bradbury et al.).
    layer = QRNNLayer(input_size, hidden_size, save_prev_x=True, zoneout=0, window=2 if index == 0 else 1,
                      output_gate=True)
    if wdrop:
        layer.linear = WeightDrop(layer.linear, ['weight'], dropout=wdrop)
    return layer


# The recurrent cell types (--model): how one layer is built from (input size, hidden size, its index
# in the stack, the DropConnect rate), and how many tensors its hidden state holds (an LSTM's (h, c):
# 2). Each layer is its own single-layer RNN, so that locked dropout can sit between layers and
# DropConnect can act on each hidden-to-hidden matrix. The flags, export and dynamic evaluation read
# this table: a new cell type is one function and one entry here.
CELLS = {
    'LSTM': dict(build=lstm_layer, state_tensors=2),
    'QRNN': dict(build=qrnn_layer, state_tensors=1),
    'GRU': dict(build=gru_layer, state_tensors=1),
}


def records_config(init):
    """Records a constructor's arguments, defaults filled in, as `self.config`: what a checkpoint needs
    to rebuild the model, never a hand-kept copy of them (a new argument is recorded by itself)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        self.config = {name: value for name, value in bound.arguments.items() if name != 'self'}
    return recording_init


class RNNModel(nn.Module):
    @records_config
    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, dropouth=0.5, dropouti=0.5,
                 dropoute=0.1, wdrop=0, tie_weights=False, release=2018, n_experts=1, nhidlast=None,
                 dropoutl=None):
        super().__init__()
        if rnn_type not in CELLS:
            raise ValueError(f"rnn_type must be one of {', '.join(CELLS)}, got {rnn_type!r}")
        if release not in (2017, 2018):
            raise ValueError(f'release must be 2017 or 2018, got {release!r}')
        if release == 2017 and rnn_type != 'LSTM':
            raise ValueError(f'the 2017 release builds LSTMs only, not {rnn_type}')
        if n_experts > 1 and (release != 2018 or rnn_type != 'LSTM' or not tie_weights):
            raise ValueError('the Mixture of Softmaxes is built on a tied 2018-release LSTM, as MoS was')
        self.rnn_type = rnn_type
        self.release = release
        self.ninp, self.nhid, self.nlayers = ninp, nhid, nlayers
        self.dropout, self.dropouti, self.dropouth, self.dropoute = dropout, dropouti, dropouth, dropoute
        self.wdrop = wdrop
        self.tie_weights = tie_weights
        self.lockdrop = LockedDropout(shared_over='time' if release == 2018 else 'batch')
        self.encoder = nn.Embedding(ntoken, ninp)
        # With tied weights the last layer outputs ninp units so the decoder can share the embedding
        # (section 4.4: weight tying; section 5: last layer sized to the embedding).
        # MoS sizes the last layer freely (nhidlast): the mixture's projections map it to the embedding.
        self.n_experts = n_experts
        self.nhidlast = (nhidlast or ninp) if n_experts > 1 else (ninp if tie_weights else nhid)
        # MoS's --dropoutl default (-0.2) meant "the same as dropouth".
        self.dropoutl = dropouth if dropoutl is None or dropoutl < 0 else dropoutl
        sizes = [ninp] + [nhid] * (nlayers - 1) + [self.nhidlast]
        self.rnns = nn.ModuleList(
            CELLS[rnn_type]['build'](sizes[l], sizes[l + 1], l, wdrop) for l in range(nlayers))
        if n_experts > 1:
            self.mixture = MixtureOfSoftmaxes(self.nhidlast, ninp, n_experts)
        # Built as Linear(nhid, ntoken) and then tied, as in the original: its default initialisation
        # draws ntoken * nhid + ntoken numbers, so the same seed gives the original's initial weights.
        # MoS built it as Linear(ninp, ntoken), after the mixture.
        self.decoder = nn.Linear(ninp if n_experts > 1 else nhid, ntoken)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
            self.decoder.in_features = ninp  # the shape it really has once tied
        self.init_weights()

    @property
    def report_style(self):
        """Which original's report lines to print: MoS's main.py printed them as the first release
        did (lr to 2 places, no bpc)."""
        return 2017 if self.n_experts > 1 else self.release

    def set_dropouts(self, dropout, dropouth, dropouti, dropoute, wdrop):
        """Change the dropout rates of a built model (--resume takes them from the flags)."""
        self.dropout, self.dropouth, self.dropouti, self.dropoute = dropout, dropouth, dropouti, dropoute
        self.config.update(dropout=dropout, dropouth=dropouth, dropouti=dropouti, dropoute=dropoute)
        if self.wdrop:  # without weight drop at construction there is no WeightDrop to adjust
            self.wdrop = self.config['wdrop'] = wdrop
            for module in self.modules():
                if isinstance(module, WeightDrop):
                    module.dropout = wdrop

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def reset(self):
        """Forget what a layer remembers between calls (a QRNN's previous input), between training and
        evaluation passes."""
        for layer in self.rnns:
            if hasattr(layer, 'reset'):
                layer.reset()

    def forward(self, input, hidden, return_h=False):
        """input (seq_len, batch) of word ids; hidden as from init_hidden.

        Returns the dropped last-layer output flattened to (seq_len * batch, features) (with MoS: the
        mixture's input, mos.MixtureOfSoftmaxes) and the new
        hidden state; with return_h also each layer's raw outputs and dropped outputs (for AR/TAR).
        """
        emb = embedded_dropout(self.encoder, input, dropout=self.dropoute if self.training else 0)
        layer_input = self.lockdrop(emb, self.dropouti)

        new_hidden, raw_outputs, dropped_outputs = [], [], []
        for l, rnn in enumerate(self.rnns):
            raw_output, layer_hidden = rnn(layer_input, hidden[l])
            new_hidden.append(layer_hidden)
            raw_outputs.append(raw_output)
            last = l == self.nlayers - 1
            layer_input = self.lockdrop(raw_output, self.dropout if last else self.dropouth)
            dropped_outputs.append(layer_input)

        if self.n_experts > 1:
            output = self.mixture(layer_input, self.lockdrop, self.dropoutl)
        else:
            output = layer_input.reshape(-1, layer_input.size(2))
        if return_h:
            return output, new_hidden, raw_outputs, dropped_outputs
        return output, new_hidden

    def init_hidden(self, bsz):
        weight = self.encoder.weight
        sizes = [self.nhid] * (self.nlayers - 1) + [self.nhidlast]
        if CELLS[self.rnn_type]['state_tensors'] == 2:
            return [(weight.new_zeros(1, bsz, n), weight.new_zeros(1, bsz, n)) for n in sizes]
        return [weight.new_zeros(1, bsz, n) for n in sizes]
