"""StageWise under DDP (2 CPU processes, gloo): validations, stage changes and the rank-0
broadcast of the time-share decision, with both ranks ending in the same schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, sys
    from functools import partial

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    from unroll.data import SparseRecoveryDataModule
    from unroll.models import LearnedISTA
    from unroll.train import ReconstructionTask, StageWise


    class RankZeroDecides(StageWise):
        """On rank 1 every stage's time share is used up at once (deadline 0 s); rank 0's share is
        minutes. Rank 0 decides and broadcasts, so rank 1 must follow rank 0's schedule."""

        def _set_deadline(self, trainer, num_layers):
            super()._set_deadline(trainer, num_layers)
            if trainer.global_rank == 1 and self.deadline is not None:
                self.deadline = 0.0


    class Record(Callback):
        def __init__(self, sw, out):
            self.sw, self.out, self.validations, self.broadcasts = sw, out, [], 0

        def setup(self, trainer, pl_module, stage):
            strategy, original = trainer.strategy, trainer.strategy.broadcast

            def counting(obj, src=0):
                self.broadcasts += 1
                return original(obj, src)

            strategy.broadcast = counting

        def on_validation_end(self, trainer, pl_module):  # runs before StageWise (listed first)
            self.validations.append([self.sw.layer, self.sw.stage,
                                     float(trainer.callback_metrics["val/nmse_db"])])

        def on_fit_end(self, trainer, pl_module):
            with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
                json.dump({"world_size": trainer.world_size, "history": self.sw.history,
                           "layer": self.sw.layer, "done": self.sw.done, "step": trainer.global_step,
                           "validations": self.validations, "broadcasts": self.broadcasts,
                           "deadline_set": self.sw.deadline is not None or self.sw.done,
                           "find_unused": trainer.strategy._ddp_kwargs.get("find_unused_parameters")}, f)


    if __name__ == "__main__":
        out = sys.argv[1]
        torch.manual_seed(0)
        dm = SparseRecoveryDataModule(problem="gaussian", m=20, n=40, p=0.1, batch_size=16, train_batches=8,
                                      val_size=64, test_size=64, seed=0)
        task = ReconstructionTask(LearnedISTA(2, lam=0.05), optimizer=partial(torch.optim.Adam, lr=0.01))
        sw = RankZeroDecides(lr_factors=(1.0, 0.2), patience=1, min_delta=100.0)  # a stage = 2 validations
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=200, max_time={"minutes": 10},
                            val_check_interval=2, check_val_every_n_epoch=None, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, default_root_dir=out, callbacks=[Record(sw, out), sw])
        trainer.fit(task, datamodule=dm)
''')


def test_stagewise_under_ddp_changes_stages_together(tmp_path):
    script = tmp_path / "stagewise_ddp.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    # its own process group, so that a hang (ranks out of step wait for each other) kills both ranks
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("DDP run did not finish in 150 s: the ranks went out of step")
    assert proc.returncode == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["world_size"] == 2 and r["find_unused"] is True
        # all 2 layers x 2 stages ran, in order, each ended by patience: a new depth after 2
        # validations (the first sets the value to beat), its second stage after 1 (it must beat
        # the first stage's best by min_delta = 100 dB)
        assert [(h["layer"], h["stage"]) for h in r["history"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
        assert r["done"] and r["layer"] == 3 and r["step"] == 12
        assert [v[:2] for v in r["validations"]] == [[1, 0], [1, 0], [1, 1], [2, 0], [2, 0], [2, 1]]
        assert r["broadcasts"] >= r["step"]  # the deadline was checked (rank 0 deciding) at every step
    # rank 1's own clock said "stage over" at every step: it followed rank 0 instead
    assert ranks[0]["history"] == ranks[1]["history"]
    # the validation metric is synchronised: both ranks saw the same values
    assert [v[2] for v in ranks[0]["validations"]] == [v[2] for v in ranks[1]["validations"]]
