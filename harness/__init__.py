"""The run bookkeeping of the scripts, behind this one front door: what keeps runs safe, none of it the
paper. You should not need to open this package to change the model: the paper is in model.py,
training.py and the modules beside them, and the scripts call the names below a handful of times.

- Running a script: `run_script(main)` (bad input ends in one line on stderr, exit 2; a fault keeps
  its traceback).
- Flags: `declare` (add_argument with the flag's rule, whether a resume may change it, and which
  attribute of a loaded model it is), the rules (`POSITIVE_INT`, `RATE`, ...), the shared groups
  (`add_data_args`, `add_device_args`, `add_speed_args`) and `parse_args` (parsed and checked).
- Training: `TrainingRun` (run.py): a run of main.py or finetune.py, its files, resume, log and test.
- Using a trained model: `choose_device`, `set_seed`, `load_data`, `load_checkpoint`,
  `read_checkpoint`, `check_checkpoint_path`, `check_vocabulary`, `vocabulary_options` (the corpus read as
  the checkpoint's run read it); output files checked before any work
  (`check_output`, `data_files`, `is_stream`) and written atomically (`atomic_write`, `atomic_write_text`,
  `write_failure`, `write_result`: a result to stdout, a stream or a file); report lines and logs (`report_line`, `loss_record`, `progress_bar`, `JsonLog`,
  `check_appendable`); `export_model_dir` (a shareable model directory, model_dir.py).
- Benchmarks: `recipes` (the published command lines and figures), `GraphedTrainStep`, `Distributed`,
  `world_from_env`, `setup_distributed`.

Inside: checkpoint.py (the checkpoint format, its digest, resume states), resume.py, ownership.py
(run ids), run_files.py (locks, output checks), run_log.py, interrupts.py (Ctrl-C, SIGTERM),
distributed.py (torchrun), cuda_graphs.py, corpus_cache.py, atomic_io.py, flags.py, cli.py,
recipes.py (the published command lines and figures). docs/ARCHITECTURE.md draws them.
"""
from .atomic_io import atomic_write, atomic_write_text, write_failure
from .checkpoint import check_checkpoint_path, check_vocabulary, load_checkpoint, read_checkpoint, vocabulary_options
from . import recipes
from .cli import choose_device, load_data, set_seed
from .cuda_graphs import GraphedTrainStep
from .distributed import Distributed, world_from_env
from .distributed import setup as setup_distributed
from .model_dir import export as export_model_dir
from .cli import run as run_script
from .flags import (CELL, FLOAT32_MAX, NON_NEGATIVE_FLOAT32, NON_NEGATIVE_INT, POSITIVE_FLOAT32, POSITIVE_INT,
                    POSITIVE_INT_OR_DEFAULT, RATE, SEED, add_data_args, add_device_args, add_speed_args, declare,
                    parse_args)
from .run import TrainingRun, finetune_log_path, finetune_state_path
from .run_files import check_output, data_files, is_stream, write_result
from .run_log import JsonLog, check_appendable, loss_record, progress_bar, report_line

__all__ = ['vocabulary_options', 'check_checkpoint_path', 'write_result', 'recipes', 'GraphedTrainStep', 'Distributed', 'world_from_env', 'setup_distributed', 'export_model_dir',
           'atomic_write', 'atomic_write_text', 'write_failure', 'check_vocabulary', 'load_checkpoint',
           'read_checkpoint', 'choose_device', 'load_data', 'set_seed', 'run_script', 'CELL', 'FLOAT32_MAX',
           'NON_NEGATIVE_FLOAT32', 'NON_NEGATIVE_INT', 'POSITIVE_FLOAT32', 'POSITIVE_INT', 'POSITIVE_INT_OR_DEFAULT',
           'RATE', 'SEED', 'add_data_args', 'add_device_args', 'add_speed_args', 'declare', 'parse_args',
           'TrainingRun', 'finetune_log_path', 'finetune_state_path', 'check_output', 'data_files', 'is_stream', 'JsonLog', 'check_appendable', 'loss_record',
           'progress_bar', 'report_line']
