"""AWD-LSTM-MoS: the Mixture of Softmaxes decoder (Yang, Dai, Salakhutdinov & Cohen 2018, "Breaking the
Softmax Bottleneck: A High-Rank RNN Language Model", arXiv:1711.03953; code zihangdai/mos).

A single softmax over h_t^T w makes the log-probability matrix of a language model of rank at most the
embedding size (the paper's section 2, the softmax bottleneck). MoS mixes K softmaxes (section 3, eq. 2-3):

    pi_{t,k}   = softmax_k( w_k^T g_t )                        prior:  Linear(nhidlast, K, bias=False)
    h_{t,k}    = tanh( W_k g_t + b_k )                         latent: Linear(nhidlast, K * emsize) + tanh
    P(x | c_t) = sum_k pi_{t,k} * softmax_x( h_{t,k}^T w_x + b_x )   the tied decoder (w_x: embedding rows)

g_t is the last recurrent layer's (dropped) output, of size nhidlast. As in MoS's code, locked dropout
(`--dropoutl`) acts on the latent vectors h_{t,k}, and the loss is the NLL of log(P + 1e-8).

Two pieces, so that the training step, evaluation, the cache pointer, dynamic evaluation and sampling
call a MoS model exactly as they call the AWD-LSTM (`criterion(weight, bias, output, targets)`,
`criterion.logprob(weight, bias, output)`):
- `MixtureOfSoftmaxes`, a submodule of the model (model.py): from g_t, the dropped latent vectors and the
  prior's logits, side by side in one row per position (what the model returns as its output);
- `MixtureOfSoftmaxesLoss`, the criterion: the tied decoder applied to each latent vector, the K
  softmaxes mixed by the prior, log and NLL. It has no parameters of its own.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# MoS adds this to the mixed probabilities before the log (a word every expert gives ~0 stays finite).
MIXTURE_EPSILON = 1e-8


class MixtureOfSoftmaxes(nn.Module):
    """The prior and the latent projections of the mixture (the parameters MoS adds to AWD-LSTM)."""

    def __init__(self, nhidlast, ninp, n_experts):
        super().__init__()
        self.ninp, self.n_experts = ninp, n_experts
        # Built in MoS's order (prior, then latent, then the model's decoder): the same random draws.
        self.prior = nn.Linear(nhidlast, n_experts, bias=False)
        self.latent = nn.Sequential(nn.Linear(nhidlast, n_experts * ninp), nn.Tanh())

    def forward(self, output, lockdrop, dropoutl):
        """output (seq_len, batch, nhidlast), the last layer's dropped output; returns
        (seq_len * batch, n_experts * ninp + n_experts): each position's K dropped latent vectors, then
        its K prior logits (MixtureOfSoftmaxesLoss reads them back)."""
        latent = lockdrop(self.latent(output), dropoutl)  # the latent first, as MoS: its mask's draw
        prior_logit = self.prior(output)
        return torch.cat([latent, prior_logit], dim=2).reshape(-1, self.n_experts * (self.ninp + 1))


class MixtureOfSoftmaxesLoss(nn.Module):
    """NLL under the mixture; the interface of SplitCrossEntropyLoss (weight and bias: the tied decoder)."""

    splits = ()  # no split softmax: MoS mixes full softmaxes

    def __init__(self, hidden_size, n_experts):
        super().__init__()
        self.hidden_size, self.n_experts = hidden_size, n_experts

    @property
    def config(self):
        return dict(hidden_size=self.hidden_size, n_experts=self.n_experts)

    def logprob(self, weight, bias, mixture_input):
        """log P(x | c_t) for every word x: (rows, ntoken), from MixtureOfSoftmaxes' rows."""
        k, ninp = self.n_experts, self.hidden_size
        latent, prior_logit = mixture_input.split([k * ninp, k], dim=1)
        logit = F.linear(latent.contiguous().view(-1, ninp), weight, bias)
        prior = F.softmax(prior_logit.contiguous(), -1)
        prob = F.softmax(logit, -1).view(-1, k, weight.size(0))
        prob = (prob * prior.unsqueeze(2).expand_as(prob)).sum(1)
        return torch.log(prob.add_(MIXTURE_EPSILON))

    def forward(self, weight, bias, mixture_input, targets):
        return F.nll_loss(self.logprob(weight, bias, mixture_input), targets)
