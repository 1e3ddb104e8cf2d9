"""torch.hub entry points: a trained AWD-LSTM as an lm.LanguageModel.

    import torch
    lm = torch.hub.load('/path/to/this/checkout', 'awd_lstm', checkpoint='PTB.pt', source='local')
    lm.score(['the cat sat on the mat'])

`checkpoint` is a file of main.py / finetune.py or a model directory of export.py --pretrained
(docs/PYTHON.md). torch.hub puts this folder on sys.path before importing this file.
"""
dependencies = ['torch', 'numpy']


def awd_lstm(checkpoint, device='cpu'):
    """A trained AWD-LSTM language model (Merity et al. 2017) from `checkpoint`, on `device`: score(),
    perplexity(), generate() and hidden_states() (lm.LanguageModel)."""
    from lm import LanguageModel
    return LanguageModel(checkpoint, device=device)
