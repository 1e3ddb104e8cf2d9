import torch

from model import RNNModel


def reference_forward(model, words, hidden):
    """The eval-mode network computed from its weights, one timestep at a time."""
    x = model.encoder.weight[words]  # (seq, batch, ninp)
    new_hidden = []
    for l, rnn in enumerate(model.rnns):
        cell = rnn.module if hasattr(rnn, 'module') else rnn
        w_ih, b_ih, b_hh = cell.weight_ih_l0, cell.bias_ih_l0, cell.bias_hh_l0
        w_hh = cell.weight_hh_l0_raw if hasattr(cell, 'weight_hh_l0_raw') else cell.weight_hh_l0
        outputs = []
        if model.rnn_type == 'LSTM':
            h, c = (t[0] for t in hidden[l])
            for t in range(x.size(0)):
                i, f, g, o = (x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            new_hidden.append((h, c))
        else:  # GRU
            h = hidden[l][0]
            for t in range(x.size(0)):
                xr, xz, xn = (x[t] @ w_ih.T + b_ih).chunk(3, dim=1)
                hr, hz, hn = (h @ w_hh.T + b_hh).chunk(3, dim=1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                h = (1 - z) * n + z * h
                outputs.append(h)
            new_hidden.append(h)
        x = torch.stack(outputs)
    return x.reshape(-1, x.size(2)), new_hidden


def test_eval_mode_equals_reference_lstm_and_gru():
    for rnn_type in ('LSTM', 'GRU'):
        torch.manual_seed(0)
        model = RNNModel(rnn_type, 30, 6, 10, 3, 0.4, 0.3, 0.65, 0.1, 0.5, tie_weights=True).eval()
        words = torch.randint(0, 30, (7, 3))
        hidden = model.init_hidden(3)
        # Non-zero starting state so the carried hidden state is exercised.
        hidden = [tuple(torch.randn_like(t) for t in h) if isinstance(h, tuple) else torch.randn_like(h)
                  for h in hidden]
        out, new_hidden = model(words, hidden)
        ref_out, ref_hidden = reference_forward(model, words, hidden)
        assert torch.allclose(out, ref_out, atol=1e-5), rnn_type
        last = new_hidden[-1][0] if rnn_type == 'LSTM' else new_hidden[-1]
        ref_last = ref_hidden[-1][0] if rnn_type == 'LSTM' else ref_hidden[-1]
        assert torch.allclose(last[0], ref_last, atol=1e-5)


def test_shapes_tying_and_return_h():
    torch.manual_seed(0)
    model = RNNModel('LSTM', 50, 8, 12, 3, 0.4, 0.3, 0.65, 0.1, 0.5, tie_weights=True)
    assert model.decoder.weight is model.encoder.weight
    assert [r.module.hidden_size for r in model.rnns] == [12, 12, 8]
    out, hidden, raw, dropped = model(torch.randint(0, 50, (5, 4)), model.init_hidden(4), return_h=True)
    assert out.shape == (20, 8)
    assert [h[0].shape for h in hidden] == [(1, 4, 12), (1, 4, 12), (1, 4, 8)]
    assert len(raw) == len(dropped) == 3
    assert torch.equal(out, dropped[-1].reshape(-1, 8))


def test_training_mode_is_stochastic_and_eval_is_not():
    torch.manual_seed(0)
    model = RNNModel('LSTM', 50, 8, 12, 2, 0.4, 0.3, 0.65, 0.1, 0.5, tie_weights=True)
    words = torch.randint(0, 50, (5, 4))
    a, _ = model(words, model.init_hidden(4))
    b, _ = model(words, model.init_hidden(4))
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model(words, model.init_hidden(4))[0], model(words, model.init_hidden(4))[0])


def test_set_dropouts_reaches_weight_drop():
    model = RNNModel('LSTM', 20, 4, 6, 2, 0.4, 0.3, 0.65, 0.1, 0.5, tie_weights=True)
    model.set_dropouts(0.1, 0.2, 0.3, 0.0, 0.25)
    assert (model.dropout, model.dropouth, model.dropouti, model.dropoute) == (0.1, 0.2, 0.3, 0.0)
    assert all(r.dropout == 0.25 for r in model.rnns)
    assert model.config['wdrop'] == 0.25


def test_qrnn_model_weight_drop_hidden_and_reset():
    torch.manual_seed(0)
    model = RNNModel('QRNN', 30, 6, 10, 3, 0.4, 0.3, 0.65, 0.1, 0.5, tie_weights=True)
    assert [layer.window for layer in model.rnns] == [2, 1, 1]
    assert all(hasattr(layer.linear, 'weights') for layer in model.rnns)  # DropConnect on the gate map
    hidden = model.init_hidden(3)
    assert [h.shape for h in hidden] == [(1, 3, 10), (1, 3, 10), (1, 3, 6)]
    words = torch.randint(0, 30, (5, 3))
    out, new_hidden = model(words, hidden)
    assert out.shape == (15, 6) and new_hidden[-1].shape == (1, 3, 6)
    model.eval()
    model.reset()
    a, _ = model(words, hidden)
    b, _ = model(words, hidden)  # the first layer now sees the previous call's last input
    model.reset()
    c, _ = model(words, hidden)
    assert torch.equal(a, c) and not torch.equal(a, b)


def test_no_weight_drop_means_plain_rnns():
    model = RNNModel('LSTM', 20, 4, 6, 2, 0.4, 0.3, 0.65, 0.1, 0.0, tie_weights=True)
    assert all(isinstance(r, torch.nn.LSTM) for r in model.rnns)
    out, _ = model(torch.randint(0, 20, (3, 2)), model.init_hidden(2))
    assert out.shape == (6, 4)


def test_release_is_part_of_the_config_and_old_configs_load_as_2018():
    import pytest
    model = RNNModel('LSTM', 20, 6, 8, 2, tie_weights=True, release=2017)
    assert model.config['release'] == 2017 and model.lockdrop.shared_over == 'batch'
    old_config = {k: v for k, v in model.config.items() if k != 'release'}  # a checkpoint from before
    assert RNNModel(**old_config).release == 2018
    assert RNNModel(**old_config).lockdrop.shared_over == 'time'
    with pytest.raises(ValueError, match='LSTMs only'):
        RNNModel('GRU', 20, 6, 8, 2, release=2017)


def test_releases_build_the_same_initial_weights():
    # The first release constructed its layers in the same order and sizes: the same seed, the same weights.
    torch.manual_seed(4)
    a = RNNModel('LSTM', 20, 6, 8, 3, wdrop=0.5, tie_weights=True, release=2017).state_dict()
    torch.manual_seed(4)
    b = RNNModel('LSTM', 20, 6, 8, 3, wdrop=0.5, tie_weights=True).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_config_is_every_constructor_argument_as_passed_and_rebuilds_the_model():
    """RNNModel.config is recorded from the constructor's arguments (defaults filled in), never kept by
    hand: a new argument is in it without further code, and RNNModel(**config) builds the same model."""
    import inspect
    model = RNNModel('GRU', 20, 6, 8, 2, dropout=0.2, wdrop=0.3, tie_weights=True)
    arguments = set(inspect.signature(RNNModel.__init__).parameters) - {'self'}
    assert set(model.config) == arguments
    assert model.config['rnn_type'] == 'GRU' and model.config['dropout'] == 0.2 and model.config['nhidlast'] is None
    again = RNNModel(**model.config)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert again.config == model.config


def test_a_cell_type_is_one_entry_in_cells(monkeypatch):
    """A new recurrent cell is a layer builder and an entry in CELLS: the model builds it and sizes its state."""
    import model as model_module
    entry = dict(build=lambda input_size, hidden_size, index, wdrop: torch.nn.RNN(input_size, hidden_size),
                 state_tensors=1)
    monkeypatch.setattr(model_module, 'CELLS', dict(model_module.CELLS, RNN=entry))
    model = RNNModel('RNN', 20, 6, 8, 2, tie_weights=True)
    out, hidden = model(torch.randint(0, 20, (3, 2)), model.init_hidden(2))
    assert all(isinstance(r, torch.nn.RNN) for r in model.rnns)
    assert out.shape == (6, 6) and [h.shape for h in hidden] == [(1, 2, 8), (1, 2, 6)]
