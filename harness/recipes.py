"""The published recipes: each one's command lines, as the original READMEs gave them, and the
perplexities they reported (valid / test). README.md, docs/, tests/conftest.py and benchmark.py all take
them from here.

Each command is the argument list after `python <script>.py`, as a string: plain data, no project
imports (a script parses them with its own parser). The figures are those of the awd-lstm-lm READMEs (2017 and 2018 releases) and of the
papers: Merity, Keskar & Socher 2017 (arXiv:1708.02182) and Krause et al. 2017 (arXiv:1709.07432).
"""
import shlex

# name: corpus (folder under data/), the stages' command lines, and the published perplexities
# (valid, test) of each stage, where the README or the paper gave one.
RECIPES = {
    'ptb-2017': dict(
        corpus='penn', release=2017, note='PTB LSTM, 2017 code',
        main='--batch_size 20 --data data/penn --dropouti 0.4 --seed 28 --epoch 300 --save PTB.pt',
        finetune='--batch_size 20 --data data/penn --dropouti 0.4 --seed 28 --epoch 300 --save PTB.pt',
        pointer='--data data/penn --save PTB.pt --lambdasm 0.1 --theta 1.0 --window 500 --bptt 5000',
        published=dict(main=(61.2, 58.9), finetune=(58.8, 56.6), pointer=(53.5, 53.0)),
        first_epoch_valid=dict(main=308.03, finetune=60.85)),
    'wt2-2017': dict(
        corpus='wikitext-2', release=2017, note='WT2 LSTM, 2017 code',
        main='--seed 20923 --epochs 750 --data data/wikitext-2 --save WT2.pt',
        finetune='--seed 20923 --epochs 750 --data data/wikitext-2 --save WT2.pt',
        pointer='--save WT2.pt --lambdasm 0.1279 --theta 0.662 --window 3785 --bptt 2000 --data data/wikitext-2',
        published=dict(main=(69.1, 66.1), finetune=(68.7, 65.8), pointer=(53.6, 52.0)),
        first_epoch_valid=dict(main=629.93, finetune=69.14)),
    'ptb-2018': dict(
        corpus='penn', release=2018, note='PTB LSTM, 2018 code',
        main='--batch_size 20 --data data/penn --dropouti 0.4 --dropouth 0.25 --seed 141 --epoch 500 --save PTB.pt',
        finetune='--batch_size 20 --data data/penn --dropouti 0.4 --dropouth 0.25 --seed 141 --epoch 500 '
                 '--save PTB.pt',
        pointer='--data data/penn --save PTB.pt --lambdasm 0.1 --theta 1.0 --window 500 --bptt 5000',
        dynamiceval='--data data/penn --save PTB.pt --paper-scale --lr 0.002 --lamb 0.02 --epsilon 0.001',
        published=dict(main=(61.2, 58.8), finetune=(58.8, 56.5), pointer=(53.2, 52.5), dynamiceval=(51.6, 51.1))),
    'wt2-2018': dict(
        corpus='wikitext-2', release=2018, note='WT2 LSTM, 2018 code',
        main='--epochs 750 --data data/wikitext-2 --save WT2.pt --dropouth 0.2 --seed 1882',
        finetune='--epochs 750 --data data/wikitext-2 --save WT2.pt --dropouth 0.2 --seed 1882',
        pointer='--save WT2.pt --lambdasm 0.1279 --theta 0.662 --window 3785 --bptt 2000 --data data/wikitext-2',
        dynamiceval='--data data/wikitext-2 --save WT2.pt --paper-scale --lr 0.002 --lamb 0.02 --epsilon 0.001',
        published=dict(main=(68.7, 65.6), finetune=(67.4, 64.7), pointer=(52.2, 50.6), dynamiceval=(46.4, 44.3))),
    'ptb-qrnn': dict(
        corpus='penn', release=2018, note='PTB QRNN',
        main='--model QRNN --batch_size 20 --clip 0.2 --wdrop 0.1 --nhid 1550 --nlayers 4 --emsize 400 '
             '--dropouth 0.3 --seed 9001 --dropouti 0.4 --epochs 550 --save PTB.pt',
        published=dict(main=(60.6, 58.3), finetune=(59.1, 56.7), pointer=(53.4, 52.6))),
    'wt2-qrnn': dict(
        corpus='wikitext-2', release=2018, note='WT2 QRNN (published command: batch 40)',
        main='--epochs 500 --clip 0.25 --dropouti 0.4 --dropouth 0.2 --nhid 1550 --nlayers 4 --seed 4002 '
             '--model QRNN --wdrop 0.1 --batch_size 40 --save WT2.pt',
        published=dict(main=(69.3, 66.8), finetune=(68.5, 65.9), pointer=(53.6, 52.1))),
    'ptb-char': dict(
        corpus='pennchar', release=2018, note='character-level PTB, 2018 code',
        main='--epochs 500 --nlayers 3 --emsize 200 --nhid 1000 --alpha 0 --beta 0 --dropoute 0 --dropouth 0.25 '
             '--dropouti 0.1 --dropout 0.1 --wdrop 0.5 --wdecay 1.2e-6 --bptt 150 --batch_size 128 '
             '--optimizer adam --lr 2e-3 --data data/pennchar --when 300 400'),
    'enwik8': dict(
        corpus='enwik8', release=2018, note='enwik8, 2018 code',
        main='--epochs 50 --nlayers 3 --emsize 400 --nhid 1840 --alpha 0 --beta 0 --dropoute 0 --dropouth 0.1 '
             '--dropouti 0.1 --dropout 0.4 --wdrop 0.2 --wdecay 1.2e-6 --bptt 200 --batch_size 128 '
             '--optimizer adam --lr 1e-3 --data data/enwik8 --when 25 35'),
    'wt103-qrnn': dict(
        corpus='wikitext-103', release=2018, note='WikiText-103, 4-layer QRNN',
        main='--epochs 14 --nlayers 4 --emsize 400 --nhid 2500 --alpha 0 --beta 0 --dropoute 0 --dropouth 0.1 '
             '--dropouti 0.1 --dropout 0.1 --wdrop 0 --wdecay 0 --bptt 140 --batch_size 60 --optimizer adam '
             '--lr 1e-3 --data data/wikitext-103 --when 12 --model QRNN'),
    # AWD-LSTM-MoS (Yang et al. 2018, zihangdai/mos README; figures: its PyTorch 0.4.1 rows, PTB from
    # its pull request 9; WT2 and the paper's PyTorch 0.2 figures are in docs/MOS.md). --save as this
    # code's file, where MoS named a folder.
    'ptb-mos': dict(
        corpus='penn', release=2018, note='PTB AWD-LSTM-MoS',
        main='--data data/penn --dropouti 0.4 --dropoutl 0.29 --dropouth 0.225 --seed 28 --batch_size 12 '
             '--lr 20.0 --epoch 1000 --nhid 960 --nhidlast 620 --emsize 280 --n_experts 15 --save PTB.pt '
             '--single_gpu',
        finetune='--data data/penn --dropouti 0.4 --dropoutl 0.29 --dropouth 0.225 --seed 28 --batch_size 12 '
                 '--lr 25.0 --epoch 1000 --nhid 960 --emsize 280 --n_experts 15 --save PTB.pt --single_gpu',
        dynamiceval='--data data/penn --save PTB.pt --paper-scale --lr 0.002 --lamb 0.075 --epsilon 0.001',
        published=dict(main=(58.34, 56.18), finetune=(56.83, 54.64), dynamiceval=(49.03, 48.43))),
    'wt2-mos': dict(
        corpus='wikitext-2', release=2018, note='WT2 AWD-LSTM-MoS (single GPU)',
        main='--epochs 1000 --data data/wikitext-2 --save WT2.pt --dropouth 0.2 --seed 1882 --n_experts 15 '
             '--nhid 1150 --nhidlast 650 --emsize 300 --batch_size 15 --lr 15.0 --dropoutl 0.29 '
             '--small_batch_size 5 --max_seq_len_delta 20 --dropouti 0.55 --single_gpu',
        finetune='--epochs 1000 --data data/wikitext-2 --save WT2.pt --dropouth 0.2 --seed 1882 --n_experts 15 '
                 '--nhid 1150 --emsize 300 --batch_size 15 --lr 20.0 --dropoutl 0.29 --small_batch_size 5 '
                 '--max_seq_len_delta 20 --dropouti 0.55 --single_gpu',
        dynamiceval='--data data/wikitext-2 --save WT2.pt --paper-scale --lr 0.002 --lamb 0.02 --epsilon 0.002'),
}

# The paper's own figures (perplexity, valid / test), for its 24M (PTB) and 33M (WT2) parameter models.
PAPER = {'penn': dict(main=(60.0, 57.3), pointer=(53.9, 52.8)),
         'wikitext-2': dict(main=(68.6, 65.8), pointer=(53.8, 52.0))}

STAGES = ('main', 'finetune', 'pointer', 'dynamiceval')


def command(name, stage='main'):
    """`python <stage>.py <flags>` of a recipe, as published."""
    return f'python {stage}.py {RECIPES[name][stage]}'


def argv(name, stage='main'):
    """The argument list of a recipe's stage, as the script's main(argv) takes it."""
    return shlex.split(RECIPES[name][stage])

