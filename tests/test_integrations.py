"""The trainer callbacks against the real libraries: tiny models built from config, no network."""
import importlib
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

import initscope.integrations as integrations
from initscope.errors import MissingDependencyError

pytest.importorskip("pyarrow")
sys.path.insert(0, os.path.dirname(__file__))  # the shared test data
from hf_tokens import Tokens  # noqa: E402
pytestmark = pytest.mark.usefixtures("one_thread")



def _hf_trainer(tmp_path, callback, steps=6, accumulate=2):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4,
                                          gradient_accumulation_steps=accumulate, learning_rate=1e-3,
                                          report_to=[], save_strategy="no", logging_strategy="no",
                                          use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    return transformers.Trainer(model=model, args=args, train_dataset=Tokens(seq=6), callbacks=[callback]), model


def test_transformers_callback_records_optimizer_steps_with_accumulation(tmp_path):
    callback = integrations.InitscopeCallback(every=2)
    trainer, model = _hf_trainer(tmp_path, callback)
    trainer.train()
    run = callback.session.run
    assert (tmp_path / "initscope" / "run.parquet").is_dir() and (tmp_path / "initscope" / "report.html").is_file()
    assert run.steps.tolist() == [0, 2, 4]  # 6 optimizer steps, every 2nd
    steps, std = run.series("bert.embeddings.LayerNorm", "forward", "std")
    counts = run.count[(run.layer == "bert.embeddings.LayerNorm") & (run.phase == "forward")]
    assert counts.tolist() == [2 * 4 * 6 * 16] * 3  # both micro-batches of 4 sequences x 6 tokens x 16 merged
    assert np.isfinite(std).all() and "bert.encoder.layer.1.output.dense" in run.layers("forward")
    assert not model._forward_hooks and all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


@pytest.mark.parametrize("then", ["close", "train again"])
def test_transformers_callback_after_training_raised_removes_hooks_and_keeps_the_steps(tmp_path, then):
    transformers = pytest.importorskip("transformers")
    from initscope.runs import Run

    class Fail(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("boom at step 3")

    callback = integrations.InitscopeCallback(every=1, tensorboard=True)
    trainer, model = _hf_trainer(tmp_path, callback)
    trainer.add_callback(Fail())  # after ours: step 3 ended for the Recorder before it raised
    with pytest.raises(RuntimeError, match="boom at step 3"):
        trainer.train()
    sinks = callback.session.recorder.sinks
    assert any(m._forward_hooks for m in model.modules())  # no callback ran: the hooks are still there
    if then == "close":
        callback.close()
        callback.close()  # a second time: nothing left to do
    else:  # on_train_begin closes the run left open, then records the new one beside it
        trainer.pop_callback(Fail)
        trainer.train()
        assert Run.load(tmp_path / "initscope" / "run-2.parquet").steps.tolist() == list(range(6))
        assert (tmp_path / "initscope" / "report-2.html").is_file() and (tmp_path / "initscope" / "tensorboard-2").is_dir()
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(s._thread is None or not s._thread._thread.is_alive() for s in sinks)  # writer threads ended
    assert Run.load(tmp_path / "initscope" / "run.parquet").steps.tolist() == [0, 1, 2]  # three steps ended
    assert not (tmp_path / "initscope" / "report.html").exists()


def test_transformers_callback_training_twice_keeps_both_runs(tmp_path):
    """A second trainer.train() with the same callback and directory: the first run's file and
    report stay as they were, the second goes beside them as run-2.parquet and report-2.html."""
    from initscope.runs import Run

    callback = integrations.InitscopeCallback(every=2)
    trainer, model = _hf_trainer(tmp_path, callback, steps=4, accumulate=1)
    trainer.train()
    first = (tmp_path / "initscope" / "report.html").read_bytes()
    trainer.train()  # max_steps again: four more optimizer steps in a new run
    d = tmp_path / "initscope"
    assert Run.load(d / "run.parquet").steps.tolist() == [0, 2]
    assert Run.load(d / "run-2.parquet").steps.tolist() == [0, 2]
    assert (d / "report.html").read_bytes() == first and (d / "report-2.html").is_file()
    assert callback.session.run_path == d / "run-2.parquet"
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def _lightning_module(fail_at=None):
    pl = pytest.importorskip("lightning.pytorch")

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))

        def training_step(self, batch, batch_idx):
            if batch_idx == fail_at:
                raise RuntimeError(f"boom at batch {batch_idx}")
            x, y = batch
            return (self.net(x) - y).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return pl, Tiny()


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")  # 0 workers: intended, a tiny in-memory set
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning")  # lightning 2.6 vs torch 2.13
def test_lightning_callback_steps_on_optimizer_steps(tmp_path):
    pl, module = _lightning_module()
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(40, 6, generator=g), torch.randn(40, 1, generator=g))
    callback = integrations.InitscopeLightningCallback(every=1, directory=tmp_path / "rec")
    trainer = pl.Trainer(max_steps=4, accumulate_grad_batches=2, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path), accelerator="cpu")
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=5))
    run = callback.session.run
    assert run.steps.tolist() == [0, 1, 2, 3]
    counts = run.count[(run.layer == "net.0") & (run.phase == "forward")]
    assert counts.tolist() == [2 * 5 * 8] * 4  # two micro-batches of 5 per optimizer step, 8 features
    assert (tmp_path / "rec" / "report.html").is_file()


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")  # as above
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning")
def test_lightning_callback_after_training_raised_removes_hooks_and_keeps_the_steps(tmp_path):
    pl, module = _lightning_module(fail_at=5)  # batches 0-4 ran: optimizer steps 0 and 1 ended
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(40, 6, generator=g), torch.randn(40, 1, generator=g))
    callback = integrations.InitscopeLightningCallback(every=1, directory=tmp_path / "rec", tensorboard=True)
    trainer = pl.Trainer(max_steps=4, accumulate_grad_batches=2, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path), accelerator="cpu")
    with pytest.raises(RuntimeError, match="boom at batch 5"):
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=5))
    assert all(not m._forward_hooks and not m._backward_hooks for m in module.modules())
    assert callback.session.recorder is None
    from initscope.runs import Run
    assert Run.load(tmp_path / "rec" / "run.parquet").steps.tolist() == [0, 1]
    assert list((tmp_path / "rec" / "tensorboard").glob("*.initscope")) and not (tmp_path / "rec" / "report.html").exists()


def test_without_the_library_the_integration_says_what_to_install(monkeypatch):
    for mod, name, fix in (("transformers", "InitscopeCallback", "pip install transformers"),
                           ("lightning", "InitscopeLightningCallback", "pip install lightning")):
        monkeypatch.setitem(sys.modules, mod, None)
        if mod == "lightning":
            monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
        key = f"initscope.integrations.{'huggingface' if mod == 'transformers' else 'lightning'}"
        monkeypatch.delitem(sys.modules, key, raising=False)
        with pytest.raises(MissingDependencyError, match=fix):
            getattr(integrations, name)
    importlib.import_module("initscope")  # importing initscope itself needs neither
