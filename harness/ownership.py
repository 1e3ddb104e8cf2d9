"""Which files a run may report or overwrite: a run has an id (checkpoint.new_run_id), written into
every checkpoint, resume state and log record it writes and carried on by an exact resume. With it:
- SIGTERM offers the resume state to continue from only once this run wrote it (or resumed from it),
  never a file an earlier run left under the same name;
- the best model reported on test must be one this run saved (fine-tuning, which writes its output
  from the start: this run's, or the loaded model's while fine-tuning in place);
- continuing a run in its own files stops before any work if the best model there is another run's.
Files of runs from before run ids have none (None): whose they are goes unchecked.
"""
import os

from . import checkpoint
from . import interrupts
from errors import UserError


class RunOwnership:
    """`run`: this run's id; `state_file`: where it writes its resume state; `state_is_ours`: whether
    that file is this run's. A run that writes its output from the start (fine-tuning) has
    `start_runs`: the other runs whose model the output may hold (None: unchecked); any other run's
    best model must be its own."""

    def __init__(self, run, state_file, state_is_ours, writes_output_first=False, start_runs=None, earlier_best=None):
        self.run, self.state_file, self.state_is_ours = run, state_file, state_is_ours
        self.earlier_best = earlier_best  # a run continued into new files: the best model it had saved before
        self.writes_output_first, self.start_runs = writes_output_first, start_runs
        self.may_hold = None if start_runs is None else {run, *start_runs}

    def wrote_state(self):
        self.state_is_ours = True

    def report_interrupted(self, resume_command):
        return interrupts.report_interrupted(self.state_file, resume_command, self.state_is_ours)

    def best_model_path(self, save):
        """Where this run's best model is: `save`, unless the run was continued into new files and no epoch
        since improved on its best: then the checkpoint it had saved before (`earlier_best`, same run id)."""
        if self.earlier_best is None or self.holds_ours(save) or not self.holds_ours(self.earlier_best):
            return save
        print(f'No epoch since the resume improved on the run\'s best model: testing it where the run saved it, '
              f'{self.earlier_best} (nothing was written to {save})')
        return self.earlier_best

    def holds_ours(self, path):
        return os.path.isfile(path) and checkpoint.read_checkpoint(path)['run'] == self.run

    def read_best(self, path):
        """The checkpoint of the best model at `path`, refused unless this run may report it."""
        best = checkpoint.read_checkpoint(path) if os.path.isfile(path) else None
        if self.writes_output_first and best is not None and self.may_hold is not None \
                and best['run'] not in self.may_hold:
            raise UserError(f'{path}: replaced by another run\'s model while this run went on (its run id is not '
                            'this run\'s); it was not evaluated')
        if best is None or not self.writes_output_first and self.run is not None and best['run'] != self.run:
            raise UserError(f'{path}: no model was saved by this run (it stopped before its first evaluation)'
                            + ('; the file there is an earlier run\'s and was not evaluated' if best else ''))
        return best


def of_main_run(resumed, save, dist):
    """main.py's run: a new one, or the run of the resume state it continues exactly."""
    run = resumed.state['run'] if resumed.state is not None else checkpoint.new_run_id()
    run = dist.from_main(run)  # [distributed] one run id for all ranks
    state_file = checkpoint.state_path(save)
    ours = resumed.state is not None and checkpoint.same_file(resumed.state_file, state_file)
    if ours and run is not None:
        check_best_model_is_ours(save, run, resumed.state_file)
    earlier_best = None
    if resumed.state is not None and not ours:  # continued into new files (--resume X.state --save NEW.pt)
        earlier_best = checkpoint.checkpoint_of_state(resumed.state_file, resumed.state)
    return RunOwnership(run, state_file, ours, earlier_best=earlier_best)


def of_finetuning(loaded, state_file, out, save, own_state_file, dist):
    """finetune.py's run: `loaded` is the checkpoint (or, continuing, the resume state `state_file`) it
    starts from. Its output may hold this run's model, or while fine-tuning in place the loaded one's
    (it stays there until the first improvement); anything else was written over it meanwhile."""
    run = loaded['run'] if state_file else checkpoint.new_run_id()
    run = dist.from_main(run)  # [distributed] one run id for all ranks
    if state_file:
        start_runs = loaded['start_runs']
    else:
        start_runs = [loaded['run']] if checkpoint.same_file(out, save) else []
    ours = state_file is not None and checkpoint.same_file(state_file, own_state_file)
    return RunOwnership(run, own_state_file, ours, writes_output_first=True, start_runs=start_runs)


def check_best_model_is_ours(save, run, state_file):
    """Continuing a run in its own files: `save` must still hold a model of that run (or none). Another
    run's there (finetune.py fine-tunes in place) would be overwritten by this run's next best, and
    without one this run would end saying it saved nothing: stop before any work instead."""
    if not os.path.isfile(save):
        return
    other = checkpoint.read_checkpoint(save)['run']
    if other != run:
        raise UserError(f'{save}: holds the model of another run ({other}; fine-tuned in place?), not that '
                        f'of the run {state_file} continues ({run}): continuing would overwrite it. Keep '
                        f'it and continue elsewhere with --resume {state_file} --save NEW.pt')
